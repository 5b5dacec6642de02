"""Camera extrinsics, field of view and lighting of the twin from logged images
(``twinrank calibrate --cameras``; the photometric part of real-to-sim calibration).

For each logged camera a few frames are taken across the episodes (the first frame and one
mid-episode, where the arm stands elsewhere). The twin rebuilds each frame's scene: the task's
reset at the episode's seed, the logged object poses and the logged joint positions at the
frame's time (no physics is stepped). The twin then renders the camera, and CMA-ES (``cma``)
moves it until rendered and logged images agree:

* camera: position offset (3, m), rotation about the camera's own position (a rotation vector,
  3, rad; the perturbation suite's ``camera_orientation`` semantics) and focal-length scale
  (``camera_fov``), fitted per camera on a light-invariant term: the grey images blurred and
  normalised to zero mean and unit spread (a light change rescales intensities, it does not move
  edges), plus the depth difference where depth is logged (the point-cloud term: a depth pixel
  and its ray are a point). The twin renders at the working size; both images are box-filtered
  to half of it and blurred (a native render at a smaller size aliases differently and biases
  the fit). CMA-ES needs about 450-600 evaluations of the 7 parameters per camera.
* light: intensity scale and direction (tilt, azimuth; the suite's ``light_intensity`` and
  ``light_direction``), shared by all lights, fitted on the raw colour difference with the
  calibrated cameras.

The error (+-) is the larger of two empirical figures: the frame-to-frame scatter (one
Gauss-Newton step from the optimum on each frame alone; spread / sqrt(frames)) and the
half-width of the near-optimal set (every evaluated candidate within 1.25x the best residual:
what the optimiser could not tell apart). Measured on a same-engine cell with a known shift it
covered the true error (0.22 cm within +-0.3 cm, 0.31 deg within +-0.43 deg). A camera whose
error is wider than a quarter of the search box, or that fits no better than the scene's, is
reported as not identified and kept nominal.

Output (:class:`CameraCalibration`): factor values a suite can fix (``fixed:``, see
:mod:`twin.perturbations`) and the task's scene with the calibrated cameras and lights (write
it with :func:`twin.usd_io.write_scene_usd`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from selection.realdata import hold, scene_problem
from twin.perturbations import Condition

#: the factors this module fits (fixed by value in a calibrated suite: selection.calibration)
FIXED_FACTORS = ("camera_position", "camera_orientation", "camera_fov", "light_intensity", "light_direction")
#: search box half-widths: position (m per axis), rotation (rad per axis), log focal scale
POS_BOX = 0.12
ROT_BOX = 0.25
LOG_FOV_BOX = 0.25
#: CMA-ES coordinates are the parameters in these units (so one sigma moves each about as much)
CAM_UNITS = np.array([0.02] * 3 + [0.02] * 3 + [0.05])
LIGHT_BOX = {"log_intensity": (math.log(0.3), math.log(3.0)), "rot": 0.8}
#: depth differences are clipped here (m) so an occlusion edge does not dominate, and scaled by
#: DEPTH_SCALE to weigh about as much as the normalised photometric term
DEPTH_CLIP = 0.10
DEPTH_SCALE = 0.02
#: the near-optimal set: evaluated candidates within this factor of the best residual; its
#: half-width bounds the estimate's error from below together with the frame-to-frame scatter
NEAR_OPTIMAL = 1.25
#: the lights count as identified when they lower the colour residual below this fraction
LIGHT_MIN_GAIN = 0.9
#: depth beyond this (m) is no reading (a sensor's max range; the renderer's far plane)
MAX_DEPTH = 5.0


class CameraCalibrationError(ValueError):
    """Logs or options the camera calibration cannot use (names the problem and the fix)."""


@dataclass
class ViewSample:
    """One logged frame of one camera and the scene state at its time."""

    label: str
    seed: int
    camera: str
    rgb: np.ndarray  # (H, W, 3) uint8
    depth: np.ndarray | None  # (H, W) float32 m, or None
    joints: np.ndarray  # (8,) 7 arm joints + gripper width
    objects: dict[str, np.ndarray]  # name -> (7,) pose


def view_samples(
    episodes: Sequence[Any], task: str, cameras: Sequence[str], frames_per_camera: int = 6
) -> tuple[dict[str, list[ViewSample]], list[str]]:
    """Frames to match per camera (first and mid-episode frames, across episodes), and a line
    for each camera or episode that cannot be used (why)."""
    from twin.tasks import make_task

    names = list(make_task(task).object_names)
    out: dict[str, list[ViewSample]] = {c: [] for c in cameras}
    skipped: list[str] = []
    for k, ep in enumerate(episodes):
        label, problem = scene_problem(ep, k, task, names, CameraCalibrationError)
        if problem:
            skipped.append(f"{label}: {problem}")
            continue
        if len(ep.t) == 0:
            skipped.append(f"{label}: no joint states")
            continue
        for cam in cameras:
            frames = ep.images.get(cam)
            if frames is None or len(frames) == 0:
                continue
            for i in sorted({0, len(frames) // 2}):
                if len(out[cam]) >= frames_per_camera:
                    break
                t = float(frames.t[i])
                depth = None
                dframes = ep.depth.get(cam)
                if dframes is not None and len(dframes):
                    j = int(np.argmin(np.abs(np.asarray(dframes.t) - t)))
                    if abs(float(dframes.t[j]) - t) < 1e-3:
                        depth = np.asarray(dframes.data[j], dtype=np.float32)
                joints = hold(ep.t, ep.joint_pos, np.array([t]))[0]
                objects = {n: hold(tr.t, tr.pose, np.array([t]))[0] for n, tr in ep.object_poses.items() if n in names}
                if not np.isfinite(joints).all() or any(not np.isfinite(p).all() for p in objects.values()):
                    skipped.append(f"{label}, {cam} frame {i}: joint state or object pose not finite at its time")
                    continue
                rgb = np.asarray(frames.data[i])
                if rgb.ndim != 3 or rgb.shape[2] != 3:
                    raise CameraCalibrationError(
                        f"{label}, {cam}: images of shape {rgb.shape} are not colour (H, W, 3); log rgb8 frames"
                    )
                out[cam].append(ViewSample(f"{label} t={t:.2f}s", int(ep.seed), cam, rgb, depth, joints, objects))
    for cam in cameras:
        if not out[cam]:
            skipped.append(f"camera {cam}: no usable logged frames")
    return {c: v for c, v in out.items() if v}, skipped


# ---- the twin's view --------------------------------------------------------------------------


class ViewRenderer:
    """Rebuilds logged frames' scenes in the twin and renders them with candidate cameras/lights."""

    def __init__(self, task: str, width: int) -> None:
        from twin.env import TwinEnv

        self.env = TwinEnv(task, render_mode=None)
        self.scene = self.env.task.cfg.scene
        self.width = width
        self._renderers: dict[tuple[int, int], Any] = {}
        self._seed: int | None = None
        m = self.env.sim.model
        self._saved = {
            "cam_pos": m.cam_pos.copy(),
            "cam_quat": m.cam_quat.copy(),
            "cam_intrinsic": m.cam_intrinsic.copy(),
            "light_dir": m.light_dir.copy(),
            "light_diffuse": m.light_diffuse.copy(),
            "light_ambient": m.light_ambient.copy(),
            "light_specular": m.light_specular.copy(),
            "head_ambient": m.vis.headlight.ambient.copy(),
            "head_diffuse": m.vis.headlight.diffuse.copy(),
        }
        self.renders = 0

    def close(self) -> None:
        m = self.env.sim.model  # the model may be shared with other envs of this process: restore it
        for k in (
            "cam_pos",
            "cam_quat",
            "cam_intrinsic",
            "light_dir",
            "light_diffuse",
            "light_ambient",
            "light_specular",
        ):
            getattr(m, k)[:] = self._saved[k]
        m.vis.headlight.ambient[:] = self._saved["head_ambient"]
        m.vis.headlight.diffuse[:] = self._saved["head_diffuse"]
        for r in self._renderers.values():
            r.close()
        self.env.close()

    def size(self, cam: str, width: int) -> tuple[int, int]:
        c = self.scene.camera(cam)
        return width, max(1, round(width * c.height / c.width))

    def apply(self, values: dict[str, Any]) -> None:
        """Write cameras/lights of the nominal scene under factor ``values`` into the model."""
        from twin.compile import camera_quat
        from twin.scene import SceneCfg

        small = SceneCfg(
            name="view",
            cameras=list(self.scene.cameras),
            lights=list(self.scene.lights),
            headlight_ambient=self.scene.headlight_ambient,
            headlight_diffuse=self.scene.headlight_diffuse,
        )
        s = Condition(name="calibration", values=values).apply_to_scene(small, None)
        m = self.env.sim.model
        for c in s.cameras:
            i = m.camera(c.name).id
            m.cam_pos[i] = c.pos
            m.cam_quat[i] = camera_quat(c)
            m.cam_intrinsic[i][0] = c.fx * m.cam_sensorsize[i][0] / c.width
            m.cam_intrinsic[i][1] = c.fy * m.cam_sensorsize[i][1] / c.height
        for lt in s.lights:
            i = m.light(lt.name).id
            m.light_dir[i] = lt.dir
            m.light_diffuse[i] = lt.diffuse
            m.light_ambient[i] = lt.ambient
            m.light_specular[i] = lt.specular
        m.vis.headlight.ambient[:] = s.headlight_ambient
        m.vis.headlight.diffuse[:] = s.headlight_diffuse

    def pose(self, v: ViewSample) -> None:
        """The scene at the frame: reset at its seed, then the logged objects and joints."""
        env = self.env
        if self._seed != v.seed:
            env.reset(seed=v.seed)
            self._seed = v.seed
        sim = env.sim
        for name, p in v.objects.items():
            if sim.is_free(name):
                sim.set_free_body_pose(name, p[:3], p[3:7])
        sim.data.qpos[sim.h.qpos_adr] = v.joints[:7]
        sim.data.qpos[sim.h.finger_qpos_adr] = v.joints[7] / 2.0
        sim.forward()

    def render(self, v: ViewSample, width: int, depth: bool) -> tuple[np.ndarray, np.ndarray | None]:
        from twin.render import Renderer

        w, h = self.size(v.camera, width)
        r = self._renderers.get((w, h))
        if r is None:
            r = self._renderers[(w, h)] = Renderer(self.env.sim.model, w, h)
        self.pose(v)
        self.renders += 1
        f = r.render(self.env.sim.data, v.camera, rgb=True, depth=depth)
        return f.rgb, f.depth


