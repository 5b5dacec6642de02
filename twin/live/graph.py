"""The live twin's node graph, described once.

:func:`live_graph` returns the nodes to start (:class:`NodeDesc`: name, executable, parameter
values, topic remaps) for a set of launch arguments (:data:`LAUNCH_ARGUMENTS`). Two things
build on it and nothing else defines the graph:

- ``launch/live.launch.py`` (``ros2 launch twin live.launch.py robot_ip:=... cameras:=...``)
  declares every :data:`LAUNCH_ARGUMENTS` entry and turns each :class:`NodeDesc` into a
  ``launch_ros.actions.Node``;
- :mod:`twin.live.runner` starts the same nodes with plain rclpy (one process with a
  MultiThreadedExecutor, or one subprocess per node), which is what the tests and
  ``twinrank live run`` use.

Every argument that can be checked before a node starts is checked here (:func:`live_graph`
for launch arguments, :meth:`NodeDesc.validate` for node parameters, which
:class:`~twin.live.runner.GraphRunner` calls for every node before it starts any): task names
(``twin.tasks``), checkpoint folders and their manifest (and the task they were trained for),
tracked objects and fake-camera names against the task's scene, camera serial formats,
numeric ranges, the torch device, the robot IP, topic names. A bad value raises
:class:`GraphError` with one line naming the argument and the fix.

This module does not import rclpy or launch.
"""

from __future__ import annotations

import ipaddress
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twin.live.interfaces import (
    NODE_CAMERA_BRIDGE,
    NODE_FRANKA_BRIDGE,
    NODE_OBJECT_TRACKER,
    NODE_PARAMETERS,
    NODE_POLICY_RUNNER,
    NODE_RECORDER,
    NODE_TWIN_SYNC,
    ROS_PACKAGE,
    TOPIC_JOINT_STATES,
    Param,
    parse_cameras,
    split_list,
)


class GraphError(ValueError):
    """Invalid launch arguments or node description."""


# ---- launch arguments -----------------------------------------------------------------------
@dataclass(frozen=True)
class LaunchArg:
    """A launch argument: ``default`` is the string ``ros2 launch`` sees; ``type`` converts it."""

    name: str
    default: str
    description: str
    type: type = str

    def parse(self, text: Any) -> Any:
        return _convert(text, self.type, self.name)

    @property
    def typed_default(self) -> Any:
        return self.parse(self.default)


def _convert(value: Any, kind: type, name: str) -> Any:
    if kind is bool:
        if isinstance(value, bool):
            return value
        s = str(value).strip().lower()
        if s in ("true", "1", "yes", "on"):
            return True
        if s in ("false", "0", "no", "off"):
            return False
        raise GraphError(f"launch argument {name}:={value!r} is not a bool; use true or false")
    if kind in (int, float):
        try:
            v = float(value)
        except (TypeError, ValueError):
            raise GraphError(f"launch argument {name}:={value!r} is not a number") from None
        if kind is int:
            if v != int(v):
                raise GraphError(f"launch argument {name}:={value!r} is not an integer")
            return int(v)
        return v
    return "" if value is None else str(value)


