"""Child processes end when their parent dies, by any signal: the live twin's nodes and
simulator, and the evaluator's worker processes.

Two lines of defence, both Linux-only (elsewhere they do nothing):

1. ``prctl(PR_SET_PDEATHSIG, sig)``: the kernel sends ``sig`` to the child when its parent
   dies. It fires when the parent *thread* that forked the child exits, so :func:`spawn`
   forks from the main thread or, when called from another thread, from one long-lived
   spawner thread (never from a short-lived worker). It is set twice: in the forked child
   before ``exec`` (:func:`spawn`), and again by the child program itself at start
   (:func:`bind_to_parent`), so that it holds whichever parent starts the program
   (``ros2 launch``, :class:`twin.live.runner.GraphRunner`, a shell).
2. A watcher thread (:func:`bind_to_parent`) polls ``os.getppid()``; when the parent has
   changed (re-parented to init or a subreaper) it sends ``sig`` to its own process and, if
   that has not ended it after ``grace_s``, exits hard.

A child learns its expected parent from ``$TWINRANK_PARENT_PID`` (set by :func:`spawn` and
by the launch file), else it takes its parent at start. If the parent is already gone when
the child binds (it died while the child was importing), the child exits at once.

Nothing here imports rclpy.
"""

from __future__ import annotations

import ctypes
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

PARENT_PID_ENV = "TWINRANK_PARENT_PID"
PR_SET_PDEATHSIG = 1

_prctl: Any = None


def _load_prctl() -> Any:
    """libc's prctl, loaded once in the parent (the forked child must not dlopen)."""
    global _prctl
    if _prctl is None and sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fn = libc.prctl
            fn.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
            fn.restype = ctypes.c_int
            _prctl = fn
        except (OSError, AttributeError):
            _prctl = False
    return _prctl or None