# ---- image terms ------------------------------------------------------------------------------


def _resize(img: np.ndarray, w: int, h: int, nearest: bool = False) -> np.ndarray:
    from PIL import Image

    if img.shape[1] == w and img.shape[0] == h:
        return img
    if img.dtype == np.uint8:
        return np.asarray(Image.fromarray(img).resize((w, h), Image.Resampling.BOX))
    mode = Image.Resampling.NEAREST if nearest else Image.Resampling.BOX
    return np.asarray(Image.fromarray(img.astype(np.float32), mode="F").resize((w, h), mode))


def _gray_norm(rgb: np.ndarray, sigma: float) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    g = gaussian_filter(rgb.astype(np.float32).mean(axis=2) / 255.0, sigma)
    return (g - g.mean()) / max(float(g.std()), 1e-6)


def _colour(rgb: np.ndarray, sigma: float) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(rgb.astype(np.float32) / 255.0, (sigma, sigma, 0))


@dataclass
class _Target:
    """A logged frame prepared at one working size."""

    sample: ViewSample
    gray: np.ndarray
    colour: np.ndarray
    depth: np.ndarray | None


def _targets(samples: Sequence[ViewSample], rend: ViewRenderer, width: int, sigma: float) -> list[_Target]:
    """Logged frames box-filtered to the working size, then to ``width`` (as renders will be)."""
    out = []
    for v in samples:
        w0, h0 = rend.size(v.camera, rend.width)
        w, h = rend.size(v.camera, width)
        rgb = _resize(_resize(v.rgb, w0, h0), w, h)
        d = _resize(_resize(v.depth, w0, h0, nearest=True), w, h, nearest=True) if v.depth is not None else None
        out.append(_Target(v, _gray_norm(rgb, sigma), _colour(rgb, sigma), d))
    return out


