"""object_tracker in the live graph with fake hardware: the software cameras show the cell
with an object where the twin does not have it; the tracker finds it, the twin's object
follows, the recorder's bag holds the poses and selection reads them back; when the cameras
go away the object is reported lost (status and /twin/desync) and no pose is published.

Nodes run as processes from the installed executables (as ``ros2 launch`` runs them); the
arm is a /joint_states publisher at the home pose (franka-sim is covered by test_live_graph).
Waits are hang guards; the errors and lags are measured and printed, and bounded only by what
holds at any machine speed (the pose error does not depend on time; the twin converges).
"""

from __future__ import annotations

import json
import os
import signal
import time

import numpy as np
import pytest

pytest.importorskip("rclpy", reason="ROS 2 from PyPI: pip install -e '.[ros]' (make install)")

from geometry_msgs.msg import PoseStamped  # noqa: E402
from sensor_msgs.msg import Image, JointState  # noqa: E402
from std_msgs.msg import String  # noqa: E402
from test_live_graph import HOME, WAIT_S, Probe, Streamer, _camera_bridge_missing, _desync, ros  # noqa: E402,F401

from twin.live.graph import live_graph  # noqa: E402
from twin.live.runner import GraphRunner  # noqa: E402
from twin.live.tracking import cell_task_cfg  # noqa: E402

FAKE_SEED = 3
#: (task, object, tags on the cell, method the tracker must report)
CASES = [("box_to_shelf", "box", True, "marker"), ("mug_to_sink", "mug", False, "icp")]


def _true_pose(task: str, obj: str, seed: int) -> np.ndarray:
    """[x y z qw qx qy qz] of the object in the cell reset at ``seed`` (the twin's own reset)."""
    from twin.env import TwinEnv

    env = TwinEnv(task, cell_task_cfg(task, True), render_mode=None)
    try:
        env.reset(seed=seed)
        return np.asarray(env.sim.body_pose(obj), float)
    finally:
        env.close()


def _pose(msg: PoseStamped) -> np.ndarray:
    p, q = msg.pose.position, msg.pose.orientation
    return np.array([p.x, p.y, p.z, q.w, q.x, q.y, q.z])


def _angle_deg(q1: np.ndarray, q2: np.ndarray) -> float:
    d = abs(float(np.dot(q1 / np.linalg.norm(q1), q2 / np.linalg.norm(q2))))
    return float(np.degrees(2 * np.arccos(min(1.0, d))))