LAUNCH_ARGUMENTS: tuple[LaunchArg, ...] = (
    LaunchArg(
        "robot_ip",
        "172.16.0.2",
        "IP of the Franka controller (FCI). Ignored with use_fake_hardware:=true (franka-sim on 127.0.0.1).",
    ),
    LaunchArg(
        "use_fake_hardware",
        "false",
        "Run against franka-sim on loopback and a pyrealsense2 software device instead of the real arm and cameras.",
        bool,
    ),
    LaunchArg(
        "cameras",
        "",
        "Comma-separated RealSense cameras, each name or name=serial (topics "
        "/<name>/color/image_raw ...). Empty: no camera_bridge. Use the twin's camera "
        "names (cam_left, cam_right) so renders and images correspond.",
    ),
    LaunchArg(
        "task",
        "reach",
        "Twin task (scene, objects, control rate) for twin_sync, policy_runner and the recorder's episode events.",
    ),
    LaunchArg(
        "checkpoint", "", "Policy checkpoint folder run inside the twin by policy_runner. Empty: no policy_runner."
    ),
    LaunchArg("objects", "", "Comma-separated tracked objects (/objects/<name>/pose). Empty: the task's objects."),
    LaunchArg(
        "hardware",
        "true",
        "Start franka_bridge (and camera_bridge when cameras is set). false: "
        "/joint_states etc. come from elsewhere (another driver, a bag replay).",
        bool,
    ),
    LaunchArg(
        "joint_states_topic",
        TOPIC_JOINT_STATES,
        "Topic of the real robot's joint states (remapped on every node that uses /joint_states).",
    ),
    LaunchArg("joint_state_rate_hz", "1000.0", "franka_bridge /joint_states rate.", float),
    LaunchArg(
        "command_timeout_s",
        "0.1",
        "franka_bridge watchdog: stop the arm when twin joint commands are older than this.",
        float,
    ),
    LaunchArg("sync_rate_hz", "100.0", "twin_sync update rate.", float),
    LaunchArg("object_gain", "0.2", "twin_sync: fraction of the object pose error corrected per update.", float),
    LaunchArg("render_rate_hz", "2.0", "twin_sync camera render rate (0: no renders).", float),
    LaunchArg("render_size", "160x120", "twin_sync render size WIDTHxHEIGHT."),
    LaunchArg(
        "autostart_policy",
        "false",
        "policy_runner starts an episode as soon as it is up (otherwise call /policy_runner/start).",
        bool,
    ),
    LaunchArg("policy_device", "cpu", "Torch device of the policy (cpu, cuda, cuda:0...)."),
    LaunchArg("record", "true", "Start the recorder (episodes via /recorder/start_episode).", bool),
    LaunchArg("bag_dir", "recordings", "Folder for the recorder's rosbag2 MCAP bags."),
    LaunchArg("record_images", "false", "Also record camera images, depth and point clouds.", bool),
    LaunchArg(
        "plan_file",
        "",
        "Real-trial plan the recorder follows (plan.csv of `twinrank plan-real`): each episode names its checkpoint.",
    ),
    LaunchArg(
        "track_objects",
        "true",
        "Start object_tracker when cameras is set and the task has objects: /objects/<name>/pose from the "
        "cameras' colour + depth, so the twin's objects follow the real ones.",
        bool,
    ),
    LaunchArg(
        "tracking_methods",
        "auto",
        "object_tracker method: auto | marker | icp, or per object (box=marker,mug=icp). auto: fiducial "
        "tags when the scene has them and one is seen, else model-based registration on depth.",
    ),
    LaunchArg(
        "markers",
        "false",
        "The cell's objects carry AprilTags where twin.fiducials.with_markers places them (`twinrank live "
        "markers` writes the printable tags); with use_fake_hardware the fake cameras render them.",
        bool,
    ),
    LaunchArg(
        "camera_extrinsics",
        "",
        "Camera poses for object_tracker: the camera_calibration.yaml files of `twinrank live calibrate-camera`, "
        "comma-separated. Empty: the twin scene's cameras.",
    ),
    LaunchArg("tracking_rate_hz", "10.0", "object_tracker update rate.", float),
    LaunchArg(
        "fake_seed",
        "0",
        "With use_fake_hardware: the fake cameras show the task's cell reset at this seed (the twin starts "
        "at seed 0, so another seed puts the objects where the twin does not have them).",
        int,
    ),
    LaunchArg(
        "reuse_simulator",
        "false",
        "With use_fake_hardware:=true: use a franka-sim already listening on "
        "127.0.0.1:1337 (e.g. left from another run). false: franka_bridge refuses "
        "to start and names the process holding the port.",
        bool,
    ),
)

LAUNCH_DEFAULTS: dict[str, Any] = {a.name: a.typed_default for a in LAUNCH_ARGUMENTS}


def launch_argument(name: str) -> LaunchArg:
    for a in LAUNCH_ARGUMENTS:
        if a.name == name:
            return a
    raise GraphError(f"unknown launch argument {name!r}; known: {', '.join(a.name for a in LAUNCH_ARGUMENTS)}")


def parse_launch_arguments(values: dict[str, Any]) -> dict[str, Any]:
    """Typed values for :func:`live_graph` from strings (as ``ros2 launch`` passes them)."""
    return {k: launch_argument(k).parse(v) for k, v in values.items()}


# ---- validation -----------------------------------------------------------------------------
_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}"
    r"[A-Za-z0-9])?)*$"
)
_SERIAL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{2,63}$")  # RealSense: 12 digits (D4xx); software devices: names
_DEVICE = re.compile(r"^(cpu|mps|cuda(:\d+)?)$")
_TOPIC = re.compile(r"^(/[A-Za-z_][A-Za-z0-9_]*)+$")
_ROS_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


