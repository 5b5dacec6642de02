"""Real-to-sim calibration of the twin from logged episodes (``twinrank calibrate``).

Each logged episode (the real-data bag schema: actions, the robot's proprioception, object
poses) is replayed in the twin open loop: the task's reset at the episode's seed, then the
logged object poses at t = 0 (the logged initial state), then the logged actions one control
step at a time. The replay residual is the RMS distance between the replayed and the logged
TCP path and object positions (m). CMA-ES (the ``cma`` package) minimises it over the chosen
physical factors of the perturbation suite (actuation latency, object mass, friction, joint
damping, controller gains), in a box (log-scale for scale factors).

Each estimate must pass a profile check (moved by 10 ms or 15 %, the summed squared residual
must rise by more than chi2(1, 0.95) residual variances) and comes with a local standard
error from the Gauss-Newton covariance ``s^2 (J'J)^-1`` of the residual vector. Both are
local: consecutive replay errors are correlated and contacts make the residual rough, so the
error is a lower bound, and CMA-ES from one start can stop in a local optimum (measured: on
box_to_shelf the mass stopped 30 % off while latency and friction were recovered; give more
``max_evals`` or another seed to check). A parameter the logs do not constrain (flat, an
error wider than a quarter of its box) is reported as not identified and left at its
nominal value in the calibrated suite.

Output: a :class:`CalibrationResult` with the estimates, the residual before and after, and a
suite (YAML) whose factors are fixed at the identified values: an evaluation spec takes it as
``suite:`` and its ``combined`` condition is the calibrated twin.

Cameras and lights are fitted to the logged images by :mod:`selection.camera_calibration`;
their structured values (a camera's rotation axis) are fixed in the suite with ``fixed:``.
Each CMA-ES generation's candidates are replayed in parallel (``workers``; the CLI default is
one process per core): a pool of spawned processes of its own, each with its own twin, tied to
this process's life (twin.lifeline), not the evaluator's executors, whose work units are
policy rollouts.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from selection.camera_calibration import FIXED_FACTORS, view_fidelity
from selection.placement import PlacementOffset, object_pose_value, placement_offsets
from selection.realdata import ARM_JOINTS, hold, scene_problem
from twin.perturbations import N_SLOTS, Condition, PerturbationSuite


class CalibrationError(ValueError):
    """Logs or options calibration cannot use (names the problem and the fix)."""


@dataclass(frozen=True)
class ParamDef:
    """One calibrated quantity: its factor, search box, nominal value, and the factor value it
    becomes (``value``); ``log``: searched on a log scale (scales)."""

    name: str
    factor: str
    lo: float
    hi: float
    nominal: float
    unit: str
    log: bool
    value: Callable[[float], Any]


PARAMS: dict[str, ParamDef] = {
    p.name: p
    for p in (
        ParamDef("actuation_latency", "actuation_latency", 0.0, 0.08, 0.0, "s", False, lambda x: float(x)),
        ParamDef("mass", "mass", 0.3, 3.0, 1.0, "x", True, lambda x: [float(x)]),
        ParamDef(
            "friction", "friction", 0.3, 2.0, 1.0, "x", True, lambda x: {"table": float(x), "objects": [float(x)]}
        ),
        ParamDef("joint_damping", "joint_damping", 0.3, 3.0, 1.0, "x", True, lambda x: float(x)),
        # the arm servo's kp and kd scaled together (a suite's controller_gains range fixes both)
        ParamDef(
            "controller_gains", "controller_gains", 0.5, 2.0, 1.0, "x", True, lambda x: {"kp": float(x), "kd": float(x)}
        ),
    )
}
DEFAULT_PARAMS = ("actuation_latency", "mass", "friction")
#: joint torques' weight in the fitted residual when logged (torques averaged over each control
#: step): 1 N m counts as 5 mm. Measured on box_to_shelf (same-engine cell: latency 30 ms,
#: friction x0.65, mass x1.4): a payload 30 % too light moves the replayed TCP path 0.86 mm RMS
#: and the arm's step-averaged torques 0.21 N m; with this weight CMA-ES (160 replays) found
#: mass 1.406, friction 0.646, latency 25 ms, without torques mass 0.986 (a wrong optimum that
#: fits the path as well)
EFFORT_WEIGHT = 0.005

#: profile check of identifiability: a parameter moved by this much (s for latency, a
#: relative step for scales) must raise the summed squared residual by more than the 95 %
#: chi-square quantile (1 dof) in units of the residual variance per compared point, or it is
#: reported as not identified (flat: the logs do not see it)
PROFILE_STEP = {"s": 0.01, "x": 0.15}
PROFILE_CHI2 = 3.84


@dataclass
class Estimate:
    name: str
    value: float
    se: float
    nominal: float
    unit: str
    identified: bool
    note: str = ""
    #: range of the parameter over every evaluated point that fits within NEAR_OPTIMAL x the best residual
    lo: float = math.nan
    hi: float = math.nan

    def text(self) -> str:
        if not self.identified:
            return f"{self.name}: not identified by these logs ({self.note}); kept at {self.nominal:g} {self.unit}"
        return (
            f"{self.name}: {self.value:.4g} {self.unit} (near-optimal {self.lo:.4g}..{self.hi:.4g}, local error "
            f"{self.se:.2g}; nominal {self.nominal:g})"
        )


@dataclass
class CalibrationResult:
    task: str
    params: list[str]
    estimates: dict[str, Estimate]
    residual_before: float  # m, RMS over the replayed episodes
    residual_after: float
    per_episode_before: list[float]
    per_episode_after: list[float]
    episodes: int
    skipped: list[str]
    evaluations: int
    wall_s: float
    history: list[float] = field(default_factory=list)  # best residual after each CMA-ES generation
    #: RMS joint-torque difference (N m) before/after when the logs carry torques (else nan), and
    #: the weight (m per N m) they had in the fitted residual (0: not used)
    effort_before: float = math.nan
    effort_after: float = math.nan
    effort_weight: float = 0.0
    #: objects' start offsets, real minus twin (selection.placement), from the logged poses
    placement: dict[str, PlacementOffset] = field(default_factory=dict)

    def condition_values(self) -> dict[str, Any]:
        """The calibrated factor values (identified parameters and start offsets only)."""
        values = condition_values({n: e.value for n, e in self.estimates.items() if e.identified})
        pose = object_pose_value(self.placement, _object_names(self.task), N_SLOTS)
        if pose is not None:
            values["object_pose"] = pose
        return values

    def suite(self) -> PerturbationSuite:
        """A suite whose factors are fixed at the calibrated values (``combined`` = the calibrated twin)."""
        return calibrated_suite(self.condition_values(), self.task)

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "params": self.params,
            "estimates": {n: e.__dict__ for n, e in self.estimates.items()},
            "residual_before_m": self.residual_before,
            "residual_after_m": self.residual_after,
            "residual_drop": 1.0 - self.residual_after / self.residual_before if self.residual_before > 0 else 0.0,
            "per_episode_before_m": self.per_episode_before,
            "per_episode_after_m": self.per_episode_after,
            "episodes": self.episodes,
            "skipped": self.skipped,
            "evaluations": self.evaluations,
            "wall_s": self.wall_s,
            "history_m": self.history,
            "effort_before_nm": self.effort_before,
            "effort_after_nm": self.effort_after,
            "effort_weight_m_per_nm": self.effort_weight,
            "placement": {o: p.to_dict() for o, p in self.placement.items()},
            "condition": self.condition_values(),
        }


def condition_values(values: dict[str, float]) -> dict[str, Any]:
    """Factor values (a :class:`Condition`'s ``values``) of named parameter values."""
    out: dict[str, Any] = {}
    for name, x in values.items():
        out[PARAMS[name].factor] = PARAMS[name].value(x)
    return out


def calibrated_suite(values: dict[str, Any], task: str) -> PerturbationSuite:
    """A suite with each factor fixed at ``values`` (a degenerate range, or ``fixed:`` for the
    cameras' and lights' structured values: every sample is it)."""
    from twin.perturbations import FactorSpec

    factors: dict[str, Any] = {}
    for factor, v in values.items():
        if factor in FIXED_FACTORS or factor == "object_pose":
            factors[factor] = {**FactorSpec.default(factor).to_dict(), "fixed": v}
        elif factor == "actuation_latency":
            factors[factor] = {"kind": "SA", "distribution": "value", "range": [v, v]}
        elif factor == "mass":
            factors[factor] = {"kind": "SA", "distribution": "scale", "range": [v[0], v[0]]}
        elif factor == "friction":
            factors[factor] = {"kind": "SA", "distribution": "scale", "range": [v["table"], v["table"]]}
        elif factor == "joint_damping":
            factors[factor] = {"kind": "SA", "distribution": "scale", "range": [v, v]}
        elif factor == "controller_gains":
            factors[factor] = {"kind": "SA", "distribution": "scale", "range": [v["kp"], v["kp"]]}
    return PerturbationSuite.from_dict({"name": f"calibrated-{task}", "factors": factors}, task=task)


# ---- the logs -------------------------------------------------------------------------------


@dataclass
class ReplayEpisode:
    """What a replay needs of one logged episode, checked."""

    label: str
    seed: int
    actions: np.ndarray  # (K, A)
    tcp: np.ndarray  # (K + 1, 3) logged TCP position after 0..K actions
    objects: dict[str, np.ndarray]  # name -> (K + 1, 7) logged pose after 0..K actions
    effort: np.ndarray | None = None  # (K + 1, 7) logged arm joint torques (N m), when logged
    state: np.ndarray | None = None  # (K + 1, D) logged ``state`` observations, when logged


def replay_episodes(episodes: Sequence[Any], task: str, action_dim: int) -> tuple[list[ReplayEpisode], list[str]]:
    """The episodes a replay can use, and a line for each one it cannot (why)."""
    usable: list[ReplayEpisode] = []
    skipped: list[str] = []
    names = _object_names(task)
    for k, ep in enumerate(episodes):
        label, problem = scene_problem(ep, k, task, names, CalibrationError)
        if problem:
            skipped.append(f"{label}: {problem}")
            continue
        if ep.joint_names and tuple(ep.joint_names[:7]) not in ARM_JOINTS.values():
            raise CalibrationError(
                f"{label}: joint names {list(ep.joint_names[:7])} are not a Franka arm's "
                f"({' or '.join(str(list(v)) for v in ARM_JOINTS.values())}): record with those names or map them"
            )
        if ep.actions is None or len(ep.actions) == 0:
            skipped.append(f"{label}: no actions logged (nothing to replay)")
            continue
        if ep.actions.shape[1] != action_dim:
            raise CalibrationError(
                f"{label}: actions have {ep.actions.shape[1]} values, the control mode needs {action_dim}: "
                f"give --control-mode the mode the logs were recorded in"
            )
        if "proprio" not in ep.obs:
            skipped.append(f"{label}: no obs/proprio (the TCP path to compare with)")
            continue
        if len(ep.obs["proprio"]) < len(ep.actions) + 1:
            # the last observation (after the last action) may be missing: replay one action fewer
            n = len(ep.obs["proprio"]) - 1
        else:
            n = len(ep.actions)
        if n < 2:
            skipped.append(f"{label}: fewer than 2 logged steps")
            continue
        obs_t = ep.obs_t["proprio"][: n + 1]
        tcp = np.asarray(ep.obs["proprio"][: n + 1, 8:11], dtype=float)
        objects = {name: hold(tr.t, tr.pose, obs_t) for name, tr in ep.object_poses.items() if name in names}
        if any(not np.isfinite(p).all() for p in objects.values()) or not np.isfinite(tcp).all():
            skipped.append(f"{label}: missing frames (object pose or proprio not finite at some step)")
            continue
        effort = None
        eff = np.asarray(ep.joint_effort, dtype=float)[:, :7] if ep.joint_effort is not None else None
        if eff is not None and len(eff) and np.isfinite(eff).all():
            effort = hold(ep.t, eff, obs_t)
        state = None
        if "state" in ep.obs and "state" in ep.obs_t:
            state = hold(ep.obs_t["state"], np.asarray(ep.obs["state"], dtype=float), obs_t)
        usable.append(
            ReplayEpisode(
                label, int(ep.seed), np.asarray(ep.actions[:n], dtype=np.float32), tcp, objects, effort, state
            )
        )
    return usable, skipped


def _object_names(task: str) -> list[str]:
    from twin.tasks import make_task

    return list(make_task(task).object_names)


def _action_dim(task: str, mode: str) -> int:
    """Values per action of ``task`` in control mode ``mode`` (the env's action space)."""
    from twin.env import TwinEnv

    probe = TwinEnv(task, control_mode=mode, render_mode=None)
    try:
        shape = probe.action_space.shape
        return int(np.prod(shape)) if shape else 1
    finally:
        probe.close()


# ---- replay ---------------------------------------------------------------------------------


class Replayer:
    """Replays episodes in one twin env under candidate parameter values."""

    def __init__(self, task: str, control_mode: str, episodes: list[ReplayEpisode], effort_weight: float = 0.0) -> None:
        from twin.env import TwinEnv

        self.task = task
        self.env = TwinEnv(task, control_mode=control_mode, render_mode=None)
        self.episodes = episodes
        self.evaluations = 0
        #: m per N m: joint-torque differences join the residual at this weight (0: positions only)
        self.effort_weight = effort_weight if all(ep.effort is not None for ep in episodes) else 0.0
        #: the twin's own ``state`` observations of the last replay, per episode label (K, D)
        self.states: dict[str, np.ndarray] = {}

    def close(self) -> None:
        self.env.close()

    def episode_errors(self, ep: ReplayEpisode, values: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        """Per-step differences between the replay and the log: positions (m, x y z; TCP, then
        each object) and, where logged, the arm's joint torques (N m; empty otherwise)."""
        env = self.env
        env.reset(seed=ep.seed, options={"condition": Condition(name="calibration", seed=ep.seed, values=values)})
        sim = env.sim
        sim.track_effort = ep.effort is not None
        for name, poses in ep.objects.items():
            if sim.is_free(name):
                sim.set_free_body_pose(name, poses[0, :3], poses[0, 3:7])
        sim.forward()
        errs: list[np.ndarray] = []
        torques: list[np.ndarray] = []
        states: list[np.ndarray] = []
        for k, a in enumerate(ep.actions):
            obs, *_ = env.step(a)
            if "state" in obs:
                states.append(np.asarray(obs["state"], dtype=float))
            errs.append(sim.tcp_pose()[:3] - ep.tcp[k + 1])
            for name, poses in ep.objects.items():
                errs.append(sim.body_pose(name)[:3] - poses[k + 1, :3])
            if ep.effort is not None:
                torques.append(sim.arm_effort() - ep.effort[k + 1])
        if states:
            self.states[ep.label] = np.stack(states)
        return np.concatenate(errs), np.concatenate(torques) if torques else np.zeros(0)

    def split_residuals(self, values: dict[str, Any]) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Per episode: position errors (m) and joint-torque errors (N m)."""
        self.evaluations += 1
        pairs = [self.episode_errors(ep, values) for ep in self.episodes]
        return [p for p, _ in pairs], [t for _, t in pairs]

    def residuals(self, values: dict[str, Any]) -> list[np.ndarray]:
        """Per episode: the residual vector the optimiser sees (positions, then weighted torques)."""
        return self.combine(*self.split_residuals(values))

    def combine(self, pos: list[np.ndarray], tau: list[np.ndarray]) -> list[np.ndarray]:
        if self.effort_weight <= 0:
            return pos
        return [np.concatenate([p, t * self.effort_weight]) for p, t in zip(pos, tau, strict=True)]


def _torque_rms(errs: Sequence[np.ndarray]) -> float:
    """RMS joint-torque difference (N m); nan when no torques were compared."""
    allv = np.concatenate(list(errs)) if errs else np.zeros(0)
    return float(np.sqrt(np.mean(allv**2))) if allv.size else math.nan


def _rms(errs: Sequence[np.ndarray]) -> float:
    """RMS distance (m) over the compared points (each point's x, y, z difference in a row of 3)."""
    allv = np.concatenate(list(errs))
    return float(np.sqrt(np.sum(allv**2) / (allv.size / 3)))


# ---- the optimisation -------------------------------------------------------------------------


def _to_x(params: Sequence[ParamDef], z: np.ndarray) -> dict[str, float]:
    """Unit-box coordinates -> parameter values."""
    out: dict[str, float] = {}
    for p, u in zip(params, np.clip(z, 0.0, 1.0), strict=True):
        if p.log:
            out[p.name] = float(math.exp(math.log(p.lo) + u * (math.log(p.hi) - math.log(p.lo))))
        else:
            out[p.name] = float(p.lo + u * (p.hi - p.lo))
    return out


def _to_z(p: ParamDef, x: float) -> float:
    if p.log:
        return (math.log(x) - math.log(p.lo)) / (math.log(p.hi) - math.log(p.lo))
    return (x - p.lo) / (p.hi - p.lo)


def calibrate(
    episodes: Sequence[Any],
    task: str,
    *,
    params: Sequence[str] = DEFAULT_PARAMS,
    control_mode: str | None = None,
    max_evals: int = 60,
    seed: int = 0,
    effort_weight: float | None = None,
    workers: int = 1,
    progress: Callable[[str, int, int], None] | None = None,
) -> CalibrationResult:
    """Calibrate ``params`` of the twin of ``task`` from logged ``episodes`` (RealEpisode).

    ``effort_weight`` (m per N m, default :data:`EFFORT_WEIGHT`; 0: positions only): when every
    episode logged the arm's joint torques, their differences join the residual at this weight
    (what the arm carries shows in its torques; the TCP path barely moves with a payload's mass).
    ``workers`` > 1: each CMA-ES generation's candidates are replayed in that many worker
    processes (each with its own twin; they end with this process); the result is the same."""
    import cma

    from twin.tasks import get_task_class

    t0 = time.perf_counter()
    unknown = [p for p in params if p not in PARAMS]
    if unknown or not params:
        raise CalibrationError(
            f"unknown calibration parameter(s) {unknown or '(none given)'}; choose from {', '.join(PARAMS)}"
        )
    mode = control_mode or get_task_class(task).expert_mode
    action_dim = _action_dim(task, mode)
    usable, skipped = replay_episodes(episodes, task, action_dim)
    if not usable:
        why = "; ".join(skipped) if skipped else "no episodes in the logs"
        raise CalibrationError(f"no logged episode of {task} can be replayed ({why})")
    names = _object_names(task)
    placement = placement_offsets([(ep.seed, {o: p[0] for o, p in ep.objects.items()}) for ep in usable], task, names)
    defs = [PARAMS[p] for p in params]
    rep = Replayer(task, mode, usable, EFFORT_WEIGHT if effort_weight is None else effort_weight)
    history: list[float] = []
    pool: Any = None
    try:
        nominal = {p.name: p.nominal for p in defs}
        before, tau_before = rep.split_residuals(condition_values(nominal))
        cache: dict[tuple[float, ...], float] = {}

        def many(values: list[dict[str, Any]]) -> list[list[np.ndarray]]:
            """Replays of several factor values: in the pool when there is one (a lost worker
            ends the pool; the rest replays here)."""
            nonlocal pool
            if pool is not None and len(values) > 1:
                try:
                    out = list(pool.map(_pool_residuals, values))
                    rep.evaluations += len(values)
                    return out
                except BrokenProcessPool:
                    pool.shutdown(wait=False, cancel_futures=True)
                    pool = None
                    if progress:
                        progress("a replay worker died: replaying in this process", rep.evaluations, max_evals)
            return [rep.residuals(v) for v in values]

        def costs(zs: list[np.ndarray]) -> list[float]:
            keys = [tuple(np.round(np.clip(z, 0, 1), 6)) for z in zs]
            todo = [k for k in dict.fromkeys(keys) if k not in cache]
            replies = many([condition_values(_to_x(defs, np.asarray(k))) for k in todo])
            for k, r in zip(todo, replies, strict=True):
                cache[k] = _rms(r)
            return [cache[k] for k in keys]

        def cost(z: np.ndarray) -> float:
            return costs([z])[0]

        z0 = np.array([_to_z(p, p.nominal) for p in defs])
        if len(defs) == 1:
            best_z = _search_1d(cost, z0, max_evals, progress)
        else:
            if workers > 1:
                pool = _replay_pool(workers, task, mode, usable, rep.effort_weight)
            es = cma.CMAEvolutionStrategy(
                list(np.clip(z0, 0.05, 0.95)),
                0.25,
                {"bounds": [0.0, 1.0], "seed": seed + 1, "maxfevals": max_evals, "verbose": -9, "tolx": 1e-3},
            )
            while not es.stop():
                zs = es.ask()
                es.tell(zs, costs([np.asarray(z) for z in zs]))
                history.append(float(es.result.fbest))
                if progress:
                    progress(f"CMA-ES, best fit {es.result.fbest * 1000:.2f}", rep.evaluations, max_evals)
            best_z = np.clip(np.asarray(es.result.xbest), 0, 1)
        best_x = _to_x(defs, best_z)
        after, tau_after = rep.split_residuals(condition_values(best_x))
        combined = rep.combine(after, tau_after)
        estimates = _standard_errors(many, defs, best_x, combined)
        _near_optimal(estimates, defs, cache, _rms(combined))
        weight = rep.effort_weight
        n_eval = rep.evaluations
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        rep.close()
    return CalibrationResult(
        task=task,
        params=list(params),
        estimates=estimates,
        residual_before=_rms(before),
        residual_after=_rms(after),
        per_episode_before=[_rms([e]) for e in before],
        per_episode_after=[_rms([e]) for e in after],
        episodes=len(usable),
        skipped=skipped,
        evaluations=n_eval,
        wall_s=time.perf_counter() - t0,
        history=history,
        effort_before=_torque_rms(tau_before) if weight > 0 else math.nan,
        effort_after=_torque_rms(tau_after) if weight > 0 else math.nan,
        effort_weight=weight,
        placement=placement,
    )


_POOL_REPLAYER: Replayer | None = None


def _replay_pool(workers: int, task: str, mode: str, episodes: list[ReplayEpisode], weight: float) -> Any:
    """Worker processes (spawned), each with a :class:`Replayer` of ``episodes``; they end with
    this process, whatever kills it (twin.lifeline)."""
    import multiprocessing as mp
    import os
    import threading

    main = threading.current_thread() is threading.main_thread()
    return ProcessPoolExecutor(
        workers,
        mp_context=mp.get_context("spawn"),
        initializer=_pool_init,
        initargs=(os.getpid(), main, task, mode, episodes, weight),
    )


def _pool_init(parent: int, main: bool, task: str, mode: str, episodes: list[ReplayEpisode], weight: float) -> None:
    import os
    import signal

    from twin.lifeline import ParentGone, bind_to_parent

    try:
        bind_to_parent(
            "twinrank calibrate replayer", signal.SIGKILL, poll_s=1.0, grace_s=0.0, expected=parent, death_signal=main
        )
    except ParentGone:
        os._exit(1)
    global _POOL_REPLAYER
    _POOL_REPLAYER = Replayer(task, mode, episodes, weight)


def _pool_residuals(values: dict[str, Any]) -> list[np.ndarray]:
    assert _POOL_REPLAYER is not None
    return _POOL_REPLAYER.residuals(values)


def _search_1d(
    cost: Callable[[np.ndarray], float],
    z0: np.ndarray,
    max_evals: int,
    progress: Callable[[str, int, int], None] | None,
) -> np.ndarray:
    """One parameter: a coarse grid, then bounded Brent (scipy) around the best grid point."""
    from scipy.optimize import minimize_scalar

    grid = np.linspace(0.0, 1.0, 9)
    vals = [cost(np.array([g])) for g in grid]
    i = int(np.argmin(vals))
    lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
    if progress:
        progress(f"grid, best residual {min(vals) * 1000:.2f} mm", len(grid), max_evals)
    res = minimize_scalar(
        lambda u: cost(np.array([u])),
        bounds=(lo, hi),
        method="bounded",
        options={"xatol": 2e-3, "maxiter": max(3, max_evals - len(grid))},
    )
    return np.array([res.x if res.fun <= vals[i] else grid[i]])


#: every evaluated point whose residual is within this factor of the best counts as fitting the
#: logs: a parameter whose values over those points spread wider than NEAR_SPREAD is not identified
NEAR_OPTIMAL = 1.5
NEAR_SPREAD = {"s": 0.02, "x": 1.35}  # latency: 20 ms wide; scales: max/min ratio


def _near_optimal(
    estimates: dict[str, Estimate], defs: Sequence[ParamDef], cache: dict[tuple[float, ...], float], best: float
) -> None:
    """The range of each parameter over the evaluated points that fit nearly as well as the best
    (CMA-ES samples the basins it visits): basins that fit the logs about as well widen it, and a
    parameter whose range is wider than NEAR_SPREAD is reported as not identified. Basins the
    search never visited stay unseen: on box_to_shelf, mass 1.0 with friction 0.65 and mass 2.4
    with friction 0.56 both fit within 0.3 mm of logs made with mass 1.4 (which fits exactly)."""
    near = [np.asarray(z) for z, v in cache.items() if v <= NEAR_OPTIMAL * best + 1e-12]
    if not near:
        return
    for j, p in enumerate(defs):
        xs = [_to_x(defs, z)[p.name] for z in near] + [estimates[p.name].value]
        lo, hi = float(min(xs)), float(max(xs))
        e = estimates[p.name]
        e.lo, e.hi = lo, hi
        wide = (hi / lo > NEAR_SPREAD["x"]) if p.log and lo > 0 else (hi - lo > NEAR_SPREAD["s"])
        if e.identified and wide:
            e.identified = False
            e.note = (
                f"points fitting within {NEAR_OPTIMAL:g}x of the best residual range from {lo:.3g} to {hi:.3g} "
                f"{p.unit}: the logs do not pin it down"
            )


def _standard_errors(
    many: Callable[[list[dict[str, Any]]], list[list[np.ndarray]]],
    defs: Sequence[ParamDef],
    best: dict[str, float],
    after: list[np.ndarray],
) -> dict[str, Estimate]:
    """Identifiability and the Gauss-Newton covariance of the estimates. First a profile check:
    each parameter moved by :data:`PROFILE_STEP` must raise the residual by :data:`PROFILE_RISE`.
    Then the Jacobian J of the residual vector by
    forward differences (2 % of each box, in the search coordinates), ``cov = s^2 (J'J)^-1``
    with ``s^2 = S / (N - p)``, mapped to parameter units (delta method). Correlated
    parameters (the logs constrain only a combination, e.g. mass and friction of a grasp) get
    wide marginal errors: a parameter whose error spans a quarter of its box or more is
    reported as not identified. ``many`` replays a list of factor values (in parallel when it
    can): the Jacobian's and the profile's points go in one batch."""
    r0 = np.concatenate(after)
    z = np.array([_to_z(p, best[p.name]) for p in defs])
    jac = np.zeros((r0.size, len(defs)))
    steps = np.zeros(len(defs))
    points: list[dict[str, Any]] = []
    for j in range(len(defs)):
        steps[j] = 0.02 if z[j] + 0.02 <= 1.0 else -0.02
        zj = z.copy()
        zj[j] += steps[j]
        points.append(condition_values(_to_x(defs, zj)))
    profile: list[tuple[int, dict[str, Any]]] = []
    for j, p in enumerate(defs):
        x = best[p.name]
        for sign in (-1.0, 1.0):
            v = x * (1.0 + sign * PROFILE_STEP[p.unit]) if p.log else x + sign * PROFILE_STEP[p.unit]
            v = min(max(v, p.lo), p.hi)
            if abs(v - x) >= 1e-12:
                profile.append((j, condition_values({**best, p.name: v})))
    replies = many(points + [vals for _, vals in profile])
    for j in range(len(defs)):
        jac[:, j] = (np.concatenate(replies[j]) - r0) / steps[j]
    sides_of: dict[int, list[float]] = {j: [] for j in range(len(defs))}
    for (j, _), r in zip(profile, replies[len(defs) :], strict=True):
        sides_of[j].append(_rms(r))
    dof = max(r0.size - len(defs), 1)
    s2 = float(np.sum(r0**2)) / dof
    jtj = jac.T @ jac
    try:
        cov_z = s2 * np.linalg.pinv(jtj, rcond=1e-10)
    except np.linalg.LinAlgError:  # pragma: no cover - pinv does not raise for finite input
        cov_z = np.full((len(defs), len(defs)), np.inf)
    # dx/dz of each parameter at the estimate
    dxdz = np.array(
        [(best[p.name] * (math.log(p.hi) - math.log(p.lo))) if p.log else (p.hi - p.lo) for p in defs], dtype=float
    )
    cov_x = cov_z * np.outer(dxdz, dxdz)
    sd = np.sqrt(np.clip(np.diag(cov_x), 0, None))
    base = _rms(after)
    out: dict[str, Estimate] = {}
    for j, p in enumerate(defs):
        x = best[p.name]
        # profile check: does moving it by the tolerance the calibration promises raise the residual?
        step = PROFILE_STEP[p.unit]
        sides = sides_of[j]
        # chi-square (1 dof) statistic of the profile: the rise of the summed squares in units of
        # the residual variance per compared point
        n_pts = r0.size / 3
        rise = n_pts * (min(sides) ** 2 - base**2) / base**2 if base > 0 and sides else math.inf
        note = ""
        if len(defs) > 1 and np.isfinite(sd).all() and (sd > 0).all():
            corr = cov_x[j] / (sd[j] * sd)
            partners = [
                f"{defs[k].name} (r = {corr[k]:+.2f})" for k in range(len(defs)) if k != j and abs(corr[k]) > 0.9
            ]
            if partners:
                note = f"correlated with {', '.join(partners)}: the logs constrain a combination"
        if not np.isfinite(sd[j]) or jtj[j, j] <= 0:
            out[p.name] = Estimate(
                p.name, x, math.inf, p.nominal, p.unit, False, "the residual does not change with it"
            )
        elif rise < 0:
            why = "a neighbour fits the logs better: the optimiser had not converged (give more max_evals)"
            out[p.name] = Estimate(p.name, x, float(sd[j]), p.nominal, p.unit, False, why)
        elif rise < PROFILE_CHI2:
            tol = f"{step:g} {p.unit}" if not p.log else f"{step:.0%}"
            why = f"moving it by {tol} leaves the residual where it is (chi2 {rise:.2g} < {PROFILE_CHI2})" + (
                f"; {note}" if note else ""
            )
            out[p.name] = Estimate(p.name, x, float(sd[j]), p.nominal, p.unit, False, why)
        elif sd[j] > (p.hi - p.lo) / 4:
            why = f"standard error {sd[j]:.2g} {p.unit} spans its search box" + (f"; {note}" if note else "")
            out[p.name] = Estimate(p.name, x, float(sd[j]), p.nominal, p.unit, False, why)
        else:
            out[p.name] = Estimate(p.name, x, float(sd[j]), p.nominal, p.unit, True, note)
    return out


# ---- twin fidelity and the promotion gate ------------------------------------------------------


@dataclass
class FidelityGate:
    """Promotion needs the twin to reproduce the logs: the replay residual of up to
    ``max_episodes`` logged episodes under the twin (or under ``suite``, a calibrated suite
    file) must be at most ``max_residual_mm`` (None: measure and report, never block)."""

    max_residual_mm: float | None
    suite: str | None = None
    max_episodes: int = 10
    control_mode: str | None = None
    #: fit nothing, block nothing: only measure the fidelity (max_residual_mm None)


@dataclass
class TwinFidelity:
    task: str
    residual_mm: float  # RMS over the replayed episodes (nan when none could be replayed)
    per_episode_mm: list[float]
    episodes: int
    skipped: list[str]
    threshold_mm: float | None
    suite: str | None
    #: the residual's parts and the other views of fidelity: tcp_mm, objects_mm (RMS of the
    #: replayed TCP path / object positions), torque_nm (arm joint torques, when logged),
    #: depth_mm / image_residual (logged camera frames against the twin's renders, when logged),
    #: obs_ood_frac (logged ``state`` observations out of the twin's own, observation_ood)
    parts: dict[str, float] = field(default_factory=dict)
    #: what could not be measured and why (e.g. no camera frames, no live desync in logs)
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        if self.threshold_mm is None:
            return True
        return bool(np.isfinite(self.residual_mm) and self.residual_mm <= self.threshold_mm)

    def summary(self) -> str:
        """One line: the number, its parts, and what was not measured."""
        p = self.parts
        bits = [f"replay residual {self.residual_mm:.2f} mm on {self.episodes} episode(s)"]
        inner = [f"{label} {p[k]:.2f} mm" for k, label in (("tcp_mm", "TCP"), ("objects_mm", "objects")) if k in p]
        if "torque_nm" in p:
            inner.append(f"joint torques {p['torque_nm']:.2f} N m")
        if inner:
            bits[0] += " (" + ", ".join(inner) + ")"
        if "obs_ood_frac" in p:
            bits.append(f"logged observations outside the twin's own: {p['obs_ood_frac']:.0%}")
        if "depth_mm" in p:
            bits.append(f"cameras: median depth error {p['depth_mm']:.1f} mm, image residual {p['image_residual']:.2f}")
        if self.threshold_mm is not None:
            bits.append(f"gate {self.threshold_mm:g} mm: {'passed' if self.passed else 'FAILED'}")
        return "; ".join(bits + self.notes)

    def reason(self) -> str:
        """Why promotion is blocked ('' when it is not), with what to do."""
        if self.passed:
            return ""
        if not np.isfinite(self.residual_mm):
            return (
                f"twin fidelity unknown: no logged episode of {self.task} could be replayed "
                f"({'; '.join(self.skipped) or 'no episodes'}); record logs with actions and object poses"
            )
        twin = f"the twin with {self.suite}" if self.suite else "the twin"
        return (
            f"twin fidelity below the gate: {twin} replays {self.episodes} logged episode(s) of {self.task} "
            f"{self.residual_mm:.2f} mm away from the logs (RMS of the TCP path and object positions), more than "
            f"{self.threshold_mm:g} mm; the champion is kept. Recalibrate (`twinrank calibrate {self.task} --logs "
            f"...`, then rank with its suite) or record more logs"
        )

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "passed": self.passed, "reason": self.reason()}


#: observation OOD: k-th nearest neighbour distance (standardised by the twin's spread) and the
#: twin's own leave-one-out quantile it is compared with
OOD_K = 5
OOD_QUANTILE = 0.95
#: a feature's spread is taken as at least this (the state's units: m, quaternion, rad): a
#: feature the twin never varies (a resting height) would otherwise flag every millimetre
OOD_SD_FLOOR = 0.01


def observation_ood(twin: np.ndarray, logged: np.ndarray) -> float:
    """Fraction of ``logged`` observations (N, D) out of the twin's own observations of the
    same replayed episodes (M, D): their distance to the k-th nearest twin observation beyond
    the twin's own leave-one-out 95th percentile (scikit-learn's NearestNeighbors, features
    standardised by the twin's spread, at least :data:`OOD_SD_FLOOR`). About 0.05 or less when the twin observes what the
    cell logged; towards 1 when every logged observation lies off the twin's."""
    from sklearn.neighbors import NearestNeighbors

    mu, sd = twin.mean(axis=0), np.maximum(twin.std(axis=0), OOD_SD_FLOOR)
    zt, zl = (twin - mu) / sd, (logged - mu) / sd
    k = min(OOD_K, len(zt) - 1)
    nn = NearestNeighbors(n_neighbors=k + 1).fit(zt)
    ref = nn.kneighbors(zt)[0][:, k]  # the k-th neighbour other than itself
    threshold = float(np.quantile(ref, OOD_QUANTILE))
    dist = nn.kneighbors(zl, n_neighbors=k)[0][:, k - 1]
    return float(np.mean(dist > threshold))


def twin_fidelity(episodes: Sequence[Any], task: str, gate: FidelityGate) -> TwinFidelity:
    """Replay residual of ``episodes`` under the twin (or ``gate.suite``), for the gate."""
    from twin.perturbations import load_suite
    from twin.tasks import get_task_class

    mode = gate.control_mode or get_task_class(task).expert_mode
    action_dim = _action_dim(task, mode)
    mine = [e for e in episodes if not e.task or e.task == task]
    usable, skipped = replay_episodes(mine[: gate.max_episodes], task, action_dim)
    values = load_suite(gate.suite, task=task).sample(0).values if gate.suite else {}
    notes = ["live desync: not in the logs (the live graph publishes it on /twin/desync)"]
    if not usable:
        return TwinFidelity(task, math.nan, [], 0, skipped, gate.max_residual_mm, gate.suite, notes=notes)
    rep = Replayer(task, mode, usable)
    try:
        errs, torques = rep.split_residuals(values)
    finally:
        rep.close()
    n_obj = len(usable[0].objects)
    pts = [e.reshape(-1, 1 + n_obj, 3) for e in errs]
    parts = {"tcp_mm": _rms([p[:, 0].ravel() for p in pts]) * 1000}
    if n_obj:
        parts["objects_mm"] = _rms([p[:, 1:].ravel() for p in pts]) * 1000
    if all(ep.effort is not None for ep in usable):
        parts["torque_nm"] = _torque_rms(torques)
    else:
        notes.insert(0, "joint torques: not logged")
    logged = [ep.state[1:] for ep in usable if ep.state is not None and ep.label in rep.states]
    twin = [rep.states[ep.label] for ep in usable if ep.state is not None and ep.label in rep.states]
    if logged and all(a.shape == b.shape for a, b in zip(logged, twin, strict=True)):
        parts["obs_ood_frac"] = observation_ood(np.concatenate(twin), np.concatenate(logged))
    else:
        notes.insert(0, "observations: no logged 'state' to compare with the twin's")
    if any(ep.images for ep in mine):
        view, why = view_fidelity(mine[: gate.max_episodes], task, values)
        parts.update(view)
        notes[:0] = why
    else:
        notes.insert(0, "cameras: no frames in the logs")
    return TwinFidelity(
        task,
        _rms(errs) * 1000,
        [_rms([e]) * 1000 for e in errs],
        len(usable),
        skipped,
        gate.max_residual_mm,
        gate.suite,
        parts,
        notes,
    )


__all__ = [
    "observation_ood",
    "DEFAULT_PARAMS",
    "FidelityGate",
    "TwinFidelity",
    "twin_fidelity",
    "PARAMS",
    "CalibrationError",
    "CalibrationResult",
    "Estimate",
    "NEAR_OPTIMAL",
    "ParamDef",
    "calibrate",
    "calibrated_suite",
    "condition_values",
]
