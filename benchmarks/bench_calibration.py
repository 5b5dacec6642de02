"""Calibration (`twinrank calibrate`): wall time, replay evaluations and recovery per calibration on 2 cores.

Logs: a same-engine proxy-real cell whose shifts are known (actuation latency 30 ms,
friction x0.65, mass x1.4; `TWINRANK_BENCH_CAL_EPISODES` episodes of the scripted
demonstrator, default 6) and the PyBullet cell (the default proxy-real domain on the second
engine). Printed per calibration: parameters, replay evaluations, wall time, residual before
and after, each estimate against the truth where it is known. `TWINRANK_BENCH_CAL_EVALS`
(default 60,160) sets the evaluation budgets tried for the three-parameter fit.

Cameras and lights (selection/camera_calibration.py): both engines play a cell whose cameras
are moved ~3 cm, rotated ~3 deg and zoomed 0.95-1.06x and whose lights are dimmed to 0.8 and
tilted 17 deg, logging colour and depth frames at 160x120; printed per camera: the estimate,
its error against the truth, renders and wall time. `TWINRANK_BENCH_CAL_PARTS` (default
physics,cameras) picks the parts.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from pathlib import Path

import numpy as np

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


CAM_TRUTH = {
    "cam_left": ([0.03, -0.02, 0.015], [0.3, 0.8, 0.52, 0.05], 1.06),
    "cam_right": ([-0.025, 0.01, -0.02], [-0.6, 0.2, 0.77, 0.06], 0.95),
}
LIGHT_TRUTH = (0.8, 0.3, 1.0)  # intensity, tilt (rad), azimuth (rad)
CAM_DOMAIN = f"""name: proxy-real
engine: {{engine}}
seed_start: 900000
episodes: 4
suite:
  name: bench-camera-calibration
  factors:
    camera_position: {{{{fixed: {[v[0] for v in CAM_TRUTH.values()]}}}}}
    camera_orientation: {{{{fixed: {[v[1] for v in CAM_TRUTH.values()]}}}}}
    camera_fov: {{{{fixed: {[v[2] for v in CAM_TRUTH.values()]}}}}}
    light_intensity: {{{{range: [{LIGHT_TRUTH[0]}, {LIGHT_TRUTH[0]}]}}}}
    light_direction: {{{{fixed: {{{{tilt: {LIGHT_TRUTH[1]}, azimuth: {LIGHT_TRUTH[2]}}}}}}}}}
"""


def _camera_lines(label: str, res) -> None:
    from scipy.spatial.transform import Rotation

    print(
        f"{label}: {res.renders} renders in {res.wall_s:.0f} s ({res.wall_s / max(res.renders, 1) * 1000:.0f} ms each)"
    )
    for name, e in res.cameras.items():
        pos, rot, fov = CAM_TRUTH[name]
        axis = np.asarray(rot[:3]) / np.linalg.norm(rot[:3])
        truth = Rotation.from_rotvec(axis * rot[3])
        est = Rotation.from_rotvec(np.asarray(e.rotation_axis) * math.radians(e.rotation_deg))
        print(
            f"    {e.text()}; error {np.linalg.norm(np.subtract(e.position, pos)) * 100:.2f} cm, "
            f"{math.degrees((est * truth.inv()).magnitude()):.2f} deg, focal {e.fov_scale / fov - 1:+.1%}; image "
            f"residual {e.residual_before:.3f} -> {e.residual_after:.3f}, depth {e.depth_before_mm:.1f} -> "
            f"{e.depth_after_mm:.1f} mm (median)"
        )
    if res.light is not None:
        print(
            f"    {res.light.text()}; truth x{LIGHT_TRUTH[0]}, tilt {math.degrees(LIGHT_TRUTH[1]):.1f} deg, azimuth "
            f"{math.degrees(LIGHT_TRUTH[2]):.0f} deg"
        )


def _line(label: str, res) -> None:
    drop = 1.0 - res.residual_after / res.residual_before if res.residual_before > 0 else 0.0
    print(
        f"{label}: {res.evaluations} replay evaluations of {res.episodes} episodes in {res.wall_s:.0f} s "
        f"({res.wall_s / max(res.evaluations, 1):.2f} s each); residual {res.residual_before * 1000:.2f} -> "
        f"{res.residual_after * 1000:.2f} mm ({abs(drop):.0%} {'lower' if drop >= 0 else 'higher'})"
        + (f"; joint torques {res.effort_before:.2f} -> {res.effort_after:.2f} N m" if res.effort_weight > 0 else "")
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
    parts = os.environ.get("TWINRANK_BENCH_CAL_PARTS", "physics,cameras").split(",")
    if "physics" in parts:
        _physics()
    if "cameras" in parts:
        _cameras()


def _cameras() -> None:
    from selection.camera_calibration import calibrate_cameras
    from selection.proxy_real import ProxyRealDomain, record_logs
    from selection.realdata import read_bag

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for engine in ("mujoco", "pybullet"):
            (root / f"{engine}.yaml").write_text(CAM_DOMAIN.format(engine=engine))
            dom = ProxyRealDomain.load(root / f"{engine}.yaml")
            t0 = time.perf_counter()
            eps = read_bag(record_logs(TASK, root / engine, domain=dom, episodes=4, images=(160, 120)))
            print(
                f"{TASK}: 4 episodes with 160x120 colour + depth frames recorded by {engine} in {time.perf_counter() - t0:.0f} s"
            )
            _camera_lines(
                f"cameras and lights from {engine} images (4 frames per camera, 500 evaluations)",
                calibrate_cameras(eps, TASK, frames_per_camera=4, max_evals=500),
            )


def _physics() -> None:
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
        _line(
            "same engine, latency only (TCP path and objects)",
            calibrate(same, TASK, params=["actuation_latency"], max_evals=20, effort_weight=0),
        )
        for b in budgets:
            _line(
                f"same engine, latency + mass + friction, with joint torques, budget {b}",
                calibrate(same, TASK, max_evals=b),
            )
        _line(
            f"same engine, latency + mass + friction, TCP path and objects only, budget {budgets[-1]}",
            calibrate(same, TASK, max_evals=budgets[-1], effort_weight=0),
        )
        _line(f"PyBullet, latency + mass + friction, budget {budgets[0]}", calibrate(pyb, TASK, max_evals=budgets[0]))
        _line(
            f"PyBullet, servo gains + joint damping + latency, budget {budgets[0]}",
            calibrate(
                pyb, TASK, params=["controller_gains", "joint_damping", "actuation_latency"], max_evals=budgets[0]
            ),
        )


if __name__ == "__main__":
    main()
