"""Hand-eye camera calibration with a ChArUco board (twin/live/handeye.py, `twinrank live calibrate-camera`).

(a) pure: synthetic eye-to-hand problems with a known camera, noise-free and noisy;
(b) rendered: the board on the twin's hand, rendered by the twin at 640x480 from <= 15
    planned poses, calibrated against the scene's true camera pose, also from a deliberately
    shifted starting scene, and with the known-mount variant;
(c) end to end: the CLI against franka-sim (through franky) and a software RealSense fed with
    twin renders (skipped when franka-sim is not installed or its port is taken).

Target: camera pose error <= 5 mm / 0.5 deg. Run with -s for the measured figures.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import mujoco
import numpy as np
import pytest
from scipy.spatial.transform import Rotation
from typer.testing import CliRunner

from twin.compile import compile_scene
from twin.live import handeye as he
from twin.live.camera_model import PinholeCamera, invert, pose_matrix
from twin.render import Renderer
from twin.scene import Pose, SceneError
from twin.tasks import make_task
from twin.usd_io import read_scene_usd, write_scene_usd
from twinrank.cli import app

pytest.importorskip("cv2", reason="OpenCV (perception extra) not installed")

ROOT = Path(__file__).resolve().parents[1]
TOL_MM, TOL_DEG = 5.0, 0.5
CAMERA = "cam_left"
W, H = 640, 480


def _random_T(rng: np.random.Generator, t_scale: float = 0.5) -> np.ndarray:
    return pose_matrix(rng.uniform(-t_scale, t_scale, 3), Rotation.random(random_state=rng).as_quat(scalar_first=True))


def _synthetic(rng: np.random.Generator, n: int = 12):
    """A camera, a board mount, n gripper poses with diverse rotations and the board poses seen."""
    T_bc = pose_matrix(
        (-0.01, 0.5, 0.69), Rotation.from_euler("xyz", (-127, 0, -132), degrees=True).as_quat(scalar_first=True)
    )
    T_gb = pose_matrix((0.02, -0.01, 0.23), Rotation.from_euler("x", -90, degrees=True).as_quat(scalar_first=True))
    bg = []
    for _ in range(n):
        R = Rotation.from_rotvec(rng.normal(0, 0.35, 3)) * Rotation.from_euler("x", 180, degrees=True)
        bg.append(pose_matrix(rng.uniform((0.3, -0.2, 0.3), (0.6, 0.2, 0.55)), R.as_quat(scalar_first=True)))
    cb = [invert(T_bc) @ b @ T_gb for b in bg]
    return T_bc, T_gb, bg, cb


def _views_from_poses(cb, K, rng, pixel_noise: float) -> list[he.BoardView]:
    """BoardViews with corners projected from the true board poses (+ pixel noise), board
    poses re-estimated by PnP as detection would."""
    import cv2

    board = he.CharucoBoardSpec()
    obj = board.corners()
    views = []
    for T in cb:
        uv, _ = cv2.projectPoints(obj, cv2.Rodrigues(T[:3, :3])[0], T[:3, 3], K, None)
        uv = uv.reshape(-1, 2) + rng.normal(0, pixel_noise, (len(obj), 2))
        ok, rvec, tvec = cv2.solvePnP(obj, uv, K, None)
        assert ok
        Tp = np.eye(4)
        Tp[:3, :3] = cv2.Rodrigues(rvec)[0]
        Tp[:3, 3] = tvec.ravel()
        views.append(he.BoardView(Tp, np.arange(len(obj)), uv, obj, 0.0))
    return views


# ---- (a) pure -----------------------------------------------------------------------------------


def test_synthetic_hand_eye_recovers_the_camera():
    rng = np.random.default_rng(0)
    T_bc, T_gb, bg, cb = _synthetic(rng)
    for method in he.METHODS:
        res = he.calibrate_eye_to_hand(bg, cb, method=method)
        mm, deg = he.pose_error(res.T_base_cam, T_bc)
        print(f"noise-free, {method}: {mm:.2e} mm, {deg:.2e} deg")
        assert mm < 0.01 and deg < 0.001, method
        assert he.pose_error(res.T_gripper_board, T_gb)[0] < 0.01
        assert res.spread_mm < 0.01
    # noisy board poses (0.5 mm, 0.1 deg per view): closed form within target
    noisy = [
        c
        @ pose_matrix(
            rng.normal(0, 0.0005, 3), Rotation.from_rotvec(rng.normal(0, np.radians(0.1), 3)).as_quat(scalar_first=True)
        )
        for c in cb
    ]
    res = he.calibrate_eye_to_hand(bg, noisy, method="park")
    mm, deg = he.pose_error(res.T_base_cam, T_bc)
    print(f"noisy poses (0.5 mm / 0.1 deg), park: {mm:.2f} mm, {deg:.3f} deg, spread {res.spread_mm:.2f} mm")
    assert mm < TOL_MM and deg < TOL_DEG
    assert res.spread_mm > 0.1  # the noise shows in the residual
    # noisy corners (0.5 px): refined on the reprojection error
    cam = PinholeCamera.from_scene(make_task("reach").cfg.scene, CAMERA, W, H)
    views = _views_from_poses(cb, cam.K, rng, 0.5)
    res = he.calibrate_eye_to_hand(bg, views, method="tsai", K=cam.K)
    mm, deg = he.pose_error(res.T_base_cam, T_bc)
    mm0, deg0 = he.pose_error(res.T_base_cam_closed_form, T_bc)
    print(
        f"0.5 px corner noise, tsai: closed form {mm0:.2f} mm / {deg0:.3f} deg, refined {mm:.2f} mm / {deg:.3f} deg, "
        f"reprojection {res.reprojection_px:.2f} px"
    )
    assert mm < TOL_MM and deg < TOL_DEG
    assert 0.3 < res.reprojection_px < 1.0  # the injected 0.5 px, seen through the chain
    # the board at a known place
    res = he.calibrate_known_board([b @ T_gb for b in bg], views, K=cam.K)
    mm, deg = he.pose_error(res.T_base_cam, T_bc)
    print(f"known board, 0.5 px: {mm:.2f} mm, {deg:.3f} deg")
    assert mm < TOL_MM and deg < TOL_DEG
    with pytest.raises(he.CalibrationError, match="at least 3 views"):
        he.calibrate_eye_to_hand(bg[:2], cb[:2])
    with pytest.raises(he.CalibrationError, match="method"):
        he.calibrate_eye_to_hand(bg, cb, method="magic")


def test_camera_cfg_round_trip_through_pinhole_camera(tmp_path):
    rng = np.random.default_rng(1)
    scene = make_task("reach").cfg.scene.copy()
    scene.robot.base = Pose(
        pos=(0.1, -0.2, 0.05), quat=tuple(Rotation.from_euler("z", 30, degrees=True).as_quat(scalar_first=True))
    )
    for _ in range(5):
        T = _random_T(rng)
        K = np.array([[600.0, 0, 330.2], [0, 605.0, 241.7], [0, 0, 1]])
        moved = he.scene_with_camera(scene, CAMERA, T, K, W, H)
        cam = PinholeCamera.from_scene(moved, CAMERA, W, H)
        assert np.allclose(cam.T_base_cam, T, atol=1e-9)
        assert np.allclose(cam.K, K, atol=1e-9)
    # and through USD
    out = he.scene_with_camera(scene, CAMERA, T)
    back = read_scene_usd(write_scene_usd(out, tmp_path / "s.usda"))
    assert np.allclose(PinholeCamera.from_scene(back, CAMERA).T_base_cam, T, atol=1e-6)


def test_board_body_attached_to_the_hand_round_trips_through_usd(tmp_path):
    scene = he.scene_with_board(make_task("reach").cfg.scene)
    body = scene.body(he.BOARD_BODY)
    assert body.parent == "panda_hand"
    back = read_scene_usd(write_scene_usd(scene, tmp_path / "board.usda"))
    assert back.body(he.BOARD_BODY).parent == "panda_hand"
    assert back.digest() == scene.digest()
    m = compile_scene(back).model
    assert m.body(m.body_parentid[m.body(he.BOARD_BODY).id]).name == "panda_hand"
    # a missing parent is named
    bad = scene.copy()
    bad.body(he.BOARD_BODY).parent = "panda_hnd"
    with pytest.raises(SceneError, match="panda_hnd"):
        compile_scene(bad)


def test_detection_rejects_images_without_the_board():
    K = np.array([[615.0, 0, 319.5], [0, 615.0, 239.5], [0, 0, 1]])
    with pytest.raises(he.BoardNotDetected, match="0 ChArUco corners"):
        he.detect_board(np.full((H, W, 3), 128, np.uint8), K)


# ---- (b) rendered by the twin ------------------------------------------------------------------


class _TwinCamera:
    """Renders ``camera`` of a scene with the board on the hand, at given arm joints."""

    def __init__(self, scene, camera: str = CAMERA) -> None:
        self.model = compile_scene(he.scene_with_board(scene)).model
        self.data = mujoco.MjData(self.model)
        self.renderer = Renderer(self.model, W, H)
        self.camera = camera
        self.cam = PinholeCamera.from_scene(scene, camera, W, H)

    def __call__(self, q: np.ndarray) -> np.ndarray:
        self.data.qpos[:7] = q
        self.data.qpos[7:9] = 0.04
        mujoco.mj_forward(self.model, self.data)
        return self.renderer.render(self.data, self.camera).rgb

    def close(self) -> None:
        self.renderer.close()


def _degrade(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A camera-like image: slight blur and sensor noise."""
    import cv2

    img = cv2.GaussianBlur(rgb, (0, 0), 0.8).astype(float) + rng.normal(0, 4.0, rgb.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def _views(render, arm: he.TwinArm, poses, degrade=None):
    bg, views = [], []
    for q in poses:
        rgb = render(q)
        if degrade is not None:
            rgb = degrade(rgb)
        try:
            views.append(he.detect_board(rgb, render.cam.K))
        except he.BoardNotDetected:
            continue
        bg.append(arm.T_base_hand(q))
    return bg, views


def test_rendered_board_on_the_hand_calibrates_the_camera(tmp_path):
    scene = make_task("reach").cfg.scene
    truth = PinholeCamera.from_scene(scene, CAMERA, W, H).T_base_cam
    poses = he.calibration_poses(scene, CAMERA, n=12, seed=0)
    assert 3 <= len(poses) <= 12
    arm = he.TwinArm(scene)
    render = _TwinCamera(scene)
    rng = np.random.default_rng(2)
    try:
        for label, degrade in (("clean", None), ("blur 0.8 px + noise 4/255", lambda im: _degrade(im, rng))):
            bg, views = _views(render, arm, poses, degrade)
            assert len(views) >= 10, f"{label}: board detected in {len(views)} of {len(poses)} renders"
            res = he.calibrate_eye_to_hand(bg, views, method="park", K=render.cam.K)
            mm, deg = he.pose_error(res.T_base_cam, truth)
            mm0, deg0 = he.pose_error(res.T_base_cam_closed_form, truth)
            print(
                f"rendered, {label}, {len(views)} views: {mm:.2f} mm, {deg:.3f} deg (closed form {mm0:.2f} mm, "
                f"{deg0:.3f} deg); {res.summary()}"
            )
            assert mm <= TOL_MM and deg <= TOL_DEG
            # the mount the hand-eye finds is the one the scene builds
            mmb, degb = he.pose_error(res.T_gripper_board, arm.T_hand_board)
            assert mmb <= TOL_MM and degb <= TOL_DEG
            known = he.calibrate_known_board([b @ arm.T_hand_board for b in bg], views, K=render.cam.K)
            mmk, degk = he.pose_error(known.T_base_cam, truth)
            print(f"rendered, {label}, known mount: {mmk:.2f} mm, {degk:.3f} deg")
            assert mmk <= TOL_MM and degk <= TOL_DEG
        # the result in the scene: written, read back, the camera where the twin rendered it
        files = he.write_calibration(tmp_path, scene, CAMERA, res, render.cam.K, W, H)
        back = read_scene_usd(files["scene"])
        mm, deg = he.pose_error(PinholeCamera.from_scene(back, CAMERA, W, H).T_base_cam, truth)
        assert mm <= TOL_MM and deg <= TOL_DEG
        assert "T_base_cam" in files["report"].read_text()
    finally:
        render.close()


def test_rendered_calibration_recovers_the_true_camera_from_a_shifted_scene():
    """The twin's camera is off by 4 cm and 3 deg; the images come from the true camera: the
    poses are planned with the wrong camera, the result is the true one."""
    scene = make_task("reach").cfg.scene
    truth = PinholeCamera.from_scene(scene, CAMERA, W, H).T_base_cam
    shift = pose_matrix(
        (0.03, -0.02, 0.02), Rotation.from_euler("xyz", (2.0, -1.5, 1.5), degrees=True).as_quat(scalar_first=True)
    )
    wrong = he.scene_with_camera(scene, CAMERA, truth @ shift)
    mm_before, deg_before = he.pose_error(PinholeCamera.from_scene(wrong, CAMERA).T_base_cam, truth)
    poses = he.calibration_poses(wrong, CAMERA, n=10, seed=3)
    arm = he.TwinArm(wrong)
    render = _TwinCamera(scene)
    try:
        bg, views = _views(render, arm, poses)
    finally:
        render.close()
    assert len(views) >= 8
    res = he.calibrate_eye_to_hand(bg, views, K=render.cam.K)
    mm, deg = he.pose_error(res.T_base_cam, truth)
    print(
        f"shifted scene ({mm_before:.1f} mm, {deg_before:.2f} deg off), {len(views)} views: {mm:.2f} mm, {deg:.3f} deg"
    )
    assert mm_before > 30 and deg_before > 2
    assert mm <= TOL_MM and deg <= TOL_DEG
    fixed = he.scene_with_camera(wrong, CAMERA, res.T_base_cam)
    assert he.pose_error(PinholeCamera.from_scene(fixed, CAMERA).T_base_cam, truth)[0] <= TOL_MM


def test_board_at_a_known_place_in_the_scene_gives_the_camera_from_one_view():
    """The board fixed on the table in front of the camera (the texture's placement is what the
    known-place variant relies on): one render is enough."""
    scene = make_task("reach").cfg.scene
    cam = PinholeCamera.from_scene(scene, CAMERA, W, H)
    face = Rotation.from_euler("xyz", (35.0, 0.0, 180.0), degrees=True)  # printed side up, tilted to the camera
    pose = Pose(pos=(0.45, 0.05, 0.08), quat=tuple(face.as_quat(scalar_first=True)))
    fixed = he.scene_with_board(scene, parent="", pose=pose)
    model = compile_scene(fixed).model
    data = mujoco.MjData(model)
    mujoco.mj_forward(model, data)
    renderer = Renderer(model, W, H)
    try:
        rgb = renderer.render(data, CAMERA).rgb
    finally:
        renderer.close()
    view = he.detect_board(rgb, cam.K)
    res = he.calibrate_known_board([he.scene_board_transform(fixed)], [view], K=cam.K)
    mm, deg = he.pose_error(res.T_base_cam, cam.T_base_cam)
    print(f"board fixed in the scene, one view, {view.corners} corners: {mm:.2f} mm, {deg:.3f} deg")
    assert mm <= TOL_MM and deg <= TOL_DEG


def test_planned_poses_are_diverse_and_reachable_on_an_fr3():
    scene = make_task("reach").cfg.scene
    poses = he.calibration_poses(scene, CAMERA, n=15, seed=1)
    arm = he.TwinArm(scene)
    cam = PinholeCamera.from_scene(scene, CAMERA)
    assert 3 <= len(poses) <= 15
    boards = [arm.T_base_board(q) for q in poses]
    for q in poses:
        assert np.all(q >= he.FR3_Q_MIN) and np.all(q <= he.FR3_Q_MAX)
        assert he.view_problem(arm, cam, q) == ""
    # relative rotations between views turn about non-parallel axes
    axes = []
    for a, b in zip(boards, boards[1:]):
        rv = Rotation.from_matrix(a[:3, :3].T @ b[:3, :3]).as_rotvec()
        axes.append(rv / np.linalg.norm(rv))
    sv = np.linalg.svd(np.array(axes), compute_uv=False)
    angles = [
        np.degrees(np.linalg.norm(Rotation.from_matrix(a[:3, :3].T @ b[:3, :3]).as_rotvec()))
        for a, b in zip(boards, boards[1:])
    ]
    print(
        f"{len(poses)} poses, relative rotations {min(angles):.0f}-{max(angles):.0f} deg, axis singular values {np.round(sv, 2)}"
    )
    assert sv[-1] > 0.3 * sv[0]
    with pytest.raises(he.CalibrationError, match="3 to 15"):
        he.calibration_poses(scene, CAMERA, n=20)


# ---- CLI ----------------------------------------------------------------------------------------


def test_cli_bad_input_is_one_line_and_exit_2():
    runner = CliRunner()
    r = runner.invoke(app, ["live", "calibrate-camera", "--camera", "cam_nowhere"])
    assert r.exit_code == 2, r.output
    assert "cam_nowhere" in r.output and "cam_left" in r.output
    # nothing listens on 127.0.0.2 (franka-sim binds 127.0.0.1): the robot is unreachable
    r = runner.invoke(app, ["live", "calibrate-camera", "--robot-ip", "127.0.0.2"])
    assert r.exit_code == 2, r.output
    assert "cannot connect to the robot at 127.0.0.2" in r.output


# ---- (c) end to end against franka-sim ---------------------------------------------------------


def test_cli_against_franka_sim_and_a_software_realsense(tmp_path):
    pytest.importorskip("franky", reason="franky-control not installed (`make install`)")
    from twin.live import fake_hardware as fh

    why = fh.franka_sim_unavailable()
    if why:
        pytest.skip(why)
    fh.import_pyrealsense2()
    scene = make_task("reach").cfg.scene
    truth = PinholeCamera.from_scene(scene, CAMERA).T_base_cam
    shift = pose_matrix(
        (-0.03, 0.02, 0.015), Rotation.from_euler("xyz", (-1.5, 2.0, 1.0), degrees=True).as_quat(scalar_first=True)
    )
    wrong = tmp_path / "wrong.usda"
    write_scene_usd(he.scene_with_camera(scene, CAMERA, truth @ shift), wrong)
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "twinrank.cli",
        "live",
        "calibrate-camera",
        "--fake-hardware",
        "--scene",
        str(wrong),
        "--camera",
        CAMERA,
        "--poses",
        "10",
        "--dynamics",
        "0.2",
        "--out",
        str(out),
    ]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    print(p.stdout[-3000:])
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    assert len(re.findall(r"pose \d+/10:", p.stdout)) == 10
    m = re.search(r"error against the true camera pose \(fake hardware\): ([\d.]+) mm, ([\d.]+) deg", p.stdout)
    assert m, p.stdout
    mm, deg = float(m.group(1)), float(m.group(2))
    assert mm <= TOL_MM and deg <= TOL_DEG
    back = read_scene_usd(out / "calibrated_scene.usda")
    mm2, deg2 = he.pose_error(PinholeCamera.from_scene(back, CAMERA).T_base_cam, truth)
    print(
        f"franka-sim end to end, 10 poses: {mm:.2f} mm, {deg:.3f} deg (scene read back: {mm2:.2f} mm, {deg2:.3f} deg)"
    )
    assert mm2 <= TOL_MM and deg2 <= TOL_DEG
    assert (out / "camera_calibration.yaml").is_file()
