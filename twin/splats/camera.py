"""Pinhole camera for splat rendering, and its conversion from MuJoCo / twin cameras.

Convention: ``viewmat`` is the 4x4 **world-to-camera** transform in the OpenCV/gsplat camera
frame (x right, y down, z forward); pixel (u, v) has its centre at (u + 0.5, v + 0.5) and
projects as u + 0.5 = fx * x / z + cx (the same as ``twin.render`` and gsplat).

MuJoCo cameras look along their local -z with y up (x right). With ``cam_xmat`` the
world-from-camera rotation of a MuJoCo camera, ``F = diag(1, -1, -1)`` flips MuJoCo camera
axes to OpenCV axes, so world-from-OpenCV is ``R_wc = cam_xmat @ F`` and the view matrix is
``[R_wc^T | -R_wc^T @ cam_xpos]``. Intrinsics come from :func:`twin.render.intrinsics_for` (fovy or
sensor-size cameras).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MJ_TO_CV = np.diag([1.0, -1.0, -1.0])


@dataclass
class Camera:
    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int
    viewmat: np.ndarray  # (4, 4) world -> camera (OpenCV axes)

    @property
    def K(self) -> np.ndarray:
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    @property
    def position(self) -> np.ndarray:
        r, t = self.viewmat[:3, :3], self.viewmat[:3, 3]
        return -r.T @ t

    @staticmethod
    def from_K(K: np.ndarray, width: int, height: int, viewmat: np.ndarray) -> Camera:
        K = np.asarray(K, float)
        return Camera(
            float(K[0, 0]),
            float(K[1, 1]),
            float(K[0, 2]),
            float(K[1, 2]),
            int(width),
            int(height),
            np.asarray(viewmat, float),
        )

    @staticmethod
    def look_at(
        eye, target, up=(0.0, 0.0, 1.0), *, fovy_deg: float = 60.0, width: int = 64, height: int = 48
    ) -> Camera:
        """OpenCV camera at ``eye`` looking at ``target`` (image up ~ world ``up``)."""
        eye, target, up = (np.asarray(v, float) for v in (eye, target, up))
        z = target - eye
        z /= np.linalg.norm(z)
        x = np.cross(z, up)
        if np.linalg.norm(x) < 1e-9:
            x = np.cross(z, [1.0, 0.0, 0.0])
        x /= np.linalg.norm(x)
        y = np.cross(z, x)
        r = np.stack([x, y, z])  # camera-from-world rows
        vm = np.eye(4)
        vm[:3, :3] = r
        vm[:3, 3] = -r @ eye
        f = 0.5 * height / np.tan(np.deg2rad(fovy_deg) / 2)
        return Camera(f, f, width / 2.0, height / 2.0, width, height, vm)


def viewmat_from_mujoco(cam_xpos: np.ndarray, cam_xmat: np.ndarray) -> np.ndarray:
    r_wc = np.asarray(cam_xmat, float).reshape(3, 3) @ MJ_TO_CV
    vm = np.eye(4)
    vm[:3, :3] = r_wc.T
    vm[:3, 3] = -r_wc.T @ np.asarray(cam_xpos, float)
    return vm


def camera_from_mujoco(model, data, camera: str | int, width: int, height: int) -> Camera:
    """Camera matching ``twin.render.Renderer.render(data, camera)`` at (width, height)."""
    from twin.render import intrinsics_for

    cam_id = camera if isinstance(camera, int) else model.camera(camera).id
    if cam_id < 0 or cam_id >= model.ncam:
        raise ValueError(f"unknown camera {camera!r}")
    K = intrinsics_for(model, cam_id, width, height)
    vm = viewmat_from_mujoco(data.cam_xpos[cam_id], data.cam_xmat[cam_id])
    return Camera.from_K(K, width, height, vm)


def camera_from_env(env, camera: str, width: int | None = None, height: int | None = None) -> Camera:
    """Camera of a :class:`twin.env.TwinEnv` (default size: the scene camera's)."""
    cfg = env.scene.camera(camera)
    w, h = width or cfg.width, height or cfg.height
    return camera_from_mujoco(env.sim.model, env.sim.data, camera, w, h)
