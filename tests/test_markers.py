"""Fiducial markers (real OpenCV ArUco, real MuJoCo renders): tags described in the scene,
rendered by the twin, and the marker pose estimator measured against the twin's ground truth."""

import logging

import cv2
import mujoco
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from twin.compile import compile_scene
from twin.env import TwinEnv
from twin.fiducials import QUIET_BITS, TAG_BITS, TAG_LIFT, cv_dictionary, tag_image, with_markers
from twin.live.camera_model import PinholeCamera, base_from_world, pose_matrix, rotation_angle_deg
from twin.live.markers import MarkerTracker
from twin.scene import BodyCfg, GeomCfg, JointCfg, MarkerCfg, Pose, SceneError, yaw_quat
from twin.tasks import make_task
from twin.usd_io import read_scene_usd, write_scene_usd

CAMERAS = ("cam_left", "cam_right")
W, H = 640, 480


class Twin:
    """A task's env on its scene with tags, its cameras, and ground truth in the base frame."""

    def __init__(self, task_name: str) -> None:
        task = make_task(task_name)
        self.scene = with_markers(task.cfg.scene)
        self.env = TwinEnv(make_task(task_name, task.cfg.replace(scene=self.scene)), render_size=(W, H))
        self.env.reset(seed=0)
        self.env.sim.reset_robot()
        self.cams = {c: PinholeCamera.from_scene(self.scene, c, W, H) for c in CAMERAS}
        self.T_base_world = base_from_world(self.scene)

    def place(self, body: str, xy, yaw: float, quat=None) -> None:
        z = self.scene.body(body).pose.pos[2]
        q = np.asarray(yaw_quat(yaw) if quat is None else quat)
        self.env.sim.set_free_body_pose(body, np.array([xy[0], xy[1], z]), q)
        self.env.sim.forward()

    def truth(self, body: str) -> np.ndarray:
        sim = self.env.sim
        b = sim.body_id(body)
        return self.T_base_world @ pose_matrix(sim.data.xpos[b], sim.data.xquat[b])

    def views(self, cameras=CAMERAS) -> dict:
        return {c: (self.cams[c], self.env.render_camera(c, W, H)) for c in cameras}


@pytest.fixture(scope="module")
def box_twin() -> Twin:
    return Twin("box_to_shelf")


def errors(est, truth) -> tuple[float, float]:
    return float(np.linalg.norm(est.position - truth[:3, 3]) * 1000.0), rotation_angle_deg(est.T_base_obj, truth)


def measure(twin: Twin, body: str, lo, hi, n: int, seed: int) -> dict[str, np.ndarray]:
    """Position (mm) and rotation (deg) errors per camera alone and both fused, over ``n``
    seeded random placements; a missed detection is NaN."""
    tracker = MarkerTracker(twin.scene, objects=[body])
    rng = np.random.default_rng(seed)
    out: dict[str, list[tuple[float, float]]] = {k: [] for k in (*CAMERAS, "fused")}
    for _ in range(n):
        twin.place(body, rng.uniform(lo, hi), rng.uniform(-np.pi, np.pi))
        truth = twin.truth(body)
        views = twin.views()
        for key, vs in [*((c, {c: views[c]}) for c in CAMERAS), ("fused", views)]:
            est = tracker.estimate(vs).get(body)
            if est is not None:
                assert est.method == "marker" and est.error_unit == "px" and 0.0 <= est.quality <= 1.0
                assert set(est.cameras) <= set(vs)
            out[key].append(errors(est, truth) if est is not None else (np.nan, np.nan))
    return {k: np.asarray(v) for k, v in out.items()}