def _camera_residual(rend: ViewRenderer, t: _Target, width: int, sigma: float) -> np.ndarray:
    """Light-invariant residual of one frame: normalised grey difference, then scaled depth.

    The twin renders at ``rend.width`` and is box-filtered to ``width`` the way the logged
    frame was (a native render at a smaller size aliases differently and biases the fit)."""
    rgb, depth = rend.render(t.sample, rend.width, depth=t.depth is not None)
    h = t.gray.shape[0]
    rgb = _resize(rgb, width, h)
    if depth is not None:
        depth = _resize(depth, width, h, nearest=True)
    parts = [(_gray_norm(rgb, sigma) - t.gray).ravel()]
    if t.depth is not None and depth is not None:
        ok = _valid_depth(t.depth)
        d = np.clip(np.where(ok, depth - t.depth, 0.0), -DEPTH_CLIP, DEPTH_CLIP) / DEPTH_SCALE
        parts.append(d.ravel())
    return np.concatenate(parts)


def _valid_depth(d: np.ndarray) -> np.ndarray:
    """Pixels with a depth reading (not missing, not the far plane of an empty view)."""
    return np.isfinite(d) & (d > 1e-3) & (d < MAX_DEPTH)


def _light_residual(rend: ViewRenderer, t: _Target, width: int, sigma: float) -> np.ndarray:
    rgb, _ = rend.render(t.sample, rend.width, depth=False)
    rgb = _resize(rgb, width, t.colour.shape[0])
    return (_colour(rgb, sigma) - t.colour).ravel()


