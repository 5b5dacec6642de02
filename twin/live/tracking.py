"""Object tracking across cameras and methods (what the ``object_tracker`` node runs).

:class:`ObjectTracker` holds, per tracked object, a method — fiducial markers
(:mod:`twin.live.markers`, tags described in the scene), model-based registration on depth
(:mod:`twin.live.registration`: global registration on first sight or when lost, then ICP
from the last pose), or ``auto`` (markers when the scene puts tags on the object and one is
seen; registration otherwise, seeded with the marker pose) — and turns one set of camera views
into a :class:`TrackResult`: the estimates of the objects found now, and a status for every
object (tracked or lost, with the reason). A lost object has no estimate: never its last pose
presented as current.

Nothing here imports rclpy; the node, the tests and the benchmark call it directly.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from twin.live.camera_model import PinholeCamera
from twin.live.pose_estimate import PoseEstimate
from twin.scene import SceneCfg

METHODS = ("auto", "marker", "icp")


class TrackingError(ValueError):
    """A tracker configuration or input that cannot work; the message names it and the fix."""


@dataclass
class CameraView:
    """One camera's synchronised frames: colour (H, W, 3) uint8 and/or depth (H, W) float32
    metres (0 = no data), both in ``camera``'s image (depth aligned to colour)."""

    camera: PinholeCamera
    rgb: np.ndarray | None = None
    depth: np.ndarray | None = None
    stamp: float = 0.0


@dataclass
class ObjectStatus:
    """Whether an object is tracked now, by what, how well, or why it is lost."""

    name: str
    tracked: bool
    method: str = ""
    quality: float = 0.0
    error: float = math.nan
    error_unit: str = ""
    cameras: tuple[str, ...] = ()
    reason: str = ""
    stamp: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "tracked": self.tracked,
            "method": self.method,
            "quality": round(float(self.quality), 4),
            "error": None if not math.isfinite(self.error) else float(self.error),
            "error_unit": self.error_unit,
            "cameras": list(self.cameras),
            "reason": self.reason,
            "stamp": self.stamp,
        }


@dataclass
class TrackResult:
    estimates: dict[str, PoseEstimate] = field(default_factory=dict)
    status: dict[str, ObjectStatus] = field(default_factory=dict)
    seconds: float = 0.0  # wall time of this update


def parse_methods(text: str | dict[str, str] | None, objects: list[str]) -> dict[str, str]:
    """Per-object method from ``"auto"`` / ``"icp"`` / ``"box=marker,mug=icp"`` (a bare value sets
    the default for objects not named)."""
    if isinstance(text, dict):
        items = dict(text)
    else:
        items = {}
        for part in [s.strip() for s in str(text or "").split(",") if s.strip()]:
            name, sep, method = part.partition("=")
            items[name.strip() if sep else "*"] = (method if sep else name).strip()
    default = items.pop("*", "auto")
    unknown = sorted(set(items) - set(objects))
    if unknown:
        raise TrackingError(f"methods name objects {unknown} that are not tracked; tracked objects: {objects}")
    out = {o: items.get(o, default) for o in objects}
    bad = {o: m for o, m in out.items() if m not in METHODS}
    if bad:
        raise TrackingError(f"tracking methods {bad} are unknown; use one of {', '.join(METHODS)}")
    return out


def cell_task_cfg(task: str, markers: bool = False) -> Any:
    """The task's config whose scene is the real cell as the tracker knows it: with
    ``markers``, the fiducial tags :func:`twin.fiducials.with_markers` places on its objects
    (print them and stick them where the scene says; the fake cameras render them)."""
    from twin.tasks import get_task_class

    cfg = get_task_class(task).default_cfg()
    if not markers:
        return cfg
    from twin.fiducials import with_markers

    return cfg.replace(scene=with_markers(cfg.scene))


def load_extrinsics(paths: str | Path) -> dict[str, np.ndarray]:
    """Camera poses (T_base_cam, optical axes) from calibration files, comma-separated: each is
    the ``camera_calibration.yaml`` ``twinrank live calibrate-camera`` writes (``camera`` +
    ``T_base_cam``), or a mapping ``{cameras: {name: {T_base_cam: 4x4}}}`` (YAML or JSON).
    Raises ValueError naming the file and the problem."""
    import yaml

    out: dict[str, np.ndarray] = {}
    for item in [s.strip() for s in str(paths).split(",") if s.strip()]:
        p = Path(item).expanduser()
        if not p.is_file():
            raise ValueError(f"extrinsics file {str(p)!r} does not exist; run `twinrank live calibrate-camera` first")
        data = yaml.safe_load(p.read_text())
        if isinstance(data, dict) and "camera" in data and "T_base_cam" in data:
            cams = {data["camera"]: data}
        else:
            cams = data.get("cameras", data) if isinstance(data, dict) else None
        if not isinstance(cams, dict) or not cams:
            raise ValueError(
                f"extrinsics file {str(p)!r} names no cameras; expected the calibrate-camera report "
                f"(camera, T_base_cam) or cameras: {{name: {{T_base_cam: 4x4}}}}"
            )
        for name, entry in cams.items():
            t = np.asarray((entry or {}).get("T_base_cam") if isinstance(entry, dict) else None, dtype=float)
            if t.shape != (4, 4) or not np.isfinite(t).all():
                raise ValueError(f"extrinsics file {str(p)!r}: camera {name!r} has no 4x4 T_base_cam")
            out[str(name)] = t
    return out


