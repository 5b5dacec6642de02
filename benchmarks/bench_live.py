"""Live twin over ROS 2: JointState publish -> twin state latency p50/p99 at 1 kHz for 60 s, update rate, CPU.

Runs ``twin.live.bench`` (the same as ``twinrank live bench``): twin_sync and the recorder as their
own processes, ``/joint_states`` published at 1 kHz on loopback. Set ``TWINRANK_BENCH_LIVE_SECONDS``
for a shorter run.
"""

from __future__ import annotations

import os


def main() -> None:
    from twin.live.bench import main as bench_main

    seconds = os.environ.get("TWINRANK_BENCH_LIVE_SECONDS", "60")
    bench_main(["--rate", "1000", "--seconds", seconds])


if __name__ == "__main__":
    main()
