"""push_t: push a T block to a fixed target pose on the table (PushT of gym-pusht / Real-is-Sim).

Units and conventions follow LeRobot's ``gym-pusht`` (``gym_pusht/envs/pusht.py``) so that
state-based policies are interchangeable with it:

* a 512 x 512 **workspace** in the table plane, 1 workspace unit = 1 mm;
* state observation ``[agent_x, agent_y, block_x, block_y, block_angle]`` (workspace units,
  radians in [0, 2 pi)); ``block_x, block_y`` is the T's body origin (the midpoint of the
  outer edge of the bar, as in gym-pusht's ``add_tee``), ``agent_x, agent_y`` the pusher;
* action = target agent position ``[x, y]`` in workspace units (control mode ``pusht_xy``),
  tracked by gym-pusht's agent law (PD, kp = 100, kv = 20, 10 x 0.01 s sub-steps per 10 Hz
  control step), whose position (plus ``ARM_LEAD_S`` of its velocity, to cancel the arm
  servo's lag) is then the robot's TCP target;
* the T of ``add_tee(scale=30, length=4)``: a 120 x 30 bar and a 30 x 90 stem (area 6300);
* goal pose ``[256, 256, pi/4]``; coverage = area(block T ∩ goal T) / area(goal T), computed
  with shapely like gym-pusht; reward ``clip(coverage / 0.95, 0, 1)``; success when
  ``coverage > 0.95``.

Workspace <-> world mapping (:func:`workspace_to_world`, :func:`world_to_workspace`). The
gym-pusht image (x to the right, y *down*, as pygame draws it) is a top-down view of the
table seen from behind the robot: image up is away from the robot (world +x), image right
is the robot's right (world -y). With ``X_FAR = 0.756`` m and ``Y_LEFT = 0.256`` m::

    world_x = X_FAR  - 0.001 * ws_y          ws_x = 1000 * (Y_LEFT - world_y)
    world_y = Y_LEFT - 0.001 * ws_x          ws_y = 1000 * (X_FAR  - world_x)

so the workspace covers x in [0.244, 0.756] m, y in [-0.256, 0.256] m. The map is a
reflection (gym-pusht's y axis is flipped relative to a right-handed top view), so angles
change sign: ``world_yaw = pi/2 - block_angle`` (the T is mirror-symmetric about its stem,
so the MuJoCo body frame is the gym-pusht body frame with x mirrored). The Panda's reach
with a top-down TCP at pusher height is an annulus of about 0.26..0.80 m around its base,
slightly narrower than the square needs: every point is reached to < 1 mm except a strip
at the middle of the near edge (ws_y > 500 for 184 < ws_x < 328, outside gym-pusht's reset
ranges), where the TCP stops short by up to 22 mm at ws_y = 512.

The pusher is the closed gripper: its two finger pads form a 24 x 60 mm (ws 60 wide in x,
24 in y) box from 6 mm to 50 mm above the table, centred on the TCP, which is held at
``PUSHER_Z`` with the top-down orientation ``DOWN`` (gym-pusht's agent is a 30 mm disc).
The T block is a free body of two 30 mm tall boxes (0.2 kg, uniform density so its centre
of mass is the area centroid, 40.7 mm from the origin along the stem; gym-pusht puts its
centre of gravity at 45). Unlike gym-pusht's frictionless, zero-gravity plane, the block
rests on the table with Coulomb friction, so it stops when it is no longer pushed.
"""

from __future__ import annotations

import heapq
import math
import weakref
from dataclasses import dataclass, field

import mujoco
import numpy as np
import shapely
from shapely.geometry import LineString, Point, Polygon
from shapely.ops import unary_union

from twin.cell import franka_cell
from twin.scene import BodyCfg, JointCfg, Pose, SiteCfg, box, yaw_quat
from twin.sim import DOWN, TwinSim
from twin.tasks.base import ActionCfg, Task, TaskCfg, TerminationCfg, register_task

# ---- gym-pusht constants ---------------------------------------------------------------------
WORKSPACE_SIZE = 512.0
UNIT = 0.001  # metres per workspace unit
T_SCALE = 30.0
T_LENGTH = 4.0
GOAL_POSE = np.array([256.0, 256.0, math.pi / 4])
SUCCESS_THRESHOLD = 0.95
AGENT_KP = 100.0
AGENT_KV = 20.0
AGENT_DT = 0.01
AGENT_SUBSTEPS = 10  # gym-pusht: int(1 / (dt * control_hz)) with control_hz = 10
AGENT_RADIUS = 15.0  # gym-pusht's agent disc (for reference; ours is the finger box)
#: gym-pusht's ``block.center_of_gravity`` (body coordinates), used by its reset
T_COG = np.array([0.0, 45.0])

# ---- twin placement --------------------------------------------------------------------------
X_FAR = 0.756
Y_LEFT = 0.256
PUSHER_Z = 0.015  # TCP height: finger pads from 6 mm to 50 mm above the table
#: the TCP is commanded at the agent position plus this much of its velocity (s), which
#: compensates the arm servo's lag (the measured TCP then follows the agent within ~2 mm)
ARM_LEAD_S = 0.06
T_HEIGHT = 0.03
T_MASS = 0.2
#: sliding friction of the T and of the table top under it (MuJoCo uses the larger of the
#: two): a printed T on a smooth table. With much more, pushing the 30 mm tall T near its
#: top edge tips it over and can wedge the fingers against the table.
T_FRICTION = 0.5
TABLE_FRICTION = 0.5
BLOCK = "t_block"
GOAL = "t_goal"
WORKSPACE_SITE = "pusht_workspace"
T_RGBA = (119 / 255, 136 / 255, 153 / 255, 1.0)  # pygame LightSlateGray
GOAL_RGBA = (144 / 255, 238 / 255, 144 / 255, 1.0)  # pygame LightGreen


# ---- mapping ---------------------------------------------------------------------------------


def workspace_to_world(xy, z: float = PUSHER_Z) -> np.ndarray:
    """Workspace point(s) ``[..., 2]`` (units) -> world point(s) ``[..., 3]`` (m) at height z."""
    xy = np.asarray(xy, dtype=float)
    wx = X_FAR - UNIT * xy[..., 1]
    wy = Y_LEFT - UNIT * xy[..., 0]
    return np.stack([wx, wy, np.full_like(wx, z)], axis=-1)


def world_to_workspace(xyz) -> np.ndarray:
    """World point(s) ``[..., 2 or 3]`` (m; z ignored) -> workspace point(s) ``[..., 2]``."""
    xyz = np.asarray(xyz, dtype=float)
    return np.stack([(Y_LEFT - xyz[..., 1]) / UNIT, (X_FAR - xyz[..., 0]) / UNIT], axis=-1)


