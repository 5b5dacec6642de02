"""The live twin's ROS 2 interface: one place for topic and service names, joint names,
status/desync JSON, and every node's parameters (names, defaults, docs).

Nothing here imports rclpy; the node modules, :mod:`twin.live.graph`, the launch file and
the tests all read these constants, so a name is changed in one place.

Topics and services
-------------------
Real cell (hardware bridges)

``/joint_states`` (sensor_msgs/JointState), from ``franka_bridge``
    Names ``fr3_joint1..fr3_joint7`` + ``fr3_finger_joint1`` / ``fr3_finger_joint2`` (each
    finger's opening in m, the gripper width is their sum); position, velocity, effort;
    header stamp = the robot state's time. Same layout as the real-data schema
    (:mod:`twin.live.realdata`). Use :func:`pack_joints` / :func:`unpack_joints`.
``/twin/joint_commands`` (sensor_msgs/JointState), to ``franka_bridge``
    Joint position targets of the twin's (simulated) robot, same names and layout as
    ``/joint_states`` (7 arm joints + two fingers of width/2). The real arm follows them
    only while armed; stale commands (older than the bridge's ``command_timeout_s``) stop it.
``/franka_bridge/arm``, ``/franka_bridge/disarm`` (std_srvs/Trigger)
    The robot never moves unless armed. ``arm`` fails (success=False, message = reason)
    when not connected or in an error state.
``/franka_bridge/status`` (std_msgs/String)
    JSON of :class:`BridgeStatus`: ``{connected, armed, error, reason, mode}``; published on
    change and at least at 1 Hz.
``/<cam>/color/image_raw``, ``/<cam>/depth/image_rect_raw`` (sensor_msgs/Image),
``/<cam>/color/camera_info`` (sensor_msgs/CameraInfo), ``/<cam>/points`` (sensor_msgs/PointCloud2)
    From ``camera_bridge``, one set per camera name (same names as the real-data schema;
    see :func:`camera_topics`). rgb8 colour, 16UC1 depth in mm, PointCloud2 x, y, z + rgb.
``/objects/<name>/pose`` (geometry_msgs/PoseStamped)
    Object pose estimates (``object_tracker`` or any estimator), frame ``world`` (the twin's
    world frame, which is the robot base frame in every twin scene), header stamp = the
    camera frames' stamp. Published only while the object is tracked: a lost object gets no
    pose (never a stale one).
``/objects/status`` (std_msgs/String)
    JSON of :class:`ObjectTrackingStatus` from ``object_tracker``: per object ``tracked``,
    ``method`` (marker / icp), ``quality`` in [0, 1], ``error`` (+ ``error_unit``: px
    reprojection for markers, m inlier RMSE for registration), ``cameras``, and ``reason``
    when lost; plus the tracker's rate. twin_sync reports lost objects in ``/twin/desync``.

Twin (``twin_sync``)

``/twin/joint_states`` (sensor_msgs/JointState): the twin robot (same layout).
``/twin/objects/<name>/pose`` (geometry_msgs/PoseStamped): the twin's objects.
``/twin/<cam>/color/image_raw`` (sensor_msgs/Image, rgb8): twin renders at ``render_rate_hz``.
``/twin/desync`` (std_msgs/String): JSON of :class:`Desync`.
``/twin/lost`` (std_msgs/Bool): True while the twin has lost the real scene.

Policy (``policy_runner``)

``/twinrank/obs/<key>``, ``/twinrank/action`` (std_msgs/Float32MultiArray)
    What the policy was fed and what it returned at each control step, in the real-data
    schema's layout (``dim`` sizes give the shape).
``/twin/joint_commands``: the simulated robot's joints, published at ``command_rate_hz``.
``/policy_runner/start``, ``/policy_runner/stop`` (std_srvs/Trigger); ``/policy_runner/status``
    (std_msgs/String JSON ``{running, step, episode, success, done, reason, paused, lag_rad}``).

Recorder (``recorder``)

``/recorder/start_episode``, ``/recorder/end_episode_success``,
``/recorder/end_episode_failure``, ``/recorder/close_bag`` (std_srvs/Trigger);
``/recorder/status`` (std_msgs/String JSON ``{recording, episode, bag, messages, plan, ...}``;
``plan``: the real-trial plan's progress, see :mod:`twin.live.plan`).
Bags: rosbag2 MCAP written through :class:`twin.live.realdata.BagWriter`.

QoS
---
``/joint_states`` and ``/twin/joint_commands``: reliable, keep-last :data:`JOINT_QOS_DEPTH`
(1000: a depth of 10 drops messages at 1 kHz on a loaded machine) for publishers and for
subscribers that need every message (the recorder); twin_sync subscribes keep-last 5 (only
the newest state matters, and a deep queue turns a stall into stale input). Status and desync
topics: reliable, depth 10. Images / points: reliable, keep-last :data:`IMAGE_QOS_DEPTH` (a
reliable publisher matches reliable and best-effort subscribers alike).

Node parameters
---------------
:data:`NODE_PARAMETERS` maps each node name to its :class:`Param` list (name, default,
description). A node declares exactly these (``twin.live.common.declare_parameters``) and
:mod:`twin.live.graph` sets them; the hardware bridges read ``FRANKA_BRIDGE_PARAMS`` and
``CAMERA_BRIDGE_PARAMS``.

Node module convention
----------------------
Every node lives in ``twin/live/<executable>.py`` with ``create_node(cli_args=None) -> Node``
(the caller has called ``rclpy.init``; ``cli_args`` are ROS arguments such as
``["--ros-args", "-p", "rate:=5.0"]``) and ``main(argv=None)`` (init, spin, shutdown), so the
same node runs under ``ros2 launch``, as ``python -m twin.live.<executable>``, or in one
process with the others (:mod:`twin.live.runner`). ``twin.live.common.run_node`` is the
standard ``main``: it handles SIGINT/SIGTERM itself and calls ``node.close()`` (if any)
before the ROS context goes down.

High-rate topics: rclpy's executor costs ~0.5 ms of Python per callback, and a busy
subscription delays the node's timers (measured here: policy_runner's 100 Hz timer ran ~20x
slow while ``/joint_states`` arrived at 100 Hz as callbacks in the same node). twin_sync,
policy_runner and the recorder take ``/joint_states`` with
``twin.live.common.PolledSubscription`` from a timer instead.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

# ---- package / nodes ---------------------------------------------------------------------------
ROS_PACKAGE = "twin"
NODE_FRANKA_BRIDGE = "franka_bridge"
NODE_CAMERA_BRIDGE = "camera_bridge"
NODE_TWIN_SYNC = "twin_sync"
NODE_POLICY_RUNNER = "policy_runner"
NODE_RECORDER = "recorder"
NODE_OBJECT_TRACKER = "object_tracker"
NODES = (
    NODE_FRANKA_BRIDGE,
    NODE_CAMERA_BRIDGE,
    NODE_OBJECT_TRACKER,
    NODE_TWIN_SYNC,
    NODE_POLICY_RUNNER,
    NODE_RECORDER,
)

# ---- joints ------------------------------------------------------------------------------------
ROBOT_PREFIX = "fr3"
ARM_JOINTS = tuple(f"{ROBOT_PREFIX}_joint{i}" for i in range(1, 8))
FINGER_JOINTS = (f"{ROBOT_PREFIX}_finger_joint1", f"{ROBOT_PREFIX}_finger_joint2")
JOINT_NAMES = ARM_JOINTS + FINGER_JOINTS
#: FR3 joint velocity limits (rad/s, datasheet); bridges and the twin scale them down
FR3_MAX_JOINT_VELOCITY = (2.62, 2.62, 2.62, 2.62, 5.26, 4.18, 5.26)

# ---- topics ------------------------------------------------------------------------------------
TOPIC_JOINT_STATES = "/joint_states"
TOPIC_JOINT_COMMANDS = "/twin/joint_commands"
TOPIC_BRIDGE_STATUS = "/franka_bridge/status"
SRV_ARM = "/franka_bridge/arm"
SRV_DISARM = "/franka_bridge/disarm"

TOPIC_TWIN_JOINT_STATES = "/twin/joint_states"
TOPIC_DESYNC = "/twin/desync"
TOPIC_LOST = "/twin/lost"

OBS_PREFIX = "/twinrank/obs/"
TOPIC_ACTION = "/twinrank/action"
TOPIC_POLICY_STATUS = "/policy_runner/status"
SRV_POLICY_START = "/policy_runner/start"
SRV_POLICY_STOP = "/policy_runner/stop"

TOPIC_RECORDER_STATUS = "/recorder/status"
SRV_START_EPISODE = "/recorder/start_episode"
SRV_END_SUCCESS = "/recorder/end_episode_success"
SRV_END_FAILURE = "/recorder/end_episode_failure"
SRV_CLOSE_BAG = "/recorder/close_bag"

TOPIC_OBJECT_STATUS = "/objects/status"

JOINT_QOS_DEPTH = 1000
STATUS_QOS_DEPTH = 10
IMAGE_QOS_DEPTH = 5

# ROS 2 message types (rosidl names), for documentation and the graph description
T_JOINT_STATE = "sensor_msgs/msg/JointState"
T_IMAGE = "sensor_msgs/msg/Image"
T_CAMERA_INFO = "sensor_msgs/msg/CameraInfo"
T_POINTS = "sensor_msgs/msg/PointCloud2"
T_POSE = "geometry_msgs/msg/PoseStamped"
T_FLOATS = "std_msgs/msg/Float32MultiArray"
T_STRING = "std_msgs/msg/String"
T_BOOL = "std_msgs/msg/Bool"
T_TRIGGER = "std_srvs/srv/Trigger"


def color_topic(cam: str, prefix: str = "") -> str:
    return f"{prefix}/{cam}/color/image_raw"


def depth_topic(cam: str) -> str:
    return f"/{cam}/depth/image_rect_raw"


def camera_info_topic(cam: str) -> str:
    return f"/{cam}/color/camera_info"


def points_topic(cam: str) -> str:
    return f"/{cam}/points"


def camera_topics(cam: str) -> dict[str, str]:
    """The real-data schema's topics of one camera: color, depth, camera_info, points."""
    return {
        "color": color_topic(cam),
        "depth": depth_topic(cam),
        "camera_info": camera_info_topic(cam),
        "points": points_topic(cam),
    }