# ---- parameters -------------------------------------------------------------------------------


def _axis_angle(rvec: np.ndarray) -> list[float]:
    angle = float(np.linalg.norm(rvec))
    axis = rvec / angle if angle > 1e-12 else np.array([0.0, 0.0, 1.0])
    return [float(axis[0]), float(axis[1]), float(axis[2]), angle]


def camera_values(params: dict[str, np.ndarray], cameras: Sequence[str]) -> dict[str, Any]:
    """Factor values for the scene's cameras (in scene order) from per-camera parameter vectors
    (position offset 3, rotation vector 3, log focal scale 1); cameras not given stay nominal."""
    pos, rot, fov = [], [], []
    for name in cameras:
        p = params.get(name, np.zeros(7))
        pos.append([float(x) for x in p[:3]])
        rot.append(_axis_angle(np.asarray(p[3:6], dtype=float)))
        fov.append(float(math.exp(p[6])))
    return {"camera_position": pos, "camera_orientation": rot, "camera_fov": fov}


def light_values(x: np.ndarray) -> dict[str, Any]:
    """Factor values from (log intensity, rotation-vector x, y): tilt |r| about axis (rx, ry, 0)."""
    rx, ry = float(x[1]), float(x[2])
    return {
        "light_intensity": float(math.exp(x[0])),
        "light_direction": {"tilt": math.hypot(rx, ry), "azimuth": math.atan2(-rx, ry)},
    }


@dataclass
class CameraEstimate:
    camera: str
    frames: int
    position: list[float]  # m, offset from the scene's camera position
    position_se: list[float]
    rotation_deg: float  # angle of the rotation from the scene's orientation
    rotation_axis: list[float]
    rotation_se_deg: float
    fov_scale: float
    fov_se: float
    residual_before: float  # RMS light-invariant residual (grey in image std units, depth in 2 cm units)
    residual_after: float
    depth_before_mm: float = math.nan  # mean |depth difference| where depth is logged
    depth_after_mm: float = math.nan
    identified: bool = True
    note: str = ""
    params: list[float] = field(default_factory=list)  # the 7-vector

    def text(self) -> str:
        if not self.identified:
            return f"{self.camera}: not identified ({self.note}); kept as in the scene"
        p = ", ".join(f"{v * 100:+.1f}" for v in self.position)
        return (
            f"{self.camera}: moved ({p}) cm (+-{max(self.position_se) * 100:.1f}), rotated "
            f"{self.rotation_deg:.2f} deg (+-{self.rotation_se_deg:.2f}), focal x{self.fov_scale:.3f} "
            f"(+-{self.fov_se:.3f}) from {self.frames} frames"
        )