@pytest.mark.usefixtures("ros")
@pytest.mark.parametrize("task,obj,markers,method", CASES, ids=[f"{c[1]}-{c[3]}" for c in CASES])
def test_tracker_in_graph_twin_object_follows_recorded_and_lost(tmp_path, task, obj, markers, method):
    from selection.realdata import read_bag
    from twin.live.ament import check_ament

    why = _camera_bridge_missing()
    if why:
        pytest.skip(why)
    assert not check_ament(), "run `twinrank live install-ament` (make install does)"
    truth, twin_start = _true_pose(task, obj, FAKE_SEED), _true_pose(task, obj, 0)
    offset = float(np.linalg.norm(truth[:3] - twin_start[:3]))
    assert offset > 0.03, f"seeds {FAKE_SEED} and 0 put the {obj} only {offset:.3f} m apart; pick another seed"

    nodes = live_graph(
        task=task,
        use_fake_hardware=True,
        cameras="cam_left,cam_right",
        markers=markers,
        fake_seed=FAKE_SEED,
        bag_dir=str(tmp_path / "bags"),
        render_rate_hz=0.0,
        tracking_rate_hz=5.0,
    )
    nodes = [n for n in nodes if n.name != "franka_bridge"]  # the arm: a /joint_states publisher
    for n in nodes:
        if n.name == "camera_bridge":  # 2 shared cores: modest renders
            n.parameters.update(width=640, height=480, fps=5, publish_points=False)
    names = [n.name for n in nodes]
    assert names == ["camera_bridge", "object_tracker", "twin_sync", "recorder"], names
    tracker = next(n for n in nodes if n.name == "object_tracker")
    assert tracker.parameters["markers"] is markers and tracker.parameters["cameras"] == "cam_left,cam_right"

    pose_topic, twin_topic = f"/objects/{obj}/pose", f"/twin/objects/{obj}/pose"
    with Probe() as probe:
        for topic, kind in (
            (pose_topic, PoseStamped),
            (twin_topic, PoseStamped),
            ("/objects/status", String),
            ("/twin/desync", String),
            ("/cam_left/color/image_raw", Image),
        ):
            probe.sub(topic, kind, depth=5 if "image" in topic else 1000)
        arm = Streamer(probe, probe.pub("/joint_states", JointState), HOME, rate_hz=100.0)
        graph = GraphRunner(nodes, mode="process", installed=True, log_dir=tmp_path / "logs")
        graph.start()

        try:
            probe.wait(lambda: probe.got("/cam_left/color/image_raw"), 3 * WAIT_S, "software-camera images")
            t_first = probe.wait(lambda: probe.got(pose_topic) and time.monotonic(), 3 * WAIT_S, f"{pose_topic}")
            # the estimate is where the cameras show the object, not where the twin has it
            probe.wait(lambda: len(probe.got(pose_topic)) >= 5, 2 * WAIT_S, "five pose estimates")
            est = np.array([_pose(m) for m in probe.got(pose_topic)])
            pos_err = np.linalg.norm(est[:, :3] - truth[:3], axis=1)
            rot_err = np.array([_angle_deg(e[3:], truth[3:]) for e in est])

            def twin_err() -> float:
                m = probe.last(twin_topic)
                return float(np.linalg.norm(_pose(m)[:3] - truth[:3])) if m is not None else float("inf")

            probe.wait(lambda: twin_err() < 0.02, 2 * WAIT_S, f"the twin's {obj} within 2 cm of the cell's")
            lag = time.monotonic() - t_first
            print(
                f"\ntracker: {len(est)} estimates, "
                f"position error median {1000 * np.median(pos_err):.1f} mm (max {1000 * pos_err.max():.1f}), "
                f"rotation median {np.median(rot_err):.2f} deg; twin {obj} moved {100 * offset:.1f} cm and is "
                f"within 2 cm {lag:.2f} s after the first estimate (final {1000 * twin_err():.1f} mm)"
            )
            assert np.median(pos_err) < 0.01, f"tracked {obj} {np.median(pos_err):.4f} m from the cell's"
            if method == "marker":  # a mug's turn about its axis is ambiguous to registration when its handle is hidden
                assert np.median(rot_err) < 3.0, f"tracked {obj} orientation off by {np.median(rot_err):.2f} deg"
            status = json.loads(probe.last("/objects/status").data)
            st = status["objects"][obj]
            print(f"tracker status: {st}, {status['rate_hz']} Hz (cameras at 5 fps), update {status['seconds']} s")
            assert st["tracked"] and st["method"].startswith(method), st

            # the recorder logs the estimates with an episode; selection reads them back
            assert probe.call("/recorder/start_episode").success
            n0 = len(probe.got(pose_topic))
            probe.wait(lambda: len(probe.got(pose_topic)) >= n0 + 5, 2 * WAIT_S, "poses during the episode")
            assert probe.call("/recorder/end_episode_success").success
            assert probe.call("/recorder/close_bag").success

            # cameras gone: the object is lost, said so, and no pose comes any more
            graph.procs["camera_bridge"].send_signal(signal.SIGINT)

            def lost_status() -> dict | None:
                m = probe.last("/objects/status")
                s = json.loads(m.data)["objects"][obj] if m is not None else {}
                return s if s and not s.get("tracked") else None

            lost = probe.wait(lost_status, 2 * WAIT_S, f"/objects/status reporting {obj} lost")
            probe.wait(
                lambda: (d := _desync(probe)) is not None and obj in d.object_lost, WAIT_S, f"/twin/desync naming {obj}"
            )
            n_lost = len(probe.got(pose_topic))
            time.sleep(1.5)
            assert len(probe.got(pose_topic)) == n_lost, "a pose was published for a lost object"
            print(f"lost after the cameras stopped: {lost['reason']!r}; desync: {_desync(probe).object_lost[obj]!r}")
            assert "frame" in lost["reason"] or "camera" in lost["reason"], lost
        except AssertionError:
            print(graph.log_tails(2000))
            raise
        finally:
            arm.stop()
            graph.stop()

    episodes = [e for b in sorted((tmp_path / "bags").iterdir()) for e in read_bag(b, images=False)]
    assert len(episodes) == 1 and episodes[0].success
    track = episodes[0].object_poses[obj]
    err = np.linalg.norm(track.pose[:, :3] - truth[:3], axis=1)
    print(f"bag: {len(track.t)} {obj} poses in the episode, median error {1000 * np.median(err):.1f} mm")
    assert len(track.t) >= 5 and np.median(err) < 0.01
    assert os.path.isdir(tmp_path / "bags")