def workspace_angle_to_yaw(angle: float) -> float:
    """gym-pusht block angle -> world yaw of the MuJoCo T body (the map is a reflection)."""
    return math.pi / 2 - angle


def yaw_to_workspace_angle(yaw: float) -> float:
    """World yaw of the T body -> gym-pusht block angle in [0, 2 pi)."""
    return (math.pi / 2 - yaw) % (2 * math.pi)


def quat_yaw(quat) -> float:
    w, x, y, z = quat
    return math.atan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z))


# ---- T geometry (workspace units) ------------------------------------------------------------


def tee_local_vertices(scale: float = T_SCALE, length: float = T_LENGTH) -> list[np.ndarray]:
    """The two rectangles of gym-pusht's ``add_tee`` (bar, stem) in body coordinates."""
    bar = np.array(
        [
            (-length * scale / 2, scale),
            (length * scale / 2, scale),
            (length * scale / 2, 0.0),
            (-length * scale / 2, 0.0),
        ]
    )
    stem = np.array(
        [(-scale / 2, scale), (-scale / 2, length * scale), (scale / 2, length * scale), (scale / 2, scale)]
    )
    return [bar, stem]


def _rot2(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s], [s, c]])


def tee_vertices(pose) -> list[np.ndarray]:
    """Workspace vertices of the bar and stem for a block pose ``[x, y, angle]``."""
    pose = np.asarray(pose, dtype=float)
    r = _rot2(pose[2])
    return [v @ r.T + pose[:2] for v in tee_local_vertices()]


def tee_keypoints(pose) -> np.ndarray:
    """gym-pusht's 8 keypoints (bar corners, stem corners) for a pose, shape (8, 2)."""
    return np.concatenate(tee_vertices(pose))


def tee_outline(scale: float = T_SCALE, length: float = T_LENGTH) -> np.ndarray:
    """The T's outline (8 vertices, counter-clockwise) in body coordinates: bar ∪ stem."""
    a, b = length * scale / 2, scale / 2
    return np.array(
        [
            (-a, 0.0),
            (a, 0.0),
            (a, scale),
            (b, scale),
            (b, length * scale),
            (-b, length * scale),
            (-b, scale),
            (-a, scale),
        ]
    )


def tee_polygon(pose) -> Polygon:
    """The T as one shapely polygon (the union of bar and stem) in workspace units."""
    pose = np.asarray(pose, dtype=float)
    return Polygon(tee_outline() @ _rot2(pose[2]).T + pose[:2])


def tee_area() -> float:
    return float(tee_polygon([0.0, 0.0, 0.0]).area)


_GOAL_POLY: Polygon | None = None


def coverage(block_pose, goal_pose=GOAL_POSE) -> float:
    """Fraction of the goal T covered by the block T (gym-pusht's ``_get_coverage``)."""
    global _GOAL_POLY
    if goal_pose is GOAL_POSE:
        if _GOAL_POLY is None:
            _GOAL_POLY = tee_polygon(GOAL_POSE)
        goal = _GOAL_POLY
    else:
        goal = tee_polygon(goal_pose)
    return float(goal.intersection(tee_polygon(block_pose)).area / goal.area)


def pusht_reward(cov: float) -> float:
    return float(np.clip(cov / SUCCESS_THRESHOLD, 0.0, 1.0))


def legacy_set_state_pose(x: float, y: float, angle: float) -> np.ndarray:
    """The block pose gym-pusht's ``_set_state`` really produces for state ``(x, y, angle)``.

    It sets the position first (at angle 0) and then the angle, which pymunk applies about
    the centre of gravity ``T_COG``; the body origin therefore ends up at
    ``(x, y) + cog - R(angle) cog`` (gym-pusht keeps this for legacy compatibility).
    """
    origin = np.array([x, y]) + T_COG - _rot2(angle) @ T_COG
    return np.array([origin[0], origin[1], angle % (2 * math.pi)])


def sample_initial_state(rng: np.random.Generator) -> np.ndarray:
    """gym-pusht's reset distribution (gym-pusht 0.1.8, ``PushTEnv.reset``), drawn from a numpy
    Generator in the same order: ``[integers(50, 450), integers(50, 450), integers(100, 400),
    integers(100, 400), uniform(-pi, pi)]`` (agent x, y, block x, y, block angle); the block
    pose then gets gym-pusht's legacy rotation about its centre of gravity
    (:func:`legacy_set_state_pose`). Returns ``[agent_x, agent_y, block_x, block_y, block_angle]``.
    """
    agent = [float(rng.integers(50, 450)), float(rng.integers(50, 450))]
    block = [float(rng.integers(100, 400)), float(rng.integers(100, 400))]
    angle = float(rng.uniform(-math.pi, math.pi))
    return np.concatenate([agent, legacy_set_state_pose(block[0], block[1], angle)])


def gym_pusht_initial_state(seed: int) -> np.ndarray:
    """The initial state gym-pusht 0.1.8's ``reset(seed=seed)`` produces: its draws come from
    gymnasium's ``np_random(seed)`` (checked against gym-pusht itself, tests/test_push_t.py)."""
    from gymnasium.utils.seeding import np_random

    rng, _ = np_random(int(seed))
    return sample_initial_state(rng)


# ---- scene -----------------------------------------------------------------------------------


def tee_body(name: str = BLOCK, pose=(256.0, 300.0, 0.0)) -> BodyCfg:
    """The T block: a free body of two boxes, body frame = gym-pusht's (mirrored in x)."""
    s = T_SCALE * UNIT
    hz = T_HEIGHT / 2
    pos = workspace_to_world(np.asarray(pose[:2]), z=hz)
    return BodyCfg(
        name=name,
        kind="object",
        pose=Pose(pos=tuple(pos), quat=yaw_quat(workspace_angle_to_yaw(pose[2]))),
        joint=JointCfg(name=f"{name}_free", type="free"),
        mass=T_MASS,
        geoms=[
            box(f"{name}_bar", (T_LENGTH * s / 2, s / 2, hz), (0.0, s / 2, 0.0), rgba=T_RGBA, friction=T_FRICTION),
            box(
                f"{name}_stem",
                (s / 2, (T_LENGTH - 1) * s / 2, hz),
                (0.0, s + (T_LENGTH - 1) * s / 2, 0.0),
                rgba=T_RGBA,
                friction=T_FRICTION,
            ),
        ],
    )


