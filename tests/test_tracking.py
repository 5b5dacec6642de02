"""ObjectTracker (twin/live/tracking.py): methods per object, tags with registration as
fallback, lost objects never given a pose, configuration errors; graph wiring of the
object_tracker node. Frames are real MuJoCo renders of the twin (colour + depth, 640x480)
with the objects at the task's seeded reset poses (ground truth from the simulator)."""

from __future__ import annotations

import numpy as np
import pytest

from twin.env import TwinEnv
from twin.live.camera_model import PinholeCamera, base_from_world, pose_matrix, rotation_angle_deg
from twin.live.graph import GraphError, live_graph
from twin.live.tracking import CameraView, ObjectTracker, TrackingError, cell_task_cfg, parse_methods

SIZE = (640, 480)


def _views(task: str, obj: str, seed: int, markers: bool = True, move: tuple[float, float, float] | None = None):
    """Both scene cameras' frames of the cell reset at ``seed`` (object optionally moved to
    ``move``), and the object's true T_base_obj."""
    cfg = cell_task_cfg(task, markers)
    env = TwinEnv(task, cfg, render_mode=None, render_size=SIZE)
    try:
        env.reset(seed=seed)
        if move is not None:
            pose = env.sim.body_pose(obj)
            env.sim.set_free_body_pose(obj, np.asarray(move, float), pose[3:])
            env.sim.forward()
        truth = base_from_world(cfg.scene) @ pose_matrix(*np.split(env.sim.body_pose(obj), [3]))
        views = {}
        for c in [c.name for c in cfg.scene.cameras]:
            cam = PinholeCamera.from_scene(cfg.scene, c, *SIZE)
            rgb = env.render_camera(c, *SIZE)
            depth = env.render_camera(c, *SIZE, depth=True).astype(np.float32)
            views[c] = CameraView(cam, rgb, depth)
        return cfg.scene, views, truth
    finally:
        env.close()


def _err(tracker: ObjectTracker, obj: str, est, truth) -> tuple[float, float]:
    return float(np.linalg.norm(est.T_base_obj[:3, 3] - truth[:3, 3])), tracker.rotation_error_deg(
        obj, est.T_base_obj, truth
    )


def test_auto_uses_tags_then_falls_back_to_registration_and_reports_lost():
    scene, views, truth = _views("box_to_shelf", "box", seed=5)
    tracker = ObjectTracker(scene, ["box"], "auto")
    assert tracker.marker_objects == ["box"] and tracker.fallback_objects == ["box"]
    res = tracker.update(views)
    est = res.estimates["box"]
    pos, rot = _err(tracker, "box", est, truth)
    print(f"\nauto with tags: {est.method}, {1000 * pos:.2f} mm, {rot:.2f} deg, {1000 * res.seconds:.0f} ms")
    assert est.method.startswith("marker") and res.status["box"].tracked and pos < 0.005 and rot < 2.0
    # both cameras' tags fixed it: registration was not run for it (it was, and discarded, before)
    assert len(est.cameras) == 2 and est.method == "marker" and "box" not in tracker._registration._last

    # no colour (tags unseen): registration on depth takes over, seeded with nothing but its own search
    no_rgb = {n: CameraView(v.camera, None, v.depth) for n, v in views.items()}
    res = tracker.update(no_rgb)
    est = res.estimates["box"]
    pos, rot = _err(tracker, "box", est, truth)
    print(f"auto without colour: {est.method}, {1000 * pos:.2f} mm, {rot:.2f} deg")
    assert est.method == "icp" and pos < 0.01 and rot < 5.0

    # the object leaves the cameras' view: lost, with a reason, and no pose (not the last one)
    _, gone, _ = _views("box_to_shelf", "box", seed=5, move=(0.5, 0.0, -2.0))  # under the floor
    for _ in range(4):  # registration forgets its last pose after a few misses
        res = tracker.update(gone)
        assert "box" not in res.estimates
        st = res.status["box"]
        assert not st.tracked and st.reason, st
    print(f"lost: {st.reason}")
    assert "no tag seen" in st.reason


def test_a_single_camera_tag_pose_is_refined_on_depth():
    """One camera sees the box's tag: tags alone are weak in depth; ``auto`` refines the tag's
    pose by ICP started from it (the tag picks which of the box's symmetric poses it is)."""
    rows = []
    for seed in range(8):
        scene, views, truth = _views("box_to_shelf", "box", seed=seed)
        one = {"cam_right": views["cam_right"]}
        tag = ObjectTracker(scene, ["box"], "marker").update(one).estimates.get("box")
        auto = ObjectTracker(scene, ["box"], "auto")
        est = auto.update(one).estimates.get("box")
        if tag is None:
            continue
        assert est is not None and est.method == "marker+icp", est
        rows.append([*_err(auto, "box", tag, truth), *_err(auto, "box", est, truth)])
        # the refined pose keeps the tag's orientation, not a symmetric twin of it
        assert rotation_angle_deg(est.T_base_obj, truth) < 2.0
    a = np.array(rows)
    print(
        f"\ncam_right alone, {len(a)} views: tag {1000 * np.median(a[:, 0]):.2f} mm median (max "
        f"{1000 * a[:, 0].max():.2f}), refined {1000 * np.median(a[:, 2]):.2f} mm (max {1000 * a[:, 2].max():.2f})"
    )
    assert len(a) >= 6
    assert a[:, 2].max() < 0.003 and np.median(a[:, 2]) <= np.median(a[:, 0])


