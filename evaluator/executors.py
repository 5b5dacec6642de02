"""Executors: where work units run. One interface, three backends.

``executor.run(units, handle, skip)`` runs every unit and calls, in the calling process,
``handle(kind, unit, payload)`` for each message as it arrives:

* ``"episode"``: a finished episode (payload: the result dict with its ``slot``);
* ``"video"``: frames of a recorded episode, encoded (``data`` bytes, ``format``);
* ``"record"``: the observations a recorded episode's policy acted on (``obs``: key -> array,
  one row per step; sent before that episode's ``"episode"``);
* ``"done"``: the unit finished (``elapsed_s``, ``steps``, ``physics_s``: time in physics
  stepping, ``pid``, ``torch_threads``: torch's intra-op threads in the worker that ran it);
* ``"error"``: the unit could not run (``kind``: ``"checkpoint"`` when the checkpoint cannot
  be loaded or does not fit the env, ``"unit"`` for anything else; ``message``);
* ``"lost"``: the worker running the unit died (``pid``, ``exitcode``); the episodes it had
  not streamed yet are re-run on another worker (``will_retry``);
* ``"failed"``: the unit lost its worker more than ``max_retries`` times.

``skip(unit)`` is asked before a unit is dispatched (e.g. its checkpoint failed meanwhile).
Exceptions raised by ``handle`` stop the run; the caller closes the executor.

Every process that runs policies sets its torch threads with
``policies.runtime.set_torch_threads("worker")`` (1 thread, or ``TWINRANK_TORCH_THREADS`` as
set in the calling process, which is handed to workers and Ray actors explicitly; the inline
executor restores the caller's intra-op count afterwards).

Workers end with the process that started them, whatever kills it (SIGKILL included): local
workers arm ``PR_SET_PDEATHSIG`` and watch their parent (:func:`evaluator.worker.die_with_parent`;
the kernel signal is armed only for workers started from the main thread, since it fires when
the creating *thread* ends; workers started from another thread rely on the 1 s parent check).
A local Ray started by :class:`RayExecutor` is fate-shared by Ray itself (its head processes
get ``PR_SET_PDEATHSIG`` from the thread that called ``ray.init``; its workers exit with their
raylet), and a small reaper process SIGKILLs what is left of it (its agents outlived a killed
driver by ~60 s): see :class:`RayExecutor`.

Backends:

* :class:`LocalExecutor` (default): persistent worker processes (``spawn``), one per core,
  each keeping its envs and current policy between units and campaigns (an executor object
  may be reused for several ``evaluate`` calls). Results stream per episode over a pipe per
  worker; a dead worker (SIGKILL, OOM, segfault) is noticed from its process sentinel, its
  unfinished episodes are re-queued and a fresh worker takes its place.
* :class:`InlineExecutor`: the same rollout code in the calling process (``workers=0``;
  debugging, and in-memory policies that cannot be pickled).
* :class:`RayExecutor`: one Ray actor per worker slot on a cluster (``address``) or a local
  Ray; the same unit and message protocol, a unit's messages arrive when it finishes, and a
  dead actor's unit is re-run on a new actor.
"""

from __future__ import annotations

import dataclasses
import inspect
import multiprocessing as mp
import os
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from multiprocessing.connection import wait
from typing import Any

from evaluator.worker import WorkerState, WorkUnit, worker_main
from policies.runtime import ENV_VAR as TORCH_THREADS_ENV
from policies.runtime import available_cores, torch_threads_for

Handle = Callable[[str, WorkUnit, dict[str, Any]], None]
Skip = Callable[[WorkUnit], bool]


class ExecutorError(RuntimeError):
    """An executor cannot start (no Ray, workers that do not come up)."""


def default_workers() -> int:
    """One worker per core this process may use."""
    return available_cores()


def _never(unit: WorkUnit) -> bool:
    return False


