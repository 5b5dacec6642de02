"""How many CPU threads torch uses in each kind of process.

torch's default (one intra-op thread per core, spinning OpenMP workers) oversubscribes a small
machine as soon as several processes run policies: on a busy 2-core machine a diffusion policy
spent ~37x more CPU per action chunk with the default than with one thread. Every process that
runs a policy therefore sets its threads deliberately, by role:

- ``worker``: evaluator workers (local processes, Ray actors), live ROS 2 nodes, and the main
  process when it runs policies next to workers: **1** thread each; parallelism comes from
  the processes.
- ``training``: a training run: the cores this process may use (its CPU affinity).

``TWINRANK_TORCH_THREADS`` overrides both (a positive integer); processes started by a
command (evaluator workers, Ray actors, live nodes) inherit it from the environment.
"""

from __future__ import annotations

import os

ENV_VAR = "TWINRANK_TORCH_THREADS"
ROLES = ("worker", "training")


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity; the whole machine where that is unknown)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def torch_threads_for(role: str) -> int:
    """The intra-op thread count for ``role`` (``worker`` or ``training``), honouring ``TWINRANK_TORCH_THREADS``."""
    if role not in ROLES:
        raise ValueError(f"unknown thread role {role!r}; use one of {', '.join(ROLES)}")
    raw = os.environ.get(ENV_VAR, "").strip()
    if raw:
        try:
            n = int(raw)
        except ValueError:
            n = 0
        if n < 1:
            raise ValueError(f"{ENV_VAR}={raw!r} is not a positive integer; unset it or give e.g. {ENV_VAR}=1")
        return n
    return 1 if role == "worker" else available_cores()


def set_torch_threads(role: str) -> int:
    """Set torch's intra-op threads for ``role`` in this process; returns the count set.

    Inter-op threads are set to the same count when torch still allows it (only before its
    first parallel work)."""
    import torch

    n = torch_threads_for(role)
    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(n)
    except RuntimeError:  # already used: torch keeps its pool
        pass
    return n


__all__ = ["ENV_VAR", "available_cores", "set_torch_threads", "torch_threads_for"]