def object_pose_topic(name: str) -> str:
    """Observed pose of an object (estimator output)."""
    return f"/objects/{name}/pose"


def twin_object_pose_topic(name: str) -> str:
    """The twin's pose of an object (twin_sync output)."""
    return f"/twin/objects/{name}/pose"


def twin_color_topic(cam: str) -> str:
    """A twin camera render (twin_sync output)."""
    return color_topic(cam, prefix="/twin")


def obs_topic(key: str) -> str:
    return OBS_PREFIX + key


# ---- joint state packing ------------------------------------------------------------------------
class JointStateError(ValueError):
    """A JointState does not carry the Franka joints (names, sizes, finite values)."""


def pack_joints(q: Sequence[float], width: float) -> tuple[list[str], list[float]]:
    """Names and positions of a ``/joint_states``-style message: 7 arm joints + two fingers
    of ``width / 2`` each."""
    q = [float(v) for v in q]
    if len(q) != 7:
        raise JointStateError(f"pack_joints: {len(q)} arm joint values, expected 7")
    return list(JOINT_NAMES), [*q, float(width) / 2.0, float(width) / 2.0]


def unpack_joints(
    names: Sequence[str], positions: Sequence[float], *, require_gripper: bool = False
) -> tuple[list[float], float | None]:
    """(7 arm joint positions in ``fr3_joint1..7`` order, gripper width or None) from a
    JointState's ``name`` / ``position``. Raises :class:`JointStateError` naming what is wrong
    (missing or duplicate names, length mismatch, NaN/inf)."""
    names = list(names)
    pos = list(positions)
    if len(names) != len(pos):
        raise JointStateError(f"{len(names)} names but {len(pos)} positions")
    if len(set(names)) != len(names):
        raise JointStateError(f"duplicate joint names {sorted({n for n in names if names.count(n) > 1})}")
    index = {n: i for i, n in enumerate(names)}
    missing = [n for n in ARM_JOINTS if n not in index]
    if missing:
        raise JointStateError(f"missing arm joints {missing} (got {names}; expected {list(ARM_JOINTS)})")
    q = [float(pos[index[n]]) for n in ARM_JOINTS]
    fingers = [float(pos[index[n]]) for n in FINGER_JOINTS if n in index]
    if require_gripper and not fingers:
        raise JointStateError(f"missing finger joints {list(FINGER_JOINTS)}")
    bad = [n for n, v in zip(ARM_JOINTS, q) if not math.isfinite(v)]
    bad += [n for n, v in zip(FINGER_JOINTS, fingers) if not math.isfinite(v)]
    if bad:
        raise JointStateError(f"non-finite positions for {bad}")
    width = None if not fingers else (sum(fingers) if len(fingers) == 2 else 2.0 * fingers[0])
    return q, width


