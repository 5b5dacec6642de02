#!/usr/bin/env python3
"""Run franka-sim's FCI server on loopback; meant for ``.venv-franka-sim/bin/python``.

Started by :class:`twin.live.fake_hardware.FrankaSim` (and usable by hand). Every socket is
bound to ``--host`` (127.0.0.1 by default, unlike franka-sim's own CLI, which binds 0.0.0.0):
the arm's TCP listener (1337, the port libfranka always dials) and the gripper's (1338) by
franka-sim itself, and the UDP sockets of the robot-state streams here (see
:func:`bind_udp_to`: franka-sim 1.1.7 creates them unbound in ``server/state_stream.py``
``start_robot_state_transmission`` and ``gripper/server.py`` ``_handle_connect``, so the kernel
binds them to 0.0.0.0 on their first ``sendto``). The FR3 model is ``$FR3_MJCF`` when set,
else ``--model`` (default: the repo's mesh-free ``twin/assets/fr3/fr3.xml``), so it never
downloads anything.

Prints ``FRANKA_SIM_READY host port`` on stdout once the physics loop is running and the
listener is bound. SIGTERM or SIGINT stops it cleanly (sockets closed, threads joined).

It ends with its parent (the bridge or test that started it), by any signal: a parent-death
signal (SIGTERM) plus a watch on its parent PID (``$TWINRANK_PARENT_PID``, set by
``twin.lifeline.spawn``, else the parent at start); see :func:`bind_to_parent`. This
script runs in franka-sim's own venv, without twinrank installed, hence its own copy of that
logic (``twin/lifeline.py`` is the project's).
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import os
import signal
import socket
import sys
import threading
import time
import types
from pathlib import Path

DEFAULT_MODEL = Path(__file__).resolve().parents[1] / "twin" / "assets" / "fr3" / "fr3.xml"
PARENT_PID_ENV = "TWINRANK_PARENT_PID"
PR_SET_PDEATHSIG = 1


def bind_to_parent(grace_s: float = 15.0) -> None:
    """End this process when its parent dies: parent-death signal SIGTERM, and a thread that
    polls the parent PID (SIGTERM to itself, then a hard exit after ``grace_s``). Exits at
    once if the expected parent is already gone."""
    text = os.environ.pop(PARENT_PID_ENV, "").strip()
    expected = int(text) if text.isdigit() else os.getppid()
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        except (OSError, AttributeError):
            pass
    if os.getppid() != expected:
        print(
            f"franka-sim: parent process {expected} exited before the simulator started; not starting",
            file=sys.stderr,
            flush=True,
        )
        os._exit(1)

    def watch() -> None:
        while os.getppid() == expected:
            time.sleep(0.25)
        print(f"franka-sim: parent process {expected} is gone; exiting", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(grace_s)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def bind_udp_to(host: str, *modules: types.ModuleType) -> None:
    """Make the UDP sockets these franka-sim modules create bound to ``host`` (port chosen by
    the kernel) instead of left unbound, which the kernel turns into 0.0.0.0 on the first
    ``sendto``. Replaces the modules' ``socket`` name with a copy of the socket module whose
    ``socket`` class binds datagram sockets at creation; TCP sockets are unchanged."""

    class LoopbackSocket(socket.socket):
        def __init__(self, family: int = -1, type: int = -1, proto: int = -1, fileno: int | None = None) -> None:
            super().__init__(family, type, proto, fileno)
            if fileno is None and self.family == socket.AF_INET and self.type == socket.SOCK_DGRAM:
                self.bind((host, 0))

    shim = types.ModuleType("socket")
    shim.__dict__.update(socket.__dict__)
    shim.socket = LoopbackSocket  # type: ignore[attr-defined]
    for mod in modules:
        mod.socket = shim  # type: ignore[attr-defined]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--model", default=str(DEFAULT_MODEL), help="FR3 MJCF (if $FR3_MJCF unset)")
    ap.add_argument("--no-gripper", action="store_true")
    ap.add_argument(
        "--enforce-comm-constraints",
        action="store_true",
        help="a stalled client gets a real communication_constraints_violation reflex",
    )
    ap.add_argument("--log-level", default="WARNING")
    args = ap.parse_args()
    bind_to_parent()

    os.environ.setdefault("FR3_MJCF", args.model)
    if not Path(os.environ["FR3_MJCF"]).is_file():
        print(f"franka-sim: FR3 model not found: {os.environ['FR3_MJCF']}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper(), logging.WARNING),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )

    import franka_sim.gripper.server
    import franka_sim.server.state_stream
    from franka_sim import FrankaSimServer

    # the robot-state (arm) and gripper-state UDP streams: loopback like the TCP listeners
    bind_udp_to(args.host, franka_sim.server.state_stream, franka_sim.gripper.server)
    server = FrankaSimServer(
        host=args.host,
        enable_vis=False,
        enable_gripper=not args.no_gripper,
        enforce_comm_constraints=True if args.enforce_comm_constraints else None,
    )

    def announce() -> None:
        deadline = time.monotonic() + 120.0
        while time.monotonic() < deadline:
            sim = server.physics_sim
            if getattr(sim, "running", False) and server.server_socket is not None:
                port = server.server_socket.getsockname()[1]
                print(f"FRANKA_SIM_READY {args.host} {port}", flush=True)
                return
            time.sleep(0.01)

    def on_term(signum, frame):  # noqa: ARG001
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    threading.Thread(target=announce, daemon=True).start()
    code = 0
    try:
        server.start()
    except KeyboardInterrupt:
        pass
    except Exception as exc:  # bind failure, model error: say why and exit non-zero
        print(f"franka-sim: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        code = 1
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            server.stop()
        except Exception as exc:  # pragma: no cover - stop() is documented non-raising
            print(f"franka-sim: error while stopping: {exc}", file=sys.stderr)
    print("FRANKA_SIM_STOPPED", flush=True)
    sys.stdout.flush()
    os._exit(code)  # daemon threads (gripper accept loop) must not keep the process alive


if __name__ == "__main__":
    sys.exit(main())
