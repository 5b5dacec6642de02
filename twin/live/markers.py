"""Object poses from fiducial tags (AprilTag 36h11, OpenCV's ArUco module).

:class:`MarkerTracker` knows the scene's tags (:class:`~twin.scene.MarkerCfg`: id, size,
body, pose in the body frame). Given one RGB image per camera it detects the tags
(on the image enlarged 2x, subpixel corners, then the printed tag aligned to the image by
ECC for corners good to ~0.05 px), solves each camera's view of an object (IPPE for one square tag,
Levenberg-Marquardt over all of the object's tag corners when it sees several), and, when
several cameras see the object, refines one pose against every camera's corners at once
(reprojection error over all views, so the second camera fixes the depth a single small
tag leaves uncertain). Poses are in the robot base frame.

One small square tag seen by one camera is ambiguous: IPPE finds two poses (the tag
mirrored about the line of sight, ~100 deg apart) that both fit the corners to a fraction
of a pixel. When the worse fits less than ``AMBIGUITY_RATIO`` times as badly as the better
(its RMS over the better's, floored at ``_NOISE_FLOOR_PX``), the view is ambiguous and is
resolved by, in order: the caller's prior pose of the object (``estimate(priors=...)``,
e.g. the twin's current pose), when one solution is clearly nearer it; the tag's rest
direction (the scene's pose of the body: a tag on an object's top face points up), when one
solution is upright within ``MAX_TILT_DEG`` and the other clearly is not. Otherwise the
object is left out of the result. A second camera resolves it too: the joint fit starts
from every view's both solutions. A pose from one camera alone also needs a tag at least
``min_side_px`` wide (a single small tag's depth is uncertain; in MuJoCo's renders its
corners sit ~0.05-0.1 px inside at 10-14 px, i.e. 5-10 mm deeper at 1 m).
:meth:`MarkerTracker.status` says why an object is absent (or how it was found).

Quality is ``1 / (1 + rms / QUALITY_SCALE_PX)`` of the reprojection RMS (px): 1 for an
exact fit, 0.5 at one pixel. Needs the ``perception`` extra (OpenCV); no rclpy.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy.optimize import least_squares
from scipy.spatial.transform import Rotation

from twin.fiducials import QUIET_BITS, TAG_BITS, cv_dictionary, tag_image
from twin.live.camera_model import PinholeCamera, base_from_world, invert, pose_matrix, rotation_angle_deg
from twin.live.pose_estimate import PoseEstimate
from twin.scene import SceneCfg, SceneError

log = logging.getLogger(__name__)

#: reprojection RMS (px) at which quality is 0.5
QUALITY_SCALE_PX = 1.0
#: estimates below this quality (RMS above 3 px) are dropped by default
DEFAULT_MIN_QUALITY = 0.25
#: ECC alignments correlating less with the printed tag are not used
_ECC_MIN_RHO = 0.8
#: a view whose second-best pose fits less than this many times worse than its best is ambiguous
AMBIGUITY_RATIO = 3.0
#: reprojection RMS (px) below which fits count as equally good (the corners' own noise)
_NOISE_FLOOR_PX = 0.05
#: poses this far apart (deg) are distinct solutions, not the same one found twice
_DISTINCT_DEG = 10.0
#: an ambiguous view resolved by the tag's rest direction: the chosen pose's tag normal is
#: within MAX_TILT_DEG of it and the other's is at least _TILT_MARGIN_DEG further
MAX_TILT_DEG = 60.0
_TILT_MARGIN_DEG = 20.0
#: an ambiguous view resolved by a prior: the chosen pose is this much nearer it (deg) ...
_PRIOR_MARGIN_DEG = 20.0
#: ... and within this angle of it (deg)
_PRIOR_MAX_DEG = 45.0
#: default smallest tag side (px) a pose from a single camera needs: in MuJoCo's renders a
#: 10-12 px tag's pose is ~10 mm too deep on average at 1 m (its corners sit ~0.1 px inside)
DEFAULT_MIN_SIDE_PX = 12.0


@dataclass(frozen=True)
class TagDetection:
    """One detected tag in one image: corners (4, 2) px in OpenCV's order (top-left,
    top-right, bottom-right, bottom-left of the printed image)."""

    camera: str
    family: str
    id: int
    corners: np.ndarray


@dataclass(frozen=True)
class _View:
    """One camera's fit of one object: its candidate poses, best first."""

    camera: PinholeCamera
    tags: tuple[int, ...]
    object_points: np.ndarray  # (N, 3) tag corners in the body frame
    image_points: np.ndarray  # (N, 2) detected corners
    candidates: tuple[tuple[np.ndarray, float], ...]  # (T_base_obj, rms px), distinct, best first
    side_px: float  # the largest tag's mean side in the image

    @property
    def T_base_obj(self) -> np.ndarray:
        return self.candidates[0][0]

    @property
    def rms(self) -> float:
        return self.candidates[0][1]

    @property
    def ratio(self) -> float:
        """Second-best RMS over the best (floored at the noise): large = unambiguous."""
        return _ratio(self.candidates)


