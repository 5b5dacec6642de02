"""Scripted demonstrators for every task and demo collection into the episode format.

Each task's expert (``task.expert()``: a waypoint IK planner over privileged state) acts in
``ee_pose`` (or ``pusht_xy``) mode. ``DiscreteTracker`` turns the same plan into CASHER's 14
discrete actions, so discrete policies get demonstrations in their own action space. The
``noise`` argument perturbs planned waypoints (metres), giving demonstrations of varying
quality; ``epsilon`` replaces a fraction of actions by random ones.
"""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
import re
import signal
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from policies.data import Episode, EpisodeWriter
from twin.env import TwinEnv
from twin.perturbations import Condition, PerturbationSuite
from twin.robot import quat_to_mat, rotation_error
from twin.scripted import WaypointController
from twin.sim import TwinSim
from twin.tasks.base import ObservationCfg

# Discrete action indices (see twin.tasks.base.ActionCfg).
OPEN, CLOSE = 12, 13


class DiscreteTracker:
    """Drives the env's commanded TCP pose to each waypoint of a WaypointController with
    discrete ±pos_step / ±rot_step moves, then operates the gripper and holds."""

    def __init__(self, ctrl: WaypointController, pos_step: float = 0.03, rot_step: float = 0.02) -> None:
        self.ctrl = ctrl
        self.pos_step = pos_step
        self.rot_step = rot_step
        self._held = 0

    def reset(self, sim: TwinSim) -> None:
        self.ctrl.reset(sim)
        self._held = 0

    def act(self, sim: TwinSim) -> int:
        c = self.ctrl
        c.replan(sim)
        wp = c.waypoints[min(c.index, len(c.waypoints) - 1)]
        dp = wp.pos - sim.target_pos
        dr = rotation_error(wp.rot, sim.target_rot)
        p_axis = int(np.argmax(np.abs(dp)))
        r_axis = int(np.argmax(np.abs(dr)))
        p_need = abs(dp[p_axis]) / self.pos_step
        r_need = abs(dr[r_axis]) / self.rot_step
        if max(p_need, r_need) > 0.5:
            if p_need >= r_need:
                return 2 * p_axis + (0 if dp[p_axis] > 0 else 1)
            return 6 + 2 * r_axis + (0 if dr[r_axis] > 0 else 1)
        want_open = wp.gripper > 0.5
        grip = OPEN if want_open else CLOSE
        if want_open != sim.gripper_open():
            return grip
        # Commanded pose is at the waypoint (to lattice precision): wait for the arm, hold.
        tcp, _ = sim.tcp_pose_mat()
        if c.index < len(c.waypoints) and np.linalg.norm(tcp - sim.target_pos) < 0.01:
            if self._held >= wp.hold:
                c.index += 1
                self._held = 0
            else:
                self._held += 1
        return grip  # re-commanding the current gripper state is a no-op


class DeltaTracker:
    """A WaypointController's absolute TCP commands as ``ee_delta`` actions: the step from the
    env's commanded TCP pose to the expert's next command (translation and extrinsic x-y-z
    rotation, scaled to [-1, 1] by the action limits), gripper +1 open / -1 closed. The env then
    commands exactly what the expert would have (its steps are within the limits)."""

    def __init__(self, ctrl: WaypointController, max_delta_pos: float, max_delta_rot: float) -> None:
        self.ctrl = ctrl
        self.max_delta_pos = max_delta_pos
        self.max_delta_rot = max_delta_rot

    def reset(self, sim: TwinSim) -> None:
        self.ctrl.reset(sim)

    def act(self, sim: TwinSim) -> np.ndarray:
        from scipy.spatial.transform import Rotation

        a = self.ctrl.act(sim)
        dpos = (a[:3] - sim.target_pos) / self.max_delta_pos
        drot = Rotation.from_matrix(quat_to_mat(a[3:7]) @ sim.target_rot.T).as_euler("xyz") / self.max_delta_rot
        grip = 1.0 if a[7] > 0.5 else -1.0
        return np.concatenate([np.clip(dpos, -1, 1), np.clip(drot, -1, 1), [grip]]).astype(np.float32)