def check_range(
    what: str, value: float, lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False, why: str = ""
) -> None:
    """Raise :class:`GraphError` unless ``value`` is a finite number in the interval."""
    ok = math.isfinite(value) and (value > lo if lo_open else value >= lo) and (value < hi if hi_open else value <= hi)
    if not ok:
        interval = f"{'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
        raise GraphError(f"{what}={value!r} is out of range: use a value in {interval}" + (f" ({why})" if why else ""))


def check_task(what: str, name: str) -> None:
    from twin.tasks import list_tasks

    known = list_tasks()
    if name not in known:
        raise GraphError(f"{what}:={name!r} is not a twin task; use one of {', '.join(known)}")


def check_checkpoint(what: str, path: str, task: str | None = None) -> None:
    """The checkpoint folder (or its manifest.json) exists, its manifest is valid and, given
    ``task``, it was trained for that task."""
    p = Path(path).expanduser()
    if not p.exists():
        raise GraphError(
            f"{what}:={path!r} does not exist; pass a checkpoint folder (with manifest.json and model.safetensors)"
        )
    if p.is_dir() and not (p / "manifest.json").is_file():
        raise GraphError(
            f"{what}:={path!r} has no manifest.json; pass a checkpoint folder written by twinrank "
            f"(e.g. outputs/train/<run>/checkpoints/step_<n>)"
        )
    from policies.checkpoint import read_manifest

    try:
        manifest = read_manifest(p)
    except ValueError as exc:
        raise GraphError(f"{what}:={path!r}: {' '.join(str(exc).split())}") from None
    trained = str(manifest.get("task", ""))
    if task is not None and trained and trained != task:
        raise GraphError(f"{what}:={path!r} was trained for task {trained!r}, not {task!r}; pass task:={trained}")


def _scene(task: str) -> Any:
    from twin.tasks import get_task_class

    return get_task_class(task).default_cfg().scene


def _task_objects(task: str) -> list[str]:
    from twin.tasks import make_task

    return list(make_task(task).object_names)


def check_objects(what: str, objects: str, task: str) -> None:
    names = split_list(objects)
    if not names:
        return
    bodies = [b.name for b in _scene(task).iter_bodies()]
    unknown = [n for n in names if n not in bodies]
    if unknown:
        raise GraphError(
            f"{what}: {unknown} are not bodies of task {task!r}'s scene; use some of "
            f"{', '.join(bodies)} (or leave it empty for the task's objects)"
        )


def check_cameras(what: str, text: str, fake: bool = False, task: str = "") -> list[tuple[str, str]]:
    """Parsed ``name[=serial],...``: ROS-name camera names, unique names and serials, serials in
    a device serial format; with fake hardware, names of the task's scene cameras."""
    cams = parse_cameras(text)
    names = [n for n, _ in cams]
    bad = [n for n in names if not _ROS_NAME.match(n)]
    if bad:
        raise GraphError(f"{what}: camera names {bad} are not valid ROS names (a letter, then letters, digits, '_')")
    for kind, items in (("names", names), ("serials", [sn for _, sn in cams if sn])):
        dup = sorted({x for x in items if items.count(x) > 1})
        if dup:
            raise GraphError(f"{what}: duplicate camera {kind} {dup}; give each camera once")
    bad = [sn for _, sn in cams if sn and not _SERIAL.match(sn)]
    if bad:
        raise GraphError(
            f"{what}: serials {bad} are not device serial numbers (3-64 letters, digits, '-', '_'; a "
            f"RealSense D4xx serial is 12 digits, see `rs-enumerate-devices`)"
        )
    if fake and task and names:
        scene_cams = [c.name for c in _scene(task).cameras]
        unknown = [n for n in names if n not in scene_cams]
        if unknown:
            raise GraphError(
                f"{what}: with use_fake_hardware:=true the cameras render the twin's cameras of the "
                f"same name, and task {task!r} has no {unknown}; use {', '.join(scene_cams)}"
            )
    return cams


def check_host(what: str, text: str) -> None:
    try:
        ipaddress.ip_address(text)
        return
    except ValueError:
        pass
    if re.fullmatch(r"[0-9.]+", text) or not _HOSTNAME.match(text):
        raise GraphError(f"{what}:={text!r} is not an IP address or host name; pass the FCI address, e.g. 172.16.0.2")


