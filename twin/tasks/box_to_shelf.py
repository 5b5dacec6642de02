"""box_to_shelf: pick a box from the table and put it on a shelf board (CASHER obj2cabinet)."""

from __future__ import annotations

import math

import numpy as np

from twin.cell import box_object, franka_cell, shelf
from twin.scripted import Waypoint, WaypointController, yaw_rot
from twin.sim import TwinSim
from twin.tasks.base import ActionCfg, Task, TaskCfg, TerminationCfg, inside, register_task, upright

BOX_HOME = (0.45, 0.20)
BOX_HALF = (0.025, 0.025, 0.04)
SHELF_POS = (0.50, -0.28)
SHELF_HEIGHT = 0.15
SHELF_HALF = (0.12, 0.16)
# The finger pads span TCP-0.009..TCP+0.035 and the palm starts at TCP+0.031: grasp the
# top 2.8 cm of the box so the palm stays clear of it.
GRASP_DEPTH = 0.028


@register_task("box_to_shelf")
class BoxToShelf(Task):
    """Put the box on the shelf board.

    Scene: the default Franka cell with an open shelf (board 0.15 m above the table, top
    reachable top-down, back panel on the far side) at (0.50, -0.28) and a 5 x 5 x 8 cm box
    standing on the table.

    Randomizations (nominal, per episode): box position uniform in a square of
    +/- ``object_xy_range`` (default 5 cm) around (0.45, 0.20); box yaw uniform in
    +/- ``object_yaw_range`` (default 0.3 rad). The robot starts at its home
    configuration with the gripper open; the shelf is fixed.

    Success: the box's centre is inside the region above the shelf board (site ``shelf``:
    the board top, 10 cm high, inset 1 cm from the board's edges), the box is upright
    (its axis within 0.5 rad of vertical), and the gripper is commanded open.

    Dense reward in [0, 1]: 0.25 * reach (TCP to box) + 0.25 * lifted-or-on-shelf
    + 0.5 * transport (box to shelf centre, horizontal, only while lifted), 1.0 at success.
    Episode length 150 control steps (10 Hz), as in CASHER.
    """

    object_names = ("box",)
    keepout_sites = ("shelf",)

    @classmethod
    def default_cfg(cls) -> TaskCfg:
        scene = franka_cell("box_to_shelf")
        body, site = shelf(pos=SHELF_POS, height=SHELF_HEIGHT, half=SHELF_HALF)
        scene.bodies += [body, box_object(pos=BOX_HOME, half=BOX_HALF)]
        scene.sites.append(site)
        return TaskCfg(
            scene=scene,
            actions=ActionCfg(mode="ee_delta"),
            terminations=TerminationCfg(max_steps=150),
            object_xy_range=0.05,
            object_yaw_range=0.3,
        )

    def reset(self, sim: TwinSim, rng: np.random.Generator) -> None:
        sim.reset_robot()
        self.place_object(sim, rng, "box", BOX_HOME)

    def task_state(self, sim: TwinSim) -> np.ndarray:
        """Box pose (position 3 + quaternion wxyz 4) and the shelf region centre (3)."""
        return np.concatenate([sim.body_pose("box"), sim.site_pos("shelf")])

    def state_description(self) -> str:
        return "box position m (3), box quaternion wxyz (4), shelf region centre m (3)"

    def on_shelf(self, sim: TwinSim) -> bool:
        site = sim.scene.site("shelf")
        return inside(sim.body_pose("box")[:3], sim.site_pos("shelf"), np.array(site.half_extents))

    def success(self, sim: TwinSim) -> bool:
        pose = sim.body_pose("box")
        return self.on_shelf(sim) and upright(pose[3:]) and sim.gripper_open()

    def reward(self, sim: TwinSim) -> float:
        if self.success(sim):
            return 1.0
        box_pos = sim.body_pose("box")[:3]
        tcp = sim.tcp_pose()[:3]
        reach = 1.0 - math.tanh(5.0 * float(np.linalg.norm(tcp - box_pos)))
        lifted = float(box_pos[2] > sim.scene.body("box").pose.pos[2] + 0.03 or self.on_shelf(sim))
        d_shelf = float(np.linalg.norm((box_pos - sim.site_pos("shelf"))[:2]))
        transport = (1.0 - math.tanh(4.0 * d_shelf)) * lifted
        return 0.25 * reach + 0.25 * lifted + 0.5 * transport * 0.99

    def info(self, sim: TwinSim) -> dict[str, float]:
        box_pos = sim.body_pose("box")[:3]
        d = float(np.linalg.norm((box_pos - sim.site_pos("shelf"))[:2]))
        return {"box_shelf_distance": d, "box_height": float(box_pos[2])}

    def expert(self, noise: float = 0.0, rng: np.random.Generator | None = None) -> BoxToShelfExpert:
        return BoxToShelfExpert(noise=noise, rng=rng)


class BoxToShelfExpert(WaypointController):
    """Top-down grasp of the box's top (fingers closing across two faces), lift above the
    board, carry over the shelf, lower onto the board, release, retreat upwards."""

    def plan(self, sim: TwinSim) -> list[Waypoint]:
        pose = sim.body_pose("box")
        pos, (w, x, y, z) = pose[:3], pose[3:]
        box_yaw = math.atan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z))
        rot = yaw_rot(_wrap_quarter_pi(box_yaw))
        half_h = sim.scene.body("box").pose.pos[2]
        grasp_z = pos[2] + half_h - GRASP_DEPTH
        shelf_c = sim.site_pos("shelf")
        board_z = shelf_c[2] - sim.scene.site("shelf").half_extents[2]
        carry_z = board_z + 2 * half_h + 0.08
        # TCP height with the box bottom 8 mm above the board (it drops the rest).
        place_z = board_z + 2 * half_h - GRASP_DEPTH + 0.008
        above = np.array([pos[0], pos[1], pos[2] + half_h + 0.10])
        return [
            Waypoint(above, rot, 1.0, tol=0.01),
            Waypoint(np.array([pos[0], pos[1], grasp_z]), rot, 1.0, tol=0.006, hold=1),
            Waypoint(np.array([pos[0], pos[1], grasp_z]), rot, 0.0, hold=4),
            Waypoint(np.array([pos[0], pos[1], carry_z]), rot, 0.0, tol=0.02),
            Waypoint(np.array([shelf_c[0], shelf_c[1], carry_z]), rot, 0.0, tol=0.02),
            Waypoint(np.array([shelf_c[0], shelf_c[1], place_z]), rot, 0.0, tol=0.008, hold=1),
            Waypoint(np.array([shelf_c[0], shelf_c[1], place_z]), rot, 1.0, hold=3),
            Waypoint(np.array([shelf_c[0], shelf_c[1], carry_z]), rot, 1.0, tol=0.02),
        ]


def _wrap_quarter_pi(yaw: float) -> float:
    """Equivalent gripper yaw in [-pi/4, pi/4] for a box with a square footprint."""
    return (yaw + math.pi / 4) % (math.pi / 2) - math.pi / 4
