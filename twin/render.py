"""Offscreen camera rendering (RGB, metric depth) and coloured point clouds.

Uses MuJoCo's renderer on whatever GL backend ``MUJOCO_GL`` selects (EGL or OSMesa on a
headless CPU machine; ``import twin`` defaults it to EGL). Shadows are off by default: on
llvmpipe they cost several times the frame time and the cameras' features do not need them.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import mujoco
import numpy as np


@dataclass
class Frame:
    """One camera's image(s) plus what is needed to lift depth to 3-D."""

    camera: str
    rgb: np.ndarray | None  # (H, W, 3) uint8
    depth: np.ndarray | None  # (H, W) float32 metres along the optical axis
    intrinsics: np.ndarray  # 3x3 K for this image size (OpenCV convention)
    cam_pos: np.ndarray  # (3,) world
    cam_rot: np.ndarray  # 3x3 world-from-camera (MuJoCo camera axes: x right, y up, -z forward)
    far: float

    def point_cloud(self) -> np.ndarray:
        """(N, 6) float32 x, y, z (world) + r, g, b in [0, 1] for valid depth pixels."""
        if self.depth is None:
            raise ValueError("point_cloud() needs a frame rendered with depth=True")
        h, w = self.depth.shape
        rays = _camera_rays(tuple(self.intrinsics.reshape(-1).round(6)), w, h)  # (H*W, 3), z = -1
        z = self.depth.reshape(-1)
        idx = np.flatnonzero((z > 1e-4) & (z < self.far * 0.99))
        cam = rays[idx] * z[idx, None]
        world = cam @ self.cam_rot.T.astype(np.float32) + self.cam_pos.astype(np.float32)
        if self.rgb is not None:
            col = self.rgb.reshape(-1, 3)[idx].astype(np.float32) * (1.0 / 255.0)
        else:
            col = np.zeros((len(idx), 3), np.float32)
        return np.concatenate([world, col], axis=1)


@functools.lru_cache(maxsize=16)
def _camera_rays(k: tuple[float, ...], width: int, height: int) -> np.ndarray:
    """Per-pixel ray directions in MuJoCo camera axes, scaled so depth multiplies them."""
    fx, cx, fy, cy = k[0], k[2], k[4], k[5]
    u, v = np.meshgrid(np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64))
    x = (u + 0.5 - cx) / fx
    y = (v + 0.5 - cy) / fy
    # OpenCV (x right, y down, z forward) -> MuJoCo camera (x right, y up, looking along -z).
    return np.stack([x, -y, -np.ones_like(x)], axis=-1).reshape(-1, 3).astype(np.float32)


def intrinsics_for(model: mujoco.MjModel, cam_id: int, width: int, height: int) -> np.ndarray:
    """Pinhole K of a model camera rendered at (width, height)."""
    sensor = model.cam_sensorsize[cam_id]
    if sensor[0] > 0 and sensor[1] > 0:
        focal = model.cam_intrinsic[cam_id][:2]
        principal = model.cam_intrinsic[cam_id][2:]
        fx = focal[0] / sensor[0] * width
        fy = focal[1] / sensor[1] * height
        cx = width / 2.0 + principal[0] / sensor[0] * width
        cy = height / 2.0 + principal[1] / sensor[1] * height
    else:
        fy = 0.5 * height / np.tan(np.deg2rad(model.cam_fovy[cam_id]) / 2.0)
        fx, cx, cy = fy, width / 2.0, height / 2.0
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])


class Renderer:
    """Renders named cameras of one model at one image size."""

    def __init__(self, model: mujoco.MjModel, width: int, height: int, shadows: bool = False) -> None:
        self.model = model
        self.width = width
        self.height = height
        self.shadows = shadows
        self._r = mujoco.Renderer(model, height=height, width=width)

    def render(self, data: mujoco.MjData, camera: str, rgb: bool = True, depth: bool = False) -> Frame:
        cam_id = self.model.camera(camera).id
        r = self._r
        rgb_img = depth_img = None
        if rgb:
            r.disable_depth_rendering()
            r.update_scene(data, camera=cam_id)
            r.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = self.shadows
            rgb_img = r.render().copy()
        if depth:
            r.enable_depth_rendering()
            r.update_scene(data, camera=cam_id)
            depth_img = r.render().astype(np.float32)
            r.disable_depth_rendering()
        far = self.model.vis.map.zfar * self.model.stat.extent
        return Frame(
            camera=camera,
            rgb=rgb_img,
            depth=depth_img,
            intrinsics=intrinsics_for(self.model, cam_id, self.width, self.height),
            cam_pos=data.cam_xpos[cam_id].copy(),
            cam_rot=data.cam_xmat[cam_id].reshape(3, 3).copy(),
            far=float(far),
        )

    def close(self) -> None:
        self._r.close()


def crop_to_box(points: np.ndarray, box: tuple[tuple[float, float, float], tuple[float, float, float]]) -> np.ndarray:
    lo, hi = np.asarray(box[0]), np.asarray(box[1])
    keep = np.all((points[:, :3] >= lo) & (points[:, :3] <= hi), axis=1)
    return points[keep]


def fuse_point_clouds(
    clouds: list[np.ndarray],
    box: tuple[tuple[float, float, float], tuple[float, float, float]],
    num_points: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """Concatenate per-camera clouds, crop to ``box``, resample to exactly ``num_points``."""
    pts = np.concatenate(clouds, axis=0) if clouds else np.zeros((0, 6), np.float32)
    pts = crop_to_box(pts, box)
    if len(pts) == 0:
        return np.zeros((num_points, 6), dtype=np.float32)
    idx = rng.choice(len(pts), size=num_points, replace=len(pts) < num_points)
    return pts[idx].astype(np.float32)