# ---- status JSON --------------------------------------------------------------------------------
@dataclass
class BridgeStatus:
    """``/franka_bridge/status``: ``mode`` is "idle" | "follow" | "stopped" | "recovering" |
    "fake" (free text allowed); ``reason`` says why the last state change happened."""

    connected: bool = False
    armed: bool = False
    error: bool = False
    reason: str = ""
    mode: str = "idle"

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> BridgeStatus:
        d = json.loads(text)
        known = {k: d[k] for k in ("connected", "armed", "error", "reason", "mode") if k in d}
        return cls(**known)


@dataclass
class Desync:
    """``/twin/desync``: how far the twin is from the real scene.

    ``joint_residual_rad``: max |twin arm joint before correction - real joint| at the last
    tick (how far the twin's physics prediction drifted since the previous measurement).
    ``object_residual_m``: per object, distance twin - latest observation before correction.
    ``message_age_s``: now - stamp of the latest accepted joint state (inf before the first).
    ``object_age_s``: per object, age of its latest observation.
    ``apply_latency_s``: receive-to-applied latency of the latest joint state (stamp to the
    tick that applied it). ``lost``: joint-state age, joint residual, or the residual of an
    object with a fresh observation above the node's thresholds (held for ``lost_hold_s``);
    ``reasons`` says which. ``rejected``: count of rejected messages per
    reason (``nan``, ``names``, ``out_of_order``, ``stale``, ``pose``).
    """

    joint_residual_rad: float = 0.0
    object_residual_m: dict[str, float] = field(default_factory=dict)
    message_age_s: float = math.inf
    object_age_s: dict[str, float] = field(default_factory=dict)
    apply_latency_s: float = math.nan
    lost: bool = True
    reasons: list[str] = field(default_factory=list)
    rejected: dict[str, int] = field(default_factory=dict)
    ticks: int = 0
    applied: int = 0
    object_lost: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> str:
        def enc(v: Any) -> Any:
            if isinstance(v, float) and not math.isfinite(v):
                return None  # JSON has no inf/nan
            if isinstance(v, dict):
                return {k: enc(x) for k, x in v.items()}
            return v

        return json.dumps({k: enc(v) for k, v in asdict(self).items()})

    @classmethod
    def from_json(cls, text: str) -> Desync:
        d = json.loads(text)
        out = cls()
        for k in ("joint_residual_rad", "message_age_s", "apply_latency_s"):
            if k in d:
                setattr(
                    out,
                    k,
                    math.inf if d[k] is None and k == "message_age_s" else (math.nan if d[k] is None else float(d[k])),
                )
        for k in ("object_residual_m", "object_age_s"):
            out.__dict__[k] = {n: (math.inf if v is None else float(v)) for n, v in (d.get(k) or {}).items()}
        out.lost = bool(d.get("lost", True))
        out.reasons = list(d.get("reasons", []))
        out.rejected = {k: int(v) for k, v in (d.get("rejected") or {}).items()}
        out.ticks = int(d.get("ticks", 0))
        out.applied = int(d.get("applied", 0))
        out.object_lost = {str(k): str(v) for k, v in (d.get("object_lost") or {}).items()}
        return out


