"""object_tracker: object poses from the cell's RGB-D cameras, for the twin to follow.

Per camera (parameter ``cameras``, camera_bridge's names) it takes ``/<cam>/color/image_raw``
(rgb8), ``/<cam>/depth/image_rect_raw`` (16UC1 mm, aligned to colour) and
``/<cam>/color/camera_info``; the camera's pose in the robot base frame comes from the twin
scene's camera of the same name, or from ``extrinsics`` (the file ``twinrank live
calibrate-camera`` writes). At ``rate_hz`` it runs :class:`twin.live.tracking.ObjectTracker`
on the newest frame set of every camera (colour and depth with the same stamp, younger than
``frame_timeout_s``) and publishes

- ``/objects/<name>/pose`` (PoseStamped, frame ``world`` = the twin's world, which is the robot
  base frame in every twin scene; stamp = the frames' stamp) for each object found now;
- ``/objects/status`` (JSON :class:`twin.live.interfaces.ObjectTrackingStatus`): every object
  tracked or lost with the reason, its method, quality and residual; the achieved rate.

A lost object (tags not seen, registration fitness too low, no points where it was) gets no
pose message — never its last pose again — and twin_sync reports it in ``/twin/desync``.
Depth points on the robot (its surface at the latest ``/joint_states``, from the twin's
kinematics) are left out with ``exclude_robot``.

Bad input is logged with the camera and the fix, throttled, and that camera's frames are
skipped: CameraInfo whose size differs from the image, a K that is not a pinhole matrix,
encodings other than rgb8 / 16UC1 / 32FC1, no depth for registration.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np  # noqa: E402
from geometry_msgs.msg import PoseStamped  # noqa: E402
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup  # noqa: E402
from rclpy.node import Node  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image, JointState  # noqa: E402
from std_msgs.msg import String  # noqa: E402

from twin.live.camera_model import PinholeCamera, base_from_world, invert, matrix_pose  # noqa: E402
from twin.live.common import (  # noqa: E402
    PolledSubscription,
    Throttle,
    declare_parameters,
    fill_pose,
    image_qos,
    latest_qos,
    run_node,
    stamp_to_sec,
    status_qos,
)
from twin.live.interfaces import (  # noqa: E402
    ARM_JOINTS,
    NODE_OBJECT_TRACKER,
    OBJECT_TRACKER_PARAMS,
    TOPIC_JOINT_STATES,
    TOPIC_OBJECT_STATUS,
    ObjectTrackingStatus,
    camera_info_topic,
    color_topic,
    depth_topic,
    object_pose_topic,
    split_list,
)
from twin.live.tracking import CameraView, ObjectTracker, TrackingError, cell_task_cfg, load_extrinsics  # noqa: E402


def image_array(msg: Image) -> np.ndarray:
    """A sensor_msgs/Image as an array: rgb8 -> (H, W, 3) uint8; 16UC1 (mm) / 32FC1 (m) ->
    (H, W) float32 metres. Raises ValueError naming the encoding or the size problem."""
    h, w = int(msg.height), int(msg.width)
    enc = msg.encoding.lower()
    data = np.frombuffer(bytes(msg.data), dtype=np.uint8)
    if enc in ("rgb8", "bgr8"):
        need = h * int(msg.step)
        if data.size < need or int(msg.step) < 3 * w:
            raise ValueError(f"{enc} image {w}x{h}: {data.size} bytes, step {msg.step}; the message is truncated")
        img = data[:need].reshape(h, int(msg.step))[:, : 3 * w].reshape(h, w, 3)
        return img[..., ::-1].copy() if enc == "bgr8" else img
    if enc in ("16uc1", "mono16"):
        arr = data.view("<u2" if not msg.is_bigendian else ">u2")
        step = int(msg.step) // 2
        if arr.size < h * step:
            raise ValueError(f"16UC1 image {w}x{h}: {data.size} bytes; the message is truncated")
        return arr[: h * step].reshape(h, step)[:, :w].astype(np.float32) * 0.001
    if enc == "32fc1":
        arr = data.view("<f4" if not msg.is_bigendian else ">f4")
        step = int(msg.step) // 4
        if arr.size < h * step:
            raise ValueError(f"32FC1 image {w}x{h}: {data.size} bytes; the message is truncated")
        out = arr[: h * step].reshape(h, step)[:, :w].astype(np.float32)
        return np.where(np.isfinite(out), out, 0.0).astype(np.float32)
    raise ValueError(f"image encoding {msg.encoding!r} is not supported; publish rgb8 colour and 16UC1 (mm) depth")


class _CameraInput:
    """The last few colour / depth images of one camera, by stamp, and its newest CameraInfo
    (written by subscriptions, read by the tick)."""

    KEEP = 4

    def __init__(self, name: str) -> None:
        self.name = name
        self.lock = threading.Lock()
        self.color: dict[float, Image] = {}
        self.depth: dict[float, Image] = {}
        self.info: CameraInfo | None = None
        self.frames = 0

    def put(self, kind: str, msg: Any) -> None:
        with self.lock:
            if kind == "info":
                self.info = msg
                return
            store = self.color if kind == "color" else self.depth
            store[stamp_to_sec(msg.header.stamp)] = msg
            while len(store) > self.KEEP:
                store.pop(min(store))
            if kind == "color":
                self.frames += 1

    def newest_set(self) -> tuple[Image | None, Image | None, CameraInfo | None]:
        """The newest colour + depth pair with one stamp (one frame set); when the newest
        images have no partner yet, the pair before them; with no pair at all, the newest image
        alone."""
        with self.lock:
            common = set(self.color) & set(self.depth)
            if common:
                t = max(common)
                return self.color[t], self.depth[t], self.info
            newest = max([(t, "c") for t in self.color] + [(t, "d") for t in self.depth], default=None)
            if newest is None:
                return None, None, self.info
            t, kind = newest
            return (self.color[t], None, self.info) if kind == "c" else (None, self.depth[t], self.info)


class ObjectTrackerNode(Node):
    def __init__(self, cli_args: list[str] | None = None, **kwargs: Any) -> None:
        super().__init__(NODE_OBJECT_TRACKER, cli_args=cli_args, **kwargs)
        self.p = p = declare_parameters(self, OBJECT_TRACKER_PARAMS)
        cams = split_list(p["cameras"])
        if not cams:
            raise ValueError(
                "object_tracker: parameter cameras is empty; name the camera_bridge cameras (cam_left,...)"
            )
        cfg = cell_task_cfg(p["task"], bool(p["markers"]))
        self.scene = cfg.scene
        self.T_world_base = invert(base_from_world(self.scene))
        scene_cams = {c.name for c in self.scene.cameras}
        self.extrinsics = load_extrinsics(p["extrinsics"]) if p["extrinsics"] else {}
        unknown = [c for c in cams if c not in scene_cams and c not in self.extrinsics]
        if unknown:
            raise ValueError(
                f"object_tracker: cameras {unknown} are neither cameras of task {p['task']!r}'s scene "
                f"({', '.join(sorted(scene_cams))}) nor in the extrinsics file; name scene cameras or calibrate them"
            )
        try:
            from twin.tasks import make_task

            objects = split_list(p["objects"]) or list(make_task(p["task"], cfg).object_names)
            self.tracker = ObjectTracker(self.scene, objects or None, p["methods"])
        except TrackingError as exc:
            raise ValueError(f"object_tracker: {exc}") from None
        self.objects = self.tracker.objects
        self.inputs = {c: _CameraInput(c) for c in cams}
        self._throttle = Throttle(5.0)
        self._status = ObjectTrackingStatus(
            objects={o: {"tracked": False, "reason": "no frames yet"} for o in self.objects}
        )
        self._times: list[float] = []
        self._last_stamp: dict[str, float] = {}
        self.updates = 0

        rx = MutuallyExclusiveCallbackGroup()
        work = MutuallyExclusiveCallbackGroup()
        for c, inp in self.inputs.items():
            self.create_subscription(
                Image, color_topic(c), lambda m, i=inp: self._on(i, "color", m), image_qos(), callback_group=rx
            )
            self.create_subscription(
                Image, depth_topic(c), lambda m, i=inp: self._on(i, "depth", m), image_qos(), callback_group=rx
            )
            self.create_subscription(
                CameraInfo,
                camera_info_topic(c),
                lambda m, i=inp: self._on(i, "info", m),
                status_qos(),
                callback_group=rx,
            )
        self.pubs = {o: self.create_publisher(PoseStamped, object_pose_topic(o), status_qos()) for o in self.objects}
        self.pub_status = self.create_publisher(String, TOPIC_OBJECT_STATUS, status_qos())

        self._robot_env = None
        self._joints: np.ndarray | None = None
        self._poll: PolledSubscription | None = None
        if p["exclude_robot"]:
            from twin.env import TwinEnv

            self._robot_env = TwinEnv(p["task"], cfg, render_mode=None)
            self._robot_env.reset(seed=0)
            self._poll = PolledSubscription(self, JointState, TOPIC_JOINT_STATES, latest_qos(), "tracker_joints")
            if not self._poll.available:
                self._poll = None
                self.create_subscription(
                    JointState, TOPIC_JOINT_STATES, self._on_joints, latest_qos(), callback_group=rx
                )
        self.create_timer(1.0 / max(p["rate_hz"], 1e-3), self._tick, callback_group=work)
        self.create_timer(1.0 / max(p["status_rate_hz"], 1e-3), self._publish_status, callback_group=rx)
        methods = ", ".join(f"{o}: {m}" for o, m in self.tracker.methods.items())
        self.get_logger().info(
            f"object_tracker up: task {p['task']}, cameras {cams}, objects ({methods}), {p['rate_hz']:g} Hz"
            f"{', tags on' if p['markers'] else ''}{', extrinsics ' + p['extrinsics'] if p['extrinsics'] else ''}"
        )

    # ---- input ----------------------------------------------------------------------------
    def _on(self, inp: _CameraInput, kind: str, msg: Any) -> None:
        inp.put(kind, msg)

    def _on_joints(self, msg: JointState) -> None:
        idx = {n: i for i, n in enumerate(msg.name)}
        if all(n in idx for n in ARM_JOINTS):
            q = np.array([msg.position[idx[n]] for n in ARM_JOINTS], float)
            if np.isfinite(q).all():
                self._joints = q

    def _warn(self, key: str, text: str) -> None:
        if self._throttle(key):
            self.get_logger().warning(text)

    def _view(self, inp: _CameraInput, now: float) -> tuple[CameraView | None, str]:
        color, depth, info = inp.newest_set()
        if info is None or (color is None and depth is None):
            return None, "no frames" if info is not None else "no camera_info"
        newest = max(stamp_to_sec(m.header.stamp) for m in (color, depth) if m is not None)
        if now - newest > self.p["frame_timeout_s"]:
            return None, f"frames {now - newest:.2f} s old (frame_timeout_s={self.p['frame_timeout_s']})"
        try:
            rgb = image_array(color) if color is not None else None
            d = image_array(depth) if depth is not None else None
            if rgb is not None and rgb.ndim != 3:
                raise ValueError(f"colour image has encoding {color.encoding!r}; expected rgb8")
            if d is not None and d.ndim != 2:
                raise ValueError(f"depth image has encoding {depth.encoding!r}; expected 16UC1")
            size = (int(info.width), int(info.height))
            for what, img in (("colour", rgb), ("depth", d)):
                if img is not None and (img.shape[1], img.shape[0]) != size:
                    raise ValueError(
                        f"{what} image is {img.shape[1]}x{img.shape[0]} but camera_info says {size[0]}x{size[1]}; "
                        f"publish the camera_info of that stream (depth aligned to colour)"
                    )
            t = self.extrinsics.get(inp.name)
            if t is None:
                t = PinholeCamera.from_scene(self.scene, inp.name).T_base_cam
            cam = PinholeCamera.from_camera_info(inp.name, size[0], size[1], list(info.k), t)
        except ValueError as exc:
            self._warn(f"bad:{inp.name}", f"camera {inp.name}: {exc}")
            return None, str(exc)
        return CameraView(cam, rgb, d, newest), ""

    def _robot_points(self) -> np.ndarray | None:
        if self._robot_env is None:
            return None
        if self._poll is not None:
            for msg, _received in self._poll.take():
                self._on_joints(msg)
        if self._joints is None:
            return None
        import mujoco

        from twin.pointcloud import synthetic_point_cloud

        sim = self._robot_env.sim
        sim.data.qpos[sim.h.qpos_adr] = self._joints
        mujoco.mj_kinematics(sim.model, sim.data)
        pts, geoms = synthetic_point_cloud(sim, 6000, rng=0, include_robot=True, return_geoms=True)
        from twin.pointcloud import sampling_table

        table = sampling_table(sim.model)  # cached per model
        xyz = pts[np.isin(geoms, table.geom_ids[table.robot]), :3].astype(float)
        t = self.T_world_base
        return (xyz - t[:3, 3]) @ t[:3, :3]  # world -> base

    # ---- tracking ---------------------------------------------------------------------------
    def _tick(self) -> None:
        now = self.get_clock().now().nanoseconds * 1e-9
        views: dict[str, CameraView] = {}
        cam_status: dict[str, Any] = {}
        for name, inp in self.inputs.items():
            v, why = self._view(inp, now)
            if v is None:
                cam_status[name] = why
            else:
                views[name] = v
                cam_status[name] = round(now - v.stamp, 3)
        if not views:
            why = "no usable camera frames (" + "; ".join(f"{c}: {r}" for c, r in cam_status.items()) + ")"
            self._status = ObjectTrackingStatus(
                objects={o: {"tracked": False, "reason": why} for o in self.objects},
                rate_hz=self._rate(),
                updates=self.updates,
                cameras=cam_status,
            )
            return
        stamp = max(v.stamp for v in views.values())
        if all(self._last_stamp.get(n) == v.stamp for n, v in views.items()):
            return  # nothing new since the last update
        self._last_stamp = {n: v.stamp for n, v in views.items()}
        try:
            result = self.tracker.update(views, exclude=self._robot_points(), stamp=stamp)
        except (ValueError, RuntimeError) as exc:
            self._warn("update", f"object tracking failed on this frame set: {exc}")
            return
        self.updates += 1
        self._times.append(time.monotonic())
        self._times = self._times[-50:]
        sec, nsec = divmod(int(round(stamp * 1e9)), 1_000_000_000)
        for o, est in result.estimates.items():
            msg = PoseStamped()
            msg.header.frame_id = "world"
            msg.header.stamp.sec, msg.header.stamp.nanosec = int(sec), int(nsec)
            pos, quat = matrix_pose(self.T_world_base @ est.T_base_obj)
            fill_pose(msg.pose, [*pos, *quat])
            self.pubs[o].publish(msg)
        changed = {o: s.tracked for o, s in result.status.items()} != {
            o: bool(d.get("tracked")) for o, d in self._status.objects.items()
        }
        self._status = ObjectTrackingStatus(
            objects={o: s.to_dict() for o, s in result.status.items()},
            rate_hz=self._rate(),
            seconds=round(result.seconds, 4),
            updates=self.updates,
            cameras=cam_status,
        )
        for o, s in result.status.items():
            if not s.tracked:
                self._warn(f"lost:{o}:{s.reason}", f"object {o} lost: {s.reason}")
        if changed:
            self._publish_status()

    def _rate(self) -> float:
        t = self._times
        if len(t) < 2 or time.monotonic() - t[-1] > 2.0:
            return 0.0
        return (len(t) - 1) / max(t[-1] - t[0], 1e-9)

    def _publish_status(self) -> None:
        self._status.rate_hz = round(self._rate(), 2)
        self.pub_status.publish(String(data=self._status.to_json()))

    @property
    def status(self) -> ObjectTrackingStatus:
        return self._status

    def close(self) -> None:
        if self._poll is not None:
            self._poll.close()
            self._poll = None
        if self._robot_env is not None:
            self._robot_env.close()
            self._robot_env = None


def create_node(cli_args: list[str] | None = None, **kwargs: Any) -> ObjectTrackerNode:
    return ObjectTrackerNode(cli_args=cli_args, **kwargs)


def main(argv: list[str] | None = None) -> int:
    return run_node(create_node, argv, name=NODE_OBJECT_TRACKER)


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = ["ObjectTrackerNode", "create_node", "image_array", "main"]
