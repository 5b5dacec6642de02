"""Twin camera observations (RGB, depth, point clouds) rendered from splats instead of MuJoCo.

``render_twin_camera_splats(env, camera, binding)`` renders one camera of a ``TwinEnv`` at the
current sim state, returning a :class:`twin.render.Frame` (so ``frame.point_cloud()`` works) plus
alpha. ``TwinEnv`` renders its splat cameras with it (``ObservationCfg.splat_cameras``, or
``TwinEnv.use_splats`` for your own splats, e.g. a scan); :class:`SplatCameraWrapper` is a
gymnasium wrapper that only configures that: ``rgb/<cam>`` / ``depth/<cam>`` (and the fused
``point_cloud``) come from splats for the listed cameras and from MuJoCo for the others.

Backend: "auto" uses gsplat when CUDA is available, else our CPU rasterizer; "cpu" / "gsplat" force.
"""

from __future__ import annotations

from dataclasses import dataclass

import gymnasium as gym
import numpy as np

from twin.splats.binding import SplatBinding
from twin.splats.camera import camera_from_mujoco
from twin.splats.ply import GaussianSplats
from twin.splats.raster_cpu import RenderOutput


def render_splats(splats, camera, *, backend: str = "auto", **kw) -> RenderOutput:
    """Render with gsplat on CUDA when available ("auto"), else with the CPU rasterizer."""
    from twin.splats import raster_cpu, raster_gsplat

    if backend == "gsplat" or (backend == "auto" and raster_gsplat.available()):
        return raster_gsplat.render(splats, camera, **kw)
    if backend not in ("auto", "cpu", "gsplat"):
        raise ValueError(f"unknown backend {backend!r}")
    return raster_cpu.render(splats, camera, **kw)


@dataclass
class SplatFrame:
    frame: object  # twin.render.Frame (rgb uint8, depth float32 metres along the axis, 0 = empty)
    alpha: np.ndarray  # (H, W) float32


def render_twin_camera_splats(
    env,
    camera: str,
    splats: GaussianSplats | SplatBinding,
    *,
    width: int | None = None,
    height: int | None = None,
    background=(0.0, 0.0, 0.0),
    backend: str = "auto",
) -> SplatFrame:
    """Render ``camera`` of ``env`` (a TwinEnv) from splats posed at the env's current state.

    ``splats`` may be a :class:`SplatBinding` (bodies follow the sim) or fixed world-frame splats.
    """
    from twin.render import Frame, intrinsics_for

    model, data = env.sim.model, env.sim.data
    cfg = env.scene.camera(camera)
    w, h = width or cfg.width, height or cfg.height
    posed = splats.posed(data, model) if isinstance(splats, SplatBinding) else splats
    cam = camera_from_mujoco(model, data, camera, w, h)
    out = render_splats(posed, cam, backend=backend, background=background)
    cam_id = model.camera(camera).id
    frame = Frame(
        camera=camera,
        rgb=out.rgb_uint8(),
        depth=out.depth.astype(np.float32),
        intrinsics=intrinsics_for(model, cam_id, w, h),
        cam_pos=data.cam_xpos[cam_id].copy(),
        cam_rot=data.cam_xmat[cam_id].reshape(3, 3).copy(),
        far=float(model.vis.map.zfar * model.stat.extent),
    )
    return SplatFrame(frame, out.alpha)


class SplatCameraWrapper(gym.Wrapper):
    """Per-camera switch: the listed cameras' RGB/depth (and their share of the point cloud) come
    from splats bound to the env's bodies; other cameras keep MuJoCo rendering.

    Configuration of the env's own splat cameras (:meth:`twin.env.TwinEnv.use_splats`): each
    camera is rendered once per step, by the env. ``splats`` defaults to mesh-sampled splats of
    the env's scene (:func:`splats_from_env`); give your own (e.g. a scan) to use them.
    """

    def __init__(
        self,
        env,
        cameras: list[str] | tuple[str, ...],
        splats: GaussianSplats | None = None,
        *,
        backend: str = "auto",
        background=(0.0, 0.0, 0.0),
        **splat_kw,
    ) -> None:
        super().__init__(env)
        base = env.unwrapped
        unknown = [c for c in cameras if c not in base.camera_names()]
        if unknown:
            raise ValueError(f"cameras {unknown} are not observed by this env ({base.camera_names()})")
        self.cameras = tuple(cameras)
        self.backend, self.background = backend, background
        if splats is None:
            from twin.splats.from_mesh import splats_from_env

            splats = splats_from_env(base, **splat_kw)
        base.use_splats(self.cameras, splats, backend=backend, background=tuple(background))
        self.binding = base._splat_binding()
