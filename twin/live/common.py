"""Small rclpy helpers shared by the live nodes: parameters, QoS, message conversions, main().

Imports rclpy (only node modules import this).
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import rclpy
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.node import Node
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy

from twin.live.interfaces import IMAGE_QOS_DEPTH, JOINT_QOS_DEPTH, STATUS_QOS_DEPTH, Param


# ---- parameters -----------------------------------------------------------------------------
def coerce(value: Any, kind: type, name: str) -> Any:
    """Convert a parameter value given on the command line / by launch to the declared type
    (``5`` for a float parameter, ``"true"`` for a bool...). Raises ValueError with the name."""
    if value is None:
        raise ValueError(f"parameter {name!r} has no value")
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, (int, float)) and value in (0, 1):
            return bool(value)
        s = str(value).strip().lower()
        if s in ("true", "1", "yes", "on"):
            return True
        if s in ("false", "0", "no", "off", ""):
            return False
        raise ValueError(f"parameter {name!r}: {value!r} is not a bool (true/false)")
    if kind is int:
        if isinstance(value, bool):
            raise ValueError(f"parameter {name!r}: {value!r} is not an int")
        f = float(value)
        if f != int(f):
            raise ValueError(f"parameter {name!r}: {value!r} is not an int")
        return int(f)
    if kind is float:
        if isinstance(value, bool):
            raise ValueError(f"parameter {name!r}: {value!r} is not a number")
        return float(value)
    return str(value)


def declare_parameters(node: Node, params: Sequence[Param]) -> dict[str, Any]:
    """Declare ``params`` (dynamically typed, with their descriptions) and return their values
    converted to the declared types."""
    values = {}
    for p in params:
        desc = ParameterDescriptor(description=p.description, dynamic_typing=True)
        node.declare_parameter(p.name, p.default, desc)
        values[p.name] = coerce(node.get_parameter(p.name).value, p.type, p.name)
    return values


# ---- QoS ------------------------------------------------------------------------------------
def joint_qos() -> QoSProfile:
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=JOINT_QOS_DEPTH, reliability=ReliabilityPolicy.RELIABLE)


def latest_qos(depth: int = 5) -> QoSProfile:
    """Reliable keep-last ``depth`` for subscribers that only need the newest message."""
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth, reliability=ReliabilityPolicy.RELIABLE)


def status_qos() -> QoSProfile:
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=STATUS_QOS_DEPTH, reliability=ReliabilityPolicy.RELIABLE)


def image_qos() -> QoSProfile:
    # reliable publishers match both reliable and best-effort subscribers (rviz, rqt, tests)
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=IMAGE_QOS_DEPTH, reliability=ReliabilityPolicy.RELIABLE)


# ---- polled subscriptions ----------------------------------------------------------------------
class PolledSubscription:
    """A subscription that no executor spins: :meth:`take` drains its queue from a timer.

    At 1 kHz, one executor callback per message costs ~0.5 ms of Python each; taking the
    queued messages in a batch costs a fraction of that and gives each message's DDS receive
    time. The subscription lives on a small helper node (``<owner>_<suffix>``, no parameter
    services, no rosout) of the owner's context; the topic is resolved (remapped) by the owner.
    Uses rclpy's subscription handle (``take_message``), as rclpy's executors do;
    :attr:`available` is False where that API is missing (use a callback then).
    """

    def __init__(self, owner: Node, msg_type: Any, topic: str, qos: QoSProfile, suffix: str = "sampler") -> None:
        self.topic = owner.resolve_topic_name(topic)
        self.node: Node | None = Node(
            f"{owner.get_name()}_{suffix}",
            context=owner.context,
            use_global_arguments=False,
            start_parameter_services=False,
            enable_rosout=False,
        )
        self.sub: Any = self.node.create_subscription(msg_type, self.topic, lambda m: None, qos)
        self.available = hasattr(self.sub, "handle") and hasattr(self.sub.handle, "take_message")
        if not self.available:
            self.close()

    def take(self, limit: int = 100_000) -> list[tuple[Any, float]]:
        """Queued messages (oldest first) with their receive times in seconds (ROS clock)."""
        out: list[tuple[Any, float]] = []
        sub = self.sub
        if sub is None:
            return out
        while len(out) < limit:
            try:
                with sub.handle:
                    got = sub.handle.take_message(sub.msg_type, sub.raw)
            except Exception:  # destroyed during shutdown
                break
            if got is None:
                break
            info = got[1] if len(got) > 1 and isinstance(got[1], dict) else {}
            ns = info.get("received_timestamp") or time.time_ns()
            out.append((got[0], ns * 1e-9))
        return out

    def close(self) -> None:
        if self.node is not None:
            self.node.destroy_node()
        self.node = self.sub = None


# ---- time -----------------------------------------------------------------------------------
def stamp_to_sec(stamp: Any) -> float:
    return float(stamp.sec) + float(stamp.nanosec) * 1e-9


def now_sec(node: Node) -> float:
    return node.get_clock().now().nanoseconds * 1e-9


# ---- messages -------------------------------------------------------------------------------
def floats_msg(vec: Any) -> Any:
    """A Float32MultiArray with the real-data schema's layout (dim sizes = the shape)."""
    from std_msgs.msg import Float32MultiArray, MultiArrayDimension

    arr = np.asarray(vec, dtype=np.float32)
    msg = Float32MultiArray()
    stride = int(arr.size)
    for i, n in enumerate(arr.shape):
        msg.layout.dim.append(MultiArrayDimension(label=f"d{i}", size=int(n), stride=stride))
        stride = stride // max(int(n), 1)
    msg.layout.data_offset = 0
    msg.data = arr.reshape(-1).tolist()
    return msg