class Executor:
    """Base class: ``run(units, handle, skip)``, ``close()``, context manager."""

    name = "base"
    #: whether units cross a process boundary (policies must then be picklable)
    remote = True

    def run(self, units: list[WorkUnit], handle: Handle, skip: Skip = _never) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass

    @property
    def worker_pids(self) -> list[int]:
        return []

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _retry_unit(unit: WorkUnit, received: set[int]) -> WorkUnit | None:
    """The unit with only its not-yet-streamed slots left to run (None when nothing is left)."""
    remaining = [i for i in unit.pending_slots() if i not in received]
    if not remaining:
        return None
    return dataclasses.replace(unit, run=[i in remaining for i in range(len(unit.run))], attempt=unit.attempt + 1)


class InlineExecutor(Executor):
    """Runs units one after another in this process (same rollout code as the workers)."""

    name = "inline"
    remote = False

    def __init__(self) -> None:
        self._state: WorkerState | None = None

    def run(self, units: list[WorkUnit], handle: Handle, skip: Skip = _never) -> None:
        import torch

        from policies.runtime import set_torch_threads

        if self._state is None:
            self._state = WorkerState(kill_hook=False)
        threads = torch.get_num_threads()
        set_torch_threads("worker")  # the same kernels as the worker processes
        try:
            for unit in units:
                if skip(unit):
                    continue
                self._state.run_unit(unit, lambda msg, u=unit: handle(msg[0], u, msg[2]))
        finally:
            torch.set_num_threads(threads)

    @property
    def worker_pids(self) -> list[int]:
        return [os.getpid()]

    def close(self) -> None:
        if self._state is not None:
            self._state.close()
            self._state = None


class _Worker:
    def __init__(self, ctx: Any, index: int) -> None:
        parent, child = ctx.Pipe(duplex=True)
        self.index = index
        self.conn = parent
        # PR_SET_PDEATHSIG fires when the creating thread ends: armed only from the main thread
        pdeathsig = threading.current_thread() is threading.main_thread()
        self.process = ctx.Process(
            target=worker_main,
            name=f"twinrank-eval-{index}",
            daemon=True,
            args=(child, index, os.getpid(), os.environ.get(TORCH_THREADS_ENV), pdeathsig),
        )
        self.process.start()
        child.close()
        self.unit: WorkUnit | None = None
        self.received: set[int] = set()
        self.alive = True
        self.ready = False

    @property
    def pid(self) -> int:
        return int(self.process.pid or 0)