def report(title: str, res: dict[str, np.ndarray]) -> dict[str, tuple[float, float, float, float, float]]:
    """(found share, median mm, p95 mm, median deg, p95 deg) per key, printed."""
    stats = {}
    for k, v in res.items():
        ok = v[~np.isnan(v[:, 0])]
        pos, rot = ok[:, 0], ok[:, 1]
        s = (len(ok) / len(v), *np.percentile(pos, [50, 95]), *np.percentile(rot, [50, 95]))
        stats[k] = s
        print(
            f"{title} {k:9s} found {len(ok)}/{len(v)}  position median {s[1]:.2f} mm p95 {s[2]:.2f} mm"
            f"  rotation median {s[3]:.2f} deg p95 {s[4]:.2f} deg"
        )
    return stats


# ---- tags and scenes --------------------------------------------------------------------------


def test_tag_image_decodes_to_its_id_with_a_quiet_zone():
    img = tag_image(42, pixels_per_bit=8)
    assert img.dtype == np.uint8 and img.shape == ((TAG_BITS + 2 * QUIET_BITS) * 8,) * 2
    q = QUIET_BITS * 8
    assert (img[:q] == 255).all() and (img[:, :q] == 255).all() and (img[-q:] == 255).all()
    assert (img[q, q:-q] == 0).all()  # the black border
    corners, ids, _ = cv2.aruco.ArucoDetector(cv_dictionary()).detectMarkers(img)
    assert ids.reshape(-1).tolist() == [42]
    # corner 0 is the top-left of the black square: the image is neither rotated nor mirrored
    np.testing.assert_allclose(corners[0].reshape(4, 2)[0], (q, q), atol=1.0)
    with pytest.raises(ValueError, match="ids are 0..586"):
        tag_image(587)


def test_with_markers_puts_a_fitting_tag_on_each_object_top(caplog):
    box_scene = with_markers(make_task("box_to_shelf").cfg.scene)
    (m,) = box_scene.markers
    assert (m.id, m.body, m.size) == (0, "box", pytest.approx(0.04))  # 80 % of the 5 cm top, quiet zone fills it
    assert m.pose.pos == pytest.approx((0.0, 0.0, 0.04 + TAG_LIFT))
    (t,) = with_markers(make_task("push_t").cfg.scene).markers
    assert t.body == "t_block" and t.size == pytest.approx(0.024)  # the T's 30 mm wide bar
    assert with_markers(make_task("mug_to_sink").cfg.scene).markers[0].body == "mug"  # the cylinder's cap

    scene = make_task("box_to_shelf").cfg.scene
    scene.bodies.append(
        BodyCfg(
            name="ball",
            kind="object",
            pose=Pose(pos=(0.3, 0.3, 0.03)),
            joint=JointCfg(type="free"),
            geoms=[GeomCfg(type="sphere", size=(0.03,))],
        )
    )
    with caplog.at_level(logging.WARNING, logger="twin.fiducials"):
        tagged = with_markers(scene)
    assert [mk.body for mk in tagged.markers] == ["box"] and "ball (no flat upward face)" in caplog.text
    assert scene.markers == []  # the input is not changed
    assert with_markers(scene, objects=["box"], size=0.08).markers == []  # too large for the face: skipped
    with pytest.raises(SceneError, match="no body 'crate'"):
        with_markers(scene, objects=["crate"])


def test_compiled_tag_is_visual_only_and_markerless_scenes_are_unchanged():
    plain = make_task("box_to_shelf").cfg.scene
    tagged = with_markers(plain)
    m0, m1 = compile_scene(plain).model, compile_scene(tagged).model
    assert plain.digest() == make_task("box_to_shelf").cfg.scene.digest() != tagged.digest()
    assert m1.ngeom == m0.ngeom + 1 and m1.ntex == m0.ntex + 1
    g = mujoco.mj_name2id(m1, mujoco.mjtObj.mjOBJ_GEOM, "fiducial_apriltag_36h11_0")
    assert m1.geom_bodyid[g] == m1.body("box").id
    assert (m1.geom_contype[g], m1.geom_conaffinity[g], m1.geom_group[g]) == (0, 0, 0)
    np.testing.assert_allclose(m1.body_mass, m0.body_mass, rtol=1e-12)
    np.testing.assert_allclose(m1.body_inertia, m0.body_inertia, rtol=1e-12)