def movable_objects(scene: SceneCfg) -> list[str]:
    """The scene's objects (bodies of kind "object"), in scene order."""
    return [b.name for b in scene.iter_bodies() if b.kind == "object"]


class ObjectTracker:
    """Tracks ``objects`` of ``scene`` from camera views. ``methods`` as in :func:`parse_methods`;
    ``registration`` keyword arguments go to :class:`twin.live.registration.RegistrationTracker`."""

    def __init__(
        self,
        scene: SceneCfg,
        objects: list[str] | None = None,
        methods: str | dict[str, str] | None = "auto",
        registration: dict[str, Any] | None = None,
    ) -> None:
        self.scene = scene
        self.objects, self.methods, self.marker_objects, self.icp_objects = self.check(scene, objects, methods)
        # auto objects with tags fall back to registration when no tag is seen
        self.fallback_objects = [o for o in self.marker_objects if self.methods[o] == "auto"]
        self._markers = None
        self._registration = None
        if self.marker_objects:
            from twin.live.markers import MarkerTracker

            self._markers = MarkerTracker(scene, self.marker_objects)
        if self.icp_objects or self.fallback_objects:
            from twin.live.registration import RegistrationTracker

            self._registration = RegistrationTracker(
                scene, self.icp_objects + self.fallback_objects, **(registration or {})
            )
        self._last: dict[str, np.ndarray] = {}

    @staticmethod
    def check(
        scene: SceneCfg, objects: list[str] | None = None, methods: str | dict[str, str] | None = "auto"
    ) -> tuple[list[str], dict[str, str], list[str], list[str]]:
        """(objects, method per object, marker-tracked, registration-tracked) for a tracker of
        ``scene``; raises :class:`TrackingError` naming what cannot work."""
        bodies = [b.name for b in scene.iter_bodies()]
        objects = list(objects) if objects else movable_objects(scene)
        if not objects:
            raise TrackingError(f"scene {scene.name!r} has no objects to track; name them (objects:=...)")
        unknown = [o for o in objects if o not in bodies]
        if unknown:
            raise TrackingError(
                f"objects {unknown} are not bodies of scene {scene.name!r}; use some of {', '.join(bodies)}"
            )
        per = parse_methods(methods, objects)
        tagged = {m.body for m in getattr(scene, "markers", [])}
        no_tags = [o for o, m in per.items() if m == "marker" and o not in tagged]
        if no_tags:
            raise TrackingError(
                f"objects {no_tags} are set to method 'marker' but the scene puts no tags on them; "
                f"add markers (markers:=true) or use method icp"
            )
        marker = [o for o, m in per.items() if m in ("marker", "auto") and o in tagged]
        icp = [o for o, m in per.items() if m == "icp" or (m == "auto" and o not in tagged)]
        return objects, per, marker, icp

    def update(
        self,
        views: dict[str, CameraView],
        priors: dict[str, np.ndarray] | None = None,
        exclude: np.ndarray | None = None,
        stamp: float = 0.0,
    ) -> TrackResult:
        """Estimates from one set of views. ``priors``: T_base_obj the caller believes (e.g. the
        twin's poses), used by registration when it has no recent pose of its own; ``exclude``:
        base-frame points not to match (the robot's surface at the current joints)."""
        t0 = time.perf_counter()
        if not views:
            raise TrackingError("no camera views given; check the cameras parameter and that frames arrive")
        result = TrackResult()
        reasons: dict[str, str] = {}
        if self._markers is not None:
            rgb_views = {n: (v.camera, v.rgb) for n, v in views.items() if v.rgb is not None}
            why: dict[str, str] = {}
            if rgb_views:
                # an ambiguous single-tag view is settled toward the last pose (or the caller's)
                seed = {**(priors or {}), **{o: t for o, t in self._last.items() if o in self.marker_objects}}
                found = self._markers.estimate(rgb_views, priors=seed)
                result.estimates.update({k: v for k, v in found.items() if k in self.marker_objects})
                why = {k: str(v) for k, v in self._markers.status().items()}
            for o in self.marker_objects:
                if o not in result.estimates:
                    reasons[o] = (why.get(o) or "no tag seen") if rgb_views else "no colour image"
        icp_wanted = self.icp_objects + [o for o in self.fallback_objects if o not in result.estimates]
        # a tag seen by one camera only is weak in depth (its corners span few pixels): auto
        # objects refine such a pose by ICP on depth, started from it
        refine = [o for o in self.fallback_objects if o in result.estimates and len(result.estimates[o].cameras) < 2]
        if self._registration is not None:
            depth_views = {n: (v.camera, v.depth) for n, v in views.items() if v.depth is not None}
            if (icp_wanted or refine) and depth_views:
                seed = dict(priors or {})
                seed.update({o: t for o, t in self._last.items() if o in icp_wanted})
                # a tag seen this round seeds registration too (auto objects are then marker-tracked)
                seed.update({o: e.T_base_obj for o, e in result.estimates.items()})
                for o in refine:
                    self._registration.reset(o)  # start from the tag's pose, not an older one
                # objects two cameras' tags fixed this round are not registered (~15 ms each);
                # registration forgets them, to start from their tag pose when it needs them again
                wanted = icp_wanted + refine
                for o in self.fallback_objects:
                    if o not in wanted:
                        self._registration.reset(o)
                found = self._registration.estimate(depth_views, priors=seed, exclude=exclude, objects=wanted)
                for o in icp_wanted:
                    if o in found:
                        result.estimates[o] = found[o]
                        reasons.pop(o, None)
                for o in refine:
                    if o in found:
                        result.estimates[o] = self._refined(result.estimates[o], found[o])
                status = self._registration_status()
                for o in icp_wanted:
                    if o not in found:
                        why = status.get(o) or "not found in the depth images"
                        reasons[o] = f"{reasons[o]}; {why}" if o in reasons else why
            elif icp_wanted:
                for o in icp_wanted:
                    reasons[o] = f"{reasons[o]}; no depth image" if o in reasons else "no depth image"
        for o in self.objects:
            e = result.estimates.get(o)
            if e is None:
                self._last.pop(o, None)
                result.status[o] = ObjectStatus(o, False, reason=reasons.get(o, "not found"), stamp=stamp)
            else:
                self._last[o] = e.T_base_obj
                result.status[o] = ObjectStatus(
                    o, True, e.method, e.quality, e.error, e.error_unit, tuple(e.cameras), "", stamp
                )
        result.seconds = time.perf_counter() - t0
        return result

    #: a registration refinement of a single-camera tag pose is kept within these of it
    REFINE_MAX_SHIFT_M = 0.03
    REFINE_MAX_TURN_DEG = 10.0

    def _refined(self, tag: PoseEstimate, icp: PoseEstimate) -> PoseEstimate:
        """The ICP pose started from a single-camera tag pose, when it stays near it (the tag
        fixes which of the object's symmetric poses it is); else the tag pose."""
        shift = float(np.linalg.norm(icp.T_base_obj[:3, 3] - tag.T_base_obj[:3, 3]))
        turn = self.rotation_error_deg(tag.name, icp.T_base_obj, tag.T_base_obj)
        if shift > self.REFINE_MAX_SHIFT_M or turn > self.REFINE_MAX_TURN_DEG:
            return tag
        from twin.live.camera_model import rotation_angle_deg

        # registration reports the symmetric pose nearest its start: take the one nearest the tag's
        T = icp.T_base_obj
        if self._registration is not None:
            T = min(
                (icp.T_base_obj @ s for s in self._registration.symmetries(tag.name)),
                key=lambda c: rotation_angle_deg(c, tag.T_base_obj),
            )
        return PoseEstimate(
            name=tag.name,
            T_base_obj=T,
            quality=min(tag.quality, icp.quality),
            error=icp.error,
            error_unit=icp.error_unit,
            method="marker+icp",
            cameras=tuple(dict.fromkeys([*tag.cameras, *icp.cameras])),
            detail={"tag": tag.detail, "icp": icp.detail, "refine_shift_m": shift, "refine_turn_deg": turn},
        )

    def rotation_error_deg(self, name: str, T_est: np.ndarray, T_true: np.ndarray) -> float:
        """Rotation error of an estimate, modulo the object's symmetries when registration
        tracks it (a box turned by 180 deg looks the same to a depth camera)."""
        from twin.live.camera_model import rotation_angle_deg

        syms = [np.eye(4)]
        if self._registration is not None and name in (self.icp_objects + self.fallback_objects):
            syms = self._registration.symmetries(name)
        return min(rotation_angle_deg(T_est @ s, T_true) for s in syms)

    def _registration_status(self) -> dict[str, str]:
        fn = getattr(self._registration, "status", None)
        if fn is None:
            return {}
        out = fn()
        return {k: str(v) for k, v in dict(out).items()}


__all__ = [
    "METHODS",
    "CameraView",
    "ObjectStatus",
    "ObjectTracker",
    "TrackResult",
    "TrackingError",
    "cell_task_cfg",
    "load_extrinsics",
    "movable_objects",
    "parse_methods",
]