def goal_marker(name: str = GOAL, pose=GOAL_POSE) -> BodyCfg:
    """The goal T: a flat, visual-only marker on the workspace mat."""
    s = T_SCALE * UNIT
    t = 0.0004
    pos = workspace_to_world(np.asarray(pose[:2]), z=0.0)
    return BodyCfg(
        name=name,
        kind="fixture",
        pose=Pose(pos=tuple(pos), quat=yaw_quat(workspace_angle_to_yaw(float(pose[2])))),
        geoms=[
            box(f"{name}_bar", (T_LENGTH * s / 2, s / 2, t), (0.0, s / 2, 0.0012), rgba=GOAL_RGBA, collide=False),
            box(
                f"{name}_stem",
                (s / 2, (T_LENGTH - 1) * s / 2, t),
                (0.0, s + (T_LENGTH - 1) * s / 2, 0.0012),
                rgba=GOAL_RGBA,
                collide=False,
            ),
        ],
    )


def workspace_mat(name: str = "pusht_mat") -> BodyCfg:
    """A white 512 x 512 mm visual mat marking the workspace (gym-pusht's background)."""
    half = WORKSPACE_SIZE * UNIT / 2
    centre = workspace_to_world(np.array([256.0, 256.0]), z=0.0)
    edge = 0.003
    geoms = [
        box(f"{name}_sheet", (half, half, 0.0003), (0.0, 0.0, 0.0003), rgba=(0.96, 0.96, 0.96, 1.0), collide=False)
    ]
    for i, (cx, cy, hx, hy) in enumerate(
        [
            (half, 0, edge, half + edge),
            (-half, 0, edge, half + edge),
            (0, half, half + edge, edge),
            (0, -half, half + edge, edge),
        ]
    ):
        geoms.append(
            box(f"{name}_edge{i}", (hx, hy, 0.0004), (cx, cy, 0.0004), rgba=(0.25, 0.25, 0.28, 1.0), collide=False)
        )
    return BodyCfg(name=name, kind="fixture", pose=Pose(pos=tuple(centre)), geoms=geoms)


# ---- the task --------------------------------------------------------------------------------


@dataclass
class AgentState:
    """gym-pusht's kinematic agent, in workspace units: position, velocity, target."""

    pos: np.ndarray
    vel: np.ndarray = field(default_factory=lambda: np.zeros(2))
    target: np.ndarray | None = None