def _image(arr: np.ndarray, encoding: str, stamp) -> Image:
    msg = Image()
    msg.header.stamp = stamp
    msg.height, msg.width = arr.shape[:2]
    msg.encoding = encoding
    msg.step = arr.strides[0]
    msg.data = arr.tobytes()
    return msg


def test_image_conversion_and_extrinsics_file_errors(tmp_path):
    from builtin_interfaces.msg import Time

    from twin.live.object_tracker import image_array
    from twin.live.tracking import load_extrinsics

    rgb = np.random.default_rng(0).integers(0, 255, (4, 6, 3), dtype=np.uint8)
    assert np.array_equal(image_array(_image(rgb, "rgb8", Time())), rgb)
    assert np.array_equal(image_array(_image(rgb[..., ::-1].copy(), "bgr8", Time())), rgb)
    mm = np.array([[0, 1000], [250, 65535]], np.uint16)
    assert np.allclose(image_array(_image(mm, "16UC1", Time())), mm.astype(np.float32) / 1000)
    with pytest.raises(ValueError, match="not supported"):
        image_array(_image(mm, "yuv422", Time()))
    with pytest.raises(ValueError, match="calibrate-camera"):
        load_extrinsics(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("cameras: {cam_left: {T_base_cam: [[1, 0], [0, 1]]}}\n")
    with pytest.raises(ValueError, match="no 4x4 T_base_cam"):
        load_extrinsics(bad)
    good = tmp_path / "good.yaml"
    good.write_text("cameras: {cam_left: {T_base_cam: " + str(np.eye(4).tolist()) + "}}\n")
    assert np.array_equal(load_extrinsics(good)["cam_left"], np.eye(4))
    report = tmp_path / "camera_calibration.yaml"  # what `twinrank live calibrate-camera` writes
    report.write_text("camera: cam_right\nT_base_cam: " + str((2 * np.eye(4)).tolist()) + "\n")
    both = load_extrinsics(f"{good},{report}")
    assert sorted(both) == ["cam_left", "cam_right"] and both["cam_right"][0, 0] == 2.0


@pytest.mark.usefixtures("ros")
def test_node_names_bad_intrinsics_and_missing_depth():
    """A CameraInfo whose size is not the image's is named in the status (the camera's frames
    are skipped); a registration-only object with colour but no depth is lost with that reason."""
    from sensor_msgs.msg import CameraInfo

    from twin.live.interfaces import ObjectTrackingStatus

    nodes = live_graph(task="mug_to_sink", cameras="cam_left", robot_ip="172.16.0.2", record=False)
    desc = next(n for n in nodes if n.name == "object_tracker")
    desc.parameters.update(exclude_robot=False, rate_hz=20.0, status_rate_hz=20.0)
    with Probe() as probe:
        probe.sub("/objects/status", String)
        probe.sub("/objects/mug/pose", PoseStamped)
        pub_rgb = probe.pub("/cam_left/color/image_raw", Image, depth=5)
        pub_info = probe.pub("/cam_left/color/camera_info", CameraInfo, depth=5)
        graph = GraphRunner([desc], mode="thread")
        graph.start()
        try:
            probe.wait_matched(pub_rgb)
            probe.wait_matched(pub_info)
            rgb = np.zeros((48, 64, 3), np.uint8)

            def send(width: int) -> None:
                info = CameraInfo()
                info.width, info.height = width, 48
                info.k = [60.0, 0.0, 32.0, 0.0, 60.0, 24.0, 0.0, 0.0, 1.0]
                stamp = probe.stamp()
                info.header.stamp = stamp
                pub_info.publish(info)
                pub_rgb.publish(_image(rgb, "rgb8", stamp))

            def status() -> ObjectTrackingStatus | None:
                m = probe.last("/objects/status")
                return None if m is None else ObjectTrackingStatus.from_json(m.data)

            def reason_has(text: str) -> bool:
                send(width)
                s = status()
                return s is not None and text in str(s.objects.get("mug", {}).get("reason", ""))

            width = 80  # camera_info says 80x48, the image is 64x48
            probe.wait(lambda: reason_has("camera_info says 80x48"), WAIT_S, "the size mismatch in /objects/status")
            width = 64  # consistent now, but there is no depth for registration
            probe.wait(lambda: reason_has("no depth image"), WAIT_S, "'no depth image' in /objects/status")
            print(f"\nstatus: {status().objects['mug']['reason']!r}")
            assert not probe.got("/objects/mug/pose")
        finally:
            graph.stop()
