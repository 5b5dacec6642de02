"""Calibration (`twinrank calibrate`): wall time, replay evaluations and recovery per calibration on 2 cores.

Logs: a same-engine proxy-real cell whose shifts are known (actuation latency 30 ms,
friction x0.65, mass x1.4; `TWINRANK_BENCH_CAL_EPISODES` episodes of the scripted
demonstrator, default 6) and the PyBullet cell (the default proxy-real domain on the second
engine). Printed per calibration: parameters, replay evaluations, wall time, residual before
and after, each estimate against the truth where it is known. `TWINRANK_BENCH_CAL_EVALS`
(default 60,160) sets the evaluation budgets tried for the three-parameter fit.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

TASK = os.environ.get("TWINRANK_BENCH_TASK_CAL", "box_to_shelf")
TRUTH = {"actuation_latency": 0.03, "friction": 0.65, "mass": 1.4}
DOMAIN = """name: proxy-real
seed_start: 900000
episodes: 6
suite:
  name: bench-calibration
  factors:
    friction:          {kind: SA, distribution: scale, range: [0.65, 0.65]}
    mass:              {kind: SA, distribution: scale, range: [1.4, 1.4]}
    actuation_latency: {kind: SA, distribution: value, range: [0.03, 0.03]}
"""


def _line(label: str, res) -> None:
    drop = 1.0 - res.residual_after / res.residual_before if res.residual_before > 0 else 0.0
    print(
        f"{label}: {res.evaluations} replay evaluations of {res.episodes} episodes in {res.wall_s:.0f} s "
        f"({res.wall_s / max(res.evaluations, 1):.2f} s each); residual {res.residual_before * 1000:.2f} -> "
        f"{res.residual_after * 1000:.2f} mm ({drop:.0%} lower)"
    )
    for e in res.estimates.values():
        truth = TRUTH.get(e.name)
        err = ""
        if truth is not None and e.identified:
            err = f"; error {e.value - truth:+.4g} {e.unit}" + (
                f" ({(e.value - truth) / truth:+.0%})" if e.unit == "x" else ""
            )
        print(f"    {e.text()}{err}")


def main() -> None:
    from selection.calibration import calibrate
    from selection.proxy_real import ProxyRealDomain, record_logs
    from selection.realdata import read_bag

    n = int(os.environ.get("TWINRANK_BENCH_CAL_EPISODES", "6"))
    budgets = [int(b) for b in os.environ.get("TWINRANK_BENCH_CAL_EVALS", "60,160").split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "domain.yaml").write_text(DOMAIN)
        t0 = time.perf_counter()
        same = read_bag(
            record_logs(TASK, root / "same", domain=ProxyRealDomain.load(root / "domain.yaml"), episodes=n),
            images=False,
        )
        pyb = read_bag(
            record_logs(TASK, root / "pybullet", domain=ProxyRealDomain.load(None).with_engine("pybullet"), episodes=n),
            images=False,
        )
        print(f"{TASK}: {n} logged episodes per cell recorded in {time.perf_counter() - t0:.0f} s")
        _line("same engine, latency only", calibrate(same, TASK, params=["actuation_latency"], max_evals=20))
        for b in budgets:
            _line(f"same engine, latency + mass + friction, budget {b}", calibrate(same, TASK, max_evals=b))
        _line(f"PyBullet, latency + mass + friction, budget {budgets[0]}", calibrate(pyb, TASK, max_evals=budgets[0]))
        _line(
            f"PyBullet, servo gains + joint damping + latency, budget {budgets[0]}",
            calibrate(
                pyb, TASK, params=["controller_gains", "joint_damping", "actuation_latency"], max_evals=budgets[0]
            ),
        )


if __name__ == "__main__":
    main()
