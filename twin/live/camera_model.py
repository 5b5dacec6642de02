"""Pinhole cameras in OpenCV's convention, placed in the robot base frame.

What the live perception code (object tracking, hand-eye calibration) needs of a camera:
its intrinsics ``K`` (pixels; OpenCV's convention, integer pixel centres) and its pose
``T_base_cam`` (4x4; camera axes x right, y down, z forward, as OpenCV and ROS optical
frames have them). Nothing here imports rclpy or OpenCV.

Conventions that differ elsewhere in the twin, converted here once:

* MuJoCo cameras look along -z with y up (:func:`twin.compile.camera_quat`): the optical
  frame is the MuJoCo camera frame turned by pi about x.
* MuJoCo renders pixel ``u`` over ``[u, u + 1)`` with the principal point ``cx`` in those
  continuous coordinates (``twin.render._camera_rays`` samples ``u + 0.5``); OpenCV puts
  pixel centres at integers, so its principal point is ``cx - 0.5``.
* The robot base frame is the world frame moved by ``SceneCfg.robot.base``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from twin.compile import camera_quat
from twin.robot import mat_to_quat, quat_to_mat
from twin.scene import CameraCfg, Pose, SceneCfg

#: MuJoCo camera axes (x right, y up, -z forward) -> OpenCV optical axes (x right, y down, z forward)
MJ_TO_CV = np.diag([1.0, -1.0, -1.0])


def pose_matrix(pos, quat_wxyz) -> np.ndarray:
    """4x4 homogeneous transform from a position and a wxyz quaternion."""
    t = np.eye(4)
    t[:3, :3] = quat_to_mat(np.asarray(quat_wxyz, float))
    t[:3, 3] = np.asarray(pos, float)
    return t


def matrix_pose(t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(position, wxyz quaternion) of a 4x4 transform."""
    return np.asarray(t[:3, 3], float).copy(), mat_to_quat(np.asarray(t[:3, :3], float))


def invert(t: np.ndarray) -> np.ndarray:
    """Inverse of a rigid 4x4 transform."""
    out = np.eye(4)
    out[:3, :3] = t[:3, :3].T
    out[:3, 3] = -t[:3, :3].T @ t[:3, 3]
    return out


def rotation_angle_deg(a: np.ndarray, b: np.ndarray) -> float:
    """Angle (degrees) of the rotation between two 3x3 rotations (or 4x4 transforms)."""
    r = np.asarray(a)[:3, :3].T @ np.asarray(b)[:3, :3]
    return float(np.degrees(np.arccos(np.clip((np.trace(r) - 1.0) / 2.0, -1.0, 1.0))))


def base_from_world(scene: SceneCfg) -> np.ndarray:
    """T_base_world: world coordinates -> robot base coordinates."""
    base: Pose = scene.robot.base
    return invert(pose_matrix(base.pos, base.quat))


@dataclass(frozen=True)
class PinholeCamera:
    """One camera: image size, OpenCV intrinsics, pose in the robot base frame (optical axes)."""

    name: str
    width: int
    height: int
    K: np.ndarray  # 3x3, OpenCV convention (pixel centres at integers)
    T_base_cam: np.ndarray  # 4x4, camera optical frame -> robot base frame

    @classmethod
    def from_scene(
        cls, scene: SceneCfg, name: str, width: int | None = None, height: int | None = None
    ) -> PinholeCamera:
        """The scene camera ``name`` as the twin renders it at ``width`` x ``height``
        (default: its own size; intrinsics scale with the image)."""
        cam = scene.camera(name)
        return cls.from_camera_cfg(cam, base_from_world(scene), width, height)

    @classmethod
    def from_camera_cfg(
        cls, cam: CameraCfg, T_base_world: np.ndarray | None = None, width: int | None = None, height: int | None = None
    ) -> PinholeCamera:
        w = int(width or cam.width)
        h = int(height or cam.height)
        sx, sy = w / cam.width, h / cam.height
        k = np.array([[cam.fx * sx, 0.0, cam.cx * sx - 0.5], [0.0, cam.fy * sy, cam.cy * sy - 0.5], [0.0, 0.0, 1.0]])
        t_world_cam = np.eye(4)
        t_world_cam[:3, :3] = quat_to_mat(camera_quat(cam)) @ MJ_TO_CV
        t_world_cam[:3, 3] = np.asarray(cam.pos, float)
        t_base = (np.eye(4) if T_base_world is None else np.asarray(T_base_world, float)) @ t_world_cam
        return cls(name=cam.name, width=w, height=h, K=k, T_base_cam=t_base)

    @classmethod
    def from_camera_info(
        cls, name: str, width: int, height: int, k: np.ndarray | list[float], T_base_cam: np.ndarray
    ) -> PinholeCamera:
        """From a ROS CameraInfo's ``k`` (row-major 3x3, already OpenCV's convention)."""
        kk = np.asarray(k, float).reshape(3, 3)
        if kk[0, 0] <= 0 or kk[1, 1] <= 0 or kk[2, 2] != 1.0:
            raise ValueError(
                f"camera {name!r}: intrinsics K={kk.tolist()} are not a pinhole matrix; check CameraInfo.k"
            )
        return cls(name=name, width=int(width), height=int(height), K=kk, T_base_cam=np.asarray(T_base_cam, float))

    def with_pose(self, T_base_cam: np.ndarray) -> PinholeCamera:
        return PinholeCamera(self.name, self.width, self.height, self.K, np.asarray(T_base_cam, float))

    def project(self, points_base: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Pixel coordinates (N, 2) and depth along the optical axis (N,) of base-frame points."""
        t = invert(self.T_base_cam)
        pc = np.asarray(points_base, float) @ t[:3, :3].T + t[:3, 3]
        z = pc[:, 2]
        uv = (pc[:, :2] / np.where(np.abs(z) < 1e-12, 1e-12, z)[:, None]) * np.diag(self.K)[:2] + self.K[:2, 2]
        return uv, z

    def deproject(self, depth: np.ndarray, frame: str = "base") -> tuple[np.ndarray, np.ndarray]:
        """Points (N, 3) of the valid (> 0, finite) depth pixels, in the base frame (or the
        camera's optical frame with ``frame="camera"``), and their flat pixel indices."""
        d = np.asarray(depth, float)
        if d.shape != (self.height, self.width):
            raise ValueError(
                f"camera {self.name!r}: depth image is {d.shape[1]}x{d.shape[0]}, intrinsics are for "
                f"{self.width}x{self.height}; scale the intrinsics to the image (CameraInfo of that stream)"
            )
        idx = np.flatnonzero(np.isfinite(d) & (d > 0)).astype(np.int64)
        v, u = np.divmod(idx, self.width)
        z = d.reshape(-1)[idx]
        x = (u - self.K[0, 2]) / self.K[0, 0] * z
        y = (v - self.K[1, 2]) / self.K[1, 1] * z
        pc = np.stack([x, y, z], axis=1)
        if frame == "camera":
            return pc, idx
        return pc @ self.T_base_cam[:3, :3].T + self.T_base_cam[:3, 3], idx


__all__ = [
    "MJ_TO_CV",
    "PinholeCamera",
    "base_from_world",
    "invert",
    "matrix_pose",
    "pose_matrix",
    "rotation_angle_deg",
]