def agent_pd_step(pos: np.ndarray, vel: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One 10 Hz control step of gym-pusht's agent: 10 sub-steps of its PD law."""
    p, v = np.array(pos, dtype=float), np.array(vel, dtype=float)
    t = np.asarray(target, dtype=float)
    for _ in range(AGENT_SUBSTEPS):
        acc = AGENT_KP * (t - p) - AGENT_KV * v
        v = v + acc * AGENT_DT
        p = p + v * AGENT_DT
    return p, v


def _pd_coefficients() -> tuple[float, float, float, float, float, float]:
    """Per-axis linear map of one PD control step: p1 = a_p p + a_v v + a_t T (same for v1)."""
    (p1, v1), (p2, v2), (p3, v3) = (
        agent_pd_step(np.array([1.0]), np.array([0.0]), np.array([0.0])),
        agent_pd_step(np.array([0.0]), np.array([1.0]), np.array([0.0])),
        agent_pd_step(np.array([0.0]), np.array([0.0]), np.array([1.0])),
    )
    return float(p1[0]), float(p2[0]), float(p3[0]), float(v1[0]), float(v2[0]), float(v3[0])


PD_COEF = _pd_coefficients()


def pd_target_for(pos: np.ndarray, vel: np.ndarray, desired: np.ndarray) -> np.ndarray:
    """The target that puts gym-pusht's agent exactly at ``desired`` after one control step."""
    a_p, a_v, a_t = PD_COEF[:3]
    return (np.asarray(desired) - a_p * np.asarray(pos) - a_v * np.asarray(vel)) / a_t


@register_task("push_t")
class PushT(Task):
    """Push the T block onto the goal T (gym-pusht's PushT on the Franka cell).

    Randomizations (nominal, per episode; gym-pusht's reset distribution drawn from the
    episode's numpy Generator, see :func:`sample_initial_state`): agent (TCP) position
    uniform on the integers 50..449 in x and y; block position uniform on 100..399, block
    angle uniform in [-pi, pi), then shifted by gym-pusht's legacy rotation about the
    centre of gravity. Draws whose block would overlap the pusher (finger box + 5 mm) are
    redrawn. The robot starts above the agent position, TCP at ``PUSHER_Z``, top-down,
    gripper closed.

    Success: coverage of the goal T by the block T > 0.95 (gym-pusht's ``is_success``).
    Dense reward: ``clip(coverage / 0.95, 0, 1)`` (gym-pusht's reward).

    ``obs["state"]`` starts with gym-pusht's 5-d observation
    ``[agent_x, agent_y, block_x, block_y, block_angle]`` (:meth:`pusht_obs`); the env
    appends the robot state after it. Actions (mode ``pusht_xy``) are gym-pusht's target
    agent position, tracked by its PD agent law; the agent position is the TCP target
    (set ``agent_pd = False`` to send targets to the TCP directly).
    """

    object_names = (BLOCK,)
    engines = ("mujoco",)  # uses MuJoCo model/data directly
    keepout_sites = (WORKSPACE_SITE,)
    expert_mode = "pusht_xy"
    #: follow gym-pusht's PD agent law (True) or command the target directly (False)
    agent_pd = True

    def __init__(self, cfg: TaskCfg | None = None) -> None:
        super().__init__(cfg)
        self._agents: weakref.WeakKeyDictionary[TwinSim, AgentState] = weakref.WeakKeyDictionary()
        self._q_seed: dict[int, np.ndarray] = {}

    @classmethod
    def default_cfg(cls) -> TaskCfg:
        scene = franka_cell("push_t")
        for g in scene.body("table").geoms:
            if g.name == "table_top":
                g.friction = TABLE_FRICTION
        scene.bodies += [workspace_mat(), goal_marker(), tee_body()]
        half = WORKSPACE_SIZE * UNIT / 2
        centre = workspace_to_world(np.array([256.0, 256.0]), z=0.03)
        scene.sites.append(SiteCfg(name=WORKSPACE_SITE, pos=tuple(centre), half_extents=(half, half, 0.03)))
        return TaskCfg(
            scene=scene,
            actions=ActionCfg(mode="pusht_xy"),
            terminations=TerminationCfg(max_steps=300),
            control_dt=0.1,
            object_xy_range=0.0,
            object_yaw_range=0.0,
        )

    # ---- robot placement ---------------------------------------------------------------------
    def _ik(self, sim: TwinSim, xy: np.ndarray, iters: int = 60) -> np.ndarray:
        key = id(sim.model)
        seed = self._q_seed.get(key)
        if seed is None:
            seed = sim.ik.solve(
                workspace_to_world(np.array([256.0, 256.0])), DOWN, np.array(sim.scene.robot.home_qpos), iters=300
            )
            self._q_seed[key] = seed
        q = sim.ik.solve(workspace_to_world(xy), DOWN, seed, iters=iters)
        return sim.ik.solve(workspace_to_world(xy), DOWN, q, iters=iters)

    def place_robot(self, sim: TwinSim, agent_xy) -> None:
        """Reset the arm with the TCP above ``agent_xy`` (workspace units), gripper closed."""
        xy = np.clip(np.asarray(agent_xy, dtype=float), 0.0, WORKSPACE_SIZE)
        sim.reset_robot(self._ik(sim, xy), gripper_open=False)
        self._agents[sim] = AgentState(pos=xy.copy(), target=xy.copy())

    def set_block_pose(self, sim: TwinSim, pose) -> None:
        """Place the T at a workspace pose ``[x, y, angle]`` (resting on the table)."""
        z = float(sim.scene.body(BLOCK).pose.pos[2])  # the scene's spawn height (T_HEIGHT / 2)
        pos = workspace_to_world(np.asarray(pose[:2], dtype=float), z=z)
        sim.set_free_body_pose(BLOCK, pos, np.array(yaw_quat(workspace_angle_to_yaw(float(pose[2])))))

    def reset_to_state(self, sim: TwinSim, state) -> None:
        """Set agent and block from a gym-pusht state (block pose taken as is, no legacy shift)."""
        state = np.asarray(state, dtype=float)
        self.place_robot(sim, state[:2])
        self.set_block_pose(sim, state[2:5])
        sim.forward()

    def reset(self, sim: TwinSim, rng: np.random.Generator) -> None:
        for _ in range(100):
            state = sample_initial_state(rng)
            if not pusher_box(state[:2], margin=5.0).intersects(tee_polygon(state[2:5])):
                break
        self.reset_to_state(sim, state)

    # ---- actions -----------------------------------------------------------------------------
    def _agent(self, sim: TwinSim) -> AgentState:
        st = self._agents.get(sim)
        if st is None:
            xy = world_to_workspace(sim.target_pos)
            st = AgentState(pos=xy, target=xy.copy())
            self._agents[sim] = st
        return st

    def agent_state(self, sim: TwinSim) -> AgentState:
        """gym-pusht's (virtual) agent driving the TCP: position, velocity, last target."""
        return self._agent(sim)

    def apply_pusht_action(self, sim: TwinSim, action) -> None:
        """Target agent position (workspace units, clipped to [0, 512]) -> TCP command.

        Non-finite entries keep the current target (the env reports them in ``info``).
        """
        st = self._agent(sim)
        a = np.asarray(action, dtype=float).reshape(2)
        a = np.clip(np.where(np.isfinite(a), a, self.current_pusht_target(sim)), 0.0, WORKSPACE_SIZE)
        st.target = a.copy()
        if self.agent_pd:
            st.pos, st.vel = agent_pd_step(st.pos, st.vel, a)
            st.pos = np.clip(st.pos, 0.0, WORKSPACE_SIZE)
        else:
            st.pos, st.vel = a.copy(), np.zeros(2)
        cmd = np.clip(st.pos + ARM_LEAD_S * st.vel, 0.0, WORKSPACE_SIZE)
        sim.command_pose(workspace_to_world(cmd), DOWN, 0.0)

    def current_pusht_target(self, sim: TwinSim) -> np.ndarray:
        """The target in force (workspace units): what a 'hold' action repeats."""
        st = self._agent(sim)
        return (st.target if st.target is not None else st.pos).copy()

    # ---- state / success ---------------------------------------------------------------------
    def block_pose(self, sim: TwinSim) -> np.ndarray:
        """Block pose ``[x, y, angle]`` in workspace units / radians (angle in [0, 2 pi))."""
        pose = sim.body_pose(BLOCK)
        xy = world_to_workspace(pose[:3])
        return np.array([xy[0], xy[1], yaw_to_workspace_angle(quat_yaw(pose[3:]))])

    def agent_pos(self, sim: TwinSim) -> np.ndarray:
        """Measured pusher position: the TCP's xy in workspace units."""
        return world_to_workspace(sim.tcp_pose()[:3])

    def pusht_obs(self, sim: TwinSim) -> np.ndarray:
        """gym-pusht's state observation ``[agent_x, agent_y, block_x, block_y, block_angle]``."""
        return np.concatenate([self.agent_pos(sim), self.block_pose(sim)])

    def task_state(self, sim: TwinSim) -> np.ndarray:
        return self.pusht_obs(sim)

    def state_description(self) -> str:
        return (
            "gym-pusht's agent x, y and block x, y in workspace units 0..512, 1 unit = 1 mm (4), "
            "block angle rad in [0, 2 pi) (1)"
        )

    def coverage(self, sim: TwinSim) -> float:
        return coverage(self.block_pose(sim))

    def success(self, sim: TwinSim) -> bool:
        return self.coverage(sim) > SUCCESS_THRESHOLD

    def reward(self, sim: TwinSim) -> float:
        return pusht_reward(self.coverage(sim))

    def info(self, sim: TwinSim) -> dict[str, float]:
        return {"coverage": self.coverage(sim)}

    def expert(self, noise: float = 0.0, rng: np.random.Generator | None = None) -> PushTExpert:
        return PushTExpert(self, noise=noise, rng=rng)


# ---- pusher geometry -------------------------------------------------------------------------

#: half extents of the closed finger pads' footprint in workspace units (x, y)
PUSHER_HALF = np.array([30.0, 12.0])


def pusher_box(xy, margin: float = 0.0, half=PUSHER_HALF) -> Polygon:
    """The pusher footprint (axis-aligned box around the TCP) in workspace units."""
    hx, hy = np.asarray(half) + margin
    x, y = float(xy[0]), float(xy[1])
    return Polygon([(x - hx, y - hy), (x + hx, y - hy), (x + hx, y + hy), (x - hx, y + hy)])


# ---- the scripted expert ---------------------------------------------------------------------

_PRIMITIVES = {
    int(mujoco.mjtGeom.mjGEOM_BOX),
    int(mujoco.mjtGeom.mjGEOM_SPHERE),
    int(mujoco.mjtGeom.mjGEOM_CAPSULE),
    int(mujoco.mjtGeom.mjGEOM_CYLINDER),
}


def _half_extents(m: mujoco.MjModel, g: int) -> np.ndarray:
    size = m.geom_size[g]
    t = int(m.geom_type[g])
    if t == int(mujoco.mjtGeom.mjGEOM_BOX):
        return size.copy()
    if t == int(mujoco.mjtGeom.mjGEOM_SPHERE):
        return np.full(3, size[0])
    return np.array([size[0], size[0], size[1] + (size[0] if t == int(mujoco.mjtGeom.mjGEOM_CAPSULE) else 0.0)])


def _footprint(m: mujoco.MjModel, g: int) -> np.ndarray:
    """A geom's xy footprint (4 corners of its box / bounding box) in gym-pusht body units."""
    h = _half_extents(m, g)
    rot = np.zeros(9)
    mujoco.mju_quat2Mat(rot, m.geom_quat[g])
    rot = rot.reshape(3, 3)
    corners = np.array([(-1, -1, 0), (1, -1, 0), (1, 1, 0), (-1, 1, 0)], dtype=float) * h
    xy = (corners @ rot.T + m.geom_pos[g])[:, :2]
    if int(m.geom_type[g]) != int(mujoco.mjtGeom.mjGEOM_BOX):  # axis-aligned bounding box
        ext = np.abs(rot) @ h
        xy = np.array([(-1, -1), (1, -1), (1, 1), (-1, 1)]) * ext[:2] + m.geom_pos[g][:2]
    return np.stack([-xy[:, 0], xy[:, 1]], axis=1) / UNIT


class PushModel:
    """A light MuJoCo copy of the pushing problem, built from a twin: the T block (same
    geoms, inertia and contact parameters) on a plane with the table's friction, pushed by
    a servoed copy of the hand's primitive collision geoms placed around the TCP.
    The expert rolls candidate pushes out in it (``mujoco.rollout``) to predict their effect.
    """

    TIMESTEP = 0.004  # twice the twin's: as accurate for these slow pushes, half the cost
    PUSHER_MASS = 2.0
    PUSHER_KP = 2.0e4
    PUSHER_KV = 400.0

    def __init__(self, sim: TwinSim) -> None:
        m, d = sim.model, sim.data
        spec = mujoco.MjSpec()
        spec.option.timestep = max(float(m.opt.timestep), self.TIMESTEP)
        spec.option.integrator = int(m.opt.integrator)
        spec.option.cone = int(m.opt.cone)
        spec.option.impratio = float(m.opt.impratio)
        spec.option.noslip_iterations = int(m.opt.noslip_iterations)
        spec.option.gravity = list(m.opt.gravity)
        table = m.geom("table_top").id
        table_z = float(d.geom_xpos[table][2] + m.geom_size[table][2])
        plane = spec.worldbody.add_geom(
            type=mujoco.mjtGeom.mjGEOM_PLANE, size=[3.0, 3.0, 0.05], pos=[0.5, 0.0, table_z]
        )
        self._copy_contact(plane, m, table)
        bid = m.body(BLOCK).id
        blk = spec.worldbody.add_body(name="block")
        blk.add_freejoint()
        blk.explicitinertial = True
        blk.mass = float(m.body_mass[bid])
        blk.ipos = list(m.body_ipos[bid])
        blk.iquat = list(m.body_iquat[bid])
        blk.inertia = list(m.body_inertia[bid])
        #: the block's footprint: one convex polygon per collision geom, in gym-pusht body
        #: coordinates (units; MuJoCo body x mirrored), from the twin's actual geometry
        self.parts: list[np.ndarray] = []
        for g in range(m.ngeom):
            if m.geom_bodyid[g] != bid or (m.geom_contype[g] == 0 and m.geom_conaffinity[g] == 0):
                continue
            self.parts.append(_footprint(m, g))
            geom = blk.add_geom(
                type=int(m.geom_type[g]), size=list(m.geom_size[g]), pos=list(m.geom_pos[g]), quat=list(m.geom_quat[g])
            )
            geom.mass = 0.0
            self._copy_contact(geom, m, g)
        # Pusher: the hand subtree's primitive collision geoms around the TCP, on two slide
        # joints (world x, y) driven by stiff position servos, so its contacts see its velocity.
        tcp = d.site_xpos[sim.h.tcp_site].copy()
        pusher = spec.worldbody.add_body(name="pusher", pos=[0.0, 0.0, PUSHER_Z])
        pusher.explicitinertial = True
        pusher.mass = self.PUSHER_MASS
        pusher.inertia = [0.01, 0.01, 0.01]
        for axis, name in (([1.0, 0.0, 0.0], "px"), ([0.0, 1.0, 0.0], "py")):
            pusher.add_joint(name=name, type=mujoco.mjtJoint.mjJNT_SLIDE, axis=axis)
            a = spec.add_actuator(name=name, target=name, trntype=mujoco.mjtTrn.mjTRN_JOINT)
            a.gaintype = mujoco.mjtGain.mjGAIN_FIXED
            a.biastype = mujoco.mjtBias.mjBIAS_AFFINE
            a.gainprm[0] = self.PUSHER_KP
            a.biasprm[1] = -self.PUSHER_KP
            a.biasprm[2] = -self.PUSHER_KV
        hand = sim.h.hand_body
        lo_xy, hi_xy = np.full(2, np.inf), np.full(2, -np.inf)
        for g in range(m.ngeom):
            b = m.geom_bodyid[g]
            while b not in (0, hand):
                b = m.body_parentid[b]
            if b != hand or (m.geom_contype[g] == 0 and m.geom_conaffinity[g] == 0):
                continue
            if int(m.geom_type[g]) not in _PRIMITIVES:
                continue
            q = np.zeros(4)
            mujoco.mju_mat2Quat(q, d.geom_xmat[g])
            rel = d.geom_xpos[g] - tcp
            ext = np.abs(d.geom_xmat[g].reshape(3, 3)) @ _half_extents(m, g)
            lo_xy = np.minimum(lo_xy, rel[:2] - ext[:2])
            hi_xy = np.maximum(hi_xy, rel[:2] + ext[:2])
            geom = pusher.add_geom(
                type=int(m.geom_type[g]), size=list(m.geom_size[g]), pos=[rel[0], rel[1], rel[2]], quat=list(q)
            )
            geom.mass = 0.0
            self._copy_contact(geom, m, g)
        #: half extents of the pusher's footprint in workspace units (x, y), around the TCP
        self.pusher_half = (
            np.maximum(np.abs(lo_xy), np.abs(hi_xy))[::-1] / UNIT if np.isfinite(lo_xy).all() else PUSHER_HALF.copy()
        )
        self.model = spec.compile()
        self.datas = [mujoco.MjData(self.model) for _ in range(2)]
        self.block_qadr = int(self.model.jnt_qposadr[self.model.joint(0).id])
        self.pusher_qadr = int(self.model.jnt_qposadr[self.model.joint("px").id])
        self.dt = float(self.model.opt.timestep)
        self.nstate = mujoco.mj_stateSize(self.model, mujoco.mjtState.mjSTATE_FULLPHYSICS)

    @staticmethod
    def _copy_contact(dst, m: mujoco.MjModel, g: int) -> None:
        dst.friction = list(m.geom_friction[g])
        dst.condim = int(m.geom_condim[g])
        dst.solref = list(m.geom_solref[g])
        dst.solimp = list(m.geom_solimp[g])
        dst.priority = int(m.geom_priority[g])
        dst.margin = float(m.geom_margin[g])
        dst.gap = float(m.geom_gap[g])
        dst.solmix = float(m.geom_solmix[g])

    def rollout(self, block_qpos: np.ndarray, paths: np.ndarray) -> np.ndarray:
        """Block qpos [nbatch, nstep, 7] (world) for pusher xy paths [nbatch, nstep, 2] (world),
        one path point per physics step; each pusher starts at rest on its first point."""
        import mujoco.rollout as mjr

        d = self.datas[0]
        mujoco.mj_resetData(self.model, d)
        d.qpos[self.block_qadr : self.block_qadr + 7] = block_qpos
        state0 = np.zeros(self.nstate)
        mujoco.mj_getState(self.model, d, state0, mujoco.mjtState.mjSTATE_FULLPHYSICS)
        init = np.tile(state0, (paths.shape[0], 1))
        init[:, 1 + self.pusher_qadr : 1 + self.pusher_qadr + 2] = paths[:, 0]
        # servo targets lead the path by the servo's velocity lag kv / kp
        vel = np.diff(paths, axis=1, prepend=paths[:, :1]) / self.dt
        ctrl = paths + vel * (self.PUSHER_KV / self.PUSHER_KP)
        # zero solver warm-start for every rollout: results do not depend on thread scheduling
        state, _ = mjr.rollout(
            self.model,
            self.datas,
            init,
            ctrl,
            control_spec=mujoco.mjtState.mjSTATE_CTRL,
            initial_warmstart=np.zeros((paths.shape[0], self.model.nv)),
        )
        q0 = 1 + self.block_qadr
        return state[:, :, q0 : q0 + 7]


def _unit(v: np.ndarray) -> np.ndarray:
    n = float(np.linalg.norm(v))
    return v / n if n > 1e-12 else v


def block_pose_from_qpos(qpos: np.ndarray) -> np.ndarray:
    """Workspace poses [..., 3] from free-joint qpos [..., 7] (world)."""
    qpos = np.asarray(qpos)
    xy = world_to_workspace(qpos[..., :3])
    w, x, y, z = qpos[..., 3], qpos[..., 4], qpos[..., 5], qpos[..., 6]
    yaw = np.arctan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z))
    return np.concatenate([xy, ((np.pi / 2 - yaw) % (2 * np.pi))[..., None]], axis=-1)