def floats_array(msg: Any) -> np.ndarray:
    """Inverse of :func:`floats_msg`."""
    data = np.asarray(msg.data, dtype=np.float32)[int(msg.layout.data_offset) :]
    shape = tuple(int(d.size) for d in msg.layout.dim)
    if not shape:
        return data.reshape(()) if len(data) == 1 else data
    return data.reshape(shape) if int(np.prod(shape)) == len(data) else data


def pose_to_array(pose: Any) -> np.ndarray:
    """geometry_msgs/Pose -> [x, y, z, qw, qx, qy, qz] (wxyz, the twin's order)."""
    p, q = pose.position, pose.orientation
    return np.array([p.x, p.y, p.z, q.w, q.x, q.y, q.z], dtype=float)


def fill_pose(pose: Any, arr: Sequence[float]) -> Any:
    pose.position.x, pose.position.y, pose.position.z = (float(v) for v in arr[:3])
    pose.orientation.w, pose.orientation.x, pose.orientation.y, pose.orientation.z = (float(v) for v in arr[3:7])
    return pose


def check_pose(arr: np.ndarray) -> str:
    """'' when a pose is usable, else the reason (non-finite, zero quaternion)."""
    if not np.isfinite(arr).all():
        return "non-finite pose"
    if np.linalg.norm(arr[3:7]) < 1e-6:
        return "zero quaternion"
    return ""


def rgb_image_msg(rgb: np.ndarray, stamp: Any, frame_id: str) -> Any:
    from sensor_msgs.msg import Image

    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    h, w = rgb.shape[:2]
    msg = Image()
    msg.header.stamp = stamp
    msg.header.frame_id = frame_id
    msg.height, msg.width = int(h), int(w)
    msg.encoding = "rgb8"
    msg.is_bigendian = 0
    msg.step = int(w * 3)
    msg.data = rgb.tobytes()
    return msg


def slerp(q0: np.ndarray, q1: np.ndarray, t: float) -> np.ndarray:
    """Spherical interpolation of unit quaternions (either order, shortest path)."""
    q0 = q0 / np.linalg.norm(q0)
    q1 = q1 / np.linalg.norm(q1)
    d = float(np.dot(q0, q1))
    if d < 0:
        q1, d = -q1, -d
    if d > 0.9995:
        q = q0 + t * (q1 - q0)
        return q / np.linalg.norm(q)
    theta = math.acos(min(1.0, d))
    s = math.sin(theta)
    return (math.sin((1 - t) * theta) * q0 + math.sin(t * theta) * q1) / s


class Throttle:
    """Log a message at most once per ``period_s`` per key (rejections arrive at 1 kHz)."""

    def __init__(self, period_s: float = 2.0) -> None:
        self.period = period_s
        self._last: dict[str, float] = {}

    def __call__(self, key: str) -> bool:
        t = time.monotonic()
        if t - self._last.get(key, -math.inf) >= self.period:
            self._last[key] = t
            return True
        return False


# ---- main -----------------------------------------------------------------------------------
def run_node(
    create: Callable[[list[str] | None], Node],
    argv: Sequence[str] | None = None,
    *,
    name: str,
    executor_threads: int = 4,
) -> int:
    """Standard ``main`` of a node program (``name``: the executable, also the default node name).

    Before anything else the process is tied to its parent (:func:`twin.lifeline.bind_to_parent`:
    it ends when the parent dies, by any signal) and refuses to start when the same node is
    already running in this ROS domain (a leftover of another run). Then: init rclpy with
    ``argv``, create the node, spin until SIGINT / SIGTERM (a single-threaded executor when
    ``executor_threads`` is 1), then ``node.close()`` (threads stopped, bags closed) *before*
    the context goes down, destroy the node and shut down.

    Configuration errors (ValueError, fake hardware that cannot start, a leftover node) end the
    program with one line on stderr and exit code 2."""
    import gc
    import signal

    from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor, SingleThreadedExecutor
    from rclpy.signals import SignalHandlerOptions

    from twin.lifeline import NodeConflict, ParentGone, bind_to_parent, refuse_other_instances, ros_node_name
    from twin.live.fake_hardware import FakeHardwareError

    args = list(sys.argv if argv is None else argv)
    node_name = ros_node_name(args, name)
    try:
        bind_to_parent(node_name)
        refuse_other_instances(node_name, name)
    except (ParentGone, NodeConflict) as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    # our own handlers: rclpy's would shut the context down under the node's threads
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)
    node = None
    executor = None
    code = 0
    try:
        try:
            node = create(None)  # the ROS arguments in argv were given to rclpy.init (global)
        except (ValueError, FakeHardwareError) as exc:
            print(f"error: {node_name}: {exc}", file=sys.stderr, flush=True)
            code = 2
            return code
        # everything built so far lives as long as the node: keep it out of the collector's
        # full passes (a full collection of it took 40-110 ms under load, stalling every thread)
        gc.collect()
        gc.freeze()
        executor = (
            SingleThreadedExecutor() if executor_threads <= 1 else MultiThreadedExecutor(num_threads=executor_threads)
        )
        executor.add_node(node)
        while rclpy.ok():
            executor.spin_once(timeout_sec=0.1)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if node is not None:
            close = getattr(node, "close", None)
            if callable(close):
                close()
        if executor is not None:
            executor.shutdown(timeout_sec=2.0)
        if node is not None:
            node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
        for sig, handler in previous.items():  # a caller (a test, an embedding program) keeps its own
            signal.signal(sig, handler)
    return code