@dataclass
class LightEstimate:
    intensity: float
    tilt_deg: float
    azimuth_deg: float
    residual_before: float  # RMS colour difference in [0, 1]
    residual_after: float
    identified: bool = True
    note: str = ""
    params: list[float] = field(default_factory=list)

    def text(self) -> str:
        if not self.identified:
            return f"lights: not identified ({self.note}); kept as in the scene"
        return (
            f"lights: intensity x{self.intensity:.2f}, direction tilted {self.tilt_deg:.1f} deg towards "
            f"azimuth {self.azimuth_deg:.0f} deg (colour residual {self.residual_before:.3f} -> "
            f"{self.residual_after:.3f})"
        )


@dataclass
class CameraCalibration:
    task: str
    cameras: dict[str, CameraEstimate]
    light: LightEstimate | None
    scene_cameras: list[str]
    skipped: list[str]
    renders: int
    wall_s: float
    #: per camera: (logged frame, the twin as it was, the calibrated twin) at the working size
    previews: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=dict)

    def condition_values(self) -> dict[str, Any]:
        """Factor values of the identified cameras (others nominal) and lights."""
        params = {n: np.asarray(e.params) for n, e in self.cameras.items() if e.identified}
        out: dict[str, Any] = camera_values(params, self.scene_cameras) if params else {}
        if self.light is not None and self.light.identified:
            out.update(light_values(np.asarray(self.light.params)))
        return out

    def scene(self) -> Any:
        """The task's scene with the calibrated cameras and lights."""
        from twin.tasks import make_task

        task = make_task(self.task)
        return Condition(name="calibrated", values=self.condition_values()).apply_to_scene(task.cfg.scene, task)

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "cameras": {n: e.__dict__ for n, e in self.cameras.items()},
            "light": self.light.__dict__ if self.light is not None else None,
            "skipped": self.skipped,
            "renders": self.renders,
            "wall_s": self.wall_s,
            "condition": self.condition_values(),
        }