@dataclass
class ObjectTrackingStatus:
    """``/objects/status``: ``objects`` maps each tracked object to
    :meth:`twin.live.tracking.ObjectStatus.to_dict` (``tracked``, ``method``, ``quality``,
    ``error``, ``error_unit``, ``cameras``, ``reason``, ``stamp``); ``rate_hz`` is the
    tracker's achieved update rate, ``seconds`` the last update's wall time, ``cameras``
    per camera the age (s) of its newest frame set, or the reason it has none."""

    objects: dict[str, dict[str, Any]] = field(default_factory=dict)
    rate_hz: float = 0.0
    seconds: float = 0.0
    updates: int = 0
    cameras: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ObjectTrackingStatus:
        d = json.loads(text)
        return cls(
            objects=dict(d.get("objects") or {}),
            rate_hz=float(d.get("rate_hz") or 0.0),
            seconds=float(d.get("seconds") or 0.0),
            updates=int(d.get("updates") or 0),
            cameras=dict(d.get("cameras") or {}),
        )


# ---- parameters ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Param:
    """One ROS parameter: ``default`` fixes its type (bool, int, float or str; lists are
    comma-separated strings)."""

    name: str
    default: Any
    description: str

    @property
    def type(self) -> type:
        return type(self.default)


FRANKA_BRIDGE_PARAMS = (
    Param("robot_ip", "172.16.0.2", "IP of the Franka controller (FCI); 127.0.0.1 with franka-sim."),
    Param("use_fake_hardware", False, "Talk to franka-sim on loopback instead of a real arm."),
    Param("publish_rate_hz", 1000.0, "/joint_states publish rate."),
    Param("command_timeout_s", 0.1, "Watchdog: stop the arm when /twin/joint_commands are older than this."),
    Param("connect_timeout_s", 5.0, "Give up connecting to the robot after this long (franky has no timeout)."),
    Param("max_joint_velocity_scale", 0.3, "Fraction of the Franka joint velocity limits used when following."),
    Param("auto_recover", True, "Recover automatically from reflex errors (logged with their reason)."),
    Param(
        "reuse_simulator",
        False,
        "With use_fake_hardware: use a simulator already listening on port 1337 "
        "(e.g. one left from another run) instead of refusing to start.",
    ),
)