class LocalExecutor(Executor):
    """A pool of persistent worker processes on this machine (``workers`` = cores by default)."""

    name = "local"

    def __init__(self, workers: int | None = None, *, max_retries: int = 2) -> None:
        self.workers = int(workers) if workers else default_workers()
        if self.workers < 1:
            raise ValueError(f"workers = {workers}: need at least one")
        torch_threads_for("worker")  # a bad TWINRANK_TORCH_THREADS fails here, not in every worker
        self.max_retries = int(max_retries)
        self._ctx = mp.get_context("spawn")
        self._pool: list[_Worker] = []
        self._next_index = 0
        self._startup_failures = 0
        self.restarts = 0

    @property
    def worker_pids(self) -> list[int]:
        return [w.pid for w in self._pool if w.alive]

    def _spawn(self) -> _Worker:
        w = _Worker(self._ctx, self._next_index)
        self._next_index += 1
        self._pool.append(w)
        return w

    def run(self, units: list[WorkUnit], handle: Handle, skip: Skip = _never) -> None:
        queue: deque[WorkUnit] = deque(units)
        while len([w for w in self._pool if w.alive]) < min(self.workers, len(queue)):
            self._spawn()
        try:
            self._loop(queue, handle, skip)
        except BaseException as exc:
            # Interrupted (Ctrl-C, an exception from ``handle``): nobody reads the units still
            # running. Let them finish for a few seconds (their messages are dropped) so the
            # workers stay warm for the next run; Ctrl-C or a longer unit kills the worker.
            self._abort_busy(grace=0.0 if isinstance(exc, KeyboardInterrupt) else self.abort_grace_s)
            raise

    #: seconds an interrupted run waits for busy workers to finish their unit before killing them
    abort_grace_s = 10.0

    def _abort_busy(self, grace: float) -> None:
        deadline = time.monotonic() + grace
        while True:
            busy = {w.conn: w for w in self._pool if w.alive and w.unit is not None}
            left = deadline - time.monotonic()
            if not busy or left <= 0:
                break
            for conn in wait(list(busy), timeout=left):
                w = busy[conn]
                try:
                    kind = conn.recv()[0]
                except (EOFError, OSError, ValueError):
                    w.alive = False
                    continue
                if kind in ("done", "error"):
                    w.unit, w.received = None, set()
        for w in [w for w in self._pool if w.unit is not None or not w.alive]:
            if w.process.is_alive():
                w.process.kill()
            w.process.join(timeout=5)
            try:
                w.conn.close()
            except OSError:  # pragma: no cover
                pass
            w.alive, w.unit = False, None
            self._pool.remove(w)

    def _loop(self, queue: deque[WorkUnit], handle: Handle, skip: Skip) -> None:
        while True:
            # dispatch to idle workers
            for w in list(self._pool):
                if not w.alive or w.unit is not None:
                    continue
                while queue and skip(queue[0]):
                    queue.popleft()
                if not queue:
                    break
                unit = queue.popleft()
                w.unit, w.received = unit, set()
                try:
                    w.conn.send(unit)
                except (BrokenPipeError, OSError):
                    self._lost(w, queue, handle)
            busy = [w for w in self._pool if w.alive and w.unit is not None]
            if not busy:
                while queue and skip(queue[0]):
                    queue.popleft()
                if not queue:
                    return
                # every worker died between dispatches: start fresh ones
                if not any(w.alive for w in self._pool):
                    self._spawn()
                continue
            waitables: dict[Any, _Worker] = {}
            for w in busy:
                waitables[w.conn] = w
                waitables[w.process.sentinel] = w
            ready = wait(list(waitables), timeout=5.0)
            for obj in ready:
                w = waitables[obj]
                if not w.alive:
                    continue
                if obj is w.conn:
                    self._drain(w, handle, queue, block_once=True)
                else:  # the process ended
                    self._drain(w, handle, queue, block_once=False)
                    if w.unit is not None or w.alive:
                        self._lost(w, queue, handle)

    def _drain(self, w: _Worker, handle: Handle, queue: deque[WorkUnit], block_once: bool) -> None:
        """Receive every message waiting on ``w``'s pipe."""
        first = True
        while w.alive:
            try:
                if not (first and block_once) and not w.conn.poll():
                    return
                msg = w.conn.recv()
            except (EOFError, OSError, ValueError):  # dead worker (or a message torn by its death)
                self._lost(w, queue, handle)
                return
            first = False
            self._message(w, msg, handle)

    def _message(self, w: _Worker, msg: tuple, handle: Handle) -> None:
        kind, unit_id, payload = msg
        if kind == "ready":
            w.ready = True
            self._startup_failures = 0
            return
        unit = w.unit
        if unit is None or unit_id != unit.unit_id:  # pragma: no cover - protocol error
            return
        if kind == "episode":
            w.received.add(int(payload["slot"]))
            handle("episode", unit, payload)
        elif kind in ("video", "record"):
            handle(kind, unit, payload)
        elif kind in ("done", "error"):
            w.unit, w.received = None, set()
            handle(kind, unit, payload)

    def _lost(self, w: _Worker, queue: deque[WorkUnit], handle: Handle) -> None:
        if not w.alive:
            return
        w.alive = False
        try:
            w.conn.close()
        except OSError:  # pragma: no cover
            pass
        w.process.join(timeout=5)
        exitcode = w.process.exitcode
        self._pool.remove(w)
        self.restarts += 1
        unit, received = w.unit, w.received
        w.unit = None
        if not w.ready:
            self._startup_failures += 1
            if self._startup_failures >= 2:
                raise ExecutorError(
                    f"worker processes exit while starting (exit code {exitcode}); see their stderr. A script that "
                    f"calls evaluate() with the local executor must guard its entry point with "
                    f"`if __name__ == \"__main__\":` (workers are started with 'spawn')"
                )
        if unit is None:
            return
        retry = _retry_unit(unit, received)
        will_retry = retry is not None and unit.attempt < self.max_retries
        handle(
            "lost",
            unit,
            {
                "pid": w.pid,
                "exitcode": exitcode,
                "will_retry": will_retry,
                "remaining": [] if retry is None else retry.pending_slots(),
            },
        )
        if retry is None:
            handle("done", unit, {"pid": w.pid, "elapsed_s": 0.0, "steps": 0, "after_loss": True})
        elif will_retry:
            queue.appendleft(retry)
            if len([x for x in self._pool if x.alive]) < self.workers:
                self._spawn()
        else:
            handle(
                "failed",
                unit,
                {
                    "message": f"worker processes died {unit.attempt + 1} times running unit "
                    f"{unit.unit_id} (last exit code {exitcode})"
                },
            )

    def close(self) -> None:
        pool, self._pool = self._pool, []
        for w in pool:
            if w.alive:
                try:
                    w.conn.send(None)
                except (BrokenPipeError, OSError):
                    pass
        deadline = time.monotonic() + 5.0
        for w in pool:
            w.process.join(timeout=max(0.0, deadline - time.monotonic()) if w.unit is None else 0.2)
            if w.process.is_alive():
                w.process.terminate()
                w.process.join(timeout=5)
            if w.process.is_alive():  # pragma: no cover
                w.process.kill()
                w.process.join(timeout=5)
            try:
                w.conn.close()
            except OSError:  # pragma: no cover
                pass
            w.alive = False


