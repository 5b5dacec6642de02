"""Model-based registration (twin.live.registration) on real MuJoCo depth renders of the twin.

Both scene cameras at 640x480, the mission tasks' objects (box_to_shelf's box, mug_to_sink's
mug, push_t's T block) at seeded random poses, ground truth from MuJoCo's body poses. Errors
are taken modulo each object's symmetry (listed here by hand, not read from the tracker).
"""

from __future__ import annotations

import time

import mujoco
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from twin.env import TwinEnv
from twin.live.camera_model import PinholeCamera, base_from_world, pose_matrix, rotation_angle_deg
from twin.live.registration import RegistrationTracker, object_model_points
from twin.pointcloud import sampling_table, synthetic_point_cloud
from twin.sim import DOWN

W, H = 640, 480
N_POSES = 15


def _rot(axis: str, deg: float) -> np.ndarray:
    t = np.eye(4)
    t[:3, :3] = Rotation.from_euler(axis, deg, degrees=True).as_matrix()
    return t


# body-frame rotations mapping the object onto itself (about its body origin)
SYMMETRIES = {
    "box": [_rot("z", 90 * k) @ f for k in range(4) for f in (np.eye(4), _rot("x", 180))],  # 5 x 5 x 8 cm
    "mug": [np.eye(4)],  # the handle breaks the cylinder's symmetry
    "t_block": [np.eye(4), _rot("y", 180)],  # flat T: half-turn about its stem
}
CASES = [("box_to_shelf", "box"), ("mug_to_sink", "mug"), ("push_t", "t_block")]


class Cell:
    """One task's twin with both cameras at 640x480 and a tracker of its object."""

    def __init__(self, task: str, obj: str) -> None:
        self.env = TwinEnv(task, render_size=(W, H))
        self.env.reset(seed=0)
        self.sim = self.env.sim
        self.scene = self.env.scene
        self.obj = obj
        self.cams = [PinholeCamera.from_scene(self.scene, c.name, W, H) for c in self.scene.cameras]
        self.tracker = RegistrationTracker(self.scene, [obj])
        self.T_base_world = base_from_world(self.scene)

    def place(self, pos, quat) -> None:
        self.sim.set_free_body_pose(self.obj, np.asarray(pos, float), np.asarray(quat, float))
        mujoco.mj_forward(self.sim.model, self.sim.data)

    def views(self) -> dict:
        return {c.name: (c, self.env.render_camera(c.name, W, H, depth=True)) for c in self.cams}

    def truth(self) -> np.ndarray:
        p = self.sim.body_pose(self.obj)
        return self.T_base_world @ pose_matrix(p[:3], p[3:])

    def robot_points(self) -> np.ndarray:
        """Surface samples of the robot's links at the current joint state (base frame)."""
        table = sampling_table(self.sim.model)
        pts, geoms = synthetic_point_cloud(self.sim, 60000, rng=0, return_geoms=True)
        xyz = pts[np.isin(geoms, table.geom_ids[table.robot]), :3].astype(float)
        return xyz @ self.T_base_world[:3, :3].T + self.T_base_world[:3, 3]

    def errors(self, T: np.ndarray) -> tuple[float, float]:
        """(position mm, rotation deg) of T against the truth, modulo the symmetry."""
        gt = self.truth()
        return min(
            (
                (float(np.linalg.norm(T[:3, 3] - (gt @ s)[:3, 3]) * 1000), rotation_angle_deg(T, gt @ s))
                for s in SYMMETRIES[self.obj]
            ),
            key=lambda e: e[1],
        )