CAMERA_BRIDGE_PARAMS = (
    Param("cameras", "", "Comma-separated cameras, each 'name' or 'name=serial' (topics /<name>/...)."),
    Param("use_fake_hardware", False, "Use a pyrealsense2 software device instead of real cameras."),
    Param("width", 640, "Colour/depth image width."),
    Param("height", 480, "Colour/depth image height."),
    Param("fps", 30, "Camera frame rate."),
    Param("publish_points", True, "Publish /<cam>/points (PointCloud2)."),
    Param("fake_task", "reach", "With use_fake_hardware: the twin task whose cameras are rendered."),
    Param(
        "fake_seed",
        0,
        "With use_fake_hardware: the rendered cell is the task reset at this seed (twin_sync's twin "
        "is reset at 0, so another seed puts the objects where the twin does not have them).",
    ),
    Param("fake_markers", False, "With use_fake_hardware: the rendered cell carries the fiducial tags (markers)."),
)

TWIN_SYNC_PARAMS = (
    Param("task", "reach", "Twin task (scene) to keep in step with the real cell."),
    Param("objects", "", "Comma-separated tracked objects (/objects/<name>/pose); empty = the task's objects."),
    Param("sync_rate_hz", 100.0, "Twin update (tick) rate: joints applied, objects corrected, state published."),
    Param("simulate_physics", True, "Step the twin's physics between ticks (robot pinned to the real joints)."),
    Param("object_gain", 0.2, "Fraction of the object pose error corrected per tick (1 = snap)."),
    Param("joint_lost_threshold_rad", 0.1, "Joint residual above which the twin is lost."),
    Param("object_lost_threshold_m", 0.05, "Object residual above which the twin is lost."),
    Param("stale_timeout_s", 0.5, "Joint states older than this (by header stamp) are rejected / mean lost."),
    Param("lost_hold_s", 0.5, "Keep reporting lost this long after the condition clears."),
    Param("render_rate_hz", 2.0, "Twin camera render rate (0 = no renders)."),
    Param("render_cameras", "", "Comma-separated twin cameras to render; empty = all scene cameras."),
    Param("render_width", 160, "Render width in pixels."),
    Param("render_height", 120, "Render height in pixels."),
    Param("desync_rate_hz", 10.0, "/twin/desync and /twin/lost publish rate."),
    Param(
        "poll_joint_states",
        True,
        "Take /joint_states in the sync tick (newest 5 queued) instead of one "
        "executor callback per message: far less CPU at 1 kHz.",
    ),
)

