"""Run every benchmark module and print its figures: `python -m benchmarks [name ...]`."""

from __future__ import annotations

import importlib
import os
import sys

os.environ.setdefault("MUJOCO_GL", "egl")

BENCHMARKS = [
    "bench_twin",
    "bench_training",
    "bench_evaluator",
    "bench_selection",
    "bench_prediction",
    "bench_calibration",
    "bench_rank",
    "bench_racing",
    "bench_splats",
    "bench_live",
    "bench_threads",
]


def main(argv: list[str]) -> None:
    names = argv or BENCHMARKS
    for name in names:
        mod = importlib.import_module(f"benchmarks.{name}")
        print(f"\n=== {name}: {mod.__doc__.strip().splitlines()[0]}")
        mod.main()


if __name__ == "__main__":
    main(sys.argv[1:])
