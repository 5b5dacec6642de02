"""open_cabinet: open a hinged cabinet door past a threshold angle (CASHER cabinet opening)."""

from __future__ import annotations

import math

import mujoco
import numpy as np

from twin.cell import cabinet, franka_cell
from twin.scene import SiteCfg
from twin.scripted import Waypoint, WaypointController, yaw_rot
from twin.sim import TwinSim
from twin.tasks.base import ActionCfg, Task, TaskCfg, TerminationCfg, register_task

CABINET_POS = (0.74, 0.0)
CABINET_HALF = (0.14, 0.17)
CABINET_HEIGHT = 0.32
HINGE = "cabinet_door_hinge"
HANDLE = "cabinet_handle"
# The finger pads span TCP-0.009..TCP+0.035 and the palm starts at TCP+0.031: grasp the
# top 2.8 cm of the handle bar so the palm stays above the bar and its top bracket.
GRASP_DEPTH = 0.028


@register_task("open_cabinet")
class OpenCabinet(Task):
    """Open the cabinet door.

    Scene: the default Franka cell with a 28 x 34 x 32 cm cabinet (``cell.cabinet()``) at
    (0.74, 0.0) facing the robot; its door hinges on a vertical axis at its left (+y) edge
    and swings towards the robot; a vertical bar handle sits 4.5 cm from the free edge.

    Randomizations (nominal, per episode): cabinet position uniform in +/-
    ``position_range`` (default 3 cm) per horizontal axis and yaw uniform in +/-
    ``yaw_range`` (default 0.15 rad) about its centre. The cabinet is a static fixture
    compiled into the model, so ``reset`` writes ``sim.model.body_pos``/``body_quat`` of
    the ``cabinet`` body (relative to the pose the model was compiled with, so scene-level
    fixture perturbations compose) and calls ``mujoco.mj_forward``. The door starts closed
    (hinge angle 0), the robot at its home configuration with the gripper open.

    Success: the door hinge angle (joint ``cabinet_door_hinge``, rad, 0 = closed) is at
    least ``open_threshold`` (default 0.65 rad, as in CASHER) and the gripper is
    commanded open.

    Dense reward in [0, 1]: 0.3 * reach (TCP to handle) + 0.7 * opening progress
    (angle / threshold, capped), scaled by 0.99 so that only success gives 1.0.
    Episode length 150 control steps (10 Hz). The site ``cabinet_swing`` (on the cabinet
    body) covers the region the door sweeps through and is kept clear of distractors.
    """

    object_names = ()
    engines = ("mujoco",)  # uses MuJoCo model/data directly
    keepout_sites = ("cabinet_swing",)
    writes_model = True  # reset moves the cabinet in sim.model
    #: door angle (rad) that counts as open
    open_threshold: float = 0.65
    #: nominal reset randomization of the cabinet pose
    position_range: float = 0.03
    yaw_range: float = 0.15

    @classmethod
    def default_cfg(cls) -> TaskCfg:
        scene = franka_cell("open_cabinet")
        body, handle = cabinet(pos=CABINET_POS, half=CABINET_HALF, height=CABINET_HEIGHT)
        scene.bodies.append(body)
        scene.sites.append(handle)
        # Region (cabinet frame) the door sweeps through when opening, plus the cabinet pose
        # randomization: kept clear of distractors.
        hx, hy = CABINET_HALF
        reach = 2 * hy + 0.05
        scene.sites.append(
            SiteCfg(
                name="cabinet_swing",
                body="cabinet",
                pos=(-hx - reach / 2, hy - reach / 2 + 0.02, CABINET_HEIGHT / 2),
                half_extents=(reach / 2, reach / 2 + 0.02, CABINET_HEIGHT / 2),
            )
        )
        return TaskCfg(
            scene=scene,
            actions=ActionCfg(mode="ee_delta"),
            terminations=TerminationCfg(max_steps=150),
            object_xy_range=0.0,
            object_yaw_range=0.0,
        )

    # -- episode -------------------------------------------------------------------------
    def reset(self, sim: TwinSim, rng: np.random.Generator) -> None:
        sim.reset_robot()  # also puts the door back at qpos0 = closed
        nominal = sim.scene.body("cabinet").pose
        d_xy = rng.uniform(-self.position_range, self.position_range, size=2)
        d_yaw = rng.uniform(-self.yaw_range, self.yaw_range)
        bid = sim.model.body("cabinet").id
        sim.model.body_pos[bid] = np.array(nominal.pos) + np.array([d_xy[0], d_xy[1], 0.0])
        q = np.zeros(4)
        mujoco.mju_mulQuat(
            q, np.array([math.cos(d_yaw / 2), 0.0, 0.0, math.sin(d_yaw / 2)]), np.array(nominal.quat, dtype=float)
        )
        sim.model.body_quat[bid] = q
        mujoco.mj_forward(sim.model, sim.data)

    def door_angle(self, sim: TwinSim) -> float:
        return sim.joint_qpos(HINGE)

    def success(self, sim: TwinSim) -> bool:
        return self.door_angle(sim) >= self.open_threshold and sim.gripper_open()

    def reward(self, sim: TwinSim) -> float:
        if self.success(sim):
            return 1.0
        d = float(np.linalg.norm(sim.tcp_pose()[:3] - sim.site_pos(HANDLE)))
        reach = 1.0 - math.tanh(5.0 * d)
        progress = float(np.clip(self.door_angle(sim) / self.open_threshold, 0.0, 1.0))
        return 0.99 * (0.3 * reach + 0.7 * progress)

    def task_state(self, sim: TwinSim) -> np.ndarray:
        """Door angle (1), door angular velocity (1), handle position (3), cabinet pose
        (position 3 + quaternion wxyz 4)."""
        jid = sim.model.joint(HINGE).id
        vel = float(sim.data.qvel[sim.model.jnt_dofadr[jid]])
        return np.concatenate([[self.door_angle(sim), vel], sim.site_pos(HANDLE), sim.body_pose("cabinet")])

    def state_description(self) -> str:
        return (
            "door angle rad (1), door angular velocity rad/s (1), handle position m (3), "
            "cabinet position m (3), cabinet quaternion wxyz (4)"
        )

    def info(self, sim: TwinSim) -> dict[str, float]:
        d = float(np.linalg.norm(sim.tcp_pose()[:3] - sim.site_pos(HANDLE)))
        return {"door_angle": self.door_angle(sim), "tcp_handle_distance": d}

    def expert(self, noise: float = 0.0, rng: np.random.Generator | None = None) -> OpenCabinetExpert:
        ex = OpenCabinetExpert(noise=noise, rng=rng)
        ex.target_angle = max(ex.target_angle, self.open_threshold + 0.3)
        return ex


