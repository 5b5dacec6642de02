"""gsplat ``rasterization()`` path (CUDA only), same interface as :mod:`twin.splats.raster_cpu`.

gsplat is imported lazily: it is an optional dependency whose kernels JIT-compile for CUDA on first
use (set ``TORCH_EXTENSIONS_DIR`` to a writable cache; it also needs ``packaging`` at render time).
Settings mirror the CPU rasterizer: classic (no antialiasing compensation), eps2d 0.3, 16x16
tiles, "RGB+ED" (expected depth), SH evaluated along camera-to-mean directions.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from twin.splats.camera import Camera
from twin.splats.ply import ActivatedSplats, GaussianSplats
from twin.splats.raster_cpu import RenderOutput, _as_activated


def available() -> bool:
    """True when CUDA is present and gsplat imports."""
    if not torch.cuda.is_available():
        return False
    try:
        import gsplat  # noqa: F401
    except Exception:
        return False
    return True


class GsplatRenderer:
    """Keeps the Gaussians on the GPU between renders (upload once, render many views)."""

    def __init__(self, splats: GaussianSplats | ActivatedSplats, device: str = "cuda") -> None:
        a = _as_activated(splats)
        self.device = device
        t = lambda x: torch.as_tensor(np.ascontiguousarray(x), dtype=torch.float32, device=device)  # noqa: E731
        self.means, self.quats, self.scales = t(a.means), t(a.quats), t(a.scales)
        self.opacities, self.sh = t(a.opacities), t(a.sh)
        self.degree = int(math.isqrt(a.sh.shape[1])) - 1

    def render_torch(
        self, camera: Camera, *, sh_degree: int | None = None, background=None, near: float = 0.01, far: float = 1e10
    ):
        """(rgb (H, W, 3), depth (H, W), alpha (H, W)) as CUDA tensors."""
        from gsplat import rasterization

        dev = self.device
        vm = torch.as_tensor(camera.viewmat, dtype=torch.float32, device=dev)[None]
        K = torch.as_tensor(camera.K, dtype=torch.float32, device=dev)[None]
        bg = (
            None
            if background is None
            else torch.as_tensor(np.asarray(background), dtype=torch.float32, device=dev).reshape(1, 3)
        )
        deg = self.degree if sh_degree is None else min(sh_degree, self.degree)
        out, alphas, _ = rasterization(
            self.means,
            self.quats,
            self.scales,
            self.opacities,
            self.sh,
            vm,
            K,
            camera.width,
            camera.height,
            near_plane=near,
            far_plane=far,
            sh_degree=deg,
            eps2d=0.3,
            tile_size=16,
            packed=False,
            rasterize_mode="classic",
            render_mode="RGB+ED",
            backgrounds=bg,
        )
        alpha = alphas[0, ..., 0]
        depth = torch.where(alpha > 1e-6, out[0, ..., 3], torch.zeros_like(alpha))
        return out[0, ..., :3], depth, alpha

    def render(self, camera: Camera, **kw) -> RenderOutput:
        rgb, depth, alpha = self.render_torch(camera, **kw)
        return RenderOutput(rgb.float().cpu().numpy(), depth.float().cpu().numpy(), alpha.float().cpu().numpy())


def render(
    splats: GaussianSplats | ActivatedSplats,
    camera: Camera,
    *,
    sh_degree: int | None = None,
    background=None,
    near: float = 0.01,
    far: float = 1e10,
    device: str = "cuda",
) -> RenderOutput:
    return GsplatRenderer(splats, device).render(camera, sh_degree=sh_degree, background=background, near=near, far=far)