def check_device(what: str, text: str) -> None:
    if not _DEVICE.match(text):
        raise GraphError(f"{what}:={text!r} is not a torch device; use cpu, cuda, cuda:<index> or mps")


def check_topic(what: str, text: str) -> None:
    if not text.startswith("/"):
        raise GraphError(f"{what} {text!r} must be absolute (start with '/')")
    if not _TOPIC.match(text):
        raise GraphError(
            f"{what} {text!r} is not a valid ROS topic name (/segments of letters, digits, '_', each "
            f"starting with a letter or '_')"
        )


#: (node executable, parameter) -> (low, high, low open, high open, why); checked by NodeDesc.validate
PARAM_RANGES: dict[tuple[str, str], tuple[float, float, bool, bool, str]] = {
    (NODE_FRANKA_BRIDGE, "publish_rate_hz"): (0.0, 1000.0, True, False, "the FCI sends 1000 states/s"),
    (NODE_FRANKA_BRIDGE, "command_timeout_s"): (0.0, 2.0, True, False, "the arm follows stale targets this long"),
    (NODE_FRANKA_BRIDGE, "connect_timeout_s"): (0.0, 600.0, True, False, ""),
    (NODE_FRANKA_BRIDGE, "max_joint_velocity_scale"): (0.0, 1.0, True, False, "a fraction of the FR3 limits"),
    (NODE_CAMERA_BRIDGE, "width"): (1, 4096, False, False, ""),
    (NODE_CAMERA_BRIDGE, "height"): (1, 4096, False, False, ""),
    (NODE_CAMERA_BRIDGE, "fps"): (1, 300, False, False, ""),
    (NODE_TWIN_SYNC, "sync_rate_hz"): (0.0, 1000.0, True, False, ""),
    (NODE_TWIN_SYNC, "object_gain"): (0.0, 1.0, False, False, "the fraction corrected per tick"),
    (NODE_TWIN_SYNC, "joint_lost_threshold_rad"): (0.0, math.inf, True, True, ""),
    (NODE_TWIN_SYNC, "object_lost_threshold_m"): (0.0, math.inf, True, True, ""),
    (NODE_TWIN_SYNC, "stale_timeout_s"): (0.0, math.inf, True, True, ""),
    (NODE_TWIN_SYNC, "lost_hold_s"): (0.0, math.inf, False, True, ""),
    (NODE_TWIN_SYNC, "render_rate_hz"): (0.0, 60.0, False, False, "0 turns renders off"),
    (NODE_TWIN_SYNC, "render_width"): (8, 4096, False, False, ""),
    (NODE_TWIN_SYNC, "render_height"): (8, 4096, False, False, ""),
    (NODE_TWIN_SYNC, "desync_rate_hz"): (0.0, 1000.0, True, False, ""),
    (NODE_POLICY_RUNNER, "control_rate_hz"): (0.0, 1000.0, False, False, "0 = the task's control rate"),
    (NODE_POLICY_RUNNER, "command_rate_hz"): (0.0, 1000.0, True, False, ""),
    (NODE_POLICY_RUNNER, "object_gain"): (0.0, 1.0, False, False, ""),
    (NODE_POLICY_RUNNER, "max_steps"): (0, math.inf, False, True, "0 = the task's max_steps"),
    (NODE_POLICY_RUNNER, "max_joint_velocity_scale"): (0.0, 1.0, False, False, "0 = no limit"),
    (NODE_POLICY_RUNNER, "max_lag_rad"): (0.0, math.inf, False, True, "0 = never pause"),
    (NODE_POLICY_RUNNER, "lag_timeout_s"): (0.0, math.inf, True, True, ""),
    (NODE_RECORDER, "discover_period_s"): (0.0, math.inf, True, True, ""),
    (NODE_OBJECT_TRACKER, "rate_hz"): (0.0, 100.0, True, False, ""),
    (NODE_OBJECT_TRACKER, "frame_timeout_s"): (0.0, math.inf, True, True, ""),
    (NODE_OBJECT_TRACKER, "status_rate_hz"): (0.0, 100.0, True, False, ""),
}
PARAM_CHOICES: dict[tuple[str, str], tuple[str, ...]] = {
    (NODE_RECORDER, "domain"): ("real", "proxy-real", "sim"),
    (NODE_RECORDER, "robot"): ("fr3", "panda"),
}


