"""Scripted IK controllers: waypoint followers that act in ``ee_pose`` mode.

Each task ships one (``Task.expert()``) that plans from privileged state: approach, grasp,
transport, place. ``noise`` perturbs the planned waypoints (metres, radians) so the same
controller gives demonstrations of varying quality.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from twin.robot import mat_to_quat
from twin.sim import DOWN, TwinSim


def yaw_rot(yaw: float, base: np.ndarray = DOWN) -> np.ndarray:
    """Top-down gripper orientation rotated by ``yaw`` about world z."""
    c, s = math.cos(yaw), math.sin(yaw)
    rz = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    return rz @ base


@dataclass
class Waypoint:
    pos: np.ndarray
    rot: np.ndarray
    gripper: float  # 1 open, 0 closed
    hold: int = 0  # extra control steps to wait once reached
    tol: float = 0.01  # metres; reached when the commanded pose is here and the TCP is within 2*tol


class WaypointController:
    """Follows a list of waypoints at a bounded Cartesian speed; outputs ee_pose actions."""

    def __init__(
        self,
        max_step: float = 0.03,
        max_rot_step: float = 0.15,
        noise: float = 0.0,
        rng: np.random.Generator | None = None,
    ) -> None:
        self.max_step = max_step
        self.max_rot_step = max_rot_step
        self.noise = noise
        self.rng = rng if rng is not None else np.random.default_rng(0)
        self.waypoints: list[Waypoint] = []
        self.index = 0
        self._held = 0
        self._cmd_pos = np.zeros(3)
        self._cmd_rot = DOWN.copy()
        self._stall = 0

    # Subclasses build the plan from the sim's privileged state.
    def plan(self, sim: TwinSim) -> list[Waypoint]:
        raise NotImplementedError

    def reset(self, sim: TwinSim) -> None:
        self.waypoints = self.plan(sim)
        if self.noise > 0:
            for wp in self.waypoints:
                wp.pos = wp.pos + self.rng.normal(0.0, self.noise, size=3)
        self.index = 0
        self._held = 0
        self._stall = 0
        self._cmd_pos, self._cmd_rot = sim.target_pos.copy(), sim.target_rot.copy()

    def replan(self, sim: TwinSim) -> None:
        """Hook for closed-loop controllers (called every step before moving)."""

    @property
    def done(self) -> bool:
        return self.index >= len(self.waypoints)

    def act(self, sim: TwinSim) -> np.ndarray:
        self.replan(sim)
        if self.done:
            wp = self.waypoints[-1]
        else:
            wp = self.waypoints[self.index]
        delta = wp.pos - self._cmd_pos
        dist = float(np.linalg.norm(delta))
        if dist > self.max_step:
            delta *= self.max_step / dist
        self._cmd_pos = self._cmd_pos + delta
        self._cmd_rot = _slerp_rot(self._cmd_rot, wp.rot, self.max_rot_step)
        if not self.done:
            tcp, _ = sim.tcp_pose_mat()
            arrived = dist <= wp.tol and np.linalg.norm(tcp - wp.pos) <= 2 * wp.tol
            self._stall = self._stall + 1 if dist <= wp.tol else 0
            if arrived or self._stall > 10:  # blocked by contact: move on after a while
                if self._held >= wp.hold:
                    self.index += 1
                    self._held = 0
                    self._stall = 0
                else:
                    self._held += 1
        quat = mat_to_quat(self._cmd_rot)
        return np.concatenate([self._cmd_pos, quat, [wp.gripper]]).astype(np.float32)


def _slerp_rot(cur: np.ndarray, target: np.ndarray, max_angle: float) -> np.ndarray:
    from twin.robot import rotation_error

    err = rotation_error(target, cur)
    ang = float(np.linalg.norm(err))
    if ang <= max_angle or ang < 1e-9:
        return target.copy()
    axis = err / ang
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    a = max_angle
    r = np.eye(3) + math.sin(a) * k + (1 - math.cos(a)) * (k @ k)
    return r @ cur


class HoldController:
    """Does nothing: keeps the commanded pose (the 'controller disabled' baseline)."""

    def reset(self, sim: TwinSim) -> None:
        self._pose = np.concatenate([sim.target_pos, mat_to_quat(sim.target_rot), [sim.gripper_cmd]])

    def act(self, sim: TwinSim) -> np.ndarray:
        return self._pose.astype(np.float32)