_LOCAL_KP = np.concatenate(tee_local_vertices())


def keypoint_error(poses: np.ndarray, goal=GOAL_POSE) -> np.ndarray:
    """Mean distance (units) of the T's 8 keypoints to the goal's, for poses [..., 3]."""
    poses = np.asarray(poses, dtype=float)
    c, s = np.cos(poses[..., 2]), np.sin(poses[..., 2])
    kx = c[..., None] * _LOCAL_KP[:, 0] - s[..., None] * _LOCAL_KP[:, 1] + poses[..., 0:1]
    ky = s[..., None] * _LOCAL_KP[:, 0] + c[..., None] * _LOCAL_KP[:, 1] + poses[..., 1:2]
    g = tee_keypoints(goal)
    return np.mean(np.hypot(kx - g[:, 0], ky - g[:, 1]), axis=-1)


def _place(parts: list[np.ndarray], pose) -> list[np.ndarray]:
    pose = np.asarray(pose, dtype=float)
    r = _rot2(pose[2])
    return [v @ r.T + pose[:2] for v in parts]


def _outline(parts: list[np.ndarray], pose) -> Polygon:
    """The block's outline (union of its convex parts) for a pose, counter-clockwise."""
    poly = unary_union([Polygon(v) for v in _place(parts, pose)])
    if poly.geom_type != "Polygon":  # parts that only nearly touch
        poly = unary_union([Polygon(v).buffer(0.01, join_style=2) for v in _place(parts, pose)])
    if poly.geom_type != "Polygon":
        poly = max(poly.geoms, key=lambda g: g.area)
    return shapely.geometry.polygon.orient(shapely.Polygon(poly.exterior), 1.0)


