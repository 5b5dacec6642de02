"""Benchmark of object tracking (not a timed test): pose error, update rate and latency on CPU.

``python -m twin.live.bench_tracking`` (also part of ``make bench`` through ``bench_live``)
renders frame sets of the twin's two scene cameras (colour + metric depth, 640x480 by default)
with the object at seeded random poses (the task's own reset), then runs
:class:`twin.live.tracking.ObjectTracker` on them, per method:

- ``marker``: the fiducial tags :func:`twin.fiducials.with_markers` places;
- ``icp`` first sight: global registration (FPFH + RANSAC) then ICP, no prior;
- ``icp`` tracking: the object moved 5 mm and 2 deg per frame, ICP from the last pose (what
  the node does between frames).

Reported per (task, object, method): pose error median / p95 (mm, deg; registration's
rotation error is taken modulo the object's symmetry as :mod:`twin.live.registration` reports
it), found / frames, the tracker's update time p50 / p95 (= its latency from frames to pose,
rendering excluded) and the rate one core sustains (1 / median update time). The issue's
targets: markers <= 5 mm / 2 deg, registration <= 1 cm / 5 deg median, >= 10 Hz per object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np  # noqa: E402

from twin.live.camera_model import PinholeCamera, base_from_world, pose_matrix, rotation_angle_deg  # noqa: E402

CASES = (
    ("box_to_shelf", "box", "marker"),
    ("box_to_shelf", "box", "icp"),
    ("mug_to_sink", "mug", "icp"),
    ("push_t", "t_block", "marker"),
    ("push_t", "t_block", "icp"),
)


def _frames(task: str, obj: str, seeds: list[int], size: tuple[int, int], track_steps: int = 0) -> list[dict[str, Any]]:
    """Frame sets (both cameras) with the object's true base-frame pose: one per seed, or, with
    ``track_steps``, a sequence from the first seed with the object moved a little each frame."""
    from scipy.spatial.transform import Rotation

    from twin.env import TwinEnv
    from twin.live.tracking import cell_task_cfg

    cfg = cell_task_cfg(task, True)
    env = TwinEnv(task, cfg, render_mode=None, render_size=size)
    scene = cfg.scene
    t_bw = base_from_world(scene)
    cams = [c.name for c in scene.cameras]
    out = []
    try:
        plan = [(s, 0) for s in seeds] if not track_steps else [(seeds[0], k) for k in range(track_steps)]
        for seed, k in plan:
            if k == 0:
                env.reset(seed=seed)
            else:
                pose = env.sim.body_pose(obj)
                rot = Rotation.from_quat(pose[3:], scalar_first=True) * Rotation.from_euler("z", 2.0, degrees=True)
                env.sim.set_free_body_pose(obj, pose[:3] + np.array([0.005, 0.0, 0.0]), rot.as_quat(scalar_first=True))
                env.sim.forward()
            truth = t_bw @ pose_matrix(*np.split(env.sim.body_pose(obj), [3]))
            views = {}
            for c in cams:
                rgb = env.render_camera(c, size[0], size[1])
                depth = env.render_camera(c, size[0], size[1], depth=True)
                views[c] = (PinholeCamera.from_scene(scene, c, size[0], size[1]), rgb, depth.astype(np.float32))
            out.append({"truth": truth, "views": views})
    finally:
        env.close()
    return out


def run_case(
    task: str, obj: str, method: str, frames: int = 12, size: tuple[int, int] = (640, 480), tracking: bool = False
) -> dict[str, Any]:
    from twin.live.tracking import CameraView, ObjectTracker, cell_task_cfg

    scene = cell_task_cfg(task, True).scene
    sets = _frames(task, obj, list(range(100, 100 + frames)), size, track_steps=frames if tracking else 0)
    tracker = ObjectTracker(scene, [obj], method)
    pos_err, rot_err, times = [], [], []
    found = 0
    for i, fs in enumerate(sets):
        views = {n: CameraView(cam, rgb, depth) for n, (cam, rgb, depth) in fs["views"].items()}
        if not tracking:  # first sight each time: no memory of the previous frame
            tracker = ObjectTracker(scene, [obj], method) if i else tracker
        t0 = time.perf_counter()
        res = tracker.update(views)
        times.append(time.perf_counter() - t0)
        est = res.estimates.get(obj)
        if est is None:
            continue
        found += 1
        pos_err.append(1000.0 * float(np.linalg.norm(est.T_base_obj[:3, 3] - fs["truth"][:3, 3])))
        if est.method == "marker":  # a tag fixes the orientation: no symmetry to forgive
            rot_err.append(rotation_angle_deg(est.T_base_obj, fs["truth"]))
        else:
            rot_err.append(tracker.rotation_error_deg(obj, est.T_base_obj, fs["truth"]))
    t = np.array(times[1:] if len(times) > 1 else times)  # the first call builds models

    def q(a: list[float], p: float) -> float | None:
        return round(float(np.percentile(a, p)), 2) if a else None

    return {
        "task": task,
        "object": obj,
        "method": method + (" tracking" if tracking else (" first sight" if method == "icp" else "")),
        "size": f"{size[0]}x{size[1]}",
        "found": f"{found}/{len(sets)}",
        "pos_mm_median": q(pos_err, 50),
        "pos_mm_p95": q(pos_err, 95),
        "rot_deg_median": q(rot_err, 50),
        "rot_deg_p95": q(rot_err, 95),
        "update_ms_p50": round(1000 * float(np.median(t)), 1),
        "update_ms_p95": round(1000 * float(np.percentile(t, 95)), 1),
        "rate_hz": round(1.0 / float(np.median(t)), 1),
    }


def run(frames: int = 12, size: tuple[int, int] = (640, 480), cases=CASES) -> list[dict[str, Any]]:
    rows = []
    for task, obj, method in cases:
        rows.append(run_case(task, obj, method, frames, size))
        print(json.dumps(rows[-1]), flush=True)
        if method == "icp":
            rows.append(run_case(task, obj, method, frames, size, tracking=True))
            print(json.dumps(rows[-1]), flush=True)
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    head = "| task | object | method | found | position mm median / p95 | rotation deg median / p95 | update ms p50 / p95 | Hz |"
    lines = [head, "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['task']} | {r['object']} | {r['method']} | {r['found']} | {r['pos_mm_median']} / {r['pos_mm_p95']} | "
            f"{r['rot_deg_median']} / {r['rot_deg_p95']} | {r['update_ms_p50']} / {r['update_ms_p95']} | {r['rate_hz']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m twin.live.bench_tracking", description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=12, help="frame sets per case")
    ap.add_argument("--size", default="640x480", help="image size WIDTHxHEIGHT")
    ap.add_argument("--json", dest="json_out", default=None, help="also write the rows here")
    a = ap.parse_args(argv)
    w, h = (int(v) for v in a.size.lower().split("x"))
    rows = run(a.frames, (w, h))
    print(table(rows))
    if a.json_out:
        Path(a.json_out).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