def _check_node_values(name: str, executable: str, params: dict[str, Any]) -> None:
    """Value checks of one node's parameters (types are checked by :meth:`NodeDesc.validate`)."""
    for k, v in params.items():
        what = f"node {name}: parameter {k}"
        bounds = PARAM_RANGES.get((executable, k))
        if bounds is not None:
            lo, hi, lo_open, hi_open, why = bounds
            check_range(what, float(v), lo, hi, lo_open=lo_open, hi_open=hi_open, why=why)
        choices = PARAM_CHOICES.get((executable, k))
        if choices is not None and v not in choices:
            raise GraphError(f"{what}={v!r}: use one of {', '.join(choices)}")
    task = params.get("task")
    if task is not None:
        check_task(f"node {name}: parameter task", task)
    if executable == NODE_CAMERA_BRIDGE:
        fake_task = params.get("fake_task", "")
        if fake_task:
            check_task(f"node {name}: parameter fake_task", fake_task)
        check_cameras(
            f"node {name}: parameter cameras",
            params.get("cameras", ""),
            bool(params.get("use_fake_hardware")),
            fake_task,
        )
    if executable == NODE_FRANKA_BRIDGE and "robot_ip" in params:
        check_host(f"node {name}: parameter robot_ip", params["robot_ip"])
    if executable == NODE_POLICY_RUNNER:
        if params.get("checkpoint"):
            check_checkpoint(f"node {name}: parameter checkpoint", params["checkpoint"], task)
        if "device" in params:
            check_device(f"node {name}: parameter device", params["device"])
    if executable in (NODE_TWIN_SYNC, NODE_POLICY_RUNNER, NODE_OBJECT_TRACKER) and params.get("objects") and task:
        check_objects(f"node {name}: parameter objects", params["objects"], task)
    if executable == NODE_OBJECT_TRACKER:
        check_tracking(name, params)


def check_tracking(name: str, params: dict[str, Any]) -> None:
    """object_tracker's cameras, objects, methods (against the scene, with or without tags)
    and extrinsics file."""
    from twin.live.tracking import ObjectTracker, TrackingError, cell_task_cfg

    cams = split_list(params.get("cameras", ""))
    if not cams:
        raise GraphError(f"node {name}: parameter cameras is empty; name the cameras to track with")
    ext = params.get("extrinsics", "")
    calibrated: set[str] = set()
    if ext:
        from twin.live.tracking import load_extrinsics

        try:
            calibrated = set(load_extrinsics(ext))
        except ValueError as exc:
            raise GraphError(f"node {name}: {exc}") from None
    scene_cams = [c.name for c in _scene(params["task"]).cameras]
    unknown = [c for c in cams if c not in scene_cams and c not in calibrated]
    if unknown:
        raise GraphError(
            f"node {name}: cameras {unknown} are not cameras of task {params['task']!r}'s scene "
            f"({', '.join(scene_cams)}) nor calibrated, so their poses are unknown; use scene names or "
            f"pass camera_extrinsics"
        )
    objects = split_list(params.get("objects", "")) or _task_objects(params["task"]) or None
    try:
        scene = cell_task_cfg(params["task"], bool(params.get("markers"))).scene
        ObjectTracker.check(scene, objects, params.get("methods", "auto"))
    except TrackingError as exc:
        raise GraphError(f"node {name}: {exc}") from None


