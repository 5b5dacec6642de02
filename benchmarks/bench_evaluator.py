"""Evaluator: throughput vs raw mj_step on 2 processes, 1 -> 2 worker scaling, memory over 100 checkpoints.

Targets (issue 4):

(i)   episodes/s and env-steps/s of ``evaluate`` with a small MLP policy on 2 local workers,
      expressed as physics steps/s (env steps x substeps) and divided by raw ``mj_step``
      throughput of the same compiled model on 2 processes: >= 0.8.
(ii)  1 -> 2 worker scaling of the same campaign: >= 1.8x.
(iii) resident memory of the workers after evaluating 100 checkpoints vs after 1 (same
      persistent workers, weights swapped per checkpoint): growth < 10%.

All figures come from one run (the ratios compare measurements taken minutes apart on the
same machine). Throughput is wall time over steady state: each executor first runs a warm-up
campaign (worker start, model compile, policy load), and the timed campaign reuses its
workers. The machine's load average is printed: other processes on these 2 cores lower
every ratio here.
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
    return EvalSpec(name="bench", tasks=[TASK], conditions=["nominal"], seeds=list(range(200_000, 200_000 + n_episodes)),
                    max_steps=max_steps, batch_size=batch_size, video=VideoCfg(enabled=False))


def _raw_worker(args: tuple[int, float]) -> tuple[int, float]:
    """mj_step on the task's compiled model for ``seconds`` of wall time: (steps, seconds)."""
    seed, seconds = args
    env = TwinEnv(TASK, control_mode=CONTROL)
    env.reset(seed=seed)
    m, d = env.sim.model, env.sim.data
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        mujoco.mj_step(m, d, nstep=50)
        n += 50
    dt = time.perf_counter() - t0
    env.close()
    return n, dt


def raw_mj_step_rate(processes: int = 2, seconds: float = 10.0) -> float:
    """Total raw mj_step/s of ``processes`` processes stepping the same model at once."""
    with mp.get_context("spawn").Pool(processes) as pool:
        out = pool.map(_raw_worker, [(i, seconds) for i in range(processes)])
    return sum(n / dt for n, dt in out)


def campaign_rate(ckpt: Path, workers: int, episodes: int, max_steps: int, tmp: Path) -> dict[str, float]:
    """Steady-state episodes/s and env-steps/s of one checkpoint's campaign on ``workers`` workers."""
    ex = LocalExecutor(workers)
    try:
        # warm-up: one full-batch unit per worker, so every worker has built its 8 envs and
        # loaded the policy before the clock starts
        evaluate([ckpt], _spec(8 * workers, 5), tmp / f"warm{workers}", executor=ex, plots=False, videos=False)
        t0 = time.perf_counter()
        res = evaluate([ckpt], _spec(episodes, max_steps), tmp / f"timed{workers}", executor=ex, plots=False,
                       videos=False)
        wall = time.perf_counter() - t0
    finally:
        ex.close()
    eps = res.episodes
    steps = sum(e.length for e in eps)
    return {"episodes": len(eps), "env_steps": steps, "wall_s": wall, "episodes_per_s": len(eps) / wall,
            "env_steps_per_s": steps / wall}


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
    return {"rss_after_1_mib": rss1, "rss_after_half_mib": rss_half, "rss_after_n_mib": rss_n,
            "growth": sum(rss_n) / sum(rss1) - 1.0, "half": half, "n": n_checkpoints, "wall_s": wall}


def main() -> None:
    episodes = int(os.environ.get("TWINRANK_BENCH_EVAL_EPISODES", 32))
    max_steps = int(os.environ.get("TWINRANK_BENCH_EVAL_MAX_STEPS", 100))
    print(f"load average before: {os.getloadavg()[0]:.2f} (2 cores)")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        ckpt = _checkpoint(tmp / "ckpt", seed=0)
        env = TwinEnv(TASK, control_mode=CONTROL)
        nsub = env.nsub
        env.close()
        raw = raw_mj_step_rate(2)
        two = campaign_rate(ckpt, 2, episodes, max_steps, tmp)
        one = campaign_rate(ckpt, 1, episodes, max_steps, tmp)
        phys = two["env_steps_per_s"] * nsub
        print(f"{TASK}, state MLP (64, 64), {CONTROL} control, {episodes} episodes x {max_steps} steps, batch 8:")
        print(f"  2 workers: {two['episodes_per_s']:.2f} episodes/s, {two['env_steps_per_s']:.0f} env-steps/s "
              f"= {phys:.0f} physics steps/s ({nsub} substeps per env step)")
        print(f"  raw mj_step on 2 processes, same model: {raw:.0f} steps/s")
        print(f"  ratio evaluator / raw physics: {phys / raw:.2f} (target >= 0.8)")
        print(f"  1 worker: {one['env_steps_per_s']:.0f} env-steps/s; 1 -> 2 worker scaling "
              f"{two['env_steps_per_s'] / one['env_steps_per_s']:.2f}x (target >= 1.8x)")
        mem = memory_growth(tmp)
        def fmt(v: list[float]) -> str:
            return f"{sum(v):.0f} MiB (" + " + ".join(f"{x:.0f}" for x in v) + ")"

        print(f"  workers' RSS after 1 checkpoint {fmt(mem['rss_after_1_mib'])}, after {mem['half']} more "
              f"{fmt(mem['rss_after_half_mib'])}, after {mem['n']} more {fmt(mem['rss_after_n_mib'])}: "
              f"growth 1 -> {mem['n']} {mem['growth']:+.1%} (target < 10%; "
              f"{mem['half'] + mem['n']} checkpoint campaigns in {mem['wall_s']:.0f} s)")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
