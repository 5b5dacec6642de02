"""Evaluator: throughput vs raw mj_step on 2 processes, 1 -> 2 worker scaling, memory over 100 checkpoints.

Targets (issue 4):

(i)   episodes/s and env-steps/s of ``evaluate`` with a small MLP policy on 2 local workers,
      expressed as physics steps/s (env steps x substeps) and divided by raw ``mj_step``
      throughput of the same compiled model on 2 processes: >= 0.8. Two raw baselines are
      measured and both ratios printed:
      - "at rest": the task's model stepped from its reset state with the home command held
        (the robot still, the mug resting);
      - "replayed": the same model stepped through the very episodes the evaluator runs
        (same seeds, the policy's control sequence recorded beforehand, replayed with nothing
        but ``data.ctrl`` writes between ``mj_step(nstep=substeps)`` calls), i.e. the physics
        cost of the workload itself. Its ratio is the evaluator's efficiency: the share of
        its time that is physics.
      The workers also time their own physics stepping; that share of their unit time is
      printed too (a measure of the same thing that the machine's speed swings cancel out of).
(ii)  1 -> 2 worker scaling of the same campaign (measured in the same rounds): >= 1.8x.
(iii) resident memory of the workers after evaluating 100 checkpoints vs after 1 (same
      persistent workers, weights swapped per checkpoint): growth < 10%.

The shared 2-core machines here are noisy (raw mj_step rates swing by 1.5x within a
minute), so (i) is measured in interleaved rounds (at rest, replayed, evaluator, repeated)
and the median of the per-round ratios is printed with every round. Throughput is wall time
over steady state: each executor first runs a warm-up campaign (worker start, model
compile, policy load), and the timed campaigns reuse its workers. The machine's load
average is printed: other processes on these 2 cores lower every ratio here.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import mujoco
import numpy as np
import torch

from evaluator.executors import LocalExecutor
from evaluator.run import evaluate
from evaluator.spec import EvalSpec, VideoCfg
from policies.checkpoint import save_checkpoint
from policies.interface import PolicySpec, make_policy
from twin.env import TwinEnv

TASK = "mug_to_sink"
CONTROL = "discrete"


def _checkpoint(directory: Path, seed: int) -> Path:
    env = TwinEnv(TASK, control_mode=CONTROL)
    spec = PolicySpec.from_env(env, obs_keys=["state"])
    env.close()
    torch.manual_seed(seed)
    policy = make_policy("mlp", {"hidden_sizes": [64, 64]}, spec)
    return save_checkpoint(policy, directory, training_step=seed)


def _spec(n_episodes: int, max_steps: int, batch_size: int = 8) -> EvalSpec:
    return EvalSpec(
        name="bench",
        tasks=[TASK],
        conditions=["nominal"],
        seeds=list(range(200_000, 200_000 + n_episodes)),
        max_steps=max_steps,
        batch_size=batch_size,
        video=VideoCfg(enabled=False),
    )


def _raw_worker(args: tuple[int, float]) -> tuple[int, float]:
    """mj_step on the task's compiled model at rest for ``seconds`` of wall time: (steps, seconds)."""
    seed, seconds = args
    env = TwinEnv(TASK, control_mode=CONTROL)
    env.reset(seed=seed)
    m, d = env.sim.model, env.sim.data
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        mujoco.mj_step(m, d, nstep=env.nsub)
        n += env.nsub
    dt = time.perf_counter() - t0
    env.close()
    return n, dt