def quality_from_rms(rms_px: float) -> float:
    """Quality in [0, 1] of a reprojection RMS in pixels."""
    return float(1.0 / (1.0 + max(float(rms_px), 0.0) / QUALITY_SCALE_PX))


class MarkerTracker:
    """Object poses from the scene's fiducial tags seen by calibrated cameras.

    ``objects``: the bodies to track (default: every body carrying a tag). ``min_quality``:
    a camera's fit below it is dropped, and an object no view fits well enough is absent
    from the result. ``refine_ecc``: after ArUco's subpixel corners, align the known tag
    image to the detection (``cv2.findTransformECC``, a homography over all the tag's
    pixels); at 20-30 px per tag this takes the corner error from ~0.4 px to ~0.05 px.
    ``upscale``: detect on the image enlarged this many times (cubic): a 2.4 cm tag at 1 m
    (15 px) is found about 95 % of the time at 2x, half of the time at 1x. ``min_side_px``:
    a pose from one camera alone needs a tag at least this wide in the image (0: any).
    ``ambiguity_ratio``: views whose two best poses fit within this ratio are ambiguous and
    resolved (or rejected) as the module describes; 0 turns that off (always the best fit).
    """

    def __init__(
        self,
        scene: SceneCfg,
        objects: list[str] | None = None,
        min_quality: float = DEFAULT_MIN_QUALITY,
        refine_ecc: bool = True,
        upscale: int = 2,
        min_side_px: float = DEFAULT_MIN_SIDE_PX,
        ambiguity_ratio: float = AMBIGUITY_RATIO,
    ) -> None:
        import cv2

        scene.validate()
        if not 0.0 <= min_quality <= 1.0:
            raise ValueError(f"min_quality = {min_quality}: use a value in [0, 1]")
        tagged = {m.body for m in scene.markers}
        if objects is None:
            names = [b.name for b in scene.iter_bodies() if b.name in tagged]
        else:
            names = list(objects)
            for n in names:
                scene.body(n)  # raises SceneError naming the known bodies
                if n not in tagged:
                    raise SceneError(
                        f"MarkerTracker: body {n!r} carries no marker in scene {scene.name!r}; add a MarkerCfg "
                        "for it (twin.fiducials.with_markers) or leave it out of objects"
                    )
        self.objects: tuple[str, ...] = tuple(names)
        self.min_quality = float(min_quality)
        self.refine_ecc = bool(refine_ecc)
        if upscale < 1:
            raise ValueError(f"upscale = {upscale}: use 1 (none) or a larger integer")
        self.upscale = int(upscale)
        if not min_side_px >= 0.0:
            raise ValueError(f"min_side_px = {min_side_px}: use a tag side in pixels >= 0 (0: no minimum)")
        self.min_side_px = float(min_side_px)
        if not ambiguity_ratio >= 0.0:
            raise ValueError(
                f"ambiguity_ratio = {ambiguity_ratio}: use a ratio >= 1 (0: take the best fit, never resolve)"
            )
        self.ambiguity_ratio = float(ambiguity_ratio)
        #: (family, id) -> (body, the tag's 4 corners in the body frame, OpenCV's order)
        self._tags: dict[tuple[str, int], tuple[str, np.ndarray]] = {}
        for m in scene.markers:
            if m.body in self.objects:
                h = m.size / 2.0
                local = np.array([[-h, h, 0.0], [h, h, 0.0], [h, -h, 0.0], [-h, -h, 0.0]])
                t = pose_matrix(m.pose.pos, m.pose.quat)
                self._tags[(m.family, m.id)] = (m.body, local @ t[:3, :3].T + t[:3, 3])
        params = cv2.aruco.DetectorParameters()
        params.cornerRefinementMethod = cv2.aruco.CORNER_REFINE_SUBPIX
        self._detectors = {
            fam: cv2.aruco.ArucoDetector(cv_dictionary(fam), params) for fam in sorted({f for f, _ in self._tags})
        }
        self._unknown_logged: set[tuple[str, int]] = set()
        # per object: its tag's normal in the body frame, and where the scene's rest pose
        # points it in the base frame (a tag on an object's top face: up)
        rest = _rest_rotations(scene)
        self._tag_normal: dict[str, np.ndarray] = {}
        self._rest_normal: dict[str, np.ndarray] = {}
        for (_, _), (body, corners) in sorted(self._tags.items()):
            if body not in self._tag_normal:
                n = _tag_frame(corners)[:3, 2]
                self._tag_normal[body] = n
                self._rest_normal[body] = rest[body] @ n
        self._status: dict[str, str] = {n: "not seen yet" for n in self.objects}

    # ---- detection ----------------------------------------------------------------------------
    def detect(self, camera: PinholeCamera, rgb: np.ndarray) -> list[TagDetection]:
        """Every tag of the tracked families in one image (ids of other scenes included)."""
        import cv2

        _check_image(camera, rgb)
        gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        k = self.upscale
        big = gray if k == 1 else cv2.resize(gray, None, fx=k, fy=k, interpolation=cv2.INTER_CUBIC)
        gray_f: np.ndarray | None = None
        out: list[TagDetection] = []
        for fam, det in self._detectors.items():
            corners, ids, _ = det.detectMarkers(big)
            if ids is None or len(corners) == 0:
                continue
            for c, i in zip(corners, ids.reshape(-1)):
                c = (np.asarray(c, float).reshape(4, 2) + 0.5) / k - 0.5  # back to the image's pixels
                if self.refine_ecc and (fam, int(i)) in self._tags:
                    gray_f = gray.astype(np.float32) if gray_f is None else gray_f
                    c = _refine_ecc(gray_f, fam, int(i), c)
                out.append(TagDetection(camera.name, fam, int(i), c))
        return out

    # ---- estimation ---------------------------------------------------------------------------
    def status(self) -> dict[str, str]:
        """Per tracked object, how the last :meth:`estimate` found it ("tracked: ...") or why
        it is absent ("no tag seen", "rejected: ambiguous tag pose (IPPE ratio 1.2) ...")."""
        return dict(self._status)

    def estimate(
        self,
        views: dict[str, tuple[PinholeCamera, np.ndarray]],
        priors: dict[str, np.ndarray] | None = None,
    ) -> dict[str, PoseEstimate]:
        """Poses (robot base frame) of the tracked objects whose tags the cameras see.

        ``views``: camera name -> (camera, RGB uint8 image of shape (height, width, 3)).
        ``priors``: object name -> 4x4 T_base_obj the caller believes (the twin's current or
        last pose); it only picks between the two poses an ambiguous view allows.
        Objects with no tag seen, no fit of ``min_quality`` or an ambiguity nothing resolves
        are absent; :meth:`status` says why.
        """
        for name, view in views.items():
            if not (isinstance(view, tuple) and len(view) == 2 and isinstance(view[0], PinholeCamera)):
                raise ValueError(f"camera {name!r}: give (PinholeCamera, RGB image), got {type(view).__name__}")
            _check_image(view[0], view[1])
        priors = dict(priors or {})
        for n, t in priors.items():
            if np.asarray(t).shape != (4, 4) or not np.all(np.isfinite(t)):
                raise ValueError(f"priors[{n!r}]: give a finite 4x4 T_base_obj")
        self._status = {n: "no tag seen" for n in self.objects}
        per_object: dict[str, list[_View]] = {}
        poor: dict[str, list[str]] = {}
        for name, (camera, rgb) in views.items():
            seen: dict[str, list[tuple[int, np.ndarray, np.ndarray]]] = {}
            for d in self.detect(camera, rgb):
                known = self._tags.get((d.family, d.id))
                if known is None:
                    if (d.family, d.id) not in self._unknown_logged:
                        self._unknown_logged.add((d.family, d.id))
                        log.debug("camera %r: %s tag %d is not on a tracked object; ignored", name, d.family, d.id)
                    continue
                body, corners_body = known
                seen.setdefault(body, []).append((d.id, corners_body, d.corners))
            for body, tags in seen.items():
                view = _fit_view(camera, tags)
                if view is not None and quality_from_rms(view.rms) >= self.min_quality:
                    per_object.setdefault(body, []).append(view)
                else:
                    why = "no fit" if view is None else f"reprojection RMS {view.rms:.2f} px"
                    poor.setdefault(body, []).append(f"{name}: {why}")
        for body, whys in poor.items():
            if body not in per_object:
                self._status[body] = f"rejected: poor fit ({'; '.join(whys)})"
        out: dict[str, PoseEstimate] = {}
        for body, obj_views in per_object.items():
            est, why = self._fuse(body, obj_views, priors.get(body))
            if est is not None:
                out[body] = est
                self._status[body] = f"tracked: {why}"
            else:
                self._status[body] = f"rejected: {why}"
                log.debug("MarkerTracker: %s rejected: %s", body, why)
        return out

    def _fuse(self, body: str, views: list[_View], prior: np.ndarray | None) -> tuple[PoseEstimate | None, str]:
        """The object's pose from its views (and why, or why not)."""
        if len(views) > 1:
            # the joint fit from every view's every candidate: a view's mirrored solution
            # reprojects badly into the other cameras, so the joint minimum resolves it
            fits = []
            for v in views:
                for t0, _ in v.candidates:
                    fits.append(_refine_joint(views, t0))
            joint = _distinct(sorted(fits, key=lambda f: f[1]))
            (t_joint, joint_rms), ratio = joint[0], _ratio(joint)
            if quality_from_rms(joint_rms) >= self.min_quality:
                if ratio >= self.ambiguity_ratio:
                    how = f"{len(views)} cameras, RMS {joint_rms:.2f} px"
                    return self._estimate(body, t_joint, joint_rms, views, views, ratio, "joint"), how
                choice, why = self._resolve(body, joint, prior)
                if choice is not None:
                    how = f"{len(views)} cameras, RMS {choice[1]:.2f} px, {why}"
                    return self._estimate(body, choice[0], choice[1], views, views, ratio, why), how
            # cameras that disagree (a stale extrinsic, a misread corner): one camera alone
        reasons = []
        for v in sorted(views, key=lambda v: v.rms):
            est, why = self._single(body, v, views, prior)
            if est is not None:
                return est, why
            reasons.append(f"{v.camera.name}: {why}")
        return None, "; ".join(reasons)

    def _single(
        self, body: str, v: _View, views: list[_View], prior: np.ndarray | None
    ) -> tuple[PoseEstimate | None, str]:
        """The pose from one camera's view, or None and why."""
        if v.side_px < self.min_side_px:
            return None, (
                f"tag {v.side_px:.1f} px wide, under min_side_px {self.min_side_px:g} for a pose "
                "from one camera (its depth is uncertain)"
            )
        ratio = v.ratio
        if ratio >= self.ambiguity_ratio:
            return self._estimate(body, v.T_base_obj, v.rms, [v], views, ratio, None), (
                f"{v.camera.name}, RMS {v.rms:.2f} px"
            )
        choice, why = self._resolve(body, v.candidates, prior)
        if choice is None:
            return None, f"ambiguous tag pose (IPPE ratio {ratio:.2f}): {why}"
        return self._estimate(body, choice[0], choice[1], [v], views, ratio, why), (
            f"{v.camera.name}, RMS {choice[1]:.2f} px, {why}"
        )

    def _resolve(
        self, body: str, candidates: list[tuple[np.ndarray, float]] | tuple, prior: np.ndarray | None
    ) -> tuple[tuple[np.ndarray, float] | None, str]:
        """One of an ambiguous view's (near-)equally fitting poses, by the prior, else by the
        tag's rest direction; None and why when neither tells them apart."""
        cands = list(candidates)[:2]
        if prior is not None:
            d = [rotation_angle_deg(t, prior) for t, _ in cands]
            k = int(np.argmin(d))
            if d[k] <= _PRIOR_MAX_DEG and d[1 - k] - d[k] >= _PRIOR_MARGIN_DEG:
                return cands[k], f"ambiguity resolved by the prior ({d[k]:.0f} vs {d[1 - k]:.0f} deg from it)"
        up = self._rest_normal[body]
        normal_body = self._tag_normal[body]
        tilt = [float(np.degrees(np.arccos(np.clip((t[:3, :3] @ normal_body) @ up, -1.0, 1.0)))) for t, _ in cands]
        k = int(np.argmin(tilt))
        if tilt[k] <= MAX_TILT_DEG and tilt[1 - k] - tilt[k] >= _TILT_MARGIN_DEG:
            return cands[
                k
            ], f"ambiguity resolved by the tag's rest direction (tilt {tilt[k]:.0f} vs {tilt[1 - k]:.0f} deg)"
        near = "" if prior is None else ", nor the prior"
        return (
            None,
            f"tag tilts {tilt[0]:.0f} / {tilt[1]:.0f} deg from its rest direction, neither clearly upright{near}",
        )

    def _estimate(
        self,
        body: str,
        t_base_obj: np.ndarray,
        rms: float,
        views_used: list[_View],
        views: list[_View],
        ratio: float,
        resolved: str | None,
    ) -> PoseEstimate | None:
        quality = quality_from_rms(rms)
        return PoseEstimate(
            name=body,
            T_base_obj=t_base_obj,
            quality=quality,
            error=float(rms),
            error_unit="px",
            method="marker",
            cameras=tuple(v.camera.name for v in views_used),
            detail={
                "tags": {v.camera.name: list(v.tags) for v in views_used},
                "rms_px": {v.camera.name: float(v.rms) for v in views},
                "side_px": {v.camera.name: float(v.side_px) for v in views},
                "ambiguity_ratio": float(ratio),
                "resolved_by": resolved,
            },
        )