def test_scene_validation_names_the_bad_marker():
    scene = with_markers(make_task("box_to_shelf").cfg.scene)
    cases = [
        (dict(body="crate"), "body = 'crate': no such body"),
        (dict(size=0.0), "size = 0.0"),
        (dict(family="aruco_4x4"), "family = 'aruco_4x4'"),
        (dict(id=600), "ids are 0..586"),
    ]
    for change, message in cases:
        bad = scene.copy()
        for k, v in change.items():
            setattr(bad.markers[0], k, v)
        with pytest.raises(SceneError, match=message):
            bad.validate()
    bad = scene.copy()
    bad.markers.append(MarkerCfg(id=0, size=0.02, body="shelf"))
    with pytest.raises(SceneError, match=r"markers\[1\]: id 0 is also used by markers\[0\]"):
        bad.validate()


def test_markers_round_trip_through_usd(tmp_path):
    scene = with_markers(make_task("box_to_shelf").cfg.scene)
    scene.markers.append(MarkerCfg(id=9, size=0.03, body="shelf", pose=Pose((0.0, 0.0, 0.1505), yaw_quat(0.7))))
    back = read_scene_usd(write_scene_usd(scene, tmp_path / "tags.usda"))
    assert back.markers == scene.markers  # doubles stored exactly
    assert back.digest() == scene.digest()


# ---- rendered tags --------------------------------------------------------------------------------


def test_rendered_tag_has_the_described_pose(box_twin):
    """The tag the twin draws is where and how the scene describes it: detected corners
    match the projection of the described corners (not mirrored, not turned)."""
    twin = box_twin
    twin.place("box", (0.5, 0.1), 0.4)
    m = twin.scene.markers[0]
    h = m.size / 2
    local = np.array([[-h, h, 0, 1], [h, h, 0, 1], [h, -h, 0, 1], [-h, -h, 0, 1]])
    corners_base = (twin.truth("box") @ pose_matrix(m.pose.pos, m.pose.quat) @ local.T).T[:, :3]
    tracker = MarkerTracker(twin.scene)
    for c in CAMERAS:
        cam, img = twin.views([c])[c]
        (det,) = tracker.detect(cam, img)
        expected, _ = cam.project(corners_base)
        assert det.id == 0
        assert np.abs(det.corners - expected).max() < 0.5, c


def test_marker_pose_accuracy_box(box_twin):
    """The issue's targets: median <= 5 mm and <= 2 deg, each camera alone and both fused,
    over 24 seeded placements of the box (x, y in the free table area, any yaw)."""
    res = measure(box_twin, "box", lo=(0.35, -0.05), hi=(0.65, 0.3), n=24, seed=0)
    stats = report("box_to_shelf box", res)
    for k, (found, med_mm, p95_mm, med_deg, p95_deg) in stats.items():
        assert found >= 0.9, k
        assert med_mm <= 5.0 and med_deg <= 2.0, k
    # p95 bounds with margin over what was measured (single camera: ~8 mm, ~1 deg: the depth
    # of one 4 cm tag at 0.8 m; fused: ~0.3 mm, ~0.3 deg)
    for c in CAMERAS:
        assert stats[c][2] <= 25.0 and stats[c][4] <= 4.0, c
    assert stats["fused"][2] <= 3.0 and stats["fused"][4] <= 1.5


def test_marker_pose_accuracy_push_t_block():
    """The T block's tag is 2.4 cm (its bar is 3 cm wide) and about 15 px wide in the images."""
    twin = Twin("push_t")
    res = measure(twin, "t_block", lo=(0.4, -0.12), hi=(0.62, 0.12), n=12, seed=1)
    stats = report("push_t t_block", res)
    found, med_mm, p95_mm, med_deg, p95_deg = stats["fused"]
    assert found >= 0.9 and med_mm <= 5.0 and med_deg <= 2.0 and p95_mm <= 15.0 and p95_deg <= 3.0


