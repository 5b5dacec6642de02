"""Run the live graph (:func:`twin.live.graph.live_graph`) with plain rclpy, without ``ros2 launch``.

Two modes over the same :class:`~twin.live.graph.NodeDesc` list:

- ``"thread"``: every node in this process, spun by one MultiThreadedExecutor in a
  background thread (each node module's ``create_node(cli_args)`` gets the node's
  ``--ros-args``: name, parameters, remaps);
- ``"process"``: one ``python -m twin.live.<executable> --ros-args ...`` subprocess per node,
  or with ``installed=True`` the registered executables ``<prefix>/lib/twin/<executable>``
  found through the ament index (exactly what ``ros2 launch`` runs).

Command line (``twinrank live run`` wraps it)::

    python -m twin.live.runner use_fake_hardware:=true cameras:=cam_left [--mode thread]

Set ``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST`` (done here when unset) so nothing leaves
the machine unless asked.

Every node is validated before any starts (a bad parameter: :class:`~twin.live.graph.GraphError`,
one line, nothing started). Node processes are tied to this process
(:func:`twin.lifeline.spawn`): they end when it dies, by any signal. The command line
exits 2 on bad arguments and 1 when a node exits on its own (the others are stopped).
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from twin.lifeline import spawn
from twin.live.graph import LAUNCH_ARGUMENTS, NodeDesc, live_graph, parse_launch_arguments, validate_nodes


def ros_env(
    base: dict[str, str] | None = None, domain_id: int | None = None, ros_home: str | Path | None = None
) -> dict[str, str]:
    """Environment for ROS processes: loopback discovery, this prefix in AMENT_PREFIX_PATH."""
    env = dict(os.environ if base is None else base)
    env.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    prefix = sys.prefix
    paths = [p for p in env.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p]
    if prefix not in paths:
        env["AMENT_PREFIX_PATH"] = os.pathsep.join([prefix, *paths])
    if domain_id is not None:
        env["ROS_DOMAIN_ID"] = str(int(domain_id))
    if ros_home is not None:
        env["ROS_HOME"] = str(ros_home)
    env.setdefault("MUJOCO_GL", "egl")
    return env


def installed_executables_dir(env: dict[str, str] | None = None) -> Path:
    """``<prefix>/lib/twin`` of the ``twin`` package found through the ament index (what
    ``ros2 run`` / ``ros2 launch`` execute)."""
    from twin.live.interfaces import ROS_PACKAGE

    paths = (env or os.environ).get("AMENT_PREFIX_PATH", sys.prefix).split(os.pathsep)
    for prefix in paths:
        if prefix and (Path(prefix) / "share" / "ament_index" / "resource_index" / "packages" / ROS_PACKAGE).is_file():
            return Path(prefix) / "lib" / ROS_PACKAGE
    raise FileNotFoundError(
        f"ROS 2 package {ROS_PACKAGE!r} is not registered under AMENT_PREFIX_PATH={paths}; "
        f"run `twinrank live install-ament` (or colcon build ros_ws and source it)"
    )


class GraphRunner:
    """Start and stop a list of :class:`NodeDesc` (see the module docstring).

    In ``"thread"`` mode rclpy must be initialised for ``context`` (the default context is
    initialised here when it is not); :meth:`node` returns the live node objects.
    """

    def __init__(
        self,
        nodes: Sequence[NodeDesc],
        mode: str = "thread",
        *,
        context: Any = None,
        env: dict[str, str] | None = None,
        python: str = sys.executable,
        log_dir: str | Path | None = None,
        num_threads: int = 6,
        installed: bool = False,
    ) -> None:
        if mode not in ("thread", "process"):
            raise ValueError(f"mode {mode!r}: use 'thread' or 'process'")
        self.descs = list(nodes)
        self.mode = mode
        self.context = context
        self.env = env
        self.python = python
        self.log_dir = Path(log_dir) if log_dir is not None else None
        self.num_threads = num_threads
        self.installed = installed
        self.nodes: dict[str, Any] = {}
        self.procs: dict[str, subprocess.Popen] = {}
        self.returncodes: dict[str, int] = {}  # of stopped subprocesses
        self._executor: Any = None
        self._thread: threading.Thread | None = None
        self._owns_init = False
        self._logs: list[Any] = []

    # ---- lifecycle ----------------------------------------------------------------------------
    def start(self) -> GraphRunner:
        """Validate every node (:func:`~twin.live.graph.validate_nodes`: a bad parameter raises
        :class:`~twin.live.graph.GraphError` and nothing starts), then start them."""
        validate_nodes(self.descs)
        if self.mode == "thread":
            self._start_threads()
        else:
            self._start_processes()
        return self

    def _start_threads(self) -> None:
        import rclpy
        from rclpy.executors import MultiThreadedExecutor

        if not rclpy.ok(context=self.context):
            rclpy.init(args=[], context=self.context)
            self._owns_init = True
        self._executor = MultiThreadedExecutor(num_threads=self.num_threads, context=self.context)
        try:
            for d in self.descs:
                mod = importlib.import_module(d.module)
                create = getattr(mod, "create_node", None)
                if create is None:
                    raise RuntimeError(f"{d.module} has no create_node(cli_args); run it in 'process' mode")
                kwargs = {"context": self.context} if self.context is not None else {}
                node = create(cli_args=d.ros_args(), **kwargs)
                self.nodes[d.name] = node
                self._executor.add_node(node)
        except BaseException:
            self.stop()
            raise
        self._thread = threading.Thread(target=self._spin, name="live-graph", daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        from rclpy.executors import ExternalShutdownException

        try:
            self._executor.spin()
        except (ExternalShutdownException, KeyboardInterrupt):
            pass

    def _start_processes(self) -> None:
        env = self.env if self.env is not None else ros_env()
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
        exe_dir = installed_executables_dir(env) if self.installed else None
        for d in self.descs:
            cmd = [str(exe_dir / d.executable), *d.ros_args()] if exe_dir is not None else d.command(self.python)
            out: Any = None
            if self.log_dir is not None:
                out = open(self.log_dir / f"{d.name}.log", "wb")
                self._logs.append(out)
            # tied to this process: each node ends when it dies, by any signal (twin.lifeline)
            self.procs[d.name] = spawn(
                cmd, env=env, stdout=out, stderr=subprocess.STDOUT if out is not None else None, start_new_session=True
            )

    def stop(self, timeout: float = 10.0) -> None:
        if self._executor is not None:
            self._executor.shutdown(timeout_sec=timeout)
        if self._thread is not None:
            self._thread.join(timeout=timeout)
            self._thread = None
        for node in self.nodes.values():
            close = getattr(node, "close", None)
            if callable(close):
                close()
            node.destroy_node()
        self.nodes.clear()
        self._executor = None
        if self._owns_init:
            import rclpy

            if rclpy.ok(context=self.context):
                rclpy.shutdown(context=self.context)
            self._owns_init = False
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        deadline = time.monotonic() + timeout
        for p in self.procs.values():
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.returncodes.update({n: p.returncode for n, p in self.procs.items()})
        self.procs.clear()
        for f in self._logs:
            f.close()
        self._logs.clear()

    def __enter__(self) -> GraphRunner:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # ---- access -------------------------------------------------------------------------------
    def node(self, name: str) -> Any:
        return self.nodes[name]

    def log_tails(self, chars: int = 2000) -> str:
        """The last ``chars`` characters of each node's log file (process mode with a
        ``log_dir``), headed by its name: what to show when the graph misbehaves."""
        if self.log_dir is None:
            return "(no log_dir: the nodes log to this process's output)"
        return "\n".join(
            f"--- {p.name}:\n{p.read_text(errors='replace')[-chars:]}" for p in sorted(self.log_dir.glob("*.log"))
        )

    def exited(self) -> dict[str, int]:
        """Subprocesses that have exited, with their return codes."""
        return {n: p.returncode for n, p in self.procs.items() if p.poll() is not None}

    def wait(self) -> None:
        """Block until interrupted (Ctrl-C) or, in process mode, until a node exits."""
        try:
            while True:
                if self.mode == "process" and self.exited():
                    return
                if self.mode == "thread" and (self._thread is None or not self._thread.is_alive()):
                    return
                time.sleep(0.2)
        except KeyboardInterrupt:
            pass


def parse_assignments(items: Sequence[str]) -> dict[str, Any]:
    """['robot_ip:=1.2.3.4', ...] -> typed launch arguments."""
    values = {}
    for item in items:
        name, sep, value = item.partition(":=")
        if not sep:
            raise ValueError(f"{item!r}: launch arguments are name:=value (e.g. use_fake_hardware:=true)")
        values[name] = value
    return parse_launch_arguments(values)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m twin.live.runner",
        description="Run the live twin graph with plain rclpy (no ros2 launch). "
        "Launch arguments: " + ", ".join(a.name for a in LAUNCH_ARGUMENTS),
    )
    ap.add_argument("assignments", nargs="*", help="launch arguments as name:=value")
    ap.add_argument("--mode", choices=("thread", "process"), default="process")
    ap.add_argument("--dry-run", action="store_true", help="print the node commands and exit")
    args = ap.parse_args(argv)
    try:
        nodes = live_graph(**parse_assignments(args.assignments))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.dry_run:
        for d in nodes:
            print(" ".join(d.command("python")))
        return 0
    os.environ.update({k: v for k, v in ros_env().items() if k not in os.environ or k == "AMENT_PREFIX_PATH"})

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    # explicit handlers: SIGINT is ignored in background jobs of non-interactive shells, and
    # rclpy's own handler would shut the context down under the running nodes
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)
    owns = False
    if args.mode == "thread":
        import rclpy
        from rclpy.signals import SignalHandlerOptions

        # args=[]: this program's own name:=value arguments are not ROS remap rules
        rclpy.init(args=[], signal_handler_options=SignalHandlerOptions.NO)
        owns = True
    from twin.live.fake_hardware import FakeHardwareError

    runner = GraphRunner(nodes, mode=args.mode)
    code = 0
    try:
        runner.start()
        runner.wait()
        failed = {n: c for n, c in runner.exited().items() if c != 0}
        if failed:
            print(
                f"error: node(s) exited: {', '.join(f'{n} (code {c})' for n, c in failed.items())}; stopping the "
                f"others (see the node's output above)",
                file=sys.stderr,
            )
            code = 1
    except KeyboardInterrupt:
        pass
    except (ValueError, FakeHardwareError) as exc:  # GraphError, a node that cannot start (thread mode)
        print(f"error: {exc}", file=sys.stderr)
        code = 2
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        runner.stop()
        if owns:
            import rclpy

            if rclpy.ok():
                rclpy.shutdown()
        for sig, handler in previous.items():  # a caller (a test, an embedding program) keeps its own
            signal.signal(sig, handler)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
