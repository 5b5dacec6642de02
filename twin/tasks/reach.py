"""reach: bring the gripper above the mug. A small task for training-core tests and tutorials."""

from __future__ import annotations

import math

import numpy as np

from twin.scripted import Waypoint, WaypointController
from twin.sim import DOWN, TwinSim
from twin.tasks.base import ActionCfg, Task, TaskCfg, TerminationCfg, register_task
from twin.tasks.mug_to_sink import MUG_HOME, MugToSink

HOVER = 0.06  # metres above the mug's top
RADIUS = 0.03  # success radius (the discrete action lattice is 3 cm)


@register_task("reach")
class Reach(Task):
    """Move the TCP to a point 6 cm above the mug (same scene as mug_to_sink).

    Randomizations (nominal, per episode): mug position uniform in +/- ``object_xy_range``
    (default 10 cm) around (0.50, 0.20), yaw +/- 0.3 rad. Robot at home, gripper open.

    Success: TCP within 3 cm of the hover point. Dense reward: 1 - tanh(5 d) with d the
    TCP-to-hover-point distance; 1.0 at success. Episodes last at most 25 steps.
    """

    object_names = ("mug",)
    keepout_sites = ("sink",)

    @classmethod
    def default_cfg(cls) -> TaskCfg:
        base = MugToSink.default_cfg()
        return TaskCfg(
            scene=base.scene,
            actions=ActionCfg(mode="discrete"),
            terminations=TerminationCfg(max_steps=25),
            object_xy_range=0.10,
            object_yaw_range=0.3,
        )

    def reset(self, sim: TwinSim, rng: np.random.Generator) -> None:
        sim.reset_robot()
        self.place_object(sim, rng, "mug", MUG_HOME)

    def hover_point(self, sim: TwinSim) -> np.ndarray:
        pos = sim.body_pose("mug")[:3]
        return pos + np.array([0.0, 0.0, sim.scene.body("mug").pose.pos[2] + HOVER])

    def distance(self, sim: TwinSim) -> float:
        return float(np.linalg.norm(sim.tcp_pose()[:3] - self.hover_point(sim)))

    def success(self, sim: TwinSim) -> bool:
        return self.distance(sim) < RADIUS

    def reward(self, sim: TwinSim) -> float:
        return 1.0 if self.success(sim) else 1.0 - math.tanh(5.0 * self.distance(sim))

    def info(self, sim: TwinSim) -> dict[str, float]:
        return {"hover_distance": self.distance(sim)}

    def outcome(self, sim: TwinSim) -> tuple[bool, float, dict[str, float]]:
        d = self.distance(sim)
        success = d < RADIUS
        return success, 1.0 if success else 1.0 - math.tanh(5.0 * d), {"hover_distance": d}

    def expert(self, noise: float = 0.0, rng: np.random.Generator | None = None) -> ReachExpert:
        return ReachExpert(noise=noise, rng=rng)


class ReachExpert(WaypointController):
    def plan(self, sim: TwinSim) -> list[Waypoint]:
        task_point = sim.body_pose("mug")[:3] + np.array([0.0, 0.0, sim.scene.body("mug").pose.pos[2] + HOVER])
        return [Waypoint(task_point, DOWN.copy(), 1.0, tol=0.005, hold=5)]