def test_registration_only_objects_and_a_prior():
    scene, views, truth = _views("mug_to_sink", "mug", seed=2, markers=False)
    tracker = ObjectTracker(scene, None, "auto")  # no tags in this cell: the mug by registration
    assert tracker.objects == ["mug"] and tracker.icp_objects == ["mug"] and not tracker.marker_objects
    res = tracker.update(views)
    est = res.estimates["mug"]
    pos, rot = _err(tracker, "mug", est, truth)
    print(f"\nmug by registration, first sight: {1000 * pos:.2f} mm, {rot:.2f} deg, {1000 * res.seconds:.0f} ms")
    assert est.method == "icp" and pos < 0.01
    # a second update tracks from the last pose (fast path) and agrees
    res2 = tracker.update(views)
    pos2, _ = _err(tracker, "mug", res2.estimates["mug"], truth)
    print(f"mug tracked from its last pose: {1000 * pos2:.2f} mm, {1000 * res2.seconds:.0f} ms")
    assert pos2 < 0.01


def test_configuration_errors_name_the_fix():
    scene = cell_task_cfg("box_to_shelf", False).scene
    with pytest.raises(TrackingError, match="no tags"):
        ObjectTracker(scene, ["box"], "marker")
    with pytest.raises(TrackingError, match="not bodies"):
        ObjectTracker(scene, ["teapot"], "icp")
    with pytest.raises(TrackingError, match="unknown"):
        parse_methods("box=sonar", ["box"])
    with pytest.raises(TrackingError, match="not tracked"):
        parse_methods("mug=icp", ["box"])
    assert parse_methods("icp,box=marker", ["box", "mug"]) == {"box": "marker", "mug": "icp"}
    tracker = ObjectTracker(scene, ["box"], "icp")
    with pytest.raises(TrackingError, match="no camera views"):
        tracker.update({})


def test_graph_wires_the_tracker_and_checks_its_arguments(tmp_path):
    nodes = live_graph(task="box_to_shelf", cameras="cam_left,cam_right", use_fake_hardware=True, markers=True)
    by = {n.name: n for n in nodes}
    assert "object_tracker" in by and by["camera_bridge"].parameters["fake_markers"] is True
    assert by["object_tracker"].parameters["cameras"] == "cam_left,cam_right"
    # no cameras, or tracking off: no tracker
    assert "object_tracker" not in {n.name for n in live_graph(task="box_to_shelf")}
    off = live_graph(task="box_to_shelf", cameras="cam_left", use_fake_hardware=True, track_objects=False)
    assert "object_tracker" not in {n.name for n in off}
    with pytest.raises(GraphError, match="no tags"):
        live_graph(task="box_to_shelf", cameras="cam_left", use_fake_hardware=True, tracking_methods="box=marker")
    with pytest.raises(GraphError, match="camera_extrinsics"):
        live_graph(task="box_to_shelf", cameras="cam_left", camera_extrinsics=str(tmp_path / "none.yaml"))
    with pytest.raises(GraphError, match="not cameras of task"):
        live_graph(task="box_to_shelf", cameras="wrist", robot_ip="172.16.0.2")


def test_camera_model_round_trip_matches_the_renderer():
    """Deprojecting a rendered depth image and projecting back lands on the same pixels, and
    the points lie on the rendered object (the conventions the trackers rely on)."""
    scene, views, truth = _views("box_to_shelf", "box", seed=1, markers=False)
    for v in views.values():
        pts, idx = v.camera.deproject(v.depth)
        uv, z = v.camera.project(pts)
        vv, uu = np.divmod(idx, v.camera.width)
        assert np.abs(uv - np.stack([uu, vv], 1)).max() < 1e-6
        assert np.abs(z - v.depth.reshape(-1)[idx]).max() < 1e-6
        near = np.linalg.norm(pts - truth[:3, 3], axis=1) < 0.05
        assert near.sum() > 100  # the box is seen
    assert rotation_angle_deg(np.eye(3), np.eye(3)) == 0.0


def test_markers_command_writes_printable_tags_that_detect_at_their_size(tmp_path):
    """`twinrank live markers`: one PNG per tag whose DPI prints the black square at the
    scene's size, a placement table, and the tag decodes to its id; bad input exits 2."""
    import cv2
    from PIL import Image
    from typer.testing import CliRunner

    from twin.fiducials import cv_dictionary, printed_size
    from twinrank.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["live", "markers", "--task", "push_t", "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    scene = cell_task_cfg("push_t", True).scene
    (m,) = scene.markers
    png = tmp_path / f"tag_{m.family}_{m.id}_{m.body}.png"
    img = Image.open(png)
    printed_m = img.size[0] / img.info["dpi"][0] * 0.0254
    assert abs(printed_m - printed_size(m.size)) < 1e-4, (printed_m, printed_size(m.size))
    corners, ids, _ = cv2.aruco.ArucoDetector(cv_dictionary(m.family)).detectMarkers(np.asarray(img.convert("L")))
    assert ids is not None and ids.ravel().tolist() == [m.id]
    assert m.body in (tmp_path / "tags.md").read_text()
    bad = runner.invoke(app, ["live", "markers", "--task", "nope", "--out", str(tmp_path)])
    assert bad.exit_code == 2 and "not a twin task" in bad.output