# ---------------------------------------------------------------------------------------------
# Ray
# ---------------------------------------------------------------------------------------------


class _RayWorkerImpl:
    """The body of a Ray actor: a WorkerState that returns a unit's messages as a list.

    ``torch_threads``: the driver's ``TWINRANK_TORCH_THREADS`` (None: unset there)."""

    def __init__(self, torch_threads: str | None = None) -> None:
        from evaluator.worker import set_worker_threads

        set_worker_threads(torch_threads)
        self.state = WorkerState()

    def pid(self) -> int:
        return os.getpid()

    def run_unit(self, unit: WorkUnit) -> list[tuple]:
        out: list[tuple] = []
        self.state.run_unit(unit, out.append)
        return out


def _proc_table() -> dict[int, tuple[int, str, int]]:
    """``{pid: (parent pid, state letter, start time in clock ticks)}`` of every process (Linux
    /proc; empty elsewhere, where a local Ray then gets no reaper)."""
    out: dict[int, tuple[int, str, int]] = {}
    if not os.path.isdir("/proc"):
        return out
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        out[int(name)] = (int(fields[1]), fields[0], int(fields[19]))
    return out


def _ray_reaper() -> None:
    """Body of the reaper process of a local Ray (run by ``python -I -c``: stdlib only).

    ``sys.argv[1:]``: the PIDs of the Ray processes the driver started (GCS, raylet, log
    monitor...). While the driver lives (its end of our stdin is open), their descendants
    (agents, workers) are added every 0.5 s; when stdin reaches EOF -- the driver closed the
    executor, exited or was killed by any signal -- every one of them still running is
    SIGKILLed. (Ray fate-shares its head processes with the driver, but the dashboard and
    runtime-env agents it starts outlived a SIGKILLed driver: they hang reporting to the
    dead GCS.)"""
    import os
    import signal
    import sys
    import threading

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C / SIGTERM to the group: wait for EOF
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    procs = _proc_table()
    known = {pid: procs[pid][2] for pid in map(int, sys.argv[1:]) if pid in procs}

    def scan() -> dict[int, tuple[int, str, int]]:
        table = _proc_table()
        grew = True
        while grew:
            grew = False
            for pid, (ppid, _, start) in table.items():
                if pid not in known and ppid in known and table.get(ppid, (0, "", -1))[2] == known[ppid]:
                    known[pid] = start
                    grew = True
        return table

    closed = threading.Event()

    def wait_for_eof() -> None:
        sys.stdin.buffer.read()
        closed.set()

    threading.Thread(target=wait_for_eof, daemon=True).start()
    while not closed.wait(0.5):
        scan()
    table = scan()
    for pid, start in known.items():
        entry = table.get(pid)
        if entry is not None and entry[2] == start and entry[1] != "Z":
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


