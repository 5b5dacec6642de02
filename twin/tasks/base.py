"""Task configs (Isaac Lab style: scene, observations, actions, events, terminations in one
place) and the task registry (ManiSkill style: ``@register_task("name")``)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from twin.scene import SceneCfg, yaw_quat

if TYPE_CHECKING:
    from twin.sim import TwinSim

ControlMode = Literal["joint_pos", "ee_delta", "ee_pose", "discrete", "pusht_xy"]


class TaskError(ValueError):
    """Unknown task or invalid task configuration."""


@dataclass
class ObservationCfg:
    """Which observation groups the env returns.

    ``state``: privileged state (task objects + robot). ``proprio``: joint positions (7),
    gripper width (1), TCP position (3) and quaternion (4). Images come from ``cameras``
    (all scene cameras when empty) at ``image_size`` (width, height; the camera's own when
    None). ``point_cloud``: coloured points (x, y, z, r, g, b) fused from those cameras,
    cropped to the scene workspace and resampled to ``num_points``.
    ``splat_cameras``: cameras whose RGB/depth (and share of the point cloud) are rendered
    from Gaussian splats of the scene (sampled from its meshes, bound to the bodies;
    ``twin.splats``) instead of MuJoCo's renderer, on ``splat_backend`` ("auto": gsplat on
    CUDA, else the CPU rasterizer), with ``splat_count`` Gaussians.
    """

    state: bool = True
    proprio: bool = True
    #: ``effort``: the 7 arm joints' torques (N m; the motor torque with the links' gravity load,
    #: what a Franka's ``tau_J`` reports, averaged over the control step), logged by recorders
    #: so calibration can weigh what the arm carries
    effort: bool = False
    rgb: bool = False
    depth: bool = False
    point_cloud: bool = False
    cameras: tuple[str, ...] = ()
    image_size: tuple[int, int] | None = None
    num_points: int = 2048
    noise_std: float = 0.0
    splat_cameras: tuple[str, ...] = ()
    splat_backend: str = "auto"
    splat_count: int = 20_000


@dataclass
class ActionCfg:
    """Control mode and scaling.

    - ``joint_pos``: 7 absolute joint targets (rad) + gripper in [0, 1] (1 = open).
    - ``ee_delta``: [dx, dy, dz, drx, dry, drz, gripper] in [-1, 1], scaled by
      ``max_delta_pos`` (m) and ``max_delta_rot`` (rad); gripper > 0 opens.
    - ``ee_pose``: absolute TCP target [x, y, z, qw, qx, qy, qz, gripper] (world frame).
    - ``discrete``: CASHER's 14 actions: 0-5 = +x, -x, +y, -y, +z, -z by ``pos_step``;
      6-11 = +rx, -rx, +ry, -ry, +rz, -rz by ``rot_step``; 12 = open; 13 = close.
    - ``pusht_xy``: target agent position [x, y] in gym-pusht workspace units (0..512).
    """

    mode: ControlMode = "ee_delta"
    pos_step: float = 0.03
    rot_step: float = 0.02
    max_delta_pos: float = 0.05
    max_delta_rot: float = 0.2


@dataclass
class TerminationCfg:
    max_steps: int = 150
    terminate_on_success: bool = True


@dataclass
class TaskCfg:
    scene: SceneCfg
    observations: ObservationCfg = field(default_factory=ObservationCfg)
    actions: ActionCfg = field(default_factory=ActionCfg)
    terminations: TerminationCfg = field(default_factory=TerminationCfg)
    control_dt: float = 0.1
    # Nominal reset randomization ("events"): tasks read what they need from here.
    object_xy_range: float = 0.05
    object_yaw_range: float = 0.3
    perturbation_suite: str = "default"

    def replace(self, **changes: object) -> TaskCfg:
        return dataclasses.replace(self, **changes)


class Task:
    """Base class. Subclasses define the scene, reset randomization, success and reward.

    A task never owns the sim: every method takes the ``TwinSim`` it acts on.
    """

    name: str = ""
    #: body names whose poses go into the privileged state, in order
    object_names: tuple[str, ...] = ()
    #: sites kept clear of distractor objects
    keepout_sites: tuple[str, ...] = ()
    #: Physics engines the task runs on (twin.env.ENGINES): its reset, success, reward and
    #: expert use only the engine-neutral sim interface (body/site poses, TCP, commands)
    engines: tuple[str, ...] = ("mujoco", "pybullet")
    #: True when ``reset`` (or anything else) writes into ``sim.model``: such a task's envs each
    #: keep a model of their own; the others share one compiled model per scene in a process
    writes_model: bool = False

    def __init__(self, cfg: TaskCfg | None = None) -> None:
        self.cfg = cfg if cfg is not None else self.default_cfg()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # A subclass that redefines success/reward/info but inherits a parent's shared
        # ``outcome`` would have the env ignore its override: give it the generic one.
        own = cls.__dict__
        if "outcome" not in own and any(k in own for k in ("success", "reward", "info")):
            cls.outcome = Task.outcome  # type: ignore[method-assign]

    @classmethod
    def default_cfg(cls) -> TaskCfg:
        raise NotImplementedError

    # -- episode -------------------------------------------------------------------------
    def reset(self, sim: TwinSim, rng: np.random.Generator) -> None:
        """Place the robot and objects for a new episode (nominal randomization)."""
        raise NotImplementedError

    def place_object(self, sim: TwinSim, rng: np.random.Generator, name: str, home_xy: tuple[float, float]) -> None:
        """Put free body ``name`` at ``home_xy`` + uniform(+/- ``object_xy_range``) with yaw
        uniform(+/- ``object_yaw_range``), at its resting height from the scene."""
        r = self.cfg.object_xy_range
        xy = np.asarray(home_xy, dtype=float) + rng.uniform(-r, r, size=2)
        yaw = rng.uniform(-self.cfg.object_yaw_range, self.cfg.object_yaw_range)
        z = sim.scene.body(name).pose.pos[2]
        sim.set_free_body_pose(name, np.array([xy[0], xy[1], z]), np.array(yaw_quat(yaw)))

    def success(self, sim: TwinSim) -> bool:
        raise NotImplementedError

    def reward(self, sim: TwinSim) -> float:
        """Dense shaped reward in [0, 1] (1 at success)."""
        raise NotImplementedError

    def task_state(self, sim: TwinSim) -> np.ndarray:
        """Task part of the privileged state (default: poses of ``object_names``)."""
        if not self.object_names:
            return np.zeros(0)
        return np.concatenate([sim.body_pose(n) for n in self.object_names])

    def expert(self, noise: float = 0.0, rng: np.random.Generator | None = None):
        """The task's scripted IK controller (acts in ``expert_mode``)."""
        raise NotImplementedError(f"task {self.name!r} has no scripted controller")

    #: control mode the expert's actions are in
    expert_mode: str = "ee_pose"

    def state_description(self) -> str:
        """Units of :meth:`task_state` (the task part of the ``state`` observation)."""
        if not self.object_names:
            return "none"
        return ", ".join(f"{n} position m (3), {n} quaternion wxyz (4)" for n in self.object_names)

    def info(self, sim: TwinSim) -> dict[str, float]:
        """Extra per-step diagnostics (distances, coverage...) put into ``info``."""
        return {}

    def outcome(self, sim: TwinSim) -> tuple[bool, float, dict[str, float]]:
        """``(success, reward, info)`` of the current state: what the env asks after every
        step. Tasks whose three share work (object poses, distances) override this to
        compute it once; it must equal ``(success(sim), reward(sim), info(sim))``."""
        return self.success(sim), float(self.reward(sim)), self.info(sim)