def test_hidden_or_out_of_view_object_is_absent(box_twin):
    twin = box_twin
    tracker = MarkerTracker(twin.scene)
    twin.place("box", (0.5, 0.1), 0.0)
    assert "box" in tracker.estimate(twin.views())
    assert tracker.status()["box"].startswith("tracked: 2 cameras")
    twin.place("box", (0.5, 0.1), 0.0, quat=(0.0, 1.0, 0.0, 0.0))  # upside down: the tag faces the table
    assert tracker.estimate(twin.views()) == {}
    assert tracker.status() == {"box": "no tag seen"}
    twin.place("box", (0.5, 2.5), 0.0)  # off the table, outside both camera frusta
    for c in CAMERAS:
        uv, depth = twin.cams[c].project(twin.truth("box")[None, :3, 3])
        assert not (0 <= uv[0, 0] < W and 0 <= uv[0, 1] < H and depth[0] > 0)
    assert tracker.estimate(twin.views()) == {}


def test_tags_of_other_objects_are_ignored(box_twin):
    twin = box_twin
    twin.place("box", (0.5, 0.1), 0.3)
    other = twin.scene.copy()
    other.markers[0].id = 5  # the rendered tag 0 is not in this scene
    assert MarkerTracker(other).estimate(twin.views()) == {}


def test_bad_images_raise_naming_the_camera_and_fix(box_twin):
    twin = box_twin
    tracker = MarkerTracker(twin.scene)
    cam, img = twin.views(["cam_left"])["cam_left"]
    with pytest.raises(ValueError, match=r"camera 'cam_left': image is 320x240, intrinsics are for 640x480"):
        tracker.estimate({"cam_left": (cam, img[::2, ::2])})
    with pytest.raises(ValueError, match=r"camera 'cam_left': image dtype is float32.*uint8"):
        tracker.estimate({"cam_left": (cam, img.astype(np.float32) / 255)})
    with pytest.raises(ValueError, match=r"camera 'cam_left': image shape \(480, 640\)"):
        tracker.estimate({"cam_left": (cam, img[:, :, 0])})
    with pytest.raises(SceneError, match="carries no marker"):
        MarkerTracker(twin.scene, objects=["shelf"])


# ---- single-camera ambiguity ------------------------------------------------------------------------


def _seeded_single_views(twin: Twin, body: str, near_lo, near_hi, far_lo, far_hi, n: int, seed: int) -> list:
    """``n`` seeded placements of ``body`` (cycling: on the table, far on the table, tilted
    10-35 deg in the air), each camera's view alone: (kind, camera, views, truth)."""
    rng = np.random.default_rng(seed)
    z0 = twin.scene.body(body).pose.pos[2]
    out = []
    for i in range(n):
        kind = ("near", "far", "tilted")[i % 3]
        x, y = rng.uniform(far_lo, far_hi) if kind == "far" else rng.uniform(near_lo, near_hi)
        rot = Rotation.from_euler("z", rng.uniform(-np.pi, np.pi))
        dz = 0.0
        if kind == "tilted":
            axis = rng.normal(size=2)
            axis = np.r_[axis / np.linalg.norm(axis), 0.0]
            rot = Rotation.from_rotvec(axis * np.radians(rng.uniform(10.0, 35.0))) * rot
            dz = 0.05
        qx, qy, qz, qw = rot.as_quat()
        twin.env.sim.set_free_body_pose(body, np.array([x, y, z0 + dz]), np.array([qw, qx, qy, qz]))
        twin.env.sim.forward()
        truth = twin.truth(body)
        views = twin.views()
        out.extend((kind, c, {c: views[c]}, truth) for c in CAMERAS)
    return out