def _random_pose(cell: Cell, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A resting pose on the table in both cameras' view, clear of the task's fixture (the
    box also lies on a side half of the time)."""
    body = cell.scene.body(cell.obj)
    yaw = Rotation.from_euler("z", rng.uniform(-np.pi, np.pi))
    z = body.pose.pos[2]
    if cell.obj == "t_block":
        xy = (rng.uniform(0.40, 0.62), rng.uniform(-0.12, 0.12))
        rot = yaw * Rotation.from_quat(np.roll(body.pose.quat, -1))
    else:
        xy = (rng.uniform(0.38, 0.62), rng.uniform(-0.02, 0.25))
        rot = yaw
        if cell.obj == "box" and rng.random() < 0.5:
            rot = yaw * Rotation.from_euler("x", 90, degrees=True)
            z = 0.025
    return np.array([xy[0], xy[1], z]), np.roll(rot.as_quat(), 1)


def _perturbed(T: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """T moved by 2-4 cm in a random direction and turned by 15 deg about a random axis."""
    d = rng.normal(size=3)
    axis = rng.normal(size=3)
    out = T.copy()
    out[:3, 3] += d / np.linalg.norm(d) * rng.uniform(0.02, 0.04)
    out[:3, :3] = Rotation.from_rotvec(axis / np.linalg.norm(axis) * np.radians(15)).as_matrix() @ T[:3, :3]
    return out


def _summary(label: str, errs: list[tuple[float, float] | None], times: list[float]) -> tuple[float, float]:
    """Prints the situation's numbers; asserts that no returned pose is off by more than
    1 cm / 5 deg (a wrong pose reported as right is worse than none) and returns the medians."""
    found = [e for e in errs if e is not None]
    e = np.array(found)
    med_p, med_r = np.median(e, axis=0)
    p95_p, p95_r = np.percentile(e, 95, axis=0)
    wrong = [(i, x) for i, x in enumerate(errs) if x is not None and (x[0] > 10 or x[1] > 5)]
    print(
        f"{label}: {len(found)}/{len(errs)} found, {len(wrong)} off by > 1 cm or 5 deg, position median {med_p:.1f} mm "
        f"p95 {p95_p:.1f} mm, rotation median {med_r:.2f} deg p95 {p95_r:.2f} deg, "
        f"{1000 * np.median(times):.0f} ms/estimate (median)"
    )
    assert not wrong, f"{label}: wrong poses returned as good (pose index, (mm, deg)): {wrong}"
    return float(med_p), float(med_r)


@pytest.mark.parametrize(("task", "obj"), CASES)
def test_first_sight_and_tracking_from_an_off_prior(task: str, obj: str) -> None:
    """Every pose returned is right (modulo symmetry); a doubtful one is rejected, which
    first sight may do rarely (measured: 0-1 of 15 per object), tracking never here."""
    cell = Cell(task, obj)
    tracker = cell.tracker
    rng = np.random.default_rng(7)
    exclude = cell.robot_points()
    first: list[tuple[float, float] | None] = []
    tracked: list[tuple[float, float] | None] = []
    follow: list[tuple[float, float] | None] = []
    t_first, t_track, t_follow = [], [], []
    for i in range(N_POSES):
        cell.place(*_random_pose(cell, rng))
        views = cell.views()
        tracker.reset()
        t0 = time.perf_counter()
        out = tracker.estimate(views, exclude=exclude)
        t_first.append(time.perf_counter() - t0)
        if obj not in out:
            assert tracker.status()[obj].startswith("lost: "), tracker.status()
            first.append(None)
        else:
            est = out[obj]
            assert est.method == "icp" and est.error_unit == "m" and 0.0 <= est.quality <= 1.0
            assert set(est.cameras) == {c.name for c in cell.cams}
            first.append(cell.errors(est.T_base_obj))
            if i == 0:  # deterministic for a given input
                tracker.reset()
                again = tracker.estimate(views, exclude=exclude)[obj].T_base_obj
                np.testing.assert_allclose(again, est.T_base_obj, atol=1e-9)
            # the next frame, same scene: tracked from its own last pose
            t0 = time.perf_counter()
            out = tracker.estimate(views, exclude=exclude)
            t_follow.append(time.perf_counter() - t0)
            assert obj in out and tracker.status()[obj].startswith("tracked: icp from last pose"), tracker.status()
            follow.append(cell.errors(out[obj].T_base_obj))
        # a fresh tracker state with a prior a few cm / 15 deg off
        tracker.reset()
        prior = _perturbed(cell.truth(), rng)
        t0 = time.perf_counter()
        out = tracker.estimate(views, priors={obj: prior}, exclude=exclude)
        t_track.append(time.perf_counter() - t0)
        assert obj in out, tracker.status()[obj]
        tracked.append(cell.errors(out[obj].T_base_obj))
    med = _summary(f"{obj} first sight (global)", first, t_first)
    assert sum(e is not None for e in first) >= N_POSES - 2  # measured: 14-15 of 15
    assert med[0] <= 10.0 and med[1] <= 5.0
    med = _summary(f"{obj} from a prior 2-4 cm / 15 deg off", tracked, t_track)
    assert med[0] <= 10.0 and med[1] <= 5.0
    med = _summary(f"{obj} tracked from its last pose", follow, t_follow)
    assert med[0] <= 10.0 and med[1] <= 5.0


def test_lost_when_out_of_view_or_occluded_never_stale() -> None:
    cell = Cell("box_to_shelf", "box")
    tracker = cell.tracker
    home = np.array([0.45, 0.15, 0.04])
    cell.place(home, (1.0, 0.0, 0.0, 0.0))
    assert "box" in tracker.estimate(cell.views())
    prior = cell.truth()
    # out of the workspace (and of both images): absent, with or without the old pose as prior
    cell.place((1.6, 0.0, 0.04), (1.0, 0.0, 0.0, 0.0))
    views = cell.views()
    for priors in (None, {"box": prior}):
        out = tracker.estimate(views, priors=priors)
        assert "box" not in out
        assert tracker.status()["box"].startswith("lost: no points near its"), tracker.status()
    print("out of view:", tracker.status()["box"])
    # under the shelf board, between its side panels: seen from above by neither camera
    shelf = cell.scene.body("shelf").pose.pos
    cell.place((shelf[0] - 0.02, shelf[1], 0.04), (1.0, 0.0, 0.0, 0.0))
    under = cell.truth()
    out = tracker.estimate(cell.views(), priors={"box": under})
    assert "box" not in out
    assert "lost:" in tracker.status()["box"]
    print("under the shelf:", tracker.status()["box"])
    # lost_after consecutive failures have passed: the last pose is forgotten, so the box
    # back in view is found by global registration, not ICP from a stale pose
    cell.place(home, (1.0, 0.0, 0.0, 0.0))
    out = tracker.estimate(cell.views())
    assert "box" in out and tracker.status()["box"].startswith("tracked: global"), tracker.status()
    assert cell.errors(out["box"].T_base_obj)[0] <= 10.0


def test_robot_points_are_excluded_next_to_the_object() -> None:
    cell = Cell("mug_to_sink", "mug")
    mug_pos = np.array([0.50, 0.12, 0.045])
    cell.place(mug_pos, np.roll(Rotation.from_euler("z", 0.7).as_quat(), 1))
    # the open fingers beside the mug, 8 cm from its axis, their tips at its mid-height
    q = cell.sim.ik.solve(mug_pos + np.array([-0.08, 0.0, 0.0]), DOWN, cell.sim.arm_qpos(), iters=300)
    cell.sim.reset_robot(q)
    cell.place(mug_pos, np.roll(Rotation.from_euler("z", 0.7).as_quat(), 1))
    robot = cell.robot_points()
    mug_surface = object_model_points(cell.scene, "mug", 2000)[:, :3] @ cell.truth()[:3, :3].T + cell.truth()[:3, 3]
    gap = float(np.min(np.linalg.norm(robot[:, None, :] - mug_surface[None, ::10, :], axis=2)))
    assert gap < 0.05  # the arm is close to the mug
    views = cell.views()
    out = cell.tracker.estimate(views, exclude=robot)
    assert "mug" in out, cell.tracker.status()
    pos_mm, rot_deg = cell.errors(out["mug"].T_base_obj)
    print(f"arm {gap * 1000:.0f} mm from the mug: error {pos_mm:.1f} mm, {rot_deg:.2f} deg, {cell.tracker.status()}")
    assert pos_mm <= 10.0 and rot_deg <= 5.0


def test_object_models_from_the_scene() -> None:
    env = TwinEnv("box_to_shelf")
    pts = object_model_points(env.scene, "box", 3000)
    assert pts.shape == (3000, 6)
    np.testing.assert_allclose(np.linalg.norm(pts[:, 3:], axis=1), 1.0, atol=1e-9)
    half = np.array([0.025, 0.025, 0.04])
    on_face = np.isclose(np.abs(pts[:, :3]), half, atol=1e-9)
    assert np.all(on_face.sum(axis=1) >= 1) and np.all(np.abs(pts[:, :3]) <= half + 1e-9)
    # normals point out of the face the point lies on
    one = on_face.sum(axis=1) == 1  # not on an edge
    axis = np.argmax(on_face[one], axis=1)
    rows = np.arange(int(one.sum()))
    np.testing.assert_allclose(pts[one][rows, 3 + axis], np.sign(pts[one][rows, axis]), atol=1e-9)


def test_bad_input_names_the_fix() -> None:
    env = TwinEnv("box_to_shelf")
    scene = env.scene
    with pytest.raises(ValueError, match="'cup' is not a body"):
        RegistrationTracker(scene, ["cup"])
    with pytest.raises(ValueError, match="no body 'cup'"):
        object_model_points(scene, "cup", 10)
    tracker = RegistrationTracker(scene, ["box"])
    cam = PinholeCamera.from_scene(scene, "cam_left", W, H)
    with pytest.raises(ValueError, match="does not match camera 'cam_left'.*scale the intrinsics"):
        tracker.estimate({"cam_left": (cam, np.ones((240, 320), np.float32))})
    with pytest.raises(ValueError, match="no valid depth"):
        tracker.estimate({"cam_left": (cam, np.zeros((H, W), np.float32))})
    with pytest.raises(ValueError, match="prior for 'shelf'"):
        tracker.estimate({"cam_left": (cam, np.ones((H, W), np.float32))}, priors={"shelf": np.eye(4)})


def test_a_wrong_prior_is_corrected_or_rejected_never_returned() -> None:
    """Priors that ICP alone would settle into a wrong pose with a fair fitness: the mug
    upside down and turned a half-turn (its handle where nothing is seen), the lying box
    standing on its end. The free-space test rejects them; the tracker then re-registers."""
    cases = [
        (Cell("mug_to_sink", "mug"), (0.52, 0.12, 0.045), Rotation.from_euler("z", 40, degrees=True), _rot("x", 180)),
        (Cell("mug_to_sink", "mug"), (0.52, 0.12, 0.045), Rotation.from_euler("z", -70, degrees=True), _rot("z", 180)),
        (
            Cell("box_to_shelf", "box"),
            (0.50, 0.15, 0.025),
            Rotation.from_euler("zx", [30, 90], degrees=True),
            _rot("x", 90),
        ),
    ]
    for cell, pos, rot, wrong in cases:
        cell.place(pos, np.roll(rot.as_quat(), 1))
        prior = cell.truth() @ wrong
        cell.tracker.reset()
        out = cell.tracker.estimate(cell.views(), priors={cell.obj: prior})
        status = cell.tracker.status()[cell.obj]
        print(f"{cell.obj} from a wrong prior: {status}")
        if cell.obj in out:
            pos_mm, rot_deg = cell.errors(out[cell.obj].T_base_obj)
            assert pos_mm <= 10.0 and rot_deg <= 5.0, (pos_mm, rot_deg, status)
        else:
            assert status.startswith("lost: "), status
