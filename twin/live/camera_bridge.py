"""``camera_bridge``: Intel RealSense cameras over ROS 2, through pyrealsense2.

Per camera (parameter ``cameras``: ``name`` or ``name=serial``, comma-separated) it publishes

- ``/<name>/color/image_raw`` (sensor_msgs/Image, rgb8),
- ``/<name>/depth/image_rect_raw`` (sensor_msgs/Image, 16UC1, millimetres; aligned to the
  colour image when ``align_depth`` is true, the default, so one CameraInfo serves both),
- ``/<name>/color/camera_info`` (sensor_msgs/CameraInfo: K, P, D from the colour stream
  profile's intrinsics),
- ``/<name>/points`` (sensor_msgs/PointCloud2: x, y, z float32 in metres in the colour
  optical frame + packed ``rgb``; ``rs.pointcloud`` mapped to the colour frame),

and ``/camera_bridge/status`` (std_msgs/String JSON: per camera ``connected``, ``serial``,
``frames``, ``fps``, ``reason``).

Devices are picked by serial number (a camera without a serial takes the first unclaimed
device). Each camera runs its own acquisition thread with a retry loop: a device that is
missing, fails to start, or stops delivering frames (``frame_timeout_s``) is reported with the
reason (log + status) and retried every ``retry_period_s`` with a fresh ``rs.context``, so a
camera that is unplugged and plugged back in comes back by itself.

``use_fake_hardware``: the cameras are pyrealsense2 software devices
(:mod:`twin.live.fake_hardware`) fed with renders of the twin's scene camera of the same name
(RGB + depth), with the twin's arm posed from ``/joint_states``. ``record_dir`` records each
camera (``rs.recorder``: ``<record_dir>/<name>.db3``, rosbag2); ``playback`` plays recordings
back (``name=path.db3``) instead of devices.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from twin.live.fake_hardware import (
    FakeRealSenseHub,
    SoftwareRealSense,
    TwinCameraSource,
    import_pyrealsense2,
)
from twin.live.interfaces import (
    CAMERA_BRIDGE_PARAMS,
    NODE_CAMERA_BRIDGE,
    Param,
    camera_topics,
    parse_cameras,
    split_list,
)

TOPIC_CAMERA_STATUS = "/camera_bridge/status"

EXTRA_PARAMS = (
    Param("retry_period_s", 1.0, "Seconds between attempts to (re)open a missing or failed camera."),
    Param("frame_timeout_s", 2.0, "A camera that delivers no frame for this long is restarted (reason logged)."),
    Param("align_depth", True, "Align depth to the colour image (depth and points in the colour frame)."),
    Param("points_stride", 2, "Publish every n-th pixel's point in each direction (1 = all)."),
    Param("record_dir", "", "Record each camera to <record_dir>/<name>.db3 (rs.recorder, rosbag2)."),
    Param("playback", "", "Comma-separated name=path.db3: play recordings instead of devices."),
    Param("playback_realtime", False, "Play recordings at their recorded pace (false: as fast as consumed)."),
    Param("playback_repeat", True, "Loop recordings."),
    Param("fake_task", "reach", "With use_fake_hardware: the twin task whose cameras are rendered."),
    Param("status_rate_hz", 2.0, "/camera_bridge/status rate."),
)


def _params() -> tuple[Param, ...]:
    have = {p.name for p in CAMERA_BRIDGE_PARAMS}
    return tuple(CAMERA_BRIDGE_PARAMS) + tuple(p for p in EXTRA_PARAMS if p.name not in have)


class CameraError(RuntimeError):
    """A camera cannot deliver frames now; the message is the reason (logged, in the status)."""


class CameraState:
    def __init__(self, name: str, serial: str) -> None:
        self.name = name
        self.serial = serial
        self.connected = False
        self.reason = "starting"
        self.frames = 0
        self.fps = 0.0
        self.restarts = 0
        self.device_serial = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "connected": self.connected,
            "serial": self.device_serial or self.serial,
            "frames": self.frames,
            "fps": round(self.fps, 2),
            "reason": self.reason,
            "restarts": self.restarts,
        }


def camera_info_msg(intr: Any, stamp: Any, frame_id: str) -> Any:
    """sensor_msgs/CameraInfo from a pyrealsense2 intrinsics."""
    from sensor_msgs.msg import CameraInfo

    rs = import_pyrealsense2()
    msg = CameraInfo()
    msg.header.stamp = stamp
    msg.header.frame_id = frame_id
    msg.width, msg.height = int(intr.width), int(intr.height)
    fx, fy, cx, cy = float(intr.fx), float(intr.fy), float(intr.ppx), float(intr.ppy)
    msg.k = [fx, 0.0, cx, 0.0, fy, cy, 0.0, 0.0, 1.0]
    msg.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    msg.p = [fx, 0.0, cx, 0.0, 0.0, fy, cy, 0.0, 0.0, 0.0, 1.0, 0.0]
    model = intr.model
    if model in (
        rs.distortion.brown_conrady,
        rs.distortion.modified_brown_conrady,
        rs.distortion.inverse_brown_conrady,
        rs.distortion.none,
    ):
        msg.distortion_model = "plumb_bob"
    else:
        msg.distortion_model = str(model).split(".")[-1]
    msg.d = [float(c) for c in intr.coeffs]
    return msg


def points_msg(xyz: np.ndarray, rgb: np.ndarray, stamp: Any, frame_id: str) -> Any:
    """sensor_msgs/PointCloud2 (x, y, z float32 + rgb packed float32, PCL layout) from (N, 3)
    metres and (N, 3) uint8 colours."""
    from sensor_msgs.msg import PointCloud2, PointField

    n = int(len(xyz))
    rec = np.zeros(n, dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("rgb", "<u4")])
    rec["x"], rec["y"], rec["z"] = xyz[:, 0], xyz[:, 1], xyz[:, 2]
    c = rgb.astype(np.uint32)
    rec["rgb"] = (c[:, 0] << 16) | (c[:, 1] << 8) | c[:, 2]
    msg = PointCloud2()
    msg.header.stamp = stamp
    msg.header.frame_id = frame_id
    msg.height, msg.width = 1, n
    msg.fields = [
        PointField(name="x", offset=0, datatype=PointField.FLOAT32, count=1),
        PointField(name="y", offset=4, datatype=PointField.FLOAT32, count=1),
        PointField(name="z", offset=8, datatype=PointField.FLOAT32, count=1),
        PointField(name="rgb", offset=12, datatype=PointField.FLOAT32, count=1),
    ]
    msg.is_bigendian = False
    msg.point_step = 16
    msg.row_step = 16 * n
    msg.is_dense = True
    msg.data = rec.tobytes()
    return msg


def image_msg(arr: np.ndarray, encoding: str, stamp: Any, frame_id: str) -> Any:
    from sensor_msgs.msg import Image

    arr = np.ascontiguousarray(arr)
    msg = Image()
    msg.header.stamp = stamp
    msg.header.frame_id = frame_id
    msg.height, msg.width = int(arr.shape[0]), int(arr.shape[1])
    msg.encoding = encoding
    msg.is_bigendian = 0
    msg.step = int(arr.strides[0])
    msg.data = arr.tobytes()
    return msg


def _depth_units(device: Any) -> float:
    """Metres per z16 unit of a device (its depth sensor's ``depth_units``; 1 mm if unknown,
    e.g. a recorder/playback wrapper that does not expose the option)."""
    rs = import_pyrealsense2()
    for sensor in device.query_sensors():
        try:
            if sensor.supports(rs.option.depth_units):
                return float(sensor.get_option(rs.option.depth_units))
        except RuntimeError:
            continue
    return 0.001


class CameraBridge:
    """The node's logic (the rclpy Node is ``node``). ``hub`` (a
    :class:`~twin.live.fake_hardware.FakeRealSenseHub`) replaces USB devices: given by a test,
    or built from twin renders with ``use_fake_hardware``."""

    def __init__(self, node: Any, params: dict[str, Any], hub: FakeRealSenseHub | None = None) -> None:
        from std_msgs.msg import String

        from twin.live.common import image_qos, status_qos

        self.rs = import_pyrealsense2()
        self.node = node
        self.log = node.get_logger()
        self.p = params
        self.width, self.height, self.fps = int(params["width"]), int(params["height"]), int(params["fps"])
        self._String = String
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._claimed: dict[str, str] = {}  # device serial -> camera name
        self._joints: np.ndarray | None = None
        self.hub = hub
        self._own_hub = False
        self._sources: list[TwinCameraSource] = []
        playback = dict(item.split("=", 1) for item in split_list(params["playback"]) if "=" in item)
        self.playback = {k.strip(): v.strip() for k, v in playback.items()}
        cams = parse_cameras(params["cameras"])
        for name in self.playback:
            if name not in [c for c, _ in cams]:
                cams.append((name, ""))
        if not cams:
            raise ValueError("camera_bridge: no cameras; set cameras:=name[=serial],...")
        self.cameras = [CameraState(n, s) for n, s in cams]
        if params["use_fake_hardware"] and self.hub is None:
            self.hub = self._fake_hub()
        qos = image_qos()
        self.pubs: dict[str, dict[str, Any]] = {}
        from sensor_msgs.msg import CameraInfo, Image, PointCloud2

        for cam in self.cameras:
            t = camera_topics(cam.name)
            self.pubs[cam.name] = {
                "color": node.create_publisher(Image, t["color"], qos),
                "depth": node.create_publisher(Image, t["depth"], qos),
                "camera_info": node.create_publisher(CameraInfo, t["camera_info"], qos),
                "points": node.create_publisher(PointCloud2, t["points"], qos) if params["publish_points"] else None,
            }
        self.status_pub = node.create_publisher(String, TOPIC_CAMERA_STATUS, status_qos())
        self.status_timer = node.create_timer(1.0 / max(0.2, float(params["status_rate_hz"])), self.publish_status)
        self.threads = [
            threading.Thread(target=self._run, args=(cam,), name=f"rs-{cam.name}", daemon=True) for cam in self.cameras
        ]
        for t in self.threads:
            t.start()
        self.log.info(
            f"camera_bridge: {[c.name + ('=' + c.serial if c.serial else '') for c in self.cameras]} "
            f"{self.width}x{self.height}@{self.fps}"
            f"{' (fake hardware: software devices, twin renders)' if params['use_fake_hardware'] else ''}"
        )

    # ---- fake hardware ---------------------------------------------------------------------
    def _fake_hub(self) -> FakeRealSenseHub:
        from sensor_msgs.msg import JointState

        from twin.live.common import joint_qos
        from twin.live.interfaces import ARM_JOINTS, TOPIC_JOINT_STATES

        def on_js(msg: Any) -> None:
            idx = {n: i for i, n in enumerate(msg.name)}
            if all(n in idx for n in ARM_JOINTS):
                self._joints = np.array([msg.position[idx[n]] for n in ARM_JOINTS])

        self._js_sub = self.node.create_subscription(JointState, TOPIC_JOINT_STATES, on_js, joint_qos())
        hub = FakeRealSenseHub()
        self._own_hub = True
        from twin.live.tracking import cell_task_cfg

        cell_cfg = cell_task_cfg(str(self.p["fake_task"]), bool(self.p["fake_markers"]))
        for cam in self.cameras:
            if cam.name in self.playback:
                continue
            src = TwinCameraSource(
                str(self.p["fake_task"]),
                cam.name,
                self.width,
                self.height,
                joints=lambda: self._joints,
                cfg=cell_cfg,
                seed=int(self.p["fake_seed"]),
            )
            self._sources.append(src)
            cam.serial = cam.serial or f"twin-{cam.name}"
            hub.add(
                SoftwareRealSense(
                    cam.serial, name=f"Twin RealSense ({src.camera})", intrinsics=src.intrinsics, fps=self.fps
                )
            )
            hub.feed(cam.serial, src, self.fps)
            self.log.info(
                f"camera_bridge: fake camera {cam.name} (serial {cam.serial}) renders twin camera "
                f"{src.camera} of task {self.p['fake_task']} (seed {src.seed}"
                f"{', with tags' if self.p['fake_markers'] else ''})"
            )
        return hub

    # ---- status ----------------------------------------------------------------------------
    def _note(self, cam: CameraState, connected: bool, reason: str) -> None:
        changed = reason != cam.reason or connected != cam.connected
        cam.connected, cam.reason = connected, reason
        if changed:
            if connected:
                self.log.info(f"camera_bridge: {cam.name}: {reason}")
            else:
                self.log.warning(f"camera_bridge: {cam.name}: {reason}")
            self.publish_status()

    def status_dict(self) -> dict[str, Any]:
        return {"cameras": {c.name: c.to_dict() for c in self.cameras}}

    def publish_status(self) -> None:
        self.status_pub.publish(self._String(data=json.dumps(self.status_dict())))

    # ---- acquisition -----------------------------------------------------------------------
    def _context(self):
        return self.hub.context() if self.hub is not None else self.rs.context()

    def _pick_device(self, cam: CameraState, ctx: Any) -> str:
        rs = self.rs
        serials = []
        for d in ctx.query_devices():
            try:
                serials.append(d.get_info(rs.camera_info.serial_number))
            except RuntimeError:
                continue
        with self._lock:
            if cam.serial:
                if cam.serial not in serials:
                    raise CameraError(f"device {cam.serial} not found (connected: {serials or 'none'}); retrying")
                return cam.serial
            free = [s for s in serials if self._claimed.get(s, cam.name) == cam.name]
            if not free:
                raise CameraError(f"no unclaimed RealSense device (connected: {serials or 'none'}); retrying")
            self._claimed[free[0]] = cam.name
            return free[0]

    def _start(self, cam: CameraState) -> tuple[Any, Any]:
        rs = self.rs
        cfg = rs.config()
        path = self.playback.get(cam.name)
        if path:
            if not Path(path).is_file():
                raise CameraError(f"recording {path} not found")
            cfg.enable_device_from_file(path, bool(self.p["playback_repeat"]))
            pipe = rs.pipeline()
        else:
            ctx = self._context()
            serial = self._pick_device(cam, ctx)
            cam.device_serial = serial
            cfg.enable_device(serial)
            cfg.enable_stream(rs.stream.depth, self.width, self.height, rs.format.z16, self.fps)
            cfg.enable_stream(rs.stream.color, self.width, self.height, rs.format.rgb8, self.fps)
            if self.p["record_dir"]:
                out = Path(str(self.p["record_dir"])) / f"{cam.name}.db3"
                out.parent.mkdir(parents=True, exist_ok=True)
                if cam.restarts:
                    out = out.with_name(f"{cam.name}-{cam.restarts}.db3")
                cfg.enable_record_to_file(str(out))
            pipe = rs.pipeline(ctx)
        try:
            profile = pipe.start(cfg)
        except RuntimeError as exc:
            raise CameraError(
                f"cannot start streams {self.width}x{self.height}@{self.fps} (depth z16 + colour rgb8): {exc}"
            ) from exc
        if path:
            pb = profile.get_device().as_playback()
            pb.set_real_time(bool(self.p["playback_realtime"]))
            cam.device_serial = profile.get_device().get_info(rs.camera_info.serial_number)
        return pipe, profile

    def _run(self, cam: CameraState) -> None:
        rs = self.rs
        align = rs.align(rs.stream.color)
        pc = rs.pointcloud()
        period = float(self.p["retry_period_s"])
        timeout_ms = int(1000 * float(self.p["frame_timeout_s"]))
        frame_id = f"{cam.name}_color_optical_frame"
        while not self._stop.is_set():
            pipe = None
            try:
                pipe, profile = self._start(cam)
                color_profile = profile.get_stream(rs.stream.color).as_video_stream_profile()
                intr = color_profile.get_intrinsics()
                depth_mm = _depth_units(profile.get_device()) * 1000.0
                self._note(
                    cam,
                    True,
                    f"streaming from {cam.device_serial} "
                    f"({'recording ' + self.playback[cam.name] if cam.name in self.playback else 'device'})",
                )
                t_win, n_win = time.monotonic(), 0
                while not self._stop.is_set():
                    try:
                        frames = pipe.wait_for_frames(timeout_ms)
                    except RuntimeError as exc:
                        raise CameraError(f"no frames within {timeout_ms / 1000:.1f} s ({exc}); restarting") from exc
                    self._publish(cam, frames, align, pc, intr, depth_mm, frame_id)
                    cam.frames += 1
                    n_win += 1
                    now = time.monotonic()
                    if now - t_win >= 2.0:
                        cam.fps = n_win / (now - t_win)
                        t_win, n_win = now, 0
            except CameraError as exc:
                self._note(cam, False, str(exc))
            except Exception as exc:  # anything from librealsense: report, retry
                self._note(cam, False, f"{type(exc).__name__}: {exc}; retrying")
            finally:
                if pipe is not None:
                    try:
                        pipe.stop()
                    except Exception:
                        pass
                cam.fps = 0.0
            if not self._stop.is_set():
                cam.restarts += 1
                self._stop.wait(period)

    def _publish(
        self, cam: CameraState, frames: Any, align: Any, pc: Any, intr: Any, depth_mm: float, frame_id: str
    ) -> None:
        if self.p["align_depth"]:
            frames = align.process(frames)
        color = frames.get_color_frame()
        depth = frames.get_depth_frame()
        if not color or not depth:
            return
        stamp = self.node.get_clock().now().to_msg()
        rgb = np.asanyarray(color.get_data())
        raw = np.asanyarray(depth.get_data())
        mm = raw if abs(depth_mm - 1.0) < 1e-6 else np.clip(np.round(raw * depth_mm), 0, 65535).astype(np.uint16)
        pubs = self.pubs[cam.name]
        pubs["color"].publish(image_msg(rgb, "rgb8", stamp, frame_id))
        pubs["depth"].publish(
            image_msg(mm, "16UC1", stamp, frame_id if self.p["align_depth"] else f"{cam.name}_depth_optical_frame")
        )
        pubs["camera_info"].publish(camera_info_msg(intr, stamp, frame_id))
        if pubs["points"] is not None:
            pc.map_to(color)
            points = pc.calculate(depth)
            h, w = raw.shape
            xyz = np.asanyarray(points.get_vertices()).view(np.float32).reshape(h, w, 3)
            uv = np.asanyarray(points.get_texture_coordinates()).view(np.float32).reshape(h, w, 2)
            k = max(1, int(self.p["points_stride"]))
            xyz, uv = xyz[::k, ::k].reshape(-1, 3), uv[::k, ::k].reshape(-1, 2)
            keep = xyz[:, 2] > 0
            xyz, uv = xyz[keep], uv[keep]
            ch, cw = rgb.shape[:2]
            px = np.clip((uv[:, 0] * cw).astype(np.int64), 0, cw - 1)
            py = np.clip((uv[:, 1] * ch).astype(np.int64), 0, ch - 1)
            frame = frame_id if self.p["align_depth"] else f"{cam.name}_depth_optical_frame"
            pubs["points"].publish(points_msg(xyz, rgb[py, px], stamp, frame))

    # ---- shutdown --------------------------------------------------------------------------
    def close(self) -> None:
        self._stop.set()
        for t in self.threads:
            t.join(timeout=5.0)
        if self._own_hub and self.hub is not None:
            self.hub.close()
        for s in self._sources:
            s.close()


def create_node(cli_args: list[str] | None = None, name: str = NODE_CAMERA_BRIDGE, hub: FakeRealSenseHub | None = None):
    """The camera_bridge node (rclpy must be initialised); ``hub`` injects software cameras.
    The returned Node has ``.bridge`` (:class:`CameraBridge`) and ``close()``."""
    from rclpy.node import Node

    from twin.live.common import declare_parameters

    node = Node(name, cli_args=cli_args)
    params = declare_parameters(node, _params())
    node.bridge = CameraBridge(node, params, hub=hub)
    node.close = node.bridge.close
    return node


def main(argv: list[str] | None = None) -> int:
    from twin.live.common import run_node

    return run_node(create_node, argv, name=NODE_CAMERA_BRIDGE)


if __name__ == "__main__":
    sys.exit(main())