# ---- fitting ------------------------------------------------------------------------------------


def _ratio(candidates) -> float:
    """Second-best RMS over the best (floored at the corners' noise); inf with one candidate."""
    c = list(candidates)
    if len(c) < 2:
        return float("inf")
    return float(c[1][1] / max(c[0][1], _NOISE_FLOOR_PX))


def _distinct(fits: list[tuple[np.ndarray, float]]) -> list[tuple[np.ndarray, float]]:
    """Fits (sorted best first) without those within _DISTINCT_DEG of a better one."""
    out: list[tuple[np.ndarray, float]] = []
    for t, rms in fits:
        if all(rotation_angle_deg(t, u) > _DISTINCT_DEG for u, _ in out):
            out.append((t, rms))
    return out


def _fit_view(camera: PinholeCamera, tags: list[tuple[int, np.ndarray, np.ndarray]]) -> _View | None:
    """One camera's candidate object poses: both IPPE solutions of every tag (LM over all
    the object's corners from each when it shows several tags), distinct, best first."""
    import cv2

    obj = np.concatenate([t[1] for t in tags]).astype(float)
    img = np.concatenate([t[2] for t in tags]).astype(float)
    fits: list[tuple[np.ndarray, float]] = []
    side = 0.0
    for _, corners_body, corners_px in tags:
        side = max(side, float(np.mean(np.linalg.norm(corners_px - np.roll(corners_px, 1, axis=0), axis=1))))
        # IPPE_SQUARE wants the tag's own frame: corners (+-h, +-h, 0) in OpenCV's order
        h = float(np.linalg.norm(corners_body[1] - corners_body[0])) / 2.0
        local = np.array([[-h, h, 0.0], [h, h, 0.0], [h, -h, 0.0], [-h, -h, 0.0]])
        n, rvecs, tvecs, _ = cv2.solvePnPGeneric(local, corners_px, camera.K, None, flags=cv2.SOLVEPNP_IPPE_SQUARE)
        t_obj_tag = invert(_tag_frame(corners_body))
        for k in range(n):
            t_cam_obj = _rt_matrix(rvecs[k], tvecs[k]) @ t_obj_tag
            rvec = Rotation.from_matrix(t_cam_obj[:3, :3]).as_rotvec().reshape(3, 1)
            tvec = t_cam_obj[:3, 3].reshape(3, 1).copy()
            if len(tags) > 1:
                rvec, tvec = cv2.solvePnPRefineLM(obj, img, camera.K, None, rvec, tvec)
            proj, _ = cv2.projectPoints(obj, rvec, tvec, camera.K, None)
            rms = float(np.sqrt(np.mean(np.sum((proj.reshape(-1, 2) - img) ** 2, axis=1))))
            fits.append((camera.T_base_cam @ _rt_matrix(rvec, tvec), rms))
    if not fits:
        return None
    return _View(
        camera=camera,
        tags=tuple(t[0] for t in tags),
        object_points=obj,
        image_points=img,
        candidates=tuple(_distinct(sorted(fits, key=lambda f: f[1]))),
        side_px=side,
    )


