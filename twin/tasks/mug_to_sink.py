"""mug_to_sink: pick a mug from the table and put it in the sink (CASHER obj2sink)."""

from __future__ import annotations

import math

import numpy as np

from twin.cell import franka_cell, mug, sink
from twin.scripted import Waypoint, WaypointController, yaw_rot
from twin.sim import TwinSim
from twin.tasks.base import ActionCfg, Task, TaskCfg, TerminationCfg, inside, register_task, upright

MUG_HOME = (0.50, 0.20)
SINK_POS = (0.50, -0.27)
# The finger pads span TCP-0.009..TCP+0.035 and the palm starts at TCP+0.031: grasp the
# top 2.8 cm of an object so the palm stays clear.
GRASP_DEPTH = 0.028


@register_task("mug_to_sink")
class MugToSink(Task):
    """Put the mug into the sink.

    Randomizations (nominal, per episode): mug position uniform in a square of
    +/- ``object_xy_range`` (default 5 cm) around (0.50, 0.20); mug yaw uniform in
    +/- ``object_yaw_range`` (default 0.3 rad, handle direction). The robot starts at its
    home configuration with the gripper open.

    Success: the mug's centre is inside the sink's inner volume (site ``sink``), the mug is
    upright (axis within 0.5 rad of vertical), and the gripper is commanded open.

    Dense reward in [0, 1]: 0.25 * reach (TCP to mug) + 0.25 * lifted-or-in-sink
    + 0.5 * transport (mug to sink centre, horizontal), 1.0 at success.
    """

    object_names = ("mug",)
    keepout_sites = ("sink",)

    @classmethod
    def default_cfg(cls) -> TaskCfg:
        scene = franka_cell("mug_to_sink")
        body, site = sink(pos=SINK_POS)
        scene.bodies += [body, mug(pos=MUG_HOME)]
        scene.sites.append(site)
        return TaskCfg(
            scene=scene,
            actions=ActionCfg(mode="ee_delta"),
            terminations=TerminationCfg(max_steps=135),
            object_xy_range=0.05,
            object_yaw_range=0.3,
        )

    def reset(self, sim: TwinSim, rng: np.random.Generator) -> None:
        sim.reset_robot()
        self.place_object(sim, rng, "mug", MUG_HOME)

    def task_state(self, sim: TwinSim) -> np.ndarray:
        return np.concatenate([sim.body_pose("mug"), sim.site_pos("sink")])

    def state_description(self) -> str:
        return "mug position m (3), mug quaternion wxyz (4), sink region centre m (3)"

    def in_sink(self, sim: TwinSim) -> bool:
        site = sim.scene.site("sink")
        return inside(sim.body_pose("mug")[:3], sim.site_pos("sink"), site.half_extents, margin=0.0)

    def success(self, sim: TwinSim) -> bool:
        return MugToSink.outcome(self, sim)[0]

    def reward(self, sim: TwinSim) -> float:
        return MugToSink.outcome(self, sim)[1]

    def info(self, sim: TwinSim) -> dict[str, float]:
        return MugToSink.outcome(self, sim)[2]

    def outcome(self, sim: TwinSim) -> tuple[bool, float, dict[str, float]]:
        """Success, reward and info from one read of the mug, sink and TCP poses."""
        mug = sim.body_pose("mug")
        mug_pos, mug_quat = mug[:3], mug[3:]
        sink_c = sim.site_pos("sink")
        in_sink = inside(mug_pos, sink_c, sim.scene.site("sink").half_extents, margin=0.0)
        d_sink = math.hypot(float(mug_pos[0] - sink_c[0]), float(mug_pos[1] - sink_c[1]))
        info = {"mug_sink_distance": d_sink}
        if in_sink and upright(mug_quat) and sim.gripper_open():
            return True, 1.0, info
        tcp = sim.tcp_pose_mat()[0]
        reach = 1.0 - math.tanh(5.0 * math.dist(tcp, mug_pos))
        lifted = float(mug_pos[2] > sim.scene.body("mug").pose.pos[2] + 0.03 or in_sink)
        transport = (1.0 - math.tanh(4.0 * d_sink)) * lifted
        return False, 0.25 * reach + 0.25 * lifted + 0.5 * transport * 0.99, info

    def expert(self, noise: float = 0.0, rng: np.random.Generator | None = None) -> MugToSinkExpert:
        return MugToSinkExpert(noise=noise, rng=rng)


class MugToSinkExpert(WaypointController):
    """Top-down grasp across the mug body (fingers closing perpendicular to the handle),
    lift, carry over the sink, lower, release, retreat."""

    def plan(self, sim: TwinSim) -> list[Waypoint]:
        pose = sim.body_pose("mug")
        pos, quat = pose[:3], pose[3:]
        w, x, y, z = quat
        handle_yaw = math.atan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z))
        # Hand y axis (finger closing direction) perpendicular to the handle direction.
        grasp_yaw = _wrap_half_pi(handle_yaw)
        rot = yaw_rot(grasp_yaw)
        half_h = sim.scene.body("mug").pose.pos[2]
        grasp_z = pos[2] + half_h - GRASP_DEPTH
        above = np.array([pos[0], pos[1], pos[2] + half_h + 0.12])
        sink_c = sim.site_pos("sink")
        carry_z = 0.30
        place_z = sink_c[2] - sim.scene.site("sink").half_extents[2] + half_h + 0.045
        return [
            Waypoint(above, rot, 1.0, tol=0.01),
            Waypoint(np.array([pos[0], pos[1], grasp_z]), rot, 1.0, tol=0.006, hold=1),
            Waypoint(np.array([pos[0], pos[1], grasp_z]), rot, 0.0, hold=4),
            Waypoint(np.array([pos[0], pos[1], carry_z]), rot, 0.0, tol=0.02),
            Waypoint(np.array([sink_c[0], sink_c[1], carry_z]), rot, 0.0, tol=0.02),
            Waypoint(np.array([sink_c[0], sink_c[1], place_z]), rot, 0.0, tol=0.01, hold=1),
            Waypoint(np.array([sink_c[0], sink_c[1], place_z]), rot, 1.0, hold=3),
            Waypoint(np.array([sink_c[0], sink_c[1], carry_z]), rot, 1.0, tol=0.02),
        ]


def _wrap_half_pi(yaw: float) -> float:
    """Equivalent gripper yaw in [-pi/2, pi/2] (the parallel gripper is symmetric)."""
    while yaw > math.pi / 2:
        yaw -= math.pi
    while yaw < -math.pi / 2:
        yaw += math.pi
    return yaw
