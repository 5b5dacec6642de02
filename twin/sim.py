"""TwinSim: one compiled twin (model + data) with robot control and state access.

The sim knows nothing about tasks. It holds the commanded TCP pose for Cartesian control
(so repeated small deltas do not drift with tracking error), applies actuation latency
in physics sub-steps, and reports non-finite physics as ``unstable``.
"""

from __future__ import annotations

import math
from collections import deque

import mujoco
import numpy as np

from twin.compile import CompiledScene, compile_scene
from twin.robot import GRIPPER_MAX_WIDTH, PandaIK, RobotHandles, canonical_tcp_quat, contiguous_slice, mat_to_quat
from twin.scene import SceneCfg, SceneError

# Top-down TCP orientation used at home: gripper z pointing down.
DOWN = np.array([[1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, -1.0]])


class TwinSim:
    def __init__(self, scene: SceneCfg | CompiledScene) -> None:
        compiled = scene if isinstance(scene, CompiledScene) else compile_scene(scene)
        self.compiled = compiled  # keeps a model shared between sims (twin.env) alive
        self.scene = compiled.scene
        self.model = compiled.model
        self.data = mujoco.MjData(self.model)
        self.h = RobotHandles.from_model(self.model)
        self.ik = PandaIK(self.model, self.h)
        self._qadr = contiguous_slice(self.h.qpos_adr)
        self._arm_act = contiguous_slice(self.h.arm_act)
        # the arm joints' dofs, in actuator order (arm_effort adds their gravity compensation)
        self._arm_dof = self.model.jnt_dofadr[self.model.actuator_trnid[self._arm_act, 0]]
        self.ik.rest = np.array(self.scene.robot.home_qpos)
        self.latency_substeps = 0
        #: average the arm's joint torques over each step's physics substeps (what a logged,
        #: filtered torque is; costs a Python loop over the substeps, so only when asked)
        self.track_effort = False
        self._effort_sum = np.zeros(7)
        self._effort_n = 0
        self._pending: deque[tuple[int, np.ndarray]] = deque()
        self._substep = 0
        self.target_pos = np.zeros(3)
        self.target_rot = DOWN.copy()
        self.q_target = np.array(self.scene.robot.home_qpos, dtype=float)
        self.gripper_cmd = 1.0
        self._body_ids: dict[str, int] = {}
        self._site_ids: dict[str, int] = {}
        self._free_adr = {
            self.model.body(self.model.jnt_bodyid[j]).name: int(self.model.jnt_qposadr[j])
            for j in range(self.model.njnt)
            if self.model.jnt_type[j] == mujoco.mjtJoint.mjJNT_FREE
        }

    # ---- reset / state ----------------------------------------------------------------------
    def reset_robot(self, qpos: np.ndarray | None = None, gripper_open: bool = True) -> None:
        mujoco.mj_resetData(self.model, self.data)
        q = np.array(self.scene.robot.home_qpos if qpos is None else qpos, dtype=float)
        self.data.qpos[self.h.qpos_adr] = q
        width = GRIPPER_MAX_WIDTH / 2 if gripper_open else 0.0
        self.data.qpos[self.h.finger_qpos_adr] = width
        self.data.ctrl[self.h.arm_act] = q
        self.data.ctrl[self.h.gripper_act] = 1.0 if gripper_open else 0.0
        self.q_target = q.copy()
        self.gripper_cmd = float(self.data.ctrl[self.h.gripper_act])
        self._pending.clear()
        self._substep = 0
        self._effort_n = 0
        mujoco.mj_forward(self.model, self.data)
        self.target_pos, self.target_rot = self.tcp_pose_mat()

    def forward(self) -> None:
        mujoco.mj_forward(self.model, self.data)

    def tcp_pose_mat(self) -> tuple[np.ndarray, np.ndarray]:
        sid = self.h.tcp_site
        return self.data.site_xpos[sid].copy(), self.data.site_xmat[sid].reshape(3, 3).copy()

    def tcp_pose(self) -> np.ndarray:
        """TCP position (3) and quaternion wxyz (4)."""
        pos, rot = self.tcp_pose_mat()
        return np.concatenate([pos, canonical_tcp_quat(mat_to_quat(rot))])

    def robot_state(self) -> np.ndarray:
        """Arm joints (7), gripper width (1), TCP position (3) and quaternion wxyz (4), read
        straight into one array (the env observes it after every step)."""
        d, h = self.data, self.h
        out = np.empty(15)
        out[:7] = d.qpos[self._qadr]
        out[7] = d.qpos[h.finger_qpos_adr].sum()
        out[8:11] = d.site_xpos[h.tcp_site]
        quat = out[11:15]
        mujoco.mju_mat2Quat(quat, d.site_xmat[h.tcp_site])
        canonical_tcp_quat(quat)
        return out

    def arm_qpos(self) -> np.ndarray:
        return self.data.qpos[self.h.qpos_adr].copy()

    def arm_effort(self) -> np.ndarray:
        """The arm joints' motor torques (7, N m): the servo's torque plus the gravity
        compensation of the arm's links (a passive force here, part of the motor torque on the
        robot, as in a Franka's ``tau_J``); averaged over the last step's substeps when
        ``track_effort`` is on, else at the last substep."""
        if self.track_effort and self._effort_n:
            return self._effort_sum / self._effort_n
        return self._effort_now()

    def _effort_now(self) -> np.ndarray:
        return self.data.actuator_force[self._arm_act] + self.data.qfrc_gravcomp[self._arm_dof]

    def arm_qvel(self) -> np.ndarray:
        return self.data.qvel[self.h.dof_adr].copy()

    def gripper_width(self) -> float:
        return float(self.data.qpos[self.h.finger_qpos_adr].sum())

    def gripper_open(self) -> bool:
        """True when the gripper is commanded open (the fingers may still be moving)."""
        return self.gripper_cmd > 0.5

    def body_id(self, name: str) -> int:
        bid = self._body_ids.get(name)
        if bid is None:
            bid = self._body_ids[name] = self.model.body(name).id
        return bid

    def site_id(self, name: str) -> int:
        sid = self._site_ids.get(name)
        if sid is None:
            sid = self._site_ids[name] = self.model.site(name).id
        return sid

    def body_pose(self, name: str) -> np.ndarray:
        """World position (3) + quaternion wxyz (4) of a body."""
        b = self.body_id(name)
        return np.concatenate([self.data.xpos[b], self.data.xquat[b]])

    def set_free_body_pose(self, name: str, pos: np.ndarray, quat: np.ndarray) -> None:
        if name not in self._free_adr:
            raise SceneError(f"body {name!r} has no free joint; only free objects can be placed")
        adr = self._free_adr[name]
        self.data.qpos[adr : adr + 3] = pos
        self.data.qpos[adr + 3 : adr + 7] = np.asarray(quat) / np.linalg.norm(quat)
        b = self.model.body(name).id
        dof = self.model.jnt_dofadr[self.model.body_jntadr[b]]
        self.data.qvel[dof : dof + 6] = 0.0

    def is_free(self, name: str) -> bool:
        """True for a body with a free joint (an object that can be placed)."""
        return name in self._free_adr

    def joint_qpos(self, name: str) -> float:
        return float(self.data.qpos[self.model.jnt_qposadr[self.model.joint(name).id]])

    def site_pos(self, name: str) -> np.ndarray:
        return self.data.site_xpos[self.site_id(name)].copy()

    def is_stable(self) -> bool:
        """Finite positions and every speed below 1e3 (a NaN fails both comparisons)."""
        d = self.data
        if not math.isfinite(float(d.qpos.sum())):
            return False
        return d.qvel.size == 0 or bool(-1e3 < d.qvel.min() and d.qvel.max() < 1e3)

    # ---- commands ---------------------------------------------------------------------------
    def command_joints(self, q: np.ndarray, gripper: float) -> None:
        self.q_target = np.clip(q, self.h.lower, self.h.upper)
        self.gripper_cmd = _unit_clip(gripper)
        self.target_pos, self.target_rot = self.ik.fk(self.q_target)

    def command_pose(self, pos: np.ndarray, rot: np.ndarray, gripper: float, iters: int = 4, tol: float = 2e-4) -> None:
        """Cartesian target for the TCP (world frame), solved to joint targets by IK."""
        self.target_pos = np.asarray(pos, dtype=float)
        self.target_rot = np.asarray(rot, dtype=float)
        # Warm-started from the last solution; residuals below `tol` (0.2 mm) are
        # corrected on the next command since targets are absolute.
        self.q_target = self.ik.solve(self.target_pos, self.target_rot, self.q_target, iters=iters, tol=tol)
        self.gripper_cmd = _unit_clip(gripper)

    def command_delta(self, dpos: np.ndarray, drot: np.ndarray, gripper: float) -> None:
        """Move the commanded TCP pose by a world-frame translation and rotation."""
        self.command_pose(self.target_pos + dpos, drot @ self.target_rot, gripper)

    def step(self, nsub: int) -> bool:
        """Advance ``nsub`` physics steps applying the current command (with latency).

        Returns False if the physics became non-finite.
        """
        if self.latency_substeps > 0:
            ctrl = np.concatenate([self.q_target, [self.gripper_cmd]])
            self._pending.append((self._substep + self.latency_substeps, ctrl))
        else:
            self.data.ctrl[self._arm_act] = self.q_target
            self.data.ctrl[self.h.gripper_act] = self.gripper_cmd
        d, m = self.data, self.model
        self._effort_sum[:] = 0.0
        self._effort_n = 0
        if not self._pending and not self.track_effort:
            mujoco.mj_step(m, d, nstep=nsub)
            self._substep += nsub
        else:
            for _ in range(nsub):
                while self._pending and self._pending[0][0] <= self._substep:
                    self._apply(self._pending.popleft()[1])
                mujoco.mj_step(m, d)
                self._substep += 1
                if self.track_effort:
                    self._effort_sum += self._effort_now()
                    self._effort_n += 1
        return self.is_stable()

    def _apply(self, ctrl: np.ndarray) -> None:
        self.data.ctrl[self._arm_act] = ctrl[:7]
        self.data.ctrl[self.h.gripper_act] = ctrl[7]


def _unit_clip(v: float) -> float:
    """``v`` clipped to [0, 1] as a float (NaN stays NaN, as with np.clip)."""
    v = float(v)
    return 0.0 if v < 0.0 else 1.0 if v > 1.0 else v