def calibrate_cameras(
    episodes: Sequence[Any],
    task: str,
    *,
    cameras: Sequence[str] | None = None,
    light: bool = True,
    frames_per_camera: int = 6,
    width: int = 160,
    max_evals: int = 400,
    seed: int = 0,
    progress: Callable[[str, int, int], None] | None = None,
) -> CameraCalibration:
    """Fit the cameras (and lights) of the twin of ``task`` to logged images of ``episodes``."""
    import cma

    t0 = time.perf_counter()
    rend = ViewRenderer(task, width)
    try:
        scene_cams = [c.name for c in rend.scene.cameras]
        if cameras:
            unknown = [c for c in cameras if c not in scene_cams]
            if unknown:
                raise CameraCalibrationError(
                    f"camera(s) {', '.join(unknown)} are not in the {task} scene (its cameras: {', '.join(scene_cams)})"
                )
        cams = list(cameras or scene_cams)
        logged = {c for ep in episodes for c in ep.images}
        if not logged & set(cams):
            raise CameraCalibrationError(
                f"no logged images of camera(s) {', '.join(cams)} (the logs have "
                f"{', '.join(sorted(logged)) or 'no images'}): record colour frames (twinrank proxy-real record --images)"
            )
        samples, skipped = view_samples(episodes, task, cams, frames_per_camera)
        for v in (v for vs in samples.values() for v in vs):
            _, ch = rend.size(v.camera, v.rgb.shape[1])
            if abs(v.rgb.shape[0] - ch) > 1:
                raise CameraCalibrationError(
                    f"{v.camera}: logged images are {v.rgb.shape[1]}x{v.rgb.shape[0]}, the scene's camera has "
                    f"another aspect ({rend.scene.camera(v.camera).width}x{rend.scene.camera(v.camera).height}): "
                    f"log the full frame or fix the camera in the scene"
                )
        total = max_evals * len(samples) + ((max_evals // 3 + max_evals // 4 * len(samples)) if light else 0)
        done = 0
        estimates: dict[str, CameraEstimate] = {}
        fitted: dict[str, np.ndarray] = {}
        for cam, vs in samples.items():

            def report(msg: str, n: int, cam: str = cam) -> None:
                if progress:
                    progress(f"{cam}: {msg}", done + n, total)

            est = _fit_camera(rend, cam, vs, scene_cams, width, max_evals, seed, report, cma)
            done += max_evals
            estimates[cam] = est
            if est.identified:
                fitted[cam] = np.asarray(est.params)
        light_est = None
        if light and samples:
            cam_vals = camera_values(fitted, scene_cams)
            light_est = _fit_light(
                rend,
                [vs[0] for vs in samples.values()],
                cam_vals,
                width,
                max_evals // 3,
                seed,
                lambda msg, n: progress(f"lights: {msg}", done + n, total) if progress else None,
                cma,
            )
            done += max_evals // 3
            if light_est.identified:
                # shading moved with the light: polish each camera again under the fitted lights
                lights = light_values(np.asarray(light_est.params))
                for cam, vs in samples.items():
                    if not estimates[cam].identified:
                        continue

                    def report2(msg: str, n: int, cam: str = cam) -> None:
                        if progress:
                            progress(f"{cam}: {msg}", done, total)

                    estimates[cam] = _fit_camera(
                        rend, cam, vs, scene_cams, width, max_evals // 4, seed, report2, cma, lights, estimates[cam]
                    )
        result = CameraCalibration(task, estimates, light_est, scene_cams, skipped, 0, 0.0)
        previews = {}
        for cam, vs in samples.items():
            v = vs[0]
            w, h = rend.size(cam, width)
            rend.apply({})
            before, _ = rend.render(v, width, depth=False)
            rend.apply(result.condition_values())
            after, _ = rend.render(v, width, depth=False)
            previews[cam] = (_resize(v.rgb, w, h), before, after)
        result.previews = previews
        result.renders = rend.renders
    finally:
        rend.close()
    result.wall_s = time.perf_counter() - t0
    return result


def view_fidelity(
    episodes: Sequence[Any], task: str, values: dict[str, Any], frames_per_camera: int = 2, width: int = 160
) -> tuple[dict[str, float], list[str]]:
    """How far logged camera frames are from the twin's renders of the same moments, under the
    factor ``values`` (a calibrated suite's): median depth error (mm, where depth is logged) and
    the light-invariant image residual (grey in image std units), averaged over frames; and a
    line for what could not be compared."""
    rend = ViewRenderer(task, width)
    try:
        cams = [c.name for c in rend.scene.cameras]
        samples, skipped = view_samples(episodes, task, cams, frames_per_camera)
        if not samples:
            return {}, [f"cameras: no usable frames ({'; '.join(skipped)})"]
        rend.apply({k: v for k, v in values.items() if k in FIXED_FACTORS})
        w = max(32, width // 2)
        res, depth = [], []
        for vs in samples.values():
            targets = _targets(vs, rend, w, 2.0)
            res += [_rms_of([_camera_residual(rend, t, w, 2.0)]) for t in targets]
            d = _depth_error(rend, vs[0].camera, None, targets, cams, None)
            if np.isfinite(d):
                depth.append(d)
    finally:
        rend.close()
    out = {"image_residual": float(np.mean(res))}
    if depth:
        out["depth_mm"] = float(np.mean(depth))
    return out, [] if depth else ["cameras: no depth logged"]


def _fit_camera(
    rend: ViewRenderer,
    cam: str,
    samples: list[ViewSample],
    scene_cams: list[str],
    width: int,
    max_evals: int,
    seed: int,
    report: Callable[[str, int], None],
    cma: Any,
    base: dict[str, Any] | None = None,
    start: CameraEstimate | None = None,
) -> CameraEstimate:
    """CMA-ES on the half-size, blurred residual (renders at the working size, box-filtered).
    ``base``: other factor values to render with (the fitted lights); ``start``: a previous
    estimate to refine (a smaller first step).

    Measured: a least-squares polish with finite-difference Jacobians does not converge here
    (a rendered image is not smooth at millimetre steps); CMA-ES reaches the known pose of a
    same-engine camera to about 1 mm in ~600 evaluations of 7 parameters."""
    lo = np.array([-POS_BOX] * 3 + [-ROT_BOX] * 3 + [-LOG_FOV_BOX]) / CAM_UNITS
    hi = -lo
    evals = 0
    extra = dict(base or {})
    w, sigma = max(32, width // 2), 2.0

    def residual(x: np.ndarray, targets: list[_Target], w: int = w, sigma: float = sigma) -> list[np.ndarray]:
        nonlocal evals
        evals += 1
        rend.apply({**extra, **camera_values({cam: np.asarray(x) * CAM_UNITS}, scene_cams)})
        return [_camera_residual(rend, t, w, sigma) for t in targets]

    targets = _targets(samples, rend, w, sigma)
    if start is None:
        x0, step = np.zeros(7), 1.0
        before = _rms_of(residual(x0, targets))
        depth_before = _depth_error(rend, cam, x0, targets, scene_cams, extra)
    else:
        x0, step = np.asarray(start.params, dtype=float) / CAM_UNITS, 0.3
        before, depth_before = start.residual_before, start.depth_before_mm
    es = cma.CMAEvolutionStrategy(
        list(x0),
        step,
        {"bounds": [list(lo), list(hi)], "seed": seed + 1, "maxfevals": max_evals, "verbose": -9, "tolx": 1e-3},
    )
    seen: list[tuple[np.ndarray, float]] = []
    while not es.stop():
        xs = [np.asarray(z, dtype=float) for z in es.ask()]
        costs = [_rms_of(residual(z, targets)) for z in xs]
        seen += list(zip(xs, costs, strict=True))
        es.tell(xs, costs)
        report(f"residual {es.result.fbest:.4f}", evals)
    x = np.asarray(es.result.xbest, dtype=float)
    after = _rms_of(residual(x, targets))
    depth_after = _depth_error(rend, cam, x, targets, scene_cams, extra)
    # the error: the larger of the frame-to-frame scatter and the half-width of the near-optimal set
    near = np.array([z for z, c in seen if c <= NEAR_OPTIMAL * after] or [x])
    half = np.abs(near - x).max(axis=0)
    se = np.maximum(_frame_scatter(lambda z: residual(z, targets), x, step=0.5), half)
    p = x * CAM_UNITS
    se_p = se * CAM_UNITS
    axis = _axis_angle(p[3:6])
    est = CameraEstimate(
        camera=cam,
        frames=len(samples),
        position=[float(v) for v in p[:3]],
        position_se=[float(v) for v in se_p[:3]],
        rotation_deg=math.degrees(axis[3]),
        rotation_axis=axis[:3],
        rotation_se_deg=math.degrees(float(np.linalg.norm(se_p[3:6]))),
        fov_scale=math.exp(float(p[6])),
        fov_se=math.exp(float(p[6])) * float(se_p[6]),
        residual_before=before,
        residual_after=after,
        depth_before_mm=depth_before,
        depth_after_mm=depth_after,
        params=[float(v) for v in p],
    )
    if after >= before:
        est.identified, est.note = False, "the images fit no better than the scene's camera"
    elif len(samples) >= 2 and (np.any(se_p[:3] > POS_BOX / 2) or np.any(se_p[3:6] > ROT_BOX / 2)):
        est.identified, est.note = False, "frame-to-frame scatter wider than a quarter of the search box"
    return est


def _rms_of(res: list[np.ndarray]) -> float:
    return float(np.sqrt(np.mean([np.mean(e**2) for e in res])))


def _depth_error(
    rend: ViewRenderer,
    cam: str,
    x: np.ndarray | None,
    targets: list[_Target],
    scene_cams: list[str],
    base: dict[str, Any] | None,
) -> float:
    """Median |depth difference| (mm) over pixels with logged depth, at camera parameters ``x``
    (at the working size)."""
    errs = []
    if x is not None:  # else: render with what is applied
        rend.apply({**(base or {}), **camera_values({cam: np.asarray(x) * CAM_UNITS}, scene_cams)})
    for t in targets:
        v = t.sample
        if v.depth is None:
            continue
        _, d = rend.render(v, rend.width, depth=True)
        assert d is not None  # rendered with depth
        h, w = d.shape
        logged = _resize(v.depth, w, h, nearest=True)
        ok = _valid_depth(logged)
        if ok.any():
            errs.append(np.median(np.abs(d[ok] - logged[ok])))
    return float(np.mean(errs) * 1000) if errs else math.nan


def _frame_scatter(residual: Callable[[np.ndarray], list[np.ndarray]], x: np.ndarray, step: float) -> np.ndarray:
    """Standard error of ``x`` from the spread of one Gauss-Newton step on each frame alone.

    Central differences (``step`` in search units) give each frame's Jacobian; a frame alone
    steps to ``x - pinv(J_f) r_f``; the spread of those over frames / sqrt(frames) is the
    error (inf with a single frame). Correlation between a frame's pixels is inside each
    frame's step, so it is not counted as independent evidence.
    """
    r0 = residual(x)
    n = len(r0)
    jac = [np.zeros((len(e), len(x))) for e in r0]
    for i in range(len(x)):
        dx = np.zeros(len(x))
        dx[i] = step
        rp, rm = residual(x + dx), residual(x - dx)
        for f in range(n):
            jac[f][:, i] = (rp[f] - rm[f]) / (2 * step)
    if n < 2:
        return np.full(len(x), math.inf)
    steps = np.array([x - np.linalg.lstsq(jac[f], r0[f], rcond=1e-6)[0] for f in range(n)])
    return steps.std(axis=0, ddof=1) / math.sqrt(n)


def _fit_light(
    rend: ViewRenderer,
    samples: list[ViewSample],
    cam_vals: dict[str, Any],
    width: int,
    max_evals: int,
    seed: int,
    report: Callable[[str, int], None],
    cma: Any,
) -> LightEstimate:
    sigma = 1.0
    targets = _targets(samples, rend, width, sigma)
    evals = 0

    def cost(x: np.ndarray) -> float:
        nonlocal evals
        evals += 1
        rend.apply({**cam_vals, **light_values(x)})
        r = [_light_residual(rend, t, width, sigma) for t in targets]
        return float(np.sqrt(np.mean([np.mean(e**2) for e in r])))

    x0 = np.zeros(3)
    before = cost(x0)
    lo = [LIGHT_BOX["log_intensity"][0], -LIGHT_BOX["rot"], -LIGHT_BOX["rot"]]
    hi = [LIGHT_BOX["log_intensity"][1], LIGHT_BOX["rot"], LIGHT_BOX["rot"]]
    es = cma.CMAEvolutionStrategy(
        [0.0, 0.0, 0.0],
        0.2,
        {"bounds": [lo, hi], "seed": seed + 2, "maxfevals": max_evals, "verbose": -9, "tolx": 1e-3},
    )
    while not es.stop():
        xs = es.ask()
        es.tell(xs, [cost(np.asarray(z)) for z in xs])
        report(f"colour residual {es.result.fbest:.4f}", evals)
    x = np.asarray(es.result.xbest, dtype=float)
    after = cost(x)
    v = light_values(x)
    est = LightEstimate(
        intensity=v["light_intensity"],
        tilt_deg=math.degrees(v["light_direction"]["tilt"]),
        azimuth_deg=math.degrees(v["light_direction"]["azimuth"]),
        residual_before=before,
        residual_after=after,
        params=[float(z) for z in x],
    )
    if after > LIGHT_MIN_GAIN * before:
        est.identified = False
        est.note = (
            f"the colour residual fell only {1 - after / before:.0%} (the logs' shading is not the twin's lights')"
        )
    return est


__all__ = [
    "CameraCalibration",
    "CameraCalibrationError",
    "CameraEstimate",
    "LightEstimate",
    "ViewSample",
    "calibrate_cameras",
    "camera_values",
    "light_values",
    "view_fidelity",
    "view_samples",
]
