"""Where the real cell puts its objects, against where the twin does: object initial-pose offsets.

Every logged episode names the seed its cell was reset with; the twin reset at that seed puts
each object at its nominal start. The logged object pose at the episode's first step minus the
twin's (world x, y and yaw; z is the support's) is that episode's placement offset. Over the
episodes:

* the **mean** is the systematic offset (a fixture or a tray placed elsewhere than the scene
  says, a camera-to-base error that shifts every tracked pose); it is *identified* when some
  component lies more than :data:`Z_IDENTIFIED` standard errors from 0 and at least
  :data:`MIN_EPISODES` episodes have poses, and then the calibrated suite fixes the
  ``object_pose`` factor at it, so the twin starts its objects where the cell does;
* the **spread** (standard deviation) is how much the placement varies from episode to
  episode around it: larger than the twin's own reset randomisation means the real objects are
  placed more loosely than the task assumes (reported; widen ``object_pose``'s range to match).

Offsets are in the world frame, yaw about world z (``object_pose``'s convention:
``Condition.apply_after_reset``). Nothing here replays physics: the poses are read.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

#: a component counts as a systematic offset beyond this many standard errors
Z_IDENTIFIED = 3.0
#: fewer episodes with object poses than this identify nothing (the spread is unknown)
MIN_EPISODES = 3


@dataclass
class PlacementOffset:
    """One object's start offset, real minus twin, over ``n`` episodes: ``mean`` / ``se`` /
    ``spread`` are (dx m, dy m, dyaw rad)."""

    object: str
    n: int
    mean: tuple[float, float, float]
    se: tuple[float, float, float]
    spread: tuple[float, float, float]
    identified: bool
    note: str = ""

    def text(self) -> str:
        dx, dy, dyaw = self.mean
        sx, sy, syaw = self.se
        base = (
            f"{self.object} start offset: x {dx * 1000:+.1f} +- {sx * 1000:.1f} mm, y {dy * 1000:+.1f} +- "
            f"{sy * 1000:.1f} mm, yaw {math.degrees(dyaw):+.2f} +- {math.degrees(syaw):.2f} deg over {self.n} "
            f"episode(s); spread {self.spread[0] * 1000:.1f} / {self.spread[1] * 1000:.1f} mm, "
            f"{math.degrees(self.spread[2]):.2f} deg"
        )
        return base + ("" if self.identified else f"; not identified ({self.note}): kept at the twin's placement")

    def to_dict(self) -> dict[str, Any]:
        return {
            "object": self.object,
            "n": self.n,
            "mean": list(self.mean),
            "se": list(self.se),
            "spread": list(self.spread),
            "identified": self.identified,
            "note": self.note,
        }


def _yaw(quat: np.ndarray) -> float:
    """Heading (rad) of a wxyz quaternion's x axis about world z."""
    w, x, y, z = (float(v) for v in quat)
    return math.atan2(2.0 * (w * z + x * y), 1.0 - 2.0 * (y * y + z * z))


def _wrap(a: np.ndarray) -> np.ndarray:
    return (np.asarray(a) + math.pi) % (2.0 * math.pi) - math.pi


def twin_start_poses(task: str, seeds: Sequence[int], objects: Sequence[str]) -> dict[int, dict[str, np.ndarray]]:
    """The twin's start pose ([x y z qw qx qy qz], world) of each object for each seed."""
    from twin.env import TwinEnv

    env = TwinEnv(task, render_mode=None)
    out: dict[int, dict[str, np.ndarray]] = {}
    try:
        for s in dict.fromkeys(int(v) for v in seeds):
            env.reset(seed=s)
            out[s] = {o: np.asarray(env.sim.body_pose(o), float) for o in objects}
    finally:
        env.close()
    return out


def placement_offsets(
    starts: Sequence[tuple[int, dict[str, np.ndarray]]], task: str, objects: Sequence[str]
) -> dict[str, PlacementOffset]:
    """Offsets from ``(seed, {object: logged start pose [x y z qw qx qy qz]})`` per episode.

    Yaw offsets of symmetric objects are taken as logged (a box turned by 180 deg has a 180 deg
    offset): trackers report the pose closest to the twin's, which keeps them small."""
    twin = twin_start_poses(task, [s for s, _ in starts], objects)
    out: dict[str, PlacementOffset] = {}
    for o in objects:
        rows = []
        for seed, poses in starts:
            p = poses.get(o)
            if p is None or not np.isfinite(p).all():
                continue
            t = twin[int(seed)][o]
            rows.append([p[0] - t[0], p[1] - t[1], float(_wrap(_yaw(p[3:]) - _yaw(t[3:])))])
        n = len(rows)
        if n == 0:
            out[o] = PlacementOffset(o, 0, (0.0, 0.0, 0.0), (math.inf,) * 3, (math.nan,) * 3, False, "no logged poses")
            continue
        a = np.asarray(rows, float)
        mean = a.mean(axis=0)
        mean[2] = math.atan2(np.sin(a[:, 2]).mean(), np.cos(a[:, 2]).mean())
        dev = a - mean
        dev[:, 2] = _wrap(dev[:, 2])
        spread = dev.std(axis=0, ddof=1) if n > 1 else np.full(3, math.nan)
        se = spread / math.sqrt(n) if n > 1 else np.full(3, math.inf)
        # a perfectly repeatable placement (spread 0) is identified by any non-zero mean
        z = np.where(se > 1e-9, np.abs(mean) / np.maximum(se, 1e-12), np.where(np.abs(mean) > 1e-6, np.inf, 0.0))
        if n < MIN_EPISODES:
            ok, note = False, f"{n} episode(s) with poses, {MIN_EPISODES} needed"
        elif not (z > Z_IDENTIFIED).any():
            ok, note = False, f"within {Z_IDENTIFIED:g} standard errors of 0"
        else:
            ok, note = True, ""
        out[o] = PlacementOffset(o, n, tuple(mean), tuple(se), tuple(spread), ok, note)  # type: ignore[arg-type]
    return out


def object_pose_value(
    offsets: dict[str, PlacementOffset], objects: Sequence[str], slots: int
) -> list[list[float]] | None:
    """The ``object_pose`` factor value that starts each object at its identified offset
    (slot ``i`` serves the task's ``i``-th object, ``i % len(objects)``), or None when none is
    identified."""
    if not any(offsets.get(o) is not None and offsets[o].identified for o in objects):
        return None
    rows = []
    for i in range(slots):
        off = offsets.get(objects[i % len(objects)])
        rows.append([float(v) for v in off.mean] if off is not None and off.identified else [0.0, 0.0, 0.0])
    return rows


__all__ = [
    "MIN_EPISODES",
    "PlacementOffset",
    "Z_IDENTIFIED",
    "object_pose_value",
    "placement_offsets",
    "twin_start_poses",
]