@pytest.fixture(scope="module")
def single_views(box_twin) -> dict[str, tuple]:
    """Seeded single-camera views of the small tags: the T block's 2.4 cm tag (10-15 px) and
    the box's 4 cm tag (13-35 px), near, far and tilted, each camera alone: per object
    (scene, views)."""
    t_twin = Twin("push_t")
    t_views = _seeded_single_views(t_twin, "t_block", (0.4, -0.12), (0.62, 0.12), (0.62, -0.25), (0.85, 0.25), 48, 11)
    box_views = _seeded_single_views(box_twin, "box", (0.35, -0.05), (0.65, 0.3), (0.65, -0.3), (0.95, 0.4), 24, 12)
    return {"t_block": (t_twin.scene, t_views), "box": (box_twin.scene, box_views)}


def single_errors(single_views: dict, **kw) -> dict[str, list]:
    """Per object, per single-camera view: (kind, seen, mm, deg (NaN when absent), status)."""
    out: dict[str, list] = {}
    for body, (scene, items) in single_views.items():
        tracker = MarkerTracker(scene, objects=[body], **kw)
        rows = []
        for kind, _, views, truth in items:
            est = tracker.estimate(views).get(body)
            mm, deg = errors(est, truth) if est is not None else (np.nan, np.nan)
            why = tracker.status()[body]
            rows.append((kind, why != "no tag seen", mm, deg, why))
        out[body] = rows
    return out


def test_single_camera_small_tags_give_no_flipped_pose(single_views):
    """144 single-camera views (T block 96, box 48): no returned pose is flipped. Measured:
    T block 60 of 71 seen views found (the rest: tags under min_side_px), box 40 of 40;
    rotation at most 3.8 deg; position at most 7.6 mm near, but up to 22 mm far or tilted:
    one small tag's depth (corners rendered ~0.05-0.1 px inside), not a flip."""
    res = single_errors(single_views)
    for body, rows in res.items():
        seen = [r for r in rows if r[1]]
        found = [r for r in seen if not np.isnan(r[2])]
        print(f"{body}: {len(rows)} views, {len(seen)} seen, {len(found)} found")
        assert len(found) >= (0.75 if body == "t_block" else 0.9) * len(seen), body
        for kind, _, mm, deg, why in found:
            assert deg <= 5.0 and mm <= (10.0 if kind == "near" else 30.0), (body, kind, mm, deg, why)
        for r in seen:
            if np.isnan(r[2]):
                assert r[4].startswith("rejected: ") and "min_side_px" in r[4], r[4]
        mm = np.array([r[2] for r in found])
        assert np.median(mm) <= 5.0 and np.median([r[3] for r in found]) <= 2.0, body


def test_ambiguity_rule_is_what_removes_the_flips(single_views):
    """Without the size rule, the T block's 10-12 px tags flip (~100 deg, 4-6 cm) on 3 views
    when the better IPPE fit is always taken; the ambiguity rule (the tag's rest direction
    picks) resolves every one of them and rejects none. A prior resolves them too."""

    def flips(res):
        return [r for rows in res.values() for r in rows if not np.isnan(r[2]) and r[3] > 5.0]

    off = single_errors(single_views, min_side_px=0.0, ambiguity_ratio=0.0)
    on = single_errors(single_views, min_side_px=0.0)
    assert len(flips(off)) >= 2 and all(r[2] > 20.0 and r[3] > 60.0 for r in flips(off))
    assert flips(on) == []
    for body in on:
        assert [np.isnan(r[2]) for r in on[body]] == [np.isnan(r[2]) for r in off[body]]  # nothing rejected
    # the flipped views again, resolved by a prior (the true pose) instead
    scene, items = single_views["t_block"]
    tracker = MarkerTracker(scene, objects=["t_block"], min_side_px=0.0)
    bad = [i for i, r in enumerate(off["t_block"]) if not np.isnan(r[2]) and r[3] > 5.0]
    for i in bad:
        _, _, views, truth = items[i]
        est = tracker.estimate(views, priors={"t_block": truth})["t_block"]
        assert "prior" in est.detail["resolved_by"] and errors(est, truth)[1] <= 5.0
        assert "ambiguity resolved by the prior" in tracker.status()["t_block"]