OBJECT_TRACKER_PARAMS = (
    Param("task", "reach", "Twin task whose scene describes the objects (meshes, tags) and the cameras' poses."),
    Param("objects", "", "Comma-separated objects to track; empty = the task's objects."),
    Param("cameras", "", "Comma-separated cameras (camera_bridge names, /<cam>/color/...) to track with."),
    Param(
        "methods",
        "auto",
        "Tracking method: auto | marker | icp, for all objects or per object (box=marker,mug=icp). "
        "auto: the scene's tags when one is seen, else registration on depth.",
    ),
    Param("markers", False, "The cell carries fiducial tags where twin.fiducials.with_markers puts them."),
    Param("rate_hz", 10.0, "Tracking updates per second (each uses the newest frame set of every camera)."),
    Param("frame_timeout_s", 1.0, "Frames older than this are not used (the camera is reported stale)."),
    Param(
        "extrinsics",
        "",
        "Camera poses file from `twinrank live calibrate-camera` (YAML/JSON); empty = the twin scene's cameras.",
    ),
    Param("exclude_robot", True, "Leave out depth points on the robot (its surface at the latest /joint_states)."),
    Param("status_rate_hz", 2.0, "/objects/status rate (also published after every update that changes it)."),
)

POLICY_RUNNER_PARAMS = (
    Param("task", "reach", "Task the checkpoint was trained for; its twin runs the policy."),
    Param("checkpoint", "", "Policy checkpoint folder (or manifest.json)."),
    Param("device", "cpu", "Torch device of the policy."),
    Param("control_rate_hz", 0.0, "Policy rate; 0 = the task's control rate (1 / control_dt)."),
    Param("command_rate_hz", 100.0, "/twin/joint_commands rate (the control step's physics is split into chunks)."),
    Param("realtime", True, "Pace the twin in real time (False: as fast as possible, tests/replay)."),
    Param("autostart", False, "Start an episode as soon as the node is up."),
    Param("seed", 0, "Seed of the first episode (incremented per episode)."),
    Param("objects", "", "Comma-separated objects to take from /objects/<name>/pose; empty = the task's objects."),
    Param("object_gain", 0.1, "Per control step correction of twin objects toward observations (start snaps)."),
    Param("sync_robot_at_start", True, "Start the twin robot at the latest /joint_states (no jump on arming)."),
    Param("max_steps", 0, "Stop after this many control steps; 0 = the task's max_steps."),
    Param(
        "max_joint_velocity_scale",
        0.25,
        "The twin robot's joints move at most this fraction of the FR3 "
        "velocity limits (its actuator targets are slewed), so the real arm "
        "can follow; keep it below franka_bridge's scale. 0 = no limit.",
    ),
    Param(
        "max_lag_rad",
        0.2,
        "Pause the twin while the real arm lags its commands by more than this "
        "(keep it below franka_bridge's max_target_jump_rad); 0 = never pause.",
    ),
    Param("lag_timeout_s", 10.0, "Stop the episode when the twin has been paused this long (arm not following)."),
)

