"""The rollout engine: a policy acting in a batch of twin envs, one episode per env, to measure it.

Everything that runs a policy in the twin to measure it goes through :func:`run_episodes`:
the evaluator's workers (campaigns, videos, the observations recorded for OOD references),
training's periodic in-sim success (:func:`success_rate`), and distillation's teacher and
student evaluations. Training's own data collection (PPO rollouts, DAgger) is learning, not
measuring, and keeps its loops.

One call runs up to ``batch_size`` episodes side by side: every step, one batched
``policy.act`` on the stacked observations (rows of finished episodes are padded with
zeros), then each live env steps in its three phases across the batch
(``TwinEnv.begin_step`` for all, ``physics_step`` for all, ``end_step`` for all: the same
results as ``env.step`` per env). An episode ends when its env terminates or truncates, when
the policy raises or returns a malformed action (every live episode fails with
``policy_error``; a non-finite or out-of-range action fails that episode with
``policy_nonfinite_action`` / ``policy_invalid_action``), or when its env raises
(``env_error``). Hooks (:class:`RolloutHooks`) let a caller see or change what happens
without another loop: record frames or observations, swap in synthetic point clouds, check
on its parent process, reset a teacher with its env.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class EpisodeOutcome:
    """How one episode ended. ``failure_reason`` is ``""`` on success, else the env's reason
    (``timeout``, ``physics_unstable``...) or ``policy_error``, ``policy_nonfinite_action``,
    ``policy_invalid_action``, ``env_error``; ``error`` holds the detail; ``info`` is the env's
    last info dict (empty when the episode ended outside the env)."""

    slot: int
    seed: int
    success: bool
    ret: float
    length: int
    failure_reason: str = ""
    error: str = ""
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class RolloutHooks:
    """Optional callbacks of :func:`run_episodes` (each gets the episode's slot).

    ``on_reset(slot, env, seed)``: after the env's reset, before the first action (e.g. reset
    a teacher that reads the env, record the first frame). ``transform_obs(slot, env, obs)``:
    the observation the policy acts on (e.g. a synthetic point cloud). ``on_obs(slot, obs)``:
    every observation the policy acts on, after the transform. ``on_step()``: once per batched
    step, before acting. ``on_env_step(slot, env)``: after an env stepped (e.g. a frame).
    ``on_episode(outcome)``: an episode ended.
    """

    on_reset: Callable[[int, Any, int], None] | None = None
    transform_obs: Callable[[int, Any, dict[str, np.ndarray]], dict[str, np.ndarray]] | None = None
    on_obs: Callable[[int, dict[str, np.ndarray]], None] | None = None
    on_step: Callable[[], None] | None = None
    on_env_step: Callable[[int, Any], None] | None = None
    on_episode: Callable[[EpisodeOutcome], None] | None = None


def check_action(a: Any, aspec: Any) -> tuple[str, str] | None:
    """``(failure_reason, detail)`` when action ``a`` cannot be sent to an env whose action is
    ``aspec`` (a :class:`policies.ActionSpec`), else None."""
    a = np.asarray(a)
    if aspec.discrete:
        if a.size != 1:
            return "policy_invalid_action", f"discrete action of shape {a.shape}"
        v = a.reshape(-1)[0]
        if np.issubdtype(a.dtype, np.floating) and not np.isfinite(v):
            return "policy_nonfinite_action", f"action {v!r}"
        if not (0 <= v < aspec.n) or v != int(v):
            return "policy_invalid_action", f"action {v!r} is not in 0..{aspec.n - 1} (NaN cast to int?)"
        return None
    if a.shape != tuple(aspec.shape):
        return "policy_invalid_action", f"action shape {a.shape}, expected {tuple(aspec.shape)}"
    if not np.isfinite(a.astype(np.float64)).all():
        return "policy_nonfinite_action", f"non-finite action {a.tolist()}"
    return None


def run_episodes(
    policy: Any,
    envs: Mapping[int, Any],
    episodes: Mapping[int, tuple[int, Any]],
    *,
    spec: Any,
    batch_size: int | None = None,
    deterministic: bool = True,
    hooks: RolloutHooks | None = None,
) -> tuple[list[EpisodeOutcome], int]:
    """Run one episode per slot: ``episodes[slot] = (seed, condition)`` in ``envs[slot]``
    (a ``condition`` of None means the env's own: its suite sampled at ``seed``, or nominal).

    ``policy``: anything with ``act(obs_batch, deterministic)`` (and ``reset()``), reading
    ``spec.obs_keys`` and emitting ``spec.action`` (a :class:`policies.PolicySpec`); it sees
    batches of ``batch_size`` rows (default: the largest slot + 1), row ``slot`` holding that
    episode's observation. Returns the outcomes in the order the episodes ended and the number
    of batched steps taken.
    """
    h = hooks or RolloutHooks()
    slots = sorted(episodes)
    if not slots:
        return [], 0
    B = int(batch_size) if batch_size is not None else slots[-1] + 1
    if slots[0] < 0 or slots[-1] >= B:
        raise ValueError(f"slots {slots} do not fit a batch of {B}")
    keys = list(spec.obs_keys)
    pads = {k: np.zeros(spec.obs(k).shape, dtype=np.dtype(spec.obs(k).dtype)) for k in keys}
    obs: dict[int, dict[str, np.ndarray]] = {}
    ret = {i: 0.0 for i in slots}
    length = {i: 0 for i in slots}
    for i in slots:
        seed, condition = episodes[i]
        options = {"condition": condition} if condition is not None else None
        o, _ = envs[i].reset(seed=int(seed), options=options)
        if h.on_reset is not None:
            h.on_reset(i, envs[i], int(seed))
        obs[i] = o
    if hasattr(policy, "reset"):
        policy.reset()
    outcomes: list[EpisodeOutcome] = []
    active = set(slots)
    cap = max(envs[i].cfg.terminations.max_steps for i in slots) + 1
    steps = 0

    def finish(i: int, success: bool, reason: str, error: str = "", info: dict[str, Any] | None = None) -> None:
        out = EpisodeOutcome(
            slot=i,
            seed=int(episodes[i][0]),
            success=bool(success),
            ret=float(ret[i]),
            length=int(length[i]),
            failure_reason="" if success else reason,
            error=error,
            info=dict(info or {}),
        )
        active.discard(i)
        outcomes.append(out)
        if h.on_episode is not None:
            h.on_episode(out)

    def env_failed(i: int, exc: Exception) -> None:
        finish(i, False, "env_error", f"step {length[i]}: {type(exc).__name__}: {exc}")

    while active and steps < cap:
        if h.on_step is not None:
            h.on_step()
        rows = {}
        for i in sorted(active):
            o = obs[i] if h.transform_obs is None else h.transform_obs(i, envs[i], obs[i])
            if h.on_obs is not None:
                h.on_obs(i, o)
            rows[i] = o
        batch = {k: np.stack([rows[i][k] if i in rows else pads[k] for i in range(B)]) for k in keys}
        try:
            actions = np.asarray(policy.act(batch, deterministic=deterministic))
            if actions.shape[:1] != (B,):
                raise ValueError(f"act() returned shape {actions.shape} for a batch of {B}")
        except Exception as exc:  # noqa: BLE001 - the policy's own failure
            msg = f"step {steps}: {type(exc).__name__}: {exc}"
            for i in sorted(active):
                finish(i, False, "policy_error", msg)
            break
        steps += 1
        # One env step per live env, in the env's three phases across the batch (every
        # action, then every env's physics, then every outcome and observation): the same
        # results as env.step per env, with each phase's code kept hot in the CPU caches.
        begun: list[tuple[int, Any, dict[str, Any]]] = []
        for i in sorted(active):
            bad = check_action(actions[i], spec.action)
            if bad is not None:
                finish(i, False, bad[0], f"step {length[i]}: {bad[1]}")
                continue
            try:
                begun.append((i, envs[i], envs[i].begin_step(actions[i])))
            except Exception as exc:  # noqa: BLE001
                env_failed(i, exc)
        stepped: list[tuple[int, Any, dict[str, Any], bool]] = []
        for i, env, report in begun:
            try:
                stepped.append((i, env, report, env.physics_step()))
            except Exception as exc:  # noqa: BLE001
                env_failed(i, exc)
        for i, env, report, stable in stepped:
            try:
                o, r, term, trunc, info = env.end_step(report, stable)
            except Exception as exc:  # noqa: BLE001
                env_failed(i, exc)
                continue
            obs[i] = o
            ret[i] += float(r)
            length[i] += 1
            if h.on_env_step is not None:
                h.on_env_step(i, env)
            if term or trunc:
                success = bool(info.get("success", False))
                finish(i, success, str(info.get("failure_reason") or ("" if success else "failure")), "", info)
    for i in sorted(active):  # only if an env never ended its episode (should not happen)
        finish(i, False, "timeout", f"no termination after {steps} steps")
    return outcomes, steps


def success_rate_in(
    policy: Any,
    envs: Sequence[Any],
    seeds: Sequence[int],
    *,
    spec: Any = None,
    deterministic: bool = True,
    hooks: RolloutHooks | None = None,
) -> float:
    """Success rate of ``policy`` over ``seeds`` (one episode each, the envs' own condition
    for the seed), ``len(envs)`` episodes at a time; NaN (not evaluated) for no seeds.
    ``spec``: what the policy reads and emits (default ``policy.spec``)."""
    seeds = [int(s) for s in seeds]
    if not seeds:
        return float("nan")
    n = len(envs)
    wins = 0
    for start in range(0, len(seeds), n):
        chunk = seeds[start : start + n]
        outcomes, _ = run_episodes(
            policy,
            {j: envs[j] for j in range(len(chunk))},
            {j: (s, None) for j, s in enumerate(chunk)},
            spec=spec if spec is not None else policy.spec,
            batch_size=len(chunk),
            deterministic=deterministic,
            hooks=hooks,
        )
        wins += sum(o.success for o in outcomes)
    return wins / len(seeds)


def success_rate(
    policy: Any,
    task: str,
    seeds: Sequence[int],
    *,
    control_mode: str | None = None,
    suite: Any = None,
    deterministic: bool = True,
    batch_size: int = 8,
) -> float:
    """Success rate of ``policy`` on ``task`` over ``seeds`` (one episode each, under ``suite``
    sampled at the seed, or nominal) in fresh envs, ``batch_size`` at a time; NaN (not
    evaluated) for no seeds. Training's periodic in-sim success check."""
    from twin.env import TwinEnv

    if not len(seeds):
        return float("nan")
    envs = [TwinEnv(task, control_mode=control_mode, suite=suite) for _ in range(min(batch_size, len(seeds)))]
    if hasattr(policy, "eval"):
        policy.eval()
    try:
        return success_rate_in(policy, envs, seeds, deterministic=deterministic)
    finally:
        for e in envs:
            e.close()


__all__ = ["EpisodeOutcome", "RolloutHooks", "check_action", "run_episodes", "success_rate", "success_rate_in"]
