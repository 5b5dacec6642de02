"""The live twin's graph description, launch file, docs and ament registration (no ROS
runtime needed except for the ament_index_python look-up, skipped without it)."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import tomllib
import types
from pathlib import Path

import pytest
import yaml

from twin.live.ament import REPO, check_ament, install_ament, installed_files
from twin.live.graph import (
    LAUNCH_ARGUMENTS,
    GraphError,
    launch_arguments_markdown,
    live_graph,
    parse_launch_arguments,
    render_generated_blocks,
)
from twin.live.interfaces import (
    JOINT_NAMES,
    NODE_PARAMETERS,
    NODES,
    BridgeStatus,
    Desync,
    JointStateError,
    pack_joints,
    parse_cameras,
    unpack_joints,
)


# ---- interface ---------------------------------------------------------------------------------
def test_joint_packing_and_status_json_round_trip():
    names, pos = pack_joints([0.1] * 7, 0.06)
    assert names == list(JOINT_NAMES) and pos[7:] == [0.03, 0.03]
    q, w = unpack_joints(list(reversed(names)), list(reversed(pos)))
    assert q == [0.1] * 7 and w == pytest.approx(0.06)
    assert unpack_joints(names[:7], pos[:7]) == ([0.1] * 7, None)
    for bad_names, bad_pos, why in (
        (names[:6], pos[:6], "missing"),
        (names, [float("nan")] + pos[1:], "non-finite"),
        (names + ["fr3_joint1"], pos + [0.0], "duplicate"),
        (names, pos[:3], "positions"),
    ):
        with pytest.raises(JointStateError, match=why):
            unpack_joints(bad_names, bad_pos)
    s = BridgeStatus(connected=True, armed=False, reason="disarmed", mode="idle")
    assert BridgeStatus.from_json(s.to_json()) == s
    d = Desync(
        joint_residual_rad=0.01,
        object_residual_m={"mug": 0.2},
        message_age_s=float("inf"),
        lost=True,
        reasons=["x"],
        rejected={"nan": 2},
    )
    back = Desync.from_json(d.to_json())
    assert json.loads(d.to_json())["message_age_s"] is None  # JSON has no inf
    assert back.message_age_s == float("inf") and back.object_residual_m == {"mug": 0.2} and back.rejected == {"nan": 2}
    assert parse_cameras("cam_left=123, cam_right") == [("cam_left", "123"), ("cam_right", "")]


# ---- graph -------------------------------------------------------------------------------------
def _checkpoint(path: Path, task: str) -> Path:
    import torch

    from policies import PolicySpec, save_checkpoint
    from policies.interface import make_policy
    from twin.env import TwinEnv

    torch.manual_seed(0)
    env = TwinEnv(task)
    try:
        save_checkpoint(make_policy("mlp", {}, PolicySpec.from_env(env, obs_keys=["state"])), path, training_step=0)
    finally:
        env.close()
    return path


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    """A real (untrained) mug_to_sink checkpoint: the graph checks checkpoints up front."""
    return _checkpoint(tmp_path_factory.mktemp("ckpt") / "mug_to_sink_mlp", "mug_to_sink")


def test_live_graph_nodes_parameters_and_remaps(ckpt):
    default = live_graph()
    assert [n.name for n in default] == ["franka_bridge", "twin_sync", "recorder"]
    full = live_graph("10.0.0.2", "cam_left=123456789012,cam_right", False, str(ckpt), "mug_to_sink")
    assert [n.name for n in full] == [
        "franka_bridge",
        "camera_bridge",
        "object_tracker",
        "twin_sync",
        "policy_runner",
        "recorder",
    ]
    by = {n.name: n for n in full}
    assert by["object_tracker"].parameters["cameras"] == "cam_left,cam_right"
    assert by["franka_bridge"].parameters["robot_ip"] == "10.0.0.2"
    assert by["camera_bridge"].parameters["cameras"] == "cam_left=123456789012,cam_right"
    assert (
        by["recorder"].parameters["cameras"] == "cam_left,cam_right" and by["recorder"].parameters["domain"] == "real"
    )
    assert by["policy_runner"].parameters["checkpoint"] == str(ckpt)
    assert all(n.parameters.get("task", "mug_to_sink") == "mug_to_sink" for n in full)
    fake = {n.name: n for n in live_graph(use_fake_hardware=True, cameras=["cam_left"])}
    assert fake["franka_bridge"].parameters["robot_ip"] == "127.0.0.1"
    assert fake["camera_bridge"].parameters["use_fake_hardware"] is True
    assert fake["recorder"].parameters["domain"] == "proxy-real"
    assert [n.name for n in live_graph(hardware=False, record=False)] == ["twin_sync"]
    remapped = live_graph(joint_states_topic="/franka/joint_states", checkpoint=str(ckpt), task="mug_to_sink")
    assert all(n.remaps == (("/joint_states", "/franka/joint_states"),) for n in remapped)
    # launch-style strings give the same graph as typed values
    as_strings = live_graph(**{"use_fake_hardware": "true", "render_size": "64x48", "sync_rate_hz": "50"})
    twin = next(n for n in as_strings if n.name == "twin_sync")
    assert (twin.parameters["render_width"], twin.parameters["render_height"]) == (64, 48)
    assert twin.parameters["sync_rate_hz"] == 50.0
    for n in full:
        n.validate()
        assert n.module == f"twin.live.{n.executable}" and n.executable in NODES
        specs = {p.name: p for p in NODE_PARAMETERS[n.executable]}
        args = n.ros_args()
        assert args[:3] == ["--ros-args", "-r", f"__node:={n.name}"]
        # every -p value parses back (YAML, as rcl does) to the declared type and value
        for i, a in enumerate(args):
            if a == "-p":
                name, _, text = args[i + 1].partition(":=")
                value = yaml.safe_load(text)
                assert type(value) is specs[name].type and value == n.parameters[name], (name, text)
    for bad in (
        {"render_size": "big"},
        {"use_fake_hardware": "maybe"},
        {"nonsense": 1},
        {"sync_rate_hz": "fast"},
        {"cameras": "1cam"},
        {"joint_states_topic": "joint_states"},
        {"task": ""},
    ):
        with pytest.raises(GraphError):
            live_graph(**bad)


def test_live_graph_validates_every_argument_up_front(ckpt, tmp_path):
    """Each bad value raises GraphError: one line naming the argument (and the fix)."""
    not_dir = tmp_path / "file"
    not_dir.write_text("x")
    cases = [
        ({"task": "no_such_task"}, "task:='no_such_task' is not a twin task; use one of"),
        ({"checkpoint": str(tmp_path / "missing")}, "does not exist"),
        ({"checkpoint": str(tmp_path)}, "has no manifest.json"),
        ({"checkpoint": str(ckpt), "task": "reach"}, "was trained for task 'mug_to_sink'"),
        ({"cameras": "cam_left=12 34"}, "serials"),
        ({"cameras": "cam_left=123456789012,cam_right=123456789012"}, "duplicate camera serials"),
        ({"cameras": "cam_left,cam_left"}, "duplicate camera names"),
        ({"use_fake_hardware": True, "cameras": "cam_top"}, "task 'reach' has no ['cam_top']"),
        ({"objects": "cup"}, "not bodies of task 'reach'"),
        ({"sync_rate_hz": 0}, "sync_rate_hz"),
        ({"joint_state_rate_hz": 5000}, "joint_state_rate_hz"),
        ({"command_timeout_s": -1}, "command_timeout_s"),
        ({"object_gain": 1.5}, "object_gain"),
        ({"render_rate_hz": -1}, "render_rate_hz"),
        ({"render_size": "4x4"}, "render_size"),
        ({"policy_device": "gpu0"}, "policy_device"),
        ({"robot_ip": "172.16.0.256"}, "robot_ip"),
        ({"joint_states_topic": "/franka//joint_states"}, "joint_states_topic"),
        ({"bag_dir": str(not_dir)}, "bag_dir"),
        ({"record_images": True}, "record_images"),
    ]
    for kwargs, needle in cases:
        with pytest.raises(GraphError) as info:
            live_graph(**kwargs)
        msg = str(info.value)
        assert needle in msg and "\n" not in msg, (kwargs, msg)
    # good values pass: real serials, twin camera names with fake hardware, the task's bodies, a hostname
    live_graph(robot_ip="fr3-controller.local", cameras="cam_left=123456789012", objects="mug,sink")
    live_graph(use_fake_hardware=True, cameras="cam_left,cam_right", checkpoint=str(ckpt), task="mug_to_sink")


def test_launch_argument_defaults_parse():
    parsed = parse_launch_arguments({a.name: a.default for a in LAUNCH_ARGUMENTS})
    assert parsed["use_fake_hardware"] is False and parsed["hardware"] is True
    assert parsed["sync_rate_hz"] == 100.0 and parsed["robot_ip"] == "172.16.0.2"
    assert len({a.name for a in LAUNCH_ARGUMENTS}) == len(LAUNCH_ARGUMENTS)
    for a in LAUNCH_ARGUMENTS:
        assert a.description and isinstance(a.default, str)


# ---- launch file ------------------------------------------------------------------------------
def _stub_launch_modules(monkeypatch):
    """Minimal stand-ins for launch / launch_ros (not installable from PyPI) that record what
    the launch file builds."""
    made: dict[str, list] = {"declare": [], "nodes": []}

    class LaunchDescription(list):
        pass

    class DeclareLaunchArgument:
        def __init__(self, name, default_value=None, description=""):
            self.name, self.default_value, self.description = name, default_value, description
            made["declare"].append(self)

    class OpaqueFunction:
        def __init__(self, function):
            self.function = function

    class LaunchConfiguration:
        def __init__(self, name):
            self.name = name

        def perform(self, context):
            return context[self.name]

    class Node:
        def __init__(self, **kw):
            self.kw = kw
            made["nodes"].append(self)

    class ParameterValue:
        def __init__(self, value, value_type=None):
            assert value_type is type(value)
            self.value, self.value_type = value, value_type

    mods = {
        "launch": types.SimpleNamespace(LaunchDescription=LaunchDescription),
        "launch.actions": types.SimpleNamespace(
            DeclareLaunchArgument=DeclareLaunchArgument, OpaqueFunction=OpaqueFunction
        ),
        "launch.substitutions": types.SimpleNamespace(LaunchConfiguration=LaunchConfiguration),
        "launch_ros": types.SimpleNamespace(),
        "launch_ros.actions": types.SimpleNamespace(Node=Node),
        "launch_ros.parameter_descriptions": types.SimpleNamespace(ParameterValue=ParameterValue),
    }
    for name, mod in mods.items():
        monkeypatch.setitem(sys.modules, name, mod)
    return made


def test_launch_file_declares_every_argument_and_builds_the_graph(monkeypatch, ckpt):
    path = REPO / "launch" / "live.launch.py"
    tree = ast.parse(path.read_text())
    assert len(path.read_text().splitlines()) < 60, "keep the launch file thin"
    imported = {
        a.name
        for n in ast.walk(tree)
        if isinstance(n, ast.ImportFrom) and n.module == "twin.live.graph"
        for a in n.names
    }
    assert {"LAUNCH_ARGUMENTS", "live_graph"} <= imported
    made = _stub_launch_modules(monkeypatch)
    ns: dict = {}
    exec(compile(path.read_text(), str(path), "exec"), ns)
    desc = ns["generate_launch_description"]()
    assert [(d.name, d.default_value, d.description) for d in made["declare"]] == [
        (a.name, a.default, a.description) for a in LAUNCH_ARGUMENTS
    ]
    context = {a.name: a.default for a in LAUNCH_ARGUMENTS}
    context.update(
        use_fake_hardware="true",
        cameras="cam_left",
        checkpoint=str(ckpt),
        task="mug_to_sink",
        sync_rate_hz="1",
        joint_states_topic="/franka/joint_states",
    )
    opaque = desc[-1]
    actions = opaque.function(context)
    expected = live_graph(**parse_launch_arguments(context))
    assert [a.kw["name"] for a in actions] == [n.name for n in expected]
    for a, n in zip(actions, expected):
        assert a.kw["package"] == "twin" and a.kw["executable"] == n.executable
        params = a.kw["parameters"][0]
        assert {k: v.value for k, v in params.items()} == n.parameters
        assert a.kw["remappings"] == list(n.remaps)
        # the nodes end with the launch process (twin.lifeline)
        assert a.kw["additional_env"] == {"TWINRANK_PARENT_PID": str(os.getpid())}
    twin = next(a for a in actions if a.kw["name"] == "twin_sync")
    assert twin.kw["parameters"][0]["sync_rate_hz"].value_type is float  # "1" stays a float parameter


# ---- docs --------------------------------------------------------------------------------------
@pytest.mark.parametrize("readme", ["ros_ws/README.md", "launch/README.md"])
def test_readmes_list_every_launch_argument(readme):
    text = (REPO / readme).read_text()
    assert render_generated_blocks(text) == text, (
        f"{readme} is out of date with twin.live.graph; run `twinrank live args --write-readmes`"
    )
    table = launch_arguments_markdown()
    assert table in text
    for a in LAUNCH_ARGUMENTS:
        assert f"| `{a.name}` |" in text, a.name
    for needed in ("colcon build", "ros2 launch twin live.launch.py", "install-ament", "use_fake_hardware:=true"):
        assert needed in (REPO / "ros_ws/README.md").read_text() + (REPO / "launch/README.md").read_text()


# ---- packaging ---------------------------------------------------------------------------------
def test_colcon_package_and_pyproject_data_files_agree():
    src = REPO / "ros_ws" / "src" / "twin"
    pkg = (src / "package.xml").read_text()
    assert "<name>twin</name>" in pkg and "<build_type>ament_python</build_type>" in pkg
    assert (src / "resource" / "twin").is_file()
    setup = (src / "setup.py").read_text()
    assert "twin.live.{n}:main" in setup
    for n in NODES:
        assert f'"{n}"' in setup
        script = src / "scripts" / n
        assert os.access(script, os.X_OK) and f"-m twin.live.{n}" in script.read_text()
    assert "install_scripts=$base/lib/twin" in (src / "setup.cfg").read_text()
    data = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["data-files"]
    flat = {f"{d}/{Path(f).name}" for d, files in data.items() for f in files}
    assert flat == set(installed_files())
    for files in data.values():
        for f in files:
            assert (REPO / f).is_file(), f
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["ros"]
    assert any(e.startswith("ros-jazzy-rclpy[fastrtps]") for e in extras)
    assert "install-ament" in (REPO / "Makefile").read_text()


def test_install_ament_into_a_prefix_is_found_by_the_ament_index(tmp_path):
    written = install_ament(tmp_path)
    assert sorted(str(p.relative_to(tmp_path)) for p in written) == sorted(installed_files())
    assert check_ament(tmp_path) == []
    assert (tmp_path / "share/twin/launch/live.launch.py").read_text() == (REPO / "launch/live.launch.py").read_text()
    pytest.importorskip("ament_index_python", reason="comes with the ros extra")
    env = {**os.environ, "AMENT_PREFIX_PATH": str(tmp_path)}
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "from ament_index_python.packages import get_package_share_directory, "
            "get_package_prefix; print(get_package_share_directory('twin')); "
            "print(get_package_prefix('twin'))",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    share, prefix = out.stdout.split()
    assert Path(share) == tmp_path / "share" / "twin" and Path(prefix) == tmp_path
    (tmp_path / "lib/twin/recorder").unlink()
    assert any("recorder" in p for p in check_ament(tmp_path))


def test_this_venv_has_the_package_registered():
    """`make install` registers `twin` in the venv (twinrank live install-ament): ros2 launch /
    ros2 run / the whole-graph test find lib/twin/<node> through the ament index."""
    problems = check_ament(sys.prefix)
    assert not problems, f"{problems}: run `make install` or `twinrank live install-ament`"
    for n in NODES:
        assert os.access(Path(sys.prefix) / "lib" / "twin" / n, os.X_OK)


def test_cli_live_commands(ckpt):
    from typer.testing import CliRunner

    from twinrank.cli import app

    r = CliRunner().invoke(
        app, ["live", "graph", "use_fake_hardware:=true", f"checkpoint:={ckpt}", "task:=mug_to_sink", "--json"]
    )
    assert r.exit_code == 0, r.output
    nodes = json.loads(r.output)
    assert [n["name"] for n in nodes] == ["franka_bridge", "twin_sync", "policy_runner", "recorder"]
    r = CliRunner().invoke(app, ["live", "graph", "bogus:=1"])
    assert r.exit_code == 2 and "bogus" in r.output
    r = CliRunner().invoke(app, ["live", "args", "--markdown"])
    assert r.exit_code == 0 and launch_arguments_markdown() in r.output
    r = CliRunner().invoke(app, ["live", "run", "hardware:=false", "--dry-run"])
    assert r.exit_code == 0 and "-m twin.live.twin_sync --ros-args" in r.output
    r = CliRunner().invoke(app, ["live", "run", "task:=no_such_task"])  # refused before anything starts
    assert r.exit_code == 2 and "no_such_task" in r.output, r.output
    r = CliRunner().invoke(app, ["live", "install-ament", "--check"])
    assert r.exit_code == 0, r.output


def test_the_recorder_gets_the_plan_file_and_a_missing_one_is_refused(tmp_path):
    from twin.live.plan import PlannedTrial, write_plan

    plan = write_plan(tmp_path / "plan.csv", [PlannedTrial(1, "bc/step_0000010")], meta={"task": "reach"})
    rec = {n.name: n for n in live_graph(plan_file=str(plan))}["recorder"]
    assert rec.parameters["plan_file"] == str(plan.resolve())
    assert "plan_file" not in {n.name: n for n in live_graph()}["recorder"].parameters
    with pytest.raises(GraphError, match="plan_file"):
        live_graph(plan_file=str(tmp_path / "missing.csv"))
