"""Torch threads: CPU time per diffusion action chunk, torch's default threads vs set_torch_threads("worker").

A :class:`policies.DiffusionPolicy` with its default config for ``push_t`` plans one action
chunk per call (``reset()`` then ``act()`` on a batch of 8 envs, the evaluator's default
unit) with

- torch's default intra-op threads (one per core, what a process gets unless it sets them),
- ``set_torch_threads("worker")`` (1 thread unless ``TWINRANK_TORCH_THREADS`` says otherwise),

in interleaved rounds, each at rest and with every core kept busy by spinning processes the
benchmark starts (and ends by PID): the situation of an evaluator worker next to other
workers. CPU time is this process's (all its threads, ``time.process_time``) per chunk;
medians over the rounds, and the ratio default / worker.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time

import numpy as np
import torch

from policies.interface import PolicySpec, make_policy
from policies.runtime import available_cores, set_torch_threads
from twin.env import TwinEnv

BATCH = 8
CHUNKS_PER_ROUND = 10
ROUNDS = 5


def _policy_and_obs() -> tuple[torch.nn.Module, dict[str, np.ndarray]]:
    env = TwinEnv("push_t")
    spec = PolicySpec.from_env(env, obs_keys=["state"])
    obs, _ = env.reset(seed=0)
    env.close()
    torch.manual_seed(0)
    policy = make_policy("diffusion", {}, spec).eval()
    return policy, {"state": np.repeat(obs["state"][None], BATCH, axis=0)}


def _per_chunk(policy: torch.nn.Module, obs: dict[str, np.ndarray], threads: int) -> tuple[float, float]:
    """(CPU seconds, wall seconds) per chunk with ``threads`` intra-op threads."""
    torch.set_num_threads(threads)
    policy.reset()
    policy.act(obs)  # warm-up at this thread count
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for _ in range(CHUNKS_PER_ROUND):
        policy.reset()  # empty queues: every act() plans a chunk
        policy.act(obs)
    return ((time.process_time() - cpu0) / CHUNKS_PER_ROUND, (time.perf_counter() - wall0) / CHUNKS_PER_ROUND)


def _spinners(n: int) -> list[subprocess.Popen[bytes]]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def measure(busy: bool, default_threads: int, worker_threads: int) -> dict[str, float]:
    policy, obs = _policy_and_obs()
    spin = _spinners(available_cores()) if busy else []
    try:
        rows: dict[str, list[float]] = {"default_cpu": [], "default_wall": [], "worker_cpu": [], "worker_wall": []}
        for _ in range(ROUNDS):
            for name, n in (("default", default_threads), ("worker", worker_threads)):
                cpu, wall = _per_chunk(policy, obs, n)
                rows[f"{name}_cpu"].append(cpu)
                rows[f"{name}_wall"].append(wall)
    finally:
        for p in spin:
            p.kill()
            p.wait()
    out = {k: statistics.median(v) for k, v in rows.items()}
    out["cpu_ratio"] = out["default_cpu"] / out["worker_cpu"]
    out["wall_ratio"] = out["default_wall"] / out["worker_wall"]
    return out


def main() -> None:
    default_threads = torch.get_num_threads()  # torch's own choice, before anything sets it
    worker_threads = set_torch_threads("worker")
    print(
        f"push_t DiffusionPolicy (default config), batch {BATCH}, {CHUNKS_PER_ROUND} chunks x {ROUNDS} "
        f"interleaved rounds; torch default threads = {default_threads}, worker threads = {worker_threads}; "
        f"{available_cores()} cores, load average {os.getloadavg()[0]:.2f}"
    )
    for busy in (False, True):
        r = measure(busy, default_threads, worker_threads)
        label = f"busy ({available_cores()} spinning processes)" if busy else "at rest"
        print(
            f"  {label:32s} CPU ms/chunk: default {1e3 * r['default_cpu']:8.1f}  worker {1e3 * r['worker_cpu']:7.1f}"
            f"  ratio {r['cpu_ratio']:5.1f}x | wall ms/chunk: default {1e3 * r['default_wall']:8.1f}  "
            f"worker {1e3 * r['worker_wall']:7.1f}  ratio {r['wall_ratio']:5.1f}x"
        )


if __name__ == "__main__":
    main()