def _refine_joint(views: list[_View], t0: np.ndarray) -> tuple[np.ndarray, float]:
    """One object pose (base frame) minimising the reprojection error over every view."""

    def pose(x: np.ndarray) -> np.ndarray:
        t = np.eye(4)
        t[:3, :3] = Rotation.from_rotvec(x[:3]).as_matrix()
        t[:3, 3] = x[3:]
        return t

    def residuals(x: np.ndarray) -> np.ndarray:
        t = pose(x)
        res = []
        for v in views:
            pts = v.object_points @ t[:3, :3].T + t[:3, 3]
            uv, _ = v.camera.project(pts)
            res.append((uv - v.image_points).reshape(-1))
        return np.concatenate(res)

    x0 = np.concatenate([Rotation.from_matrix(t0[:3, :3]).as_rotvec(), t0[:3, 3]])
    sol = least_squares(residuals, x0, method="lm", x_scale=np.array([0.1, 0.1, 0.1, 0.01, 0.01, 0.01]))
    r = sol.fun.reshape(-1, 2)
    return pose(sol.x), float(np.sqrt(np.mean(np.sum(r**2, axis=1))))


def _refine_ecc(gray: np.ndarray, family: str, id: int, corners: np.ndarray) -> np.ndarray:
    """Corners refined by aligning the printed tag (quiet zone included) to the image with
    ECC (a homography; invariant to the tag's brightness and contrast). Keeps the detector's
    corners when ECC fails, fits poorly (correlation below ``_ECC_MIN_RHO``) or moves a
    corner by more than 1.5 bits."""
    import cv2

    side = float(np.mean(np.linalg.norm(corners - np.roll(corners, 1, axis=0), axis=1)))
    ppb = int(np.clip(side // TAG_BITS, 2, 8))  # template no larger than the tag in the image
    template = tag_image(id, family, ppb).astype(np.float32)
    q, s = QUIET_BITS * ppb, TAG_BITS * ppb
    # the black square's corners in template pixels (pixel centres at integers)
    tc = np.array([[q, q], [q + s, q], [q + s, q + s], [q, q + s]], np.float32) - 0.5
    warp = cv2.getPerspectiveTransform(tc, corners.astype(np.float32)).astype(np.float32)
    criteria = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 100, 1e-6)
    try:
        rho, warp = cv2.findTransformECC(template, gray, warp, cv2.MOTION_HOMOGRAPHY, criteria, None, 1)
    except cv2.error:
        return corners
    refined = cv2.perspectiveTransform(tc.reshape(-1, 1, 2), warp).reshape(4, 2).astype(float)
    moved = float(np.max(np.linalg.norm(refined - corners, axis=1)))
    if not np.all(np.isfinite(refined)) or rho < _ECC_MIN_RHO or moved > 1.5 * side / TAG_BITS:
        return corners
    return refined


def _rest_rotations(scene: SceneCfg) -> dict[str, np.ndarray]:
    """Every body's rotation in the robot base frame in the scene's rest pose."""
    out: dict[str, np.ndarray] = {}

    def visit(body, parent: np.ndarray) -> None:
        rot = parent @ pose_matrix(body.pose.pos, body.pose.quat)[:3, :3]
        out[body.name] = rot
        for child in body.children:
            visit(child, rot)

    for b in scene.bodies:
        visit(b, base_from_world(scene)[:3, :3])
    return out


def _tag_frame(corners_body: np.ndarray) -> np.ndarray:
    """The tag frame (4x4, in the body frame) from its 4 corners in OpenCV's order."""
    c = np.asarray(corners_body, float)
    x = c[1] - c[0]
    y = c[0] - c[3]
    x /= np.linalg.norm(x)
    y /= np.linalg.norm(y)
    t = np.eye(4)
    t[:3, :3] = np.stack([x, y, np.cross(x, y)], axis=1)
    t[:3, 3] = c.mean(axis=0)
    return t


def _rt_matrix(rvec: np.ndarray, tvec: np.ndarray) -> np.ndarray:
    t = np.eye(4)
    t[:3, :3] = Rotation.from_rotvec(np.asarray(rvec, float).reshape(3)).as_matrix()
    t[:3, 3] = np.asarray(tvec, float).reshape(3)
    return t


def _check_image(camera: PinholeCamera, rgb: object) -> None:
    where = f"camera {camera.name!r}"
    if not isinstance(rgb, np.ndarray):
        raise ValueError(f"{where}: the image is a {type(rgb).__name__}; give a numpy RGB array (H, W, 3) uint8")
    if rgb.dtype != np.uint8:
        raise ValueError(
            f"{where}: image dtype is {rgb.dtype}; give 8-bit RGB (uint8 0..255), e.g. "
            "(np.clip(img, 0, 1) * 255).astype(np.uint8) for a float image in [0, 1]"
        )
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"{where}: image shape {rgb.shape}; give RGB (height, width, 3)")
    if rgb.shape[:2] != (camera.height, camera.width):
        raise ValueError(
            f"{where}: image is {rgb.shape[1]}x{rgb.shape[0]}, intrinsics are for {camera.width}x{camera.height}; "
            "scale the intrinsics to the image (PinholeCamera.from_scene(scene, name, width, height))"
        )


__all__ = [
    "AMBIGUITY_RATIO",
    "DEFAULT_MIN_QUALITY",
    "DEFAULT_MIN_SIDE_PX",
    "MAX_TILT_DEG",
    "QUALITY_SCALE_PX",
    "MarkerTracker",
    "TagDetection",
    "quality_from_rms",
]