RECORDER_PARAMS = (
    Param("bag_dir", "recordings", "Folder for bags (one bag per recorder session, or per episode)."),
    Param("bag_prefix", "real", "Bag folder name prefix (<prefix>_<YYYYmmdd-HHMMSS>)."),
    Param("task", "reach", "Task written to the bag meta and episode events."),
    Param("domain", "real", "Bag domain: real | proxy-real | sim."),
    Param("robot", "fr3", "Robot joint prefix: fr3 | panda."),
    Param("bag_per_episode", False, "Close the bag after each episode (next episode opens a new one)."),
    Param("obs_keys", "state,proprio", "Observation keys recorded from /twinrank/obs/<key> (others are discovered)."),
    Param("objects", "", "Objects recorded from /objects/<name>/pose (others are discovered)."),
    Param("cameras", "", "Cameras recorded (colour, depth, info, points) when record_images is true."),
    Param("record_images", False, "Record camera images, depth and point clouds."),
    Param("discover_period_s", 1.0, "How often new /twinrank/obs/* and /objects/*/pose topics are looked for."),
    Param("compress", False, "zstd-compress MCAP chunks."),
    Param(
        "poll_joint_states",
        True,
        "Take /joint_states in batches (every 20 ms, with DDS receive times) "
        "instead of one executor callback per message: far less CPU at 1 kHz.",
    ),
    Param(
        "plan_file",
        "",
        "Real-trial plan (CSV from `twinrank plan-real`, twin.live.plan): each episode is tagged "
        "with the next planned trial's checkpoint; ended success/failure advances the plan, and "
        "start_episode is refused once it is complete. Empty: no plan.",
    ),
    Param(
        "plan_start",
        0,
        "Index (0-based) of the first plan trial to run: resume a plan after a restart "
        "(the recorder's replies and status give the value).",
    ),
    Param(
        "checkpoint",
        "",
        "Without a plan: tag every episode with this checkpoint label (plan_file wins when both are set).",
    ),
)

NODE_PARAMETERS: dict[str, tuple[Param, ...]] = {
    NODE_FRANKA_BRIDGE: FRANKA_BRIDGE_PARAMS,
    NODE_CAMERA_BRIDGE: CAMERA_BRIDGE_PARAMS,
    NODE_OBJECT_TRACKER: OBJECT_TRACKER_PARAMS,
    NODE_TWIN_SYNC: TWIN_SYNC_PARAMS,
    NODE_POLICY_RUNNER: POLICY_RUNNER_PARAMS,
    NODE_RECORDER: RECORDER_PARAMS,
}


def split_list(text: str) -> list[str]:
    """'a, b,,c' -> ['a', 'b', 'c'] (comma-separated list parameters)."""
    return [s.strip() for s in str(text).split(",") if s.strip()]


def parse_cameras(text: str) -> list[tuple[str, str]]:
    """'cam_left=123,cam_right' -> [('cam_left', '123'), ('cam_right', '')]."""
    out = []
    for item in split_list(text):
        name, _, serial = item.partition("=")
        out.append((name.strip(), serial.strip()))
    return out


__all__ = [
    n
    for n in dir()
    if not n.startswith("_")
    and n not in ("annotations", "json", "math", "asdict", "dataclass", "field", "Any", "Sequence")
]
