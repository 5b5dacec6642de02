"""Live twin: JointState publish -> twin state latency p50/p99 at 1 kHz for 60 s, update rate, CPU;
object tracking error, latency and rate per method.

Runs ``twin.live.bench`` (the same as ``twinrank live bench``): twin_sync and the recorder as their
own processes, ``/joint_states`` published at 1 kHz on loopback. Set ``TWINRANK_BENCH_LIVE_SECONDS``
for a shorter run. Then ``twin.live.bench_tracking``: the object tracker on twin renders (640x480,
both cameras) of box_to_shelf's box, mug_to_sink's mug and push_t's T block, tags and registration
(first sight and tracking); ``TWINRANK_BENCH_TRACKING_FRAMES`` frame sets per case (default 12).
"""

from __future__ import annotations

import os


def main() -> None:
    from twin.live.bench import main as bench_main
    from twin.live.bench_tracking import main as tracking_main

    seconds = os.environ.get("TWINRANK_BENCH_LIVE_SECONDS", "60")
    bench_main(["--rate", "1000", "--seconds", seconds])
    tracking_main(["--frames", os.environ.get("TWINRANK_BENCH_TRACKING_FRAMES", "12")])


if __name__ == "__main__":
    main()
