#!/usr/bin/env python3
"""Run franka-sim's FCI server on loopback; meant for ``.venv-franka-sim/bin/python``.

Started by :class:`twin.live.fake_hardware.FrankaSim` (and usable by hand). Binds the arm
(TCP/UDP 1337, the port libfranka always dials) and the gripper (1338) on ``--host``
(127.0.0.1 by default, unlike franka-sim's own CLI, which binds 0.0.0.0). The FR3 model is
``$FR3_MJCF`` when set, else ``--model`` (default: the repo's mesh-free
``twin/assets/fr3/fr3.xml``), so it never downloads anything.

Prints ``FRANKA_SIM_READY host port`` on stdout once the physics loop is running and the
listener is bound. SIGTERM or SIGINT stops it cleanly (sockets closed, threads joined).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path

DEFAULT_MODEL = Path(__file__).resolve().parents[1] / "twin" / "assets" / "fr3" / "fr3.xml"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--model", default=str(DEFAULT_MODEL), help="FR3 MJCF (if $FR3_MJCF unset)")
    ap.add_argument("--no-gripper", action="store_true")
    ap.add_argument("--enforce-comm-constraints", action="store_true",
                    help="a stalled client gets a real communication_constraints_violation reflex")
    ap.add_argument("--log-level", default="WARNING")
    args = ap.parse_args()

    os.environ.setdefault("FR3_MJCF", args.model)
    if not Path(os.environ["FR3_MJCF"]).is_file():
        print(f"franka-sim: FR3 model not found: {os.environ['FR3_MJCF']}", file=sys.stderr)
        return 2
    logging.basicConfig(level=getattr(logging, args.log_level.upper(), logging.WARNING),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)

    from franka_sim import FrankaSimServer

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