def validate_launch_arguments(a: dict[str, Any]) -> None:
    """Check typed launch arguments (all of :data:`LAUNCH_ARGUMENTS`); :class:`GraphError` names
    the first bad one and the fix."""
    check_task("task", a["task"])
    if not a["use_fake_hardware"]:
        check_host("robot_ip", a["robot_ip"])
    check_cameras("cameras", a["cameras"], bool(a["use_fake_hardware"]) and bool(a["hardware"]), a["task"])
    if a["checkpoint"]:
        check_checkpoint("checkpoint", a["checkpoint"], a["task"])
    check_objects("objects", a["objects"], a["task"])
    check_topic("joint_states_topic", a["joint_states_topic"] or TOPIC_JOINT_STATES)
    check_range(
        "joint_state_rate_hz", a["joint_state_rate_hz"], 0.0, 1000.0, lo_open=True, why="the FCI sends 1000 states/s"
    )
    check_range(
        "command_timeout_s",
        a["command_timeout_s"],
        0.0,
        2.0,
        lo_open=True,
        why="the arm follows stale targets this long",
    )
    check_range("sync_rate_hz", a["sync_rate_hz"], 0.0, 1000.0, lo_open=True)
    check_range("object_gain", a["object_gain"], 0.0, 1.0, why="the fraction corrected per update")
    check_range("render_rate_hz", a["render_rate_hz"], 0.0, 60.0, why="0 turns renders off")
    check_device("policy_device", a["policy_device"])
    bag = Path(a["bag_dir"]).expanduser()
    if a["record"] and bag.exists() and not bag.is_dir():
        raise GraphError(f"bag_dir:={a['bag_dir']!r} is a file; pass a folder for the recorder's bags")
    if a["record"] and a["plan_file"] and not Path(a["plan_file"]).expanduser().is_file():
        raise GraphError(
            f"plan_file:={a['plan_file']!r} does not exist; pass the plan.csv `twinrank plan-real` wrote (or leave it empty)"
        )
    for f in split_list(a["camera_extrinsics"]):
        if not Path(f).expanduser().is_file():
            raise GraphError(
                f"camera_extrinsics: {f!r} does not exist; pass the camera_calibration.yaml files `twinrank live "
                f"calibrate-camera` wrote, comma-separated (or leave it empty for the scene's camera poses)"
            )
    check_range("tracking_rate_hz", a["tracking_rate_hz"], 0.0, 100.0, lo_open=True)
    if a["record"] and a["record_images"] and not a["cameras"]:
        raise GraphError(
            "record_images:=true but cameras is empty: there are no images to record; set cameras:=... "
            "or record_images:=false"
        )