_REGISTRY: dict[str, type[Task]] = {}


def register_task(name: str) -> Callable[[type[Task]], type[Task]]:
    """Class decorator registering a task under ``name``."""

    def deco(cls: type[Task]) -> type[Task]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise TaskError(f"task {name!r} is already registered by {_REGISTRY[name].__qualname__}")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def get_task_class(name: str) -> type[Task]:
    """A registered task class. The built-in tasks register when the ``twin.tasks`` package is
    imported, which any import of this module does."""
    if name not in _REGISTRY:
        raise TaskError(f"unknown task {name!r}; registered tasks: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def make_task(name: str, cfg: TaskCfg | None = None) -> Task:
    return get_task_class(name)(cfg)


def list_tasks() -> list[str]:
    return sorted(_REGISTRY)


def upright(quat: np.ndarray, max_tilt_rad: float = 0.5) -> bool:
    """True if the body's z axis is within ``max_tilt_rad`` of world up."""
    w, x, y, z = quat
    zz = 1.0 - 2.0 * (x * x + y * y)  # world-z component of the body z axis
    return bool(zz >= np.cos(max_tilt_rad))


def inside(point: Sequence[float], center: Sequence[float], half: Sequence[float], margin: float = 0.0) -> bool:
    """True if ``point`` lies in the axis-aligned box ``center`` +/- (``half`` + ``margin``)."""
    return all(abs(float(p) - float(c)) <= float(h) + margin for p, c, h in zip(point, center, half))