def demonstrator(env: TwinEnv, noise: float = 0.0, rng: np.random.Generator | None = None) -> Any:
    """The task's expert in the env's control mode (ee_pose/pusht_xy natively; waypoint experts
    also in discrete and ee_delta)."""
    expert = env.task.expert(noise=noise, rng=rng)
    mode = env.cfg.actions.mode
    acfg = env.cfg.actions
    if mode == env.task.expert_mode:
        return expert
    if mode == "discrete" and isinstance(expert, WaypointController):
        return DiscreteTracker(expert, acfg.pos_step, acfg.rot_step)
    if mode == "ee_delta" and isinstance(expert, WaypointController):
        return DeltaTracker(expert, acfg.max_delta_pos, acfg.max_delta_rot)
    raise ValueError(
        f"task {env.task.name!r} has a demonstrator for control modes {env.task.expert_mode!r}"
        f"{', discrete and ee_delta' if isinstance(expert, WaypointController) else ''}, not {mode!r}"
    )


def record_episode(
    env: TwinEnv,
    policy: Callable[[TwinSim, dict[str, np.ndarray]], Any],
    seed: int,
    condition: Condition | None = None,
    source: str = "expert",
    reset_hook: Callable[[TwinSim], None] | None = None,
) -> Episode:
    """Roll out ``policy(sim, obs) -> action`` for one episode and return it as an Episode."""
    obs, info = env.reset(seed=seed, options={"condition": condition})
    if reset_hook is not None:
        reset_hook(env.sim)
    keys = list(obs)
    cols: dict[str, list[np.ndarray]] = {k: [] for k in keys}
    actions, rewards, priv, succ = [], [], [], []
    term = trunc = False
    while not (term or trunc):
        for k in keys:
            cols[k].append(obs[k])
        priv.append(env.state())
        a = policy(env.sim, obs)
        obs, r, term, trunc, info = env.step(a)
        actions.append(np.asarray(a))
        rewards.append(r)
        succ.append(info["success"])
    dtype = np.int64 if env.cfg.actions.mode == "discrete" else np.float32
    return Episode(
        obs={k: np.stack(v) for k, v in cols.items()},
        actions=np.stack(actions).astype(dtype),
        rewards=np.asarray(rewards, np.float32),
        privileged=np.stack(priv).astype(np.float32),
        success_flags=np.asarray(succ, bool),
        seed=seed,
        condition=env.condition.to_dict(),
        source=source,
        failure_reason=info.get("failure_reason", ""),
    )


@dataclass(frozen=True)
class _Job:
    """A batch of seeds for one worker (everything it needs is plain data)."""

    task: str
    control_mode: str | None
    observations: ObservationCfg | None
    suite: Any
    engine: str
    seeds: tuple[int, ...]
    noise: float = 0.0
    epsilon: float = 0.0
    #: takeovers: the checkpoint that drives first, and the latest switch step
    policy_path: str = ""
    max_switch: int = 0


def _expert_episode(env: TwinEnv, job: _Job, s: int) -> Episode:
    rng = np.random.default_rng([s, 11])
    demo = demonstrator(env, noise=job.noise, rng=rng)
    env.action_space.seed(s)  # epsilon's random actions: the same for a seed in any worker

    def act(sim: TwinSim, obs: dict[str, np.ndarray]) -> Any:
        a = demo.act(sim)
        if job.epsilon > 0 and rng.random() < job.epsilon:
            return env.action_space.sample()
        return a

    return record_episode(env, act, s, source=f"expert(noise={job.noise},eps={job.epsilon})", reset_hook=demo.reset)


_TAKEOVER = re.compile(r"takeover\(switch=(\d+)\)")


def takeover_switch(ep: Episode) -> int | None:
    """The step where the expert took over a takeover episode (its ``source`` is
    ``takeover(switch=N)``), None for any other episode."""
    m = _TAKEOVER.fullmatch(ep.source)
    return int(m.group(1)) if m else None


def expert_steps_start(ep: Episode) -> int:
    """First step of an episode whose action is the expert's (0, or a takeover's switch step)."""
    return takeover_switch(ep) or 0


def _takeover_episode(env: TwinEnv, job: _Job, s: int, policy: Any) -> Episode:
    """The policy drives until a random step, then the expert (re-planning from there) finishes."""
    switch = int(np.random.default_rng([s, 13]).integers(1, job.max_switch + 1))
    demo = demonstrator(env)
    step = [0]

    def act(sim: TwinSim, obs: dict[str, np.ndarray]) -> Any:
        step[0] += 1
        if step[0] <= switch:
            return policy.act_single(obs)
        if step[0] == switch + 1:
            demo.reset(sim)
        return demo.act(sim)

    policy.reset()
    return record_episode(env, act, s, source=f"takeover(switch={switch})")