def set_parent_death_signal(sig: int = signal.SIGTERM) -> bool:
    """Ask the kernel to send ``sig`` to this process when its parent dies. True if set."""
    fn = _load_prctl()
    return fn is not None and fn(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0


def child_preexec(parent_pid: int, sig: int = signal.SIGTERM, nice: int | None = None) -> Callable[[], None]:
    """A ``preexec_fn`` (runs in the forked child before ``exec``): parent-death signal, then
    exit at once if the parent is already gone; optional priority (best effort)."""
    _load_prctl()

    def setup() -> None:
        set_parent_death_signal(sig)
        if os.getppid() != parent_pid:
            os._exit(1)
        if nice:
            set_priority(nice)

    return setup


def set_priority(nice: int) -> None:
    """Best effort (root or CAP_SYS_NICE for nice < 0): this process's nice value and, when it
    leads its own session, its autogroup's. With ``CONFIG_SCHED_AUTOGROUP`` (the default on
    desktop and many server kernels) each session is a scheduling group: a process's nice value
    only ranks it within its session, so a child started with ``start_new_session=True`` and
    only reniced competes with a session of busy loops as an equal (measured: franka-sim at
    nice -10 ran at 0.28-0.87x real time next to two busy loops)."""
    try:
        os.setpriority(os.PRIO_PROCESS, 0, nice)
    except OSError:
        pass
    if os.getsid(0) == os.getpid():  # our own session: the autogroup is ours alone
        try:
            with open("/proc/self/autogroup", "w") as f:
                f.write(str(int(nice)))
        except OSError:
            pass


# ---- spawning ----------------------------------------------------------------------------------
_spawn_queue: queue.Queue[tuple[Callable[[], Any], queue.Queue[Any]]] | None = None
_spawn_lock = threading.Lock()


def _spawner_loop(q: queue.Queue[tuple[Callable[[], Any], queue.Queue[Any]]]) -> None:
    while True:
        fn, reply = q.get()
        try:
            reply.put((True, fn()))
        except BaseException as exc:  # handed back to the caller
            reply.put((False, exc))


def _in_long_lived_thread(fn: Callable[[], Any]) -> Any:
    """Run ``fn`` in the main thread (if called there) or in the spawner thread, which lives as
    long as the process: a parent-death signal must not fire when a worker thread ends."""
    global _spawn_queue
    if threading.current_thread() is threading.main_thread():
        return fn()
    with _spawn_lock:
        if _spawn_queue is None:
            _spawn_queue = queue.Queue()
            threading.Thread(target=_spawner_loop, args=(_spawn_queue,), name="twinrank-spawner", daemon=True).start()
        q = _spawn_queue
    reply: queue.Queue[tuple[bool, Any]] = queue.Queue()
    q.put((fn, reply))
    ok, value = reply.get()
    if not ok:
        raise value
    return value


def spawn(
    cmd: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    death_signal: int = signal.SIGTERM,
    nice: int | None = None,
    **popen_kwargs: Any,
) -> subprocess.Popen:
    """``subprocess.Popen(cmd, ...)`` for a child that must end with this process: the
    parent-death signal is set in the child before ``exec`` and ``$TWINRANK_PARENT_PID`` tells
    the child program (see :func:`bind_to_parent`) which parent to watch."""
    me = os.getpid()
    child_env = dict(os.environ if env is None else env)
    child_env[PARENT_PID_ENV] = str(me)
    preexec = child_preexec(me, death_signal, nice)
    return _in_long_lived_thread(lambda: subprocess.Popen(list(cmd), env=child_env, preexec_fn=preexec, **popen_kwargs))


# ---- the child's side --------------------------------------------------------------------------
class ParentGone(RuntimeError):
    """The parent this process was started by has already exited."""


def bind_to_parent(
    what: str,
    sig: int = signal.SIGTERM,
    poll_s: float = 0.25,
    grace_s: float = 15.0,
    *,
    expected: int | None = None,
    death_signal: bool = True,
) -> int:
    """Tie this process to its parent (call first thing in a child program's main).

    Returns the parent PID watched. Raises :class:`ParentGone` if the expected parent
    (``expected``, else ``$TWINRANK_PARENT_PID``, else the current parent) is already gone.
    The variable is removed from this process's environment so that its own children do not
    inherit it. ``death_signal=False`` skips the kernel's parent-death signal (for a child
    started from a parent thread that may end before the parent does) and keeps the watch.
    """
    text = os.environ.pop(PARENT_PID_ENV, "").strip()
    if expected is None:
        try:
            expected = int(text) if text else os.getppid()
        except ValueError:
            raise ParentGone(f"{what}: ${PARENT_PID_ENV}={text!r} is not a PID; unset it") from None
    if death_signal:
        set_parent_death_signal(sig)
    if os.getppid() != expected:
        raise ParentGone(f"{what}: parent process {expected} exited before {what} started; not starting")

    def watch() -> None:
        while os.getppid() == expected:
            time.sleep(poll_s)
        print(f"{what}: parent process {expected} is gone; exiting", file=sys.stderr, flush=True)
        try:
            os.kill(os.getpid(), sig)
        except OSError:
            pass
        time.sleep(grace_s)
        print(f"{what}: still running {grace_s:.0f} s after its parent died; exiting hard", file=sys.stderr, flush=True)
        os._exit(1)

    threading.Thread(target=watch, name="twinrank-parent-watch", daemon=True).start()
    return expected


# ---- leftovers of other runs -------------------------------------------------------------------
class NodeConflict(RuntimeError):
    """Another process already runs a node of the same name where this one would run."""


def ros_node_name(argv: Sequence[str], default: str) -> str:
    """The node name a ROS program gets from its arguments (``-r __node:=name`` /
    ``--remap __node:=name`` after ``--ros-args``), else ``default``."""
    args = list(argv)
    name = default
    for i, a in enumerate(args[:-1]):
        if a in ("-r", "--remap") and args[i + 1].startswith(("__node:=", "__name:=")):
            name = args[i + 1].split(":=", 1)[1]
    return name


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return b""


def _domain_of(environ: bytes) -> str:
    for item in environ.split(b"\0"):
        if item.startswith(b"ROS_DOMAIN_ID="):
            return item.split(b"=", 1)[1].decode(errors="replace").strip() or "0"
    return "0"


def other_instances(node_name: str, executable: str) -> list[int]:
    """PIDs of other live processes running ``twin.live.<executable>`` as node ``node_name`` in
    this process's ROS domain and network namespace (they would be the same ROS node)."""
    if not os.path.isdir("/proc"):
        return []
    me = os.getpid()
    my_domain = os.environ.get("ROS_DOMAIN_ID", "").strip() or "0"
    try:
        my_net = os.readlink("/proc/self/ns/net")
    except OSError:
        my_net = ""
    marks = (f"twin.live.{executable}".encode(), f"/lib/twin/{executable}".encode())
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        cmd = _read(f"/proc/{entry}/cmdline")
        if not cmd or not any(m in cmd for m in marks):
            continue
        argv = [a.decode(errors="replace") for a in cmd.split(b"\0") if a]
        if not any(a == f"twin.live.{executable}" or a.endswith(f"/lib/twin/{executable}") for a in argv):
            continue
        if ros_node_name(argv, executable) != node_name or _domain_of(_read(f"/proc/{entry}/environ")) != my_domain:
            continue
        try:
            if my_net and os.readlink(f"/proc/{entry}/ns/net") != my_net:
                continue
            if open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()[0] == "Z":
                continue
        except OSError:
            continue
        found.append(int(entry))
    return found


def refuse_other_instances(node_name: str, executable: str) -> None:
    """Raise :class:`NodeConflict` (one line: PIDs and the fix) if :func:`other_instances` finds any."""
    pids = other_instances(node_name, executable)
    if pids:
        domain = os.environ.get("ROS_DOMAIN_ID", "").strip() or "0"
        raise NodeConflict(
            f"{node_name}: another {node_name} is already running in ROS_DOMAIN_ID {domain} (PID "
            f"{', '.join(map(str, pids))}, left from another run?); stop it (kill "
            f"{' '.join(map(str, pids))}) or use another ROS_DOMAIN_ID"
        )


__all__ = [
    "PARENT_PID_ENV",
    "NodeConflict",
    "ParentGone",
    "bind_to_parent",
    "child_preexec",
    "other_instances",
    "refuse_other_instances",
    "ros_node_name",
    "set_parent_death_signal",
    "set_priority",
    "spawn",
]