# ---- nodes ----------------------------------------------------------------------------------
def _fmt_param(value: Any) -> str:
    """A ``-p name:=value`` value that YAML parses back to the same type."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    return "'" + str(value).replace("'", "''") + "'"


@dataclass
class NodeDesc:
    """One node of the graph: a ``twin`` package executable (= module ``twin.live.<executable>``),
    its parameter values and topic remaps (``(from, to)``)."""

    name: str
    executable: str
    parameters: dict[str, Any] = field(default_factory=dict)
    remaps: tuple[tuple[str, str], ...] = ()
    description: str = ""
    package: str = ROS_PACKAGE

    @property
    def module(self) -> str:
        return f"twin.live.{self.executable}"

    @property
    def param_specs(self) -> tuple[Param, ...]:
        return NODE_PARAMETERS.get(self.executable, ())

    def validate(self) -> None:
        """Parameter names, types and values (ranges, tasks, checkpoint, cameras...); raises
        :class:`GraphError` naming the node, the parameter and the fix."""
        if self.executable not in NODE_PARAMETERS:
            raise GraphError(
                f"node {self.name}: unknown executable {self.executable!r}; use one of {', '.join(NODE_PARAMETERS)}"
            )
        if not _ROS_NAME.match(self.name):
            raise GraphError(f"node name {self.name!r} is not a valid ROS name (a letter, then letters, digits, '_')")
        specs = {p.name: p for p in self.param_specs}
        if specs:
            unknown = sorted(set(self.parameters) - set(specs))
            if unknown:
                raise GraphError(
                    f"node {self.name}: unknown parameters {unknown}; {self.executable} declares {sorted(specs)}"
                )
            for k, v in self.parameters.items():
                want = specs[k].type
                if not (type(v) is want or (want is float and type(v) is int)):
                    raise GraphError(f"node {self.name}: parameter {k}={v!r} should be {want.__name__}")
        _check_node_values(self.name, self.executable, self.full_parameters())

    def full_parameters(self) -> dict[str, Any]:
        """Every declared parameter with its value here or its default."""
        return {**{p.name: p.default for p in self.param_specs}, **self.parameters}

    def ros_args(self) -> list[str]:
        """``--ros-args`` for this node: its name, parameters and remaps."""
        args = ["--ros-args", "-r", f"__node:={self.name}"]
        for k, v in self.parameters.items():
            args += ["-p", f"{k}:={_fmt_param(v)}"]
        for a, b in self.remaps:
            args += ["-r", f"{a}:={b}"]
        return args

    def command(self, python: str = "python") -> list[str]:
        """The command that runs this node as its own process."""
        return [python, "-m", self.module, *self.ros_args()]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "executable": self.executable,
            "package": self.package,
            "parameters": self.parameters,
            "remaps": [list(r) for r in self.remaps],
            "description": self.description,
        }


def _size(text: str) -> tuple[int, int]:
    w, sep, h = str(text).lower().partition("x")
    try:
        if not sep:
            raise ValueError
        width, height = int(w), int(h)
    except ValueError:
        raise GraphError(f"render_size {text!r}: use WIDTHxHEIGHT, e.g. 160x120") from None
    if not (8 <= width <= 4096 and 8 <= height <= 4096):
        raise GraphError(f"render_size {text!r}: each side from 8 to 4096 pixels, e.g. 160x120")
    return width, height


def live_graph(
    robot_ip: str = LAUNCH_DEFAULTS["robot_ip"],
    cameras: str | Sequence[str] = "",
    use_fake_hardware: bool = False,
    checkpoint: str = "",
    task: str = LAUNCH_DEFAULTS["task"],
    **options: Any,
) -> list[NodeDesc]:
    """The nodes to start. Keyword ``options`` are the other :data:`LAUNCH_ARGUMENTS` (typed
    values or their strings); unknown names raise :class:`GraphError`.

    franka_bridge and camera_bridge come with ``hardware`` (camera_bridge only when
    ``cameras`` is set), twin_sync always, policy_runner with a ``checkpoint``, the recorder
    with ``record``.
    """
    if not isinstance(cameras, str):
        cameras = ",".join(cameras)
    given = {
        "robot_ip": robot_ip,
        "cameras": cameras,
        "use_fake_hardware": use_fake_hardware,
        "checkpoint": str(checkpoint or ""),
        "task": task,
        **options,
    }
    a = {**LAUNCH_DEFAULTS, **parse_launch_arguments(given)}
    if not a["task"]:
        raise GraphError("task is empty; pass task:=<name> (e.g. reach, mug_to_sink)")
    width, height = _size(a["render_size"])
    validate_launch_arguments(a)
    cams = parse_cameras(a["cameras"])
    cam_names = [n for n, _ in cams]
    fake = bool(a["use_fake_hardware"])
    js = a["joint_states_topic"] or TOPIC_JOINT_STATES
    remap_js = ((TOPIC_JOINT_STATES, js),) if js != TOPIC_JOINT_STATES else ()
    nodes: list[NodeDesc] = []
    if a["hardware"]:
        nodes.append(
            NodeDesc(
                NODE_FRANKA_BRIDGE,
                NODE_FRANKA_BRIDGE,
                {
                    "robot_ip": "127.0.0.1" if fake else a["robot_ip"],
                    "use_fake_hardware": fake,
                    "publish_rate_hz": a["joint_state_rate_hz"],
                    "command_timeout_s": a["command_timeout_s"],
                    "reuse_simulator": a["reuse_simulator"],
                },
                remap_js,
                "Franka arm + gripper through franky: /joint_states, follows /twin/joint_commands when armed.",
            )
        )
        if cams:
            nodes.append(
                NodeDesc(
                    NODE_CAMERA_BRIDGE,
                    NODE_CAMERA_BRIDGE,
                    {
                        "cameras": a["cameras"],
                        "use_fake_hardware": fake,
                        **(
                            {"fake_task": a["task"], "fake_seed": a["fake_seed"], "fake_markers": a["markers"]}
                            if fake
                            else {}
                        ),
                    },
                    (),
                    "RealSense cameras through pyrealsense2: colour, depth, camera_info, points per camera.",
                )
            )
    tracked = split_list(a["objects"]) or _task_objects(a["task"])
    if cams and a["track_objects"] and tracked:
        nodes.append(
            NodeDesc(
                NODE_OBJECT_TRACKER,
                NODE_OBJECT_TRACKER,
                {
                    "task": a["task"],
                    "objects": a["objects"],
                    "cameras": ",".join(cam_names),
                    "methods": a["tracking_methods"],
                    "markers": a["markers"],
                    "rate_hz": a["tracking_rate_hz"],
                    **(
                        {
                            "extrinsics": ",".join(
                                str(Path(f).expanduser().resolve()) for f in split_list(a["camera_extrinsics"])
                            )
                        }
                        if a["camera_extrinsics"]
                        else {}
                    ),
                },
                remap_js,
                "Object poses from the cameras (fiducial tags or model-based registration on depth): "
                "/objects/<name>/pose and /objects/status.",
            )
        )
    nodes.append(
        NodeDesc(
            NODE_TWIN_SYNC,
            NODE_TWIN_SYNC,
            {
                "task": a["task"],
                "objects": a["objects"],
                "sync_rate_hz": a["sync_rate_hz"],
                "object_gain": a["object_gain"],
                "render_rate_hz": a["render_rate_hz"],
                "render_width": width,
                "render_height": height,
            },
            remap_js,
            "Keeps the twin in step with the real cell; publishes twin state, renders, desync.",
        )
    )
    if a["checkpoint"]:
        nodes.append(
            NodeDesc(
                NODE_POLICY_RUNNER,
                NODE_POLICY_RUNNER,
                {
                    "task": a["task"],
                    "checkpoint": a["checkpoint"],
                    "device": a["policy_device"],
                    "autostart": a["autostart_policy"],
                    "objects": a["objects"],
                },
                remap_js,
                "Runs the checkpoint inside the twin; publishes /twin/joint_commands for the real arm.",
            )
        )
    if a["record"]:
        nodes.append(
            NodeDesc(
                NODE_RECORDER,
                NODE_RECORDER,
                {
                    "bag_dir": a["bag_dir"],
                    "task": a["task"],
                    "domain": "proxy-real" if fake else "real",
                    "objects": a["objects"],
                    "cameras": ",".join(cam_names),
                    "record_images": a["record_images"],
                    **({"plan_file": str(Path(a["plan_file"]).expanduser().resolve())} if a["plan_file"] else {}),
                },
                remap_js,
                "Writes episodes (operator-marked outcomes) to rosbag2 MCAP in the real-data schema.",
            )
        )
    validate_nodes(nodes)
    return nodes


def validate_nodes(nodes: Sequence[NodeDesc]) -> None:
    """:meth:`NodeDesc.validate` for every node, and unique node names."""
    names = [n.name for n in nodes]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise GraphError(f"node names {dup} appear more than once; give each node its own name")
    for n in nodes:
        n.validate()


# ---- docs -----------------------------------------------------------------------------------
def _md(text: str) -> str:
    """Escape a table cell: pipes, and <...> (HTML to a Markdown renderer)."""
    return str(text).replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def launch_arguments_markdown() -> str:
    """The launch arguments as a Markdown table (the READMEs embed it; a test checks it)."""
    rows = ["| argument | default | description |", "|---|---|---|"]
    for a in LAUNCH_ARGUMENTS:
        default = f"`{a.default}`" if a.default else "(empty)"
        rows.append(f"| `{a.name}` | {default} | {_md(a.description)} |")
    return "\n".join(rows)


def node_parameters_markdown() -> str:
    """Every node's parameters as Markdown tables."""
    out = []
    for node, params in NODE_PARAMETERS.items():
        out += [f"**{node}**", "", "| parameter | default | description |", "|---|---|---|"]
        for p in params:
            d = (
                json.dumps(p.default)
                if not isinstance(p.default, str)
                else (f"`{p.default}`" if p.default else "(empty)")
            )
            out.append(f"| `{p.name}` | {d} | {_md(p.description)} |")
        out.append("")
    return "\n".join(out).rstrip() + "\n"


GENERATED_BLOCKS = {
    "launch-arguments": launch_arguments_markdown,
    "node-parameters": node_parameters_markdown,
}


def render_generated_blocks(text: str) -> str:
    """``text`` with every ``<!-- BEGIN <block> -->`` ... ``<!-- END <block> -->`` section
    (blocks: launch-arguments, node-parameters) replaced by the current table."""
    import re

    for name, fn in GENERATED_BLOCKS.items():
        begin, end = f"<!-- BEGIN {name} (generated: twinrank live args --write-readmes) -->", f"<!-- END {name} -->"
        pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
        text = pattern.sub(lambda _m: f"{begin}\n{fn().rstrip()}\n{end}", text)
    return text


__all__ = [
    "GraphError",
    "LaunchArg",
    "LAUNCH_ARGUMENTS",
    "LAUNCH_DEFAULTS",
    "NodeDesc",
    "live_graph",
    "launch_argument",
    "parse_launch_arguments",
    "launch_arguments_markdown",
    "node_parameters_markdown",
    "render_generated_blocks",
    "validate_launch_arguments",
    "validate_nodes",
]
