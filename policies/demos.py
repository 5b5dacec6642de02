"""Scripted demonstrators for every task and demo collection into the episode format.

Each task's expert (``task.expert()``: a waypoint IK planner over privileged state) acts in
``ee_pose`` (or ``pusht_xy``) mode. ``DiscreteTracker`` turns the same plan into CASHER's 14
discrete actions, so discrete policies get demonstrations in their own action space. The
``noise`` argument perturbs planned waypoints (metres), giving demonstrations of varying
quality; ``epsilon`` replaces a fraction of actions by random ones.
"""

from __future__ import annotations

from collections.abc import Callable
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
) -> Path:
    """Run the task's demonstrator for ``episodes`` seeds and append them to ``path``.

    ``epsilon``: probability of replacing an action by a uniformly random one (quality knob).
    ``only_success``: keep only successful episodes (still tries exactly ``episodes`` seeds).
    ``engine``: the physics engine (twin.env.ENGINES; "pybullet" for proxy-real logs).
    """
    env = TwinEnv(task, control_mode=control_mode, observations=observations, suite=suite, engine=engine)
    writer = EpisodeWriter(path, task, env.cfg.actions.mode)
    for i in range(episodes):
        s = seed + i
        rng = np.random.default_rng([s, 11])
        demo = demonstrator(env, noise=noise, rng=rng)

        def act(sim: TwinSim, obs: dict[str, np.ndarray], demo: Any = demo, rng: np.random.Generator = rng) -> Any:
            a = demo.act(sim)
            if epsilon > 0 and rng.random() < epsilon:
                return env.action_space.sample()
            return a

        ep = record_episode(env, act, s, source=f"expert(noise={noise},eps={epsilon})", reset_hook=demo.reset)
        if ep.success or not only_success:
            writer.add(ep)
        if progress is not None:
            progress(i, ep)
    env.close()
    return Path(path)