def _start_ray_reaper(pids: list[int]) -> subprocess.Popen[bytes]:
    """Start :func:`_ray_reaper` for ``pids`` in its own process (its stdin is our lifeline)."""
    code = "\n".join(["import os", inspect.getsource(_proc_table), inspect.getsource(_ray_reaper), "_ray_reaper()"])
    return subprocess.Popen(
        [sys.executable, "-I", "-c", code, *map(str, pids)],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        close_fds=True,
    )


class RayExecutor(Executor):
    """Units on Ray actors (one CPU each): ``address`` of a running cluster (``"auto"``,
    ``"ray://host:10001"``...) or None for a local Ray started by this executor (and shut
    down by ``close``; only ``ray.shutdown()`` is used, never ``ray stop``).

    A local Ray ends with the driver (this process), whatever kills it: Ray itself gives its
    head processes ``PR_SET_PDEATHSIG`` (tied to the thread that calls ``ray.init``, i.e. the
    first ``run``: call it from the main thread) and its workers exit with their raylet; a
    small reaper process (:func:`_ray_reaper`) SIGKILLs whatever of that Ray is left (the
    dashboard and runtime-env agents otherwise outlive a SIGKILLed driver). Actors get the
    driver's ``TWINRANK_TORCH_THREADS`` as an argument."""

    name = "ray"

    def __init__(
        self,
        workers: int | None = None,
        *,
        address: str | None = None,
        max_retries: int = 2,
        init_kwargs: dict[str, Any] | None = None,
    ) -> None:
        try:
            import ray  # noqa: F401
        except ImportError as exc:
            raise ExecutorError("the Ray executor needs the 'ray' package (pip install ray)") from exc
        torch_threads_for("worker")  # a bad TWINRANK_TORCH_THREADS fails here, not in every actor
        self.workers = int(workers) if workers else None
        self.address = address
        self.max_retries = int(max_retries)
        self.init_kwargs = dict(init_kwargs or {})
        self._started_ray = False
        self._reaper: subprocess.Popen[bytes] | None = None
        self._actors: list[Any] = []
        self._actor_cls: Any = None
        self.restarts = 0

    def _ensure(self, n_units: int) -> None:
        import ray

        if not ray.is_initialized():
            # Workers import this package from their own installation (nothing is shipped).
            kwargs: dict[str, Any] = {"log_to_driver": False, "configure_logging": False}
            if self.address:
                kwargs["address"] = self.address
            else:
                kwargs.update(
                    num_cpus=self.workers or default_workers(),
                    include_dashboard=False,
                    object_store_memory=256 * 1024 * 1024,
                )
            kwargs.update(self.init_kwargs)
            before = self._children()
            ray.init(**kwargs)
            self._started_ray = True
            started = sorted(self._children() - before)  # empty when ray.init joined a running cluster
            if started:
                self._reaper = _start_ray_reaper(started)
        if self._actor_cls is None:
            self._actor_cls = ray.remote(num_cpus=1, max_restarts=0)(_RayWorkerImpl)
        if self.workers is None:
            self.workers = max(1, int(ray.cluster_resources().get("CPU", 1)))
        while len(self._actors) < min(self.workers, max(1, n_units)):
            self._actors.append(self._new_actor())

    def _new_actor(self) -> Any:
        return self._actor_cls.remote(os.environ.get(TORCH_THREADS_ENV))

    @staticmethod
    def _children() -> set[int]:
        me = os.getpid()
        return {pid for pid, (ppid, _, _) in _proc_table().items() if ppid == me}

    @property
    def worker_pids(self) -> list[int]:
        import ray

        try:
            return [int(p) for p in ray.get([a.pid.remote() for a in self._actors], timeout=30)]
        except Exception:  # noqa: BLE001
            return []

    def run(self, units: list[WorkUnit], handle: Handle, skip: Skip = _never) -> None:
        import ray
        from ray.exceptions import RayActorError, WorkerCrashedError

        queue: deque[WorkUnit] = deque(units)
        self._ensure(len(queue))
        idle = list(self._actors)
        inflight: dict[Any, tuple[Any, WorkUnit]] = {}
        while queue or inflight:
            while idle and queue:
                unit = queue.popleft()
                if skip(unit):
                    continue
                actor = idle.pop()
                inflight[actor.run_unit.remote(unit)] = (actor, unit)
            if not inflight:
                continue
            done, _ = ray.wait(list(inflight), num_returns=1)
            for ref in done:
                actor, unit = inflight.pop(ref)
                try:
                    messages = ray.get(ref)
                except (RayActorError, WorkerCrashedError) as exc:
                    self.restarts += 1
                    self._actors.remove(actor)
                    retry = _retry_unit(unit, set())
                    will_retry = retry is not None and unit.attempt < self.max_retries
                    handle(
                        "lost",
                        unit,
                        {
                            "pid": None,
                            "exitcode": None,
                            "will_retry": will_retry,
                            "remaining": unit.pending_slots(),
                            "message": str(exc)[:500],
                        },
                    )
                    new = self._new_actor()  # keep the pool at full strength
                    self._actors.append(new)
                    idle.append(new)
                    if will_retry:
                        queue.appendleft(retry)
                    else:
                        handle("failed", unit, {"message": f"Ray actor died running unit {unit.unit_id}: {exc}"})
                    continue
                idle.append(actor)
                for kind, _uid, payload in messages:
                    handle(kind, unit, payload)

    def close(self) -> None:
        try:
            import ray
        except ImportError:  # pragma: no cover
            return
        for a in self._actors:
            try:
                ray.kill(a)
            except Exception:  # noqa: BLE001
                pass
        self._actors = []
        if self._started_ray and ray.is_initialized():
            ray.shutdown()
        self._started_ray = False
        if self._reaper is not None:  # EOF: it kills what ray.shutdown() left of our Ray
            reaper, self._reaper = self._reaper, None
            if reaper.stdin is not None:
                reaper.stdin.close()
            try:
                reaper.wait(timeout=30)
            except subprocess.TimeoutExpired:  # pragma: no cover
                reaper.kill()
                reaper.wait()


def make_executor(kind: str | Executor = "local", workers: int | None = None, address: str | None = None) -> Executor:
    """``"local"`` (default), ``"inline"`` (= ``workers=0``) or ``"ray"``."""
    if isinstance(kind, Executor):
        return kind
    if kind == "local":
        if workers == 0:
            return InlineExecutor()
        return LocalExecutor(workers)
    if kind == "inline":
        return InlineExecutor()
    if kind == "ray":
        return RayExecutor(workers, address=address)
    raise ValueError(f"executor {kind!r}: use local, inline or ray")


__all__ = [
    "Executor",
    "ExecutorError",
    "InlineExecutor",
    "LocalExecutor",
    "RayExecutor",
    "default_workers",
    "make_executor",
]