def record_episodes(ckpt: Path, seeds: list[int], max_steps: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The evaluator's episodes as (initial physics state, control per env step), recorded by
    running the checkpoint deterministically in the twin (nominal condition)."""
    from policies.checkpoint import load_checkpoint

    env = TwinEnv(TASK, control_mode=CONTROL, max_steps=max_steps)
    policy = load_checkpoint(ckpt, task_env=env)
    m = env.sim.model
    spec = mujoco.mjtState.mjSTATE_INTEGRATION
    out = []
    for seed in seeds:
        obs, _ = env.reset(seed=seed)
        state = np.empty(mujoco.mj_stateSize(m, spec))
        mujoco.mj_getState(m, env.sim.data, state, spec)
        ctrls = []
        done = False
        while not done:
            a = policy.act({k: v[None] for k, v in obs.items()}, deterministic=True)[0]
            obs, _, term, trunc, _ = env.step(a)
            # the command this step held over its substeps (nominal condition: no latency)
            ctrls.append(np.concatenate([env.sim.q_target, [env.sim.gripper_cmd]]))
            done = term or trunc
        out.append((state, np.array(ctrls)))
    env.close()
    return out


def _replay_worker(args: tuple[str, list[int], int, float]) -> tuple[int, float]:
    """Replay recorded episodes with raw mj_step for ``seconds`` of wall time: (steps, seconds)."""
    ckpt, seeds, max_steps, seconds = args
    episodes = record_episodes(Path(ckpt), seeds, max_steps)
    env = TwinEnv(TASK, control_mode=CONTROL)
    env.reset(seed=seeds[0])
    m, d, h, nsub = env.sim.model, env.sim.data, env.sim.h, env.nsub
    spec = mujoco.mjtState.mjSTATE_INTEGRATION
    n, k, t0 = 0, 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        state, ctrls = episodes[k % len(episodes)]
        k += 1
        mujoco.mj_setState(m, d, state, spec)
        for c in ctrls:
            d.ctrl[h.arm_act] = c[:7]
            d.ctrl[h.gripper_act] = c[7]
            mujoco.mj_step(m, d, nstep=nsub)
        n += nsub * len(ctrls)
    dt = time.perf_counter() - t0
    env.close()
    return n, dt


def raw_mj_step_rate(processes: int = 2, seconds: float = 10.0) -> float:
    """Total raw mj_step/s of ``processes`` processes stepping the same model at rest at once."""
    with mp.get_context("spawn").Pool(processes) as pool:
        out = pool.map(_raw_worker, [(i, seconds) for i in range(processes)])
    return sum(n / dt for n, dt in out)


def replay_mj_step_rate(
    ckpt: Path, seeds: list[int], max_steps: int, processes: int = 2, seconds: float = 10.0
) -> float:
    """Total raw mj_step/s of ``processes`` processes replaying the evaluator's episodes
    (each process takes every ``processes``-th seed, as the workers share the campaign)."""
    with mp.get_context("spawn").Pool(processes) as pool:
        out = pool.map(_replay_worker, [(str(ckpt), seeds[i::processes], max_steps, seconds) for i in range(processes)])
    return sum(n / dt for n, dt in out)


def campaign_rate(
    ckpt: Path, workers: int, episodes: int, max_steps: int, tmp: Path, ex: LocalExecutor | None = None, tag: str = ""
) -> dict[str, float]:
    """Steady-state episodes/s and env-steps/s of one checkpoint's campaign on ``workers``
    workers (on ``ex``'s workers when given: they are warm already)."""
    own = ex is None
    if ex is None:
        ex = LocalExecutor(workers)
    try:
        if own:
            # warm-up: one full-batch unit per worker, so every worker has built its 8 envs and
            # loaded the policy before the clock starts
            evaluate([ckpt], _spec(8 * workers, 5), tmp / f"warm{workers}", executor=ex, plots=False, videos=False)
        t0 = time.perf_counter()
        res = evaluate(
            [ckpt], _spec(episodes, max_steps), tmp / f"timed{workers}{tag}", executor=ex, plots=False, videos=False
        )
        wall = time.perf_counter() - t0
    finally:
        if own:
            ex.close()
    eps = res.episodes
    steps = sum(e.length for e in eps)
    return {
        "episodes": len(eps),
        "env_steps": steps,
        "wall_s": wall,
        "episodes_per_s": len(eps) / wall,
        "env_steps_per_s": steps / wall,
        "physics_share": res.physics_share or 0.0,
    }


def throughput_rounds(
    ckpt: Path, episodes: int, max_steps: int, tmp: Path, rounds: int = 3, raw_seconds: float = 6.0
) -> list[dict[str, float]]:
    """Interleaved rounds of (raw at rest, raw replayed, evaluator on 2 warm workers, the same
    campaign on 1 warm worker)."""
    seeds = _spec(episodes, max_steps).seeds
    ex2, ex1 = LocalExecutor(2), LocalExecutor(1)
    out = []
    try:
        evaluate([ckpt], _spec(16, 5), tmp / "warm_rounds2", executor=ex2, plots=False, videos=False)
        evaluate([ckpt], _spec(8, 5), tmp / "warm_rounds1", executor=ex1, plots=False, videos=False)
        for r in range(rounds):
            rest = raw_mj_step_rate(2, raw_seconds)
            replay = replay_mj_step_rate(ckpt, seeds, max_steps, 2, raw_seconds)
            two = campaign_rate(ckpt, 2, episodes, max_steps, tmp, ex=ex2, tag=f"_r{r}")
            one = campaign_rate(ckpt, 1, episodes, max_steps, tmp, ex=ex1, tag=f"_r{r}")
            out.append({"rest": rest, "replay": replay, **two, "one_env_steps_per_s": one["env_steps_per_s"]})
    finally:
        ex2.close()
        ex1.close()
    return out


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def memory_growth(tmp: Path, n_checkpoints: int = 100, workers: int = 2) -> dict[str, Any]:
    """Workers' RSS after a campaign of 1 checkpoint and after ``n_checkpoints`` more (same workers).

    Each checkpoint's campaign is ``workers`` units (2 episodes each), so every worker has
    built its envs and loaded a policy before the first measurement; the per-worker RSS is
    printed too, and a midpoint tells warm-up from steady growth."""
    ckpts = [_checkpoint(tmp / "mem" / f"ckpt{i:03d}", seed=i) for i in range(n_checkpoints)]
    spec = _spec(2 * workers, max_steps=20, batch_size=2)
    ex = LocalExecutor(workers)
    try:
        evaluate(ckpts[:1], spec, tmp / "mem1", executor=ex, plots=False, videos=False)
        rss1 = [_rss_kib(p) / 1024 for p in ex.worker_pids]
        t0 = time.perf_counter()
        half = n_checkpoints // 2
        evaluate(ckpts[:half], spec, tmp / "memhalf", executor=ex, plots=False, videos=False)
        rss_half = [_rss_kib(p) / 1024 for p in ex.worker_pids]
        evaluate(ckpts, spec, tmp / "memall", executor=ex, plots=False, videos=False)
        wall = time.perf_counter() - t0
        rss_n = [_rss_kib(p) / 1024 for p in ex.worker_pids]
    finally:
        ex.close()
    return {
        "rss_after_1_mib": rss1,
        "rss_after_half_mib": rss_half,
        "rss_after_n_mib": rss_n,
        "growth": sum(rss_n) / sum(rss1) - 1.0,
        "half": half,
        "n": n_checkpoints,
        "wall_s": wall,
    }


def main() -> None:
    episodes = int(os.environ.get("TWINRANK_BENCH_EVAL_EPISODES", 64))
    max_steps = int(os.environ.get("TWINRANK_BENCH_EVAL_MAX_STEPS", 100))
    print(f"load average before: {os.getloadavg()[0]:.2f} (2 cores)")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        ckpt = _checkpoint(tmp / "ckpt", seed=0)
        env = TwinEnv(TASK, control_mode=CONTROL)
        nsub = env.nsub
        env.close()
        rounds = throughput_rounds(ckpt, episodes, max_steps, tmp, rounds=5)
        print(
            f"{TASK}, state MLP (64, 64), {CONTROL} control, {episodes} episodes x {max_steps} steps, batch 8, "
            f"{nsub} physics steps per env step; 2 workers vs raw mj_step on 2 processes:"
        )
        for i, r in enumerate(rounds):
            phys = r["env_steps_per_s"] * nsub
            print(
                f"  round {i + 1}: evaluator {r['episodes_per_s']:.2f} episodes/s, {r['env_steps_per_s']:.0f} "
                f"env-steps/s = {phys:.0f} physics steps/s; raw at rest {r['rest']:.0f}/s, replayed "
                f"{r['replay']:.0f}/s; ratio vs at rest {phys / r['rest']:.2f}, vs replayed {phys / r['replay']:.2f}"
            )
        med_rest = float(np.median([r["env_steps_per_s"] * nsub / r["rest"] for r in rounds]))
        med_replay = float(np.median([r["env_steps_per_s"] * nsub / r["replay"] for r in rounds]))
        med_phys = float(np.median([r["replay"] / r["rest"] for r in rounds]))
        shares = [r["physics_share"] for r in rounds]
        print(
            f"  median ratio evaluator / raw physics: vs replayed episodes {med_replay:.2f}, vs at rest "
            f"{med_rest:.2f} (target >= 0.8); the episodes' own physics runs at {med_phys:.2f} of the "
            f"at-rest rate"
        )
        print(
            "  the workers' own time in physics stepping (measured inside them, so machine speed swings "
            "cancel): " + ", ".join(f"{x:.2f}" for x in shares) + f", median {float(np.median(shares)):.2f}"
        )
        scaling = [r["env_steps_per_s"] / r["one_env_steps_per_s"] for r in rounds]
        print(
            "  1 worker: "
            + ", ".join(f"{r['one_env_steps_per_s']:.0f}" for r in rounds)
            + " env-steps/s in the rounds; 1 -> 2 worker scaling per round "
            + ", ".join(f"{x:.2f}x" for x in scaling)
            + f", median {float(np.median(scaling)):.2f}x (target >= 1.8x)"
        )
        mem = memory_growth(tmp)

        def fmt(v: list[float]) -> str:
            return f"{sum(v):.0f} MiB (" + " + ".join(f"{x:.0f}" for x in v) + ")"

        print(
            f"  workers' RSS after 1 checkpoint {fmt(mem['rss_after_1_mib'])}, after {mem['half']} more "
            f"{fmt(mem['rss_after_half_mib'])}, after {mem['n']} more {fmt(mem['rss_after_n_mib'])}: "
            f"growth 1 -> {mem['n']} {mem['growth']:+.1%} (target < 10%; "
            f"{mem['half'] + mem['n']} checkpoint campaigns in {mem['wall_s']:.0f} s)"
        )
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