def _c_obstacle(
    pose, clearance: float, parts: list[np.ndarray] | None = None, half: np.ndarray = PUSHER_HALF
) -> Polygon:
    """Pusher-centre positions where the pusher box would touch the block (+ clearance)."""
    hx, hy = np.asarray(half) + clearance
    box_pts = np.array([(-hx, -hy), (hx, -hy), (hx, hy), (-hx, hy)])
    hulls = []
    for v in _place(tee_local_vertices() if parts is None else parts, pose):
        pts = (v[:, None, :] + box_pts[None, :, :]).reshape(-1, 2)
        hulls.append(shapely.MultiPoint(pts).convex_hull)
    return unary_union(hulls)


def plan_transit(
    start: np.ndarray, goal: np.ndarray, obstacle: Polygon, lo: float = 0.0, hi: float = WORKSPACE_SIZE
) -> list[np.ndarray] | None:
    """Shortest polyline from start to goal around ``obstacle`` (visibility graph over its
    outward-offset vertices), staying inside [lo, hi]^2; None if there is none."""
    from shapely.prepared import prep

    pobs = prep(obstacle)

    def free(a, b) -> bool:
        return not pobs.intersects(LineString([a, b])) if np.linalg.norm(a - b) > 1e-9 else True

    if free(start, goal):
        return [goal]
    ring = obstacle.buffer(2.0, join_style=2).exterior.coords[:-1]
    nodes = [np.asarray(start, float), np.asarray(goal, float)]
    nodes += [np.array(p) for p in ring if lo <= p[0] <= hi and lo <= p[1] <= hi]
    n = len(nodes)
    dist = [np.inf] * n
    prev = [-1] * n
    dist[0] = 0.0
    heap = [(0.0, 0)]
    done = [False] * n
    while heap:
        dcur, i = heapq.heappop(heap)
        if done[i]:
            continue
        done[i] = True
        if i == 1:
            break
        for j in range(n):
            if done[j] or j == i:
                continue
            dd = dcur + float(np.linalg.norm(nodes[i] - nodes[j]))
            if dd < dist[j] and free(nodes[i], nodes[j]):
                dist[j] = dd
                prev[j] = i
                heapq.heappush(heap, (dd, j))
    if not np.isfinite(dist[1]):
        return None
    path = []
    i = 1
    while i != 0:
        path.append(nodes[i])
        i = prev[i]
    return path[::-1]


