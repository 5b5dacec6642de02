"""Gaussian-splat appearance for the twin (issue 7).

* :mod:`.ply` - 3DGS ``.ply`` I/O and :class:`GaussianSplats` (raw params, ``activated()``).
* :mod:`.from_mesh` - splats sampled from meshes / a compiled MuJoCo scene, labelled by body.
* :mod:`.binding` - :class:`SplatBinding`: Gaussians follow their bodies' simulated poses.
* :mod:`.camera` - :class:`Camera` (intrinsics + world-to-camera, OpenCV axes) from MuJoCo cameras.
* :mod:`.raster_cpu` - our tile-binned torch CPU rasterizer + brute-force reference.
* :mod:`.raster_gsplat` - gsplat ``rasterization()`` on CUDA (optional, imported lazily).
* :mod:`.color` - per-channel affine / quadratic colour alignment to real images.
* :mod:`.twin_camera` - twin camera observations from splats (function + per-camera wrapper).
"""

from twin.splats.binding import SplatBinding, label_by_proximity
from twin.splats.camera import Camera, camera_from_env, camera_from_mujoco
from twin.splats.color import align_colors, fit_color_transform, photometric_error
from twin.splats.ply import BACKGROUND, ActivatedSplats, GaussianSplats, read_ply, write_ply
from twin.splats.raster_cpu import RenderOutput, render_reference
from twin.splats.raster_cpu import render as render_cpu

__all__ = [
    "BACKGROUND",
    "ActivatedSplats",
    "Camera",
    "GaussianSplats",
    "RenderOutput",
    "SplatBinding",
    "align_colors",
    "camera_from_env",
    "label_by_proximity",
    "camera_from_mujoco",
    "fit_color_transform",
    "photometric_error",
    "read_ply",
    "render",
    "render_cpu",
    "render_reference",
    "write_ply",
]


def render(splats, camera, *, backend: str = "auto", **kw) -> RenderOutput:
    """gsplat on CUDA when available ("auto"), else the CPU rasterizer; see ``twin_camera.render_splats``."""
    from twin.splats.twin_camera import render_splats

    return render_splats(splats, camera, backend=backend, **kw)