def _run_job(job: _Job) -> list[Episode]:
    env = TwinEnv(
        job.task, control_mode=job.control_mode, observations=job.observations, suite=job.suite, engine=job.engine
    )
    policy = None
    if job.policy_path:
        from policies.checkpoint import load_checkpoint

        policy = load_checkpoint(job.policy_path)
    try:
        return [
            _takeover_episode(env, job, s, policy) if policy is not None else _expert_episode(env, job, s)
            for s in job.seeds
        ]
    finally:
        env.close()


def _worker_init() -> None:
    from policies.runtime import set_torch_threads
    from twin.lifeline import set_parent_death_signal

    set_parent_death_signal(signal.SIGKILL)  # the collection ends with its parent
    set_torch_threads("worker")


def _run_jobs(jobs: list[_Job], workers: int) -> Iterator[Episode]:
    """Episodes of ``jobs`` in order, computed ``workers`` at a time in child processes (in this
    process when ``workers <= 1``)."""
    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            yield from _run_job(job)
        return
    ctx = mp.get_context("spawn")
    todo = iter(jobs)
    pending: deque[Future[list[Episode]]] = deque()
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_worker_init) as pool:

        def fill() -> None:  # a few jobs ahead, not all: finished episodes wait in memory
            while len(pending) < 2 * workers and (job := next(todo, None)) is not None:
                pending.append(pool.submit(_run_job, job))

        fill()
        try:
            while pending:
                episodes = pending.popleft().result()
                fill()
                yield from episodes
        finally:
            for f in pending:
                f.cancel()


def _writer(path: str | Path, task: str, control_mode: str | None) -> EpisodeWriter:
    """The dataset's writer, in the control mode the env resolves ``control_mode`` to."""
    env = TwinEnv(task, control_mode=control_mode)
    mode = env.cfg.actions.mode
    env.close()
    return EpisodeWriter(path, task, mode)


def _jobs(base: _Job, seeds: list[int], batch: int) -> list[_Job]:
    return [dataclasses.replace(base, seeds=tuple(seeds[i : i + batch])) for i in range(0, len(seeds), batch)]


def collect_demos(
    task: str,
    path: str | Path,
    episodes: int,
    *,
    control_mode: str | None = None,
    observations: ObservationCfg | None = None,
    suite: PerturbationSuite | str | None = None,
    noise: float = 0.0,
    epsilon: float = 0.0,
    seed: int = 0,
    only_success: bool = False,
    progress: Callable[[int, Episode], None] | None = None,
    engine: str = "mujoco",
    workers: int = 1,
) -> Path:
    """Run the task's demonstrator for ``episodes`` seeds and append them to ``path``.

    ``epsilon``: probability of replacing an action by a uniformly random one (quality knob).
    ``only_success``: keep only successful episodes (still tries exactly ``episodes`` seeds).
    ``engine``: the physics engine (twin.env.ENGINES; "pybullet" for proxy-real logs).
    ``workers``: processes collecting in parallel (episodes are written in seed order; the
    result does not depend on the count).
    """
    writer = _writer(path, task, control_mode)
    base = _Job(task, control_mode, observations, suite, engine, (), noise=noise, epsilon=epsilon)
    for i, ep in enumerate(_run_jobs(_jobs(base, [seed + i for i in range(episodes)], 5), workers)):
        if ep.success or not only_success:
            writer.add(ep)
        if progress is not None:
            progress(i, ep)
    return Path(path)


def collect_takeovers(
    task: str,
    policy_path: str | Path,
    path: str | Path,
    episodes: int,
    *,
    control_mode: str | None = None,
    seed: int = 0,
    max_switch: int = 200,
    progress: Callable[[int, Episode], None] | None = None,
    workers: int = 1,
) -> Path:
    """DAgger-style data: for each seed the checkpoint at ``policy_path`` drives for a random
    number of steps in ``1..max_switch``, then the task's expert re-plans from where the policy
    left the scene and finishes the episode. Episodes are written whole (the policy's steps
    too, so the state they reach can be replayed) with ``source = "takeover(switch=N)"``;
    training uses only the expert's steps (:func:`expert_steps_start`).
    Episodes the policy ends before the switch are dropped."""
    writer = _writer(path, task, control_mode)
    base = _Job(task, control_mode, None, None, "mujoco", (), policy_path=str(policy_path), max_switch=int(max_switch))
    for i, ep in enumerate(_run_jobs(_jobs(base, [seed + i for i in range(episodes)], 5), workers)):
        if expert_steps_start(ep) < ep.length:
            writer.add(ep)
        if progress is not None:
            progress(i, ep)
    return Path(path)