def _exit_point(p: np.ndarray, d: np.ndarray, obstacle: Polygon, margin: float = 1.0) -> np.ndarray | None:
    """The first point on the ray from ``p`` along ``d`` that is outside ``obstacle`` (+ margin)."""
    ray = LineString([p, p + d * 600.0])
    outside = ray.difference(obstacle)
    if outside.is_empty:
        return None
    s = min(float(np.dot(np.array(g.coords[0]) - p, d)) for g in getattr(outside, "geoms", [outside]))
    return p + d * (max(s, 0.0) + margin)


def _path_length(start: np.ndarray, path: list[np.ndarray]) -> float:
    pts = [start] + list(path)
    return float(sum(np.linalg.norm(b - a) for a, b in zip(pts[:-1], pts[1:])))


@dataclass
class Push:
    start: np.ndarray  # pusher start (workspace)
    end: np.ndarray  # pusher end
    direction: np.ndarray
    predicted: np.ndarray  # predicted block pose after the push
    gain: float  # predicted keypoint-error reduction


class PushTExpert:
    """Closed-loop pushing expert in gym-pusht's action space (``pusht_xy``).

    Repeats: (1) sample candidate pushes — contact points every ~15 units along the T's
    outline (its real footprint, read from the twin), push directions into the T (normal and
    +/- 35 degrees), from a start point just clear of it; (2) predict each with a light
    MuJoCo model of the block and the finger pads (:class:`PushModel`, batched
    ``mujoco.rollout``), reading the block pose at every 2 units of push depth; (3) pick
    the push with the best predicted reduction of the keypoint error to the goal per control
    step spent, counting the path to its start; (4) move the pusher there around the T
    (visibility graph on the T's configuration-space obstacle with clearance, so it does not
    touch it on the way) and push; (5) re-plan from the block's new pose (or as soon as the
    T moves while the pusher is on its way). When no push helps it looks harder (more
    directions, denser contacts), then backs away and tries again. Targets are computed
    through gym-pusht's PD agent law so the agent is exactly on the planned path after every
    control step. ``noise`` (m) adds Gaussian noise of that standard deviation to every
    target.
    """

    transit_speed = 25.0  # units per control step
    push_speed = 10.0
    rollout_speed = 10.0  # pushes are predicted at this speed (units per control step)
    clearance = 9.0  # units kept between the pusher and the T on the way to a push
    corner_tol = 10.0  # the TCP must be this close to a path corner before turning
    end_tol = 2.0  # ... and this close to the end of a push before re-planning
    max_depth = 50.0
    directions_deg = (-35.0, 0.0, 35.0)
    more_directions_deg = (-60.0, -45.0, -20.0, -10.0, 10.0, 20.0, 45.0, 60.0)
    point_spacing = 15.0
    GAP = 3.0

    def __init__(self, task: PushT, noise: float = 0.0, rng: np.random.Generator | None = None) -> None:
        self.task = task
        self.noise = noise
        self.rng = rng if rng is not None else np.random.default_rng(0)
        self.model: PushModel | None = None
        #: planned motion: (point, speed in units per step, TCP tolerance, kind), kind one of
        #: "transit", "start" (of a push), "push" (its end), "retreat"
        self.queue: list[tuple[np.ndarray, float, float, str]] = []
        self._plan_pose = np.zeros(3)
        self.plans = 0
        self.stuck = 0
        self._wait = 0
        self.last_push: Push | None = None

    # ---- controller API ----------------------------------------------------------------------
    def reset(self, sim: TwinSim) -> None:
        self.model = PushModel(sim)  # ~2 ms; reads the twin's (possibly perturbed) parameters
        self.queue = []
        self.plans = 0
        self.stuck = 0
        self.last_push = None
        self._wait = 0

    def act(self, sim: TwinSim) -> np.ndarray:
        if self.model is None:
            self.reset(sim)
        st = self.task.agent_state(sim)
        if self.task.success(sim):
            self.queue = []
            return self._target_for(st, st.pos)
        if self.queue and self.queue[0][3] in ("transit", "start"):
            moved = self.task.block_pose(sim) - self._plan_pose
            if np.hypot(moved[0], moved[1]) > 3.0 or abs(math.remainder(moved[2], 2 * math.pi)) > 0.05:
                self.queue = []  # the T moved while we were on the way: plan again
        if not self.queue:
            self._plan(sim)
        if not self.queue:
            return self._target_for(st, st.pos)
        point, speed, tol, kind = self.queue[0]
        delta = point - st.pos
        dist = float(np.linalg.norm(delta))
        if dist <= speed:
            desired = point
            # wait at corners, push starts and ends until the real TCP is near enough; at the
            # start of a push only its offset across the push line matters (the approach is
            # along the push direction, so the push continues the same straight line)
            err = self.task.agent_pos(sim) - point
            if kind == "start" and len(self.queue) > 1:
                d = _unit(self.queue[1][0] - point)
                err = err - d * float(np.dot(err, d))
            if np.linalg.norm(err) < tol or self._wait >= 5:
                self.queue.pop(0)
                self._wait = 0
            else:
                self._wait += 1
        else:
            desired = st.pos + delta * (speed / dist)
        return self._target_for(st, desired)

    def _target_for(self, st: AgentState, desired: np.ndarray) -> np.ndarray:
        if self.task.agent_pd:
            t = pd_target_for(st.pos, st.vel, desired)
        else:
            t = np.asarray(desired, dtype=float)
        if self.noise > 0:
            t = t + self.rng.normal(0.0, self.noise / UNIT, size=2)
        return np.clip(t, 0.0, WORKSPACE_SIZE).astype(np.float32)

    # ---- planning ----------------------------------------------------------------------------
    @property
    def parts(self) -> list[np.ndarray]:
        return self.model.parts if self.model is not None else tee_local_vertices()

    def _cobs(self, pose: np.ndarray, clearance: float) -> Polygon:
        half = self.model.pusher_half if self.model is not None else PUSHER_HALF
        return _c_obstacle(pose, clearance, self.parts, half)

    def candidates(
        self, pose: np.ndarray, directions=None, spacing: float | None = None
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """(start, direction) of candidate pushes for a block pose: the pusher comes from far
        along ``direction`` towards a point of the T's outline; ``start`` is ``GAP`` units
        before its first contact with the T."""
        poly = _outline(self.parts, pose)
        cobs = self._cobs(pose, 0.0)
        coords = np.array(poly.exterior.coords)
        out = []
        seen: set[tuple[int, int, int]] = set()
        for a, b in zip(coords[:-1], coords[1:]):
            edge = b - a
            length = float(np.linalg.norm(edge))
            if length < 1e-6:
                continue
            normal = np.array([edge[1], -edge[0]]) / length  # outward for a CCW ring
            n_pts = max(1, int(round(length / (spacing or self.point_spacing))))
            for i in range(n_pts):
                c = a + edge * ((i + 0.5) / n_pts)
                for ang in directions or self.directions_deg:
                    d = _rot2(math.radians(ang)) @ (-normal)
                    far = c - d * 400.0
                    hit = LineString([far, c]).intersection(cobs)
                    if hit.is_empty:
                        continue
                    dist = float(shapely.line_locate_point(LineString([far, c]), hit.representative_point()))
                    for g in getattr(hit, "geoms", [hit]):
                        for q in np.asarray(g.coords):
                            dist = min(dist, float(np.dot(q - far, d)))
                    start = far + d * (dist - self.GAP)
                    key = (
                        int(round(start[0] / 3)),
                        int(round(start[1] / 3)),
                        int(round(math.degrees(math.atan2(d[1], d[0])) / 10)),
                    )
                    if key in seen:
                        continue
                    seen.add(key)
                    if not (0.0 <= start[0] <= WORKSPACE_SIZE and 0.0 <= start[1] <= WORKSPACE_SIZE):
                        continue
                    out.append((start, d))
        return out

    def _plan(self, sim: TwinSim) -> None:
        self.plans += 1
        st = self.task.agent_state(sim)
        pos = st.pos.copy()
        adr = sim._free_adr[BLOCK]
        qpos = sim.data.qpos[adr : adr + 7].copy()
        pose = block_pose_from_qpos(qpos)
        best = self._search(qpos, pose, pos, self.directions_deg, self.point_spacing)
        if best is None:  # nothing helps: look harder (more directions, denser contacts)
            best = self._search(qpos, pose, pos, self.more_directions_deg, self.point_spacing / 2)
        if best is None:
            # still nothing (e.g. the pusher is boxed in): back away towards the middle of the
            # workspace and plan again from there
            self.stuck += 1
            obstacle = self._cobs(pose, self.clearance)
            out = self._escape(pos, pose, obstacle)
            here = out[-1] if out else pos
            centre = np.array([WORKSPACE_SIZE / 2, WORKSPACE_SIZE / 2])
            away = np.clip(here + _unit(centre - here) * 40.0, 0.0, WORKSPACE_SIZE)
            path = plan_transit(here, away, obstacle)
            out += path if path is not None else [away]
            self.queue = [(p, self.transit_speed, 5.0, "retreat") for p in out]
            return
        _, full, end, d, pred, g = best
        self.last_push = Push(start=full[-1], end=end, direction=d, predicted=pred, gain=g)
        self._plan_pose = pose.copy()
        self.queue = [(p, self.transit_speed, self.corner_tol, "transit") for p in full[:-1]]
        self.queue.append((full[-1], self.transit_speed, 2.0, "start"))
        self.queue.append((end, self.push_speed, self.end_tol, "push"))

    def _search(self, qpos: np.ndarray, pose: np.ndarray, pos: np.ndarray, directions, spacing: float):
        """The best push (score, path to its start, end, direction, predicted pose, gain)."""
        model = self.model
        assert model is not None
        err0 = float(keypoint_error(pose))
        cands = self.candidates(pose, directions, spacing)
        if not cands:
            return None
        # roll every push out to GAP + max_depth units at rollout_speed (units per control step)
        step_units = self.rollout_speed * model.dt / self.task.cfg.control_dt
        travel = self.GAP + self.max_depth
        nstep = int(math.ceil(travel / step_units))
        k = np.minimum(np.arange(nstep) * step_units, travel)
        starts = np.array([c[0] for c in cands])
        dirs = np.array([c[1] for c in cands])
        ws = starts[:, None, :] + dirs[:, None, :] * k[None, :, None]
        qs = model.rollout(qpos, workspace_to_world(ws)[..., :2])
        # block pose when the pusher has pushed to depth k (it stops there; the block, slow,
        # slides < 1 unit further), every ~2 units of depth
        idx = np.arange(int(round((self.GAP + 1.0) / step_units)), nstep, max(1, int(round(2.0 / step_units))))
        poses = block_pose_from_qpos(qs[:, idx])  # [n, m, 3]
        gain = err0 - keypoint_error(poses)
        push_steps = k[idx][None, :] / self.push_speed + 1.0
        approx_transit = np.linalg.norm(starts - pos, axis=1)[:, None] / self.transit_speed
        score = gain / (push_steps + approx_transit + 3.0)
        best = None
        order = np.argsort(-score.max(axis=1))[:10]
        obstacle = self._cobs(pose, self.clearance)
        escape = self._escape(pos, pose, obstacle)
        here = escape[-1] if escape else pos
        for i in order:
            j = int(np.argmax(score[i]))
            if gain[i, j] <= 0.0:
                continue
            start, d = cands[i]
            # approach along the push line from just outside the clearance zone
            approach = _exit_point(start, -d, obstacle)
            if approach is None or not ((approach >= 0.0) & (approach <= WORKSPACE_SIZE)).all():
                continue
            path = plan_transit(here, approach, obstacle)
            if path is None:
                continue
            full = escape + path + [start]
            steps = _path_length(pos, full) / self.transit_speed + push_steps[0, j] + 3.0
            sc = gain[i, j] / steps
            if best is None or sc > best[0]:
                best = (sc, full, start + d * k[idx[j]], d, poses[i, j], gain[i, j])
        return best

    def _escape(self, pos: np.ndarray, pose: np.ndarray, obstacle: Polygon) -> list[np.ndarray]:
        """A waypoint that takes the pusher out of the clearance zone (after a push it touches
        the T): the nearest exit along a straight line that does not cross the T, preferring
        to back off along the last push."""
        if not obstacle.contains(Point(pos)):
            return []
        solid = self._cobs(pose, 0.0)
        dirs = [np.array([math.cos(a), math.sin(a)]) for a in np.linspace(0.0, 2 * math.pi, 24, endpoint=False)]
        if self.last_push is not None:
            dirs.insert(0, -self.last_push.direction)
        best = None
        for i, d in enumerate(dirs):
            out = _exit_point(pos, d, obstacle)
            if out is None or not ((out >= 0.0) & (out <= WORKSPACE_SIZE)).all():
                continue
            if LineString([pos, out]).intersection(solid).length > 1.0:
                continue  # would drag the pusher through (and the T along)
            length = float(np.linalg.norm(out - pos))
            if i == 0 and self.last_push is not None:
                length *= 0.7
            if best is None or length < best[0]:
                best = (length, out)
        return [] if best is None else [best[1]]