class OpenCabinetExpert(WaypointController):
    """Top-down grasp of the handle bar's top (fingers closing across the bar, parallel to
    the door), then the TCP follows the handle's arc about the hinge axis while yawing with
    the door, to ``target_angle``; release and back off away from the door."""

    target_angle = 1.0  # rad; ``OpenCabinet.expert`` raises it to open_threshold + 0.3 if needed
    arc_step = 0.1  # rad between arc waypoints

    def plan(self, sim: TwinSim) -> list[Waypoint]:
        m, d = sim.model, sim.data
        door = m.body("cabinet_door").id
        hinge = d.xpos[door].copy()  # door frame origin lies on the hinge line
        door_rot = d.xmat[door].reshape(3, 3)
        theta0 = sim.joint_qpos(HINGE)
        # Door yaw when closed (world): the door frame turns by -theta about z as it opens.
        yaw_closed = math.atan2(door_rot[1, 0], door_rot[0, 0]) + theta0
        sid = m.site(HANDLE).id
        local = m.site_pos[sid].copy()  # handle centre in the door frame
        half_len = float(m.site_size[sid][2])
        grasp_z = hinge[2] + local[2] + half_len - GRASP_DEPTH

        def handle_at(theta: float, z: float) -> np.ndarray:
            c, s = math.cos(yaw_closed - theta), math.sin(yaw_closed - theta)
            xy = hinge[:2] + np.array([c * local[0] - s * local[1], s * local[0] + c * local[1]])
            return np.array([xy[0], xy[1], z])

        def rot_at(theta: float) -> np.ndarray:
            return yaw_rot(yaw_closed - theta)

        wps = [
            Waypoint(handle_at(theta0, grasp_z + 0.08), rot_at(theta0), 1.0, tol=0.01),
            Waypoint(handle_at(theta0, grasp_z), rot_at(theta0), 1.0, tol=0.005, hold=1),
            Waypoint(handle_at(theta0, grasp_z), rot_at(theta0), 0.0, hold=4),
        ]
        n = max(1, int(math.ceil((self.target_angle - theta0) / self.arc_step)))
        for k in range(1, n + 1):
            th = theta0 + (self.target_angle - theta0) * k / n
            wps.append(Waypoint(handle_at(th, grasp_z), rot_at(th), 0.0, tol=0.015))
        th = self.target_angle
        wps.append(Waypoint(handle_at(th, grasp_z), rot_at(th), 1.0, hold=3))
        # Back off along the door normal (away from the door), then up.
        c, s = math.cos(yaw_closed - th), math.sin(yaw_closed - th)
        away = handle_at(th, grasp_z) + 0.06 * np.array([-c, -s, 0.0])
        wps.append(Waypoint(away, rot_at(th), 1.0, tol=0.02))
        wps.append(Waypoint(away + np.array([0.0, 0.0, 0.12]), rot_at(th), 1.0, tol=0.02))
        return wps
