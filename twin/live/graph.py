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

This module does not import rclpy or launch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Sequence

from twin.live.interfaces import (
    NODE_CAMERA_BRIDGE,
    NODE_FRANKA_BRIDGE,
    NODE_PARAMETERS,
    NODE_POLICY_RUNNER,
    NODE_RECORDER,
    NODE_TWIN_SYNC,
    ROS_PACKAGE,
    TOPIC_JOINT_STATES,
    Param,
    parse_cameras,
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
    LaunchArg("robot_ip", "172.16.0.2", "IP of the Franka controller (FCI). Ignored with use_fake_hardware:=true "
                                        "(franka-sim on 127.0.0.1)."),
    LaunchArg("use_fake_hardware", "false", "Run against franka-sim on loopback and a pyrealsense2 software "
                                            "device instead of the real arm and cameras.", bool),
    LaunchArg("cameras", "", "Comma-separated RealSense cameras, each name or name=serial (topics "
                             "/<name>/color/image_raw ...). Empty: no camera_bridge. Use the twin's camera "
                             "names (cam_left, cam_right) so renders and images correspond."),
    LaunchArg("task", "reach", "Twin task (scene, objects, control rate) for twin_sync, policy_runner and the "
                               "recorder's episode events."),
    LaunchArg("checkpoint", "", "Policy checkpoint folder run inside the twin by policy_runner. Empty: no "
                                "policy_runner."),
    LaunchArg("objects", "", "Comma-separated tracked objects (/objects/<name>/pose). Empty: the task's objects."),
    LaunchArg("hardware", "true", "Start franka_bridge (and camera_bridge when cameras is set). false: "
                                  "/joint_states etc. come from elsewhere (another driver, a bag replay).", bool),
    LaunchArg("joint_states_topic", TOPIC_JOINT_STATES, "Topic of the real robot's joint states (remapped on "
                                                        "every node that uses /joint_states)."),
    LaunchArg("joint_state_rate_hz", "1000.0", "franka_bridge /joint_states rate.", float),
    LaunchArg("command_timeout_s", "0.1", "franka_bridge watchdog: stop the arm when twin joint commands are "
                                          "older than this.", float),
    LaunchArg("sync_rate_hz", "100.0", "twin_sync update rate.", float),
    LaunchArg("object_gain", "0.2", "twin_sync: fraction of the object pose error corrected per update.", float),
    LaunchArg("render_rate_hz", "2.0", "twin_sync camera render rate (0: no renders).", float),
    LaunchArg("render_size", "160x120", "twin_sync render size WIDTHxHEIGHT."),
    LaunchArg("autostart_policy", "false", "policy_runner starts an episode as soon as it is up (otherwise call "
                                           "/policy_runner/start).", bool),
    LaunchArg("policy_device", "cpu", "Torch device of the policy (cpu, cuda, cuda:0...)."),
    LaunchArg("record", "true", "Start the recorder (episodes via /recorder/start_episode).", bool),
    LaunchArg("bag_dir", "recordings", "Folder for the recorder's rosbag2 MCAP bags."),
    LaunchArg("record_images", "false", "Also record camera images, depth and point clouds.", bool),
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
        specs = {p.name: p for p in self.param_specs}
        if specs:
            unknown = sorted(set(self.parameters) - set(specs))
            if unknown:
                raise GraphError(f"node {self.name}: unknown parameters {unknown}; {self.executable} declares "
                                 f"{sorted(specs)}")
            for k, v in self.parameters.items():
                want = specs[k].type
                if not (type(v) is want or (want is float and type(v) is int)):
                    raise GraphError(f"node {self.name}: parameter {k}={v!r} should be {want.__name__}")

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
        return {"name": self.name, "executable": self.executable, "package": self.package,
                "parameters": self.parameters, "remaps": [list(r) for r in self.remaps],
                "description": self.description}


def _size(text: str) -> tuple[int, int]:
    w, sep, h = str(text).lower().partition("x")
    try:
        if not sep:
            raise ValueError
        width, height = int(w), int(h)
    except ValueError:
        raise GraphError(f"render_size {text!r}: use WIDTHxHEIGHT, e.g. 160x120") from None
    if width < 8 or height < 8:
        raise GraphError(f"render_size {text!r}: at least 8x8")
    return width, height


def live_graph(robot_ip: str = LAUNCH_DEFAULTS["robot_ip"], cameras: str | Sequence[str] = "",
               use_fake_hardware: bool = False, checkpoint: str = "", task: str = LAUNCH_DEFAULTS["task"],
               **options: Any) -> list[NodeDesc]:
    """The nodes to start. Keyword ``options`` are the other :data:`LAUNCH_ARGUMENTS` (typed
    values or their strings); unknown names raise :class:`GraphError`.

    franka_bridge and camera_bridge come with ``hardware`` (camera_bridge only when
    ``cameras`` is set), twin_sync always, policy_runner with a ``checkpoint``, the recorder
    with ``record``.
    """
    if not isinstance(cameras, str):
        cameras = ",".join(cameras)
    given = {"robot_ip": robot_ip, "cameras": cameras, "use_fake_hardware": use_fake_hardware,
             "checkpoint": str(checkpoint or ""), "task": task, **options}
    a = {**LAUNCH_DEFAULTS, **parse_launch_arguments(given)}
    if not a["task"]:
        raise GraphError("task is empty; pass task:=<name> (e.g. reach, mug_to_sink)")
    cams = parse_cameras(a["cameras"])
    cam_names = [n for n, _ in cams]
    bad = [n for n in cam_names if not n.replace("_", "").isalnum() or not n[0].isalpha()]
    if bad:
        raise GraphError(f"cameras: names {bad} are not valid ROS names (letters, digits, '_')")
    width, height = _size(a["render_size"])
    fake = bool(a["use_fake_hardware"])
    js = a["joint_states_topic"] or TOPIC_JOINT_STATES
    if not js.startswith("/"):
        raise GraphError(f"joint_states_topic {js!r} must be absolute (start with '/')")
    remap_js = ((TOPIC_JOINT_STATES, js),) if js != TOPIC_JOINT_STATES else ()
    nodes: list[NodeDesc] = []
    if a["hardware"]:
        nodes.append(NodeDesc(
            NODE_FRANKA_BRIDGE, NODE_FRANKA_BRIDGE,
            {"robot_ip": "127.0.0.1" if fake else a["robot_ip"], "use_fake_hardware": fake,
             "publish_rate_hz": a["joint_state_rate_hz"], "command_timeout_s": a["command_timeout_s"]},
            remap_js, "Franka arm + gripper through franky: /joint_states, follows /twin/joint_commands when armed."))
        if cams:
            nodes.append(NodeDesc(
                NODE_CAMERA_BRIDGE, NODE_CAMERA_BRIDGE,
                {"cameras": a["cameras"], "use_fake_hardware": fake, **({"fake_task": a["task"]} if fake else {})},
                (), "RealSense cameras through pyrealsense2: colour, depth, camera_info, points per camera."))
    nodes.append(NodeDesc(
        NODE_TWIN_SYNC, NODE_TWIN_SYNC,
        {"task": a["task"], "objects": a["objects"], "sync_rate_hz": a["sync_rate_hz"],
         "object_gain": a["object_gain"], "render_rate_hz": a["render_rate_hz"],
         "render_width": width, "render_height": height},
        remap_js, "Keeps the twin in step with the real cell; publishes twin state, renders, desync."))
    if a["checkpoint"]:
        nodes.append(NodeDesc(
            NODE_POLICY_RUNNER, NODE_POLICY_RUNNER,
            {"task": a["task"], "checkpoint": a["checkpoint"], "device": a["policy_device"],
             "autostart": a["autostart_policy"], "objects": a["objects"]},
            remap_js, "Runs the checkpoint inside the twin; publishes /twin/joint_commands for the real arm."))
    if a["record"]:
        nodes.append(NodeDesc(
            NODE_RECORDER, NODE_RECORDER,
            {"bag_dir": a["bag_dir"], "task": a["task"], "domain": "proxy-real" if fake else "real",
             "objects": a["objects"], "cameras": ",".join(cam_names), "record_images": a["record_images"]},
            remap_js, "Writes episodes (operator-marked outcomes) to rosbag2 MCAP in the real-data schema."))
    for n in nodes:
        n.validate()
    return nodes


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
            d = json.dumps(p.default) if not isinstance(p.default, str) else (f"`{p.default}`" if p.default else "(empty)")
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


__all__ = ["GraphError", "LaunchArg", "LAUNCH_ARGUMENTS", "LAUNCH_DEFAULTS", "NodeDesc", "live_graph",
           "launch_argument", "parse_launch_arguments", "launch_arguments_markdown", "node_parameters_markdown",
           "render_generated_blocks"]
