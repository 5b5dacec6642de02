"""Real-trial plans (twin.live.plan) and the live recorder following one.

The file format is tested on its own (round trip, hand-written plans, every bad file); the
recorder is the real rclpy node, started through :class:`twin.live.runner.GraphRunner` and
driven through its services by the probe of ``tests/test_live_graph.py`` (its ROS environment:
a per-session domain id, localhost discovery). Waits are hang guards on conditions, never
timing verdicts.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from twin.live.plan import (
    EPISODE_KEYS,
    PLAN_COLUMNS,
    PlanError,
    PlannedTrial,
    RealTrialPlan,
    read_plan,
    write_plan,
)

ROOT = Path(__file__).resolve().parents[1]

TRIALS = [
    PlannedTrial(1, "bc/step_0000010", "aaaaaaaaaaaa", "runs/bc/step_0000010"),
    PlannedTrial(2, "diffusion/step_0000100", "bbbbbbbbbbbb", "models:/reach_diffusion/4"),
    PlannedTrial(3, "bc/step_0000030"),
]
META = {
    "task": "reach",
    "created": "2025-01-31T10:02:11",
    "budget": 3,
    "eps": 0.05,
    "confidence": 0.9,
    "method": "lucb",
    "note": "12",  # text that looks like a number stays text
}


# ---- file format -------------------------------------------------------------------------------
def test_plan_round_trips_and_reads_with_csv_tools(tmp_path):
    path = write_plan(tmp_path / "sub" / "plan.csv", TRIALS, meta=META)
    text = path.read_text()
    assert text.splitlines()[0] == "# task: reach"
    assert '# note: "12"' in text and ",".join(PLAN_COLUMNS) in text.splitlines()
    plan = read_plan(path)
    assert isinstance(plan, RealTrialPlan) and plan.path == str(path)
    assert plan.trials == TRIALS and plan.meta == META and len(plan) == 3
    assert plan.checkpoints() == ["bc/step_0000010", "diffusion/step_0000100", "bc/step_0000030"]
    assert list(TRIALS[0].episode_tags()) == list(EPISODE_KEYS)
    assert TRIALS[0].episode_tags()["plan_trial"] == 1
    import pandas as pd

    df = pd.read_csv(path, comment="#", dtype=str, keep_default_na=False)
    assert list(df.columns) == list(PLAN_COLUMNS) and list(df["checkpoint"]) == [t.checkpoint for t in TRIALS]
    assert list(df["path"]) == ["runs/bc/step_0000010", "models:/reach_diffusion/4", ""]
    # rewritten in place (atomically): no temporary files left
    write_plan(path, TRIALS[:1])
    assert read_plan(path).trials == TRIALS[:1] and read_plan(path).meta == {}
    assert sorted(p.name for p in path.parent.iterdir()) == ["plan.csv"]


def test_hand_written_plan_minimal_columns_comments_and_order(tmp_path):
    path = tmp_path / "plan.csv"
    path.write_text(
        "\ufeff# team plan, written by hand\n"  # a BOM (spreadsheet export) and a free comment
        "# task: reach\n"
        "\n"
        "checkpoint, trial ,notes\n"
        "bc/step_3,3,last\n"
        "# skipped for now: bc/step_9\n"
        "bc/step_1,1,\n"
        "bc/step_2,2\n"
    )
    plan = read_plan(path)
    assert [(t.trial, t.checkpoint, t.checkpoint_id, t.path) for t in plan.trials] == [
        (1, "bc/step_1", "", ""),
        (2, "bc/step_2", "", ""),
        (3, "bc/step_3", "", ""),
    ]
    assert plan.meta == {"task": "reach"}


@pytest.mark.parametrize(
    "content,needles",
    [
        (None, ["does not exist", "twinrank plan-real"]),
        ("", ["no header line", "trial,checkpoint,checkpoint_id,path"]),
        ("# task: reach\n# budget: 3\n", ["no header line"]),
        ("trial,checkpoint,checkpoint_id,path\n", ["has a header but no trials", "twinrank plan-real"]),
        ("trial,ckpt\n1,bc/step_1\n", ["no column(s) checkpoint", "the header must be trial,checkpoint"]),
        ("checkpoint,path\nbc/step_1,x\n", ["no column(s) trial"]),
        ("trial,checkpoint\n1,bc/a\ntwo,bc/b\n", ["line 3", "trial 'two' is not an integer", "number trials"]),
        ("trial,checkpoint\n1.5,bc/a\n", ["trial '1.5' is not an integer"]),
        ("trial,checkpoint\n1,bc/a\n2,bc/b\n1,bc/c\n", ["line 4", "trial 1 appears twice (also line 2)"]),
        ("trial,checkpoint\n1,\n", ["trial 1 has no checkpoint"]),
        ("trial,checkpoint\n1,bc/a,x,y\n", ["4 fields but the header has 2", "quote fields"]),
        ("trial,checkpoint,trial\n1,bc/a,2\n", ["trial appear twice in the header"]),
    ],
)
def test_bad_plan_files_raise_one_line_naming_file_problem_and_fix(tmp_path, content, needles):
    path = tmp_path / "plan.csv"
    if content is not None:
        path.write_text(content)
    with pytest.raises(PlanError) as info:
        read_plan(path)
    msg = str(info.value)
    assert isinstance(info.value, ValueError)
    assert str(path) in msg and "\n" not in msg, msg
    for needle in needles:
        assert needle in msg, (needle, msg)


def test_plan_that_is_not_a_file_or_not_text(tmp_path):
    with pytest.raises(PlanError, match="is not a file"):
        read_plan(tmp_path)
    (tmp_path / "bin.csv").write_bytes(b"\xff\xfe\x00\x81" * 10)
    with pytest.raises(PlanError, match="cannot be read"):
        read_plan(tmp_path / "bin.csv")


@pytest.mark.parametrize(
    "trials,meta,needle",
    [
        ([], None, "no trials to write"),
        ([PlannedTrial(1, "a"), PlannedTrial(1, "b")], None, "trial 1 appears twice"),
        ([PlannedTrial("1", "a")], None, "is not an integer"),  # type: ignore[arg-type]
        ([PlannedTrial(1, " ")], None, "has no checkpoint"),
        ([PlannedTrial(1, "a", path="runs/#3")], None, "contains '#'"),
        ([PlannedTrial(1, "a")], {"bad key": 1}, "metadata key"),
        ([PlannedTrial(1, "a")], {"note": "two\nlines"}, "line break"),
        ([PlannedTrial(1, "a")], {"obj": object()}, "not JSON-serialisable"),
    ],
)
def test_write_plan_refuses_what_it_could_not_read_back(tmp_path, trials, meta, needle):
    path = tmp_path / "plan.csv"
    with pytest.raises(PlanError, match=needle) as info:
        write_plan(path, trials, meta=meta)
    assert str(path) in str(info.value) and "\n" not in str(info.value)
    assert not path.exists()


# ---- the recorder node -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def live():
    """tests/test_live_graph.py (ROS environment, Probe, WAIT_S) with rclpy initialised."""
    mod = pytest.importorskip("test_live_graph", reason="ROS 2 from PyPI: pip install -e '.[ros]'")
    owns = not mod.rclpy.ok()
    if owns:
        mod.rclpy.init()
    yield mod
    if owns and mod.rclpy.ok():
        mod.rclpy.shutdown()


def _status(live: Any, probe: Any) -> dict[str, Any] | None:
    import json

    m = probe.last("/recorder/status")
    return None if m is None else json.loads(m.data)


def _episode(live: Any, probe: Any, js: Any, end: str | None, n: int = 5) -> tuple[Any, Any]:
    """start_episode, ``n`` joint states (all delivered), then ``end`` (a service) if given."""
    start = probe.call("/recorder/start_episode")
    assert start.success, start.message
    for i in range(n):
        js.publish(probe.joint_state(live.HOME + 0.01 * i))
    live._acked(js)
    return start, (probe.call(end) if end else None)


def test_recorder_follows_a_plan_and_tags_every_episode(live, tmp_path):
    from sensor_msgs.msg import JointState
    from std_msgs.msg import String

    from twin.live.graph import NodeDesc
    from twin.live.realdata import read_bag
    from twin.live.runner import GraphRunner

    plan = write_plan(tmp_path / "plan.csv", TRIALS, meta=META)
    desc = NodeDesc(
        "recorder",
        "recorder",
        {"bag_dir": str(tmp_path / "bags"), "task": "reach", "plan_file": str(plan)},
    )
    with GraphRunner([desc]) as graph, live.Probe() as probe:
        probe.sub("/recorder/status", String, depth=10)
        js = probe.pub("/joint_states", JointState)
        probe.wait_matched(js)
        probe.wait_publisher("/recorder/status")
        st = probe.wait(lambda: _status(live, probe), live.WAIT_S, "a recorder status")
        assert st["plan"] == {
            "file": str(plan.resolve()),
            "total": 3,
            "next_index": 0,
            "next_trial": 1,
            "next_checkpoint": "bc/step_0000010",
            "next_checkpoint_id": "aaaaaaaaaaaa",
            "remaining": 3,
            "complete": False,
        }

        # trial 1: success -> the plan advances
        start, end = _episode(live, probe, js, "/recorder/end_episode_success")
        assert start.message.startswith("trial 1/3: run bc/step_0000010 (id aaaaaaaaaaaa, path runs/bc/step_0000010)")
        assert end.success and "next trial 2/3: run diffusion/step_0000100" in end.message, end.message
        assert "plan_start:=1" in end.message
        # trial 2: failure advances it too
        start, end = _episode(live, probe, js, "/recorder/end_episode_failure")
        assert start.message.startswith("trial 2/3: run diffusion/step_0000100 (id bbbbbbbbbbbb"), start.message
        assert end.success and "next trial 3/3: run bc/step_0000030" in end.message, end.message
        # trial 3, cut by close_bag (unknown outcome): the same trial comes again
        start, _ = _episode(live, probe, js, None)
        assert start.message.startswith("trial 3/3: run bc/step_0000030;"), start.message
        probe.wait(
            lambda: (_status(live, probe) or {}).get("episode_checkpoint") == "bc/step_0000030",
            live.WAIT_S,
            "the status naming the open episode's checkpoint",
        )
        assert probe.call("/recorder/close_bag").success
        start, end = _episode(live, probe, js, "/recorder/end_episode_success")
        assert start.message.startswith("trial 3/3: run bc/step_0000030;"), start.message
        assert "plan complete" in end.message, end.message
        # the plan is done: no fourth episode
        refused = probe.call("/recorder/start_episode")
        assert not refused.success
        assert refused.message.startswith("plan complete: all 3 trials of") and "twinrank plan-real" in refused.message
        st = probe.wait(
            lambda: (s := _status(live, probe)) and s["plan"]["complete"] and not s["recording"] and s,
            live.WAIT_S,
            "the status reporting the plan complete",
        )
        assert st["plan"]["remaining"] == 0 and st["plan"]["next_checkpoint"] is None
        node = graph.node("recorder")
        assert probe.call("/recorder/close_bag").success
        bags = list(node.bags)
        assert not node.dropped, node.dropped
    assert len(bags) == 2  # close_bag during trial 3: the retry went to a new bag
    eps = [e for b in bags for e in read_bag(b, require=("joint_states", "episode"))]
    got = [(e.meta["checkpoint"], e.meta["checkpoint_id"], e.meta["plan_trial"], e.success) for e in eps]
    assert got == [
        ("bc/step_0000010", "aaaaaaaaaaaa", 1, True),
        ("diffusion/step_0000100", "bbbbbbbbbbbb", 2, False),
        ("bc/step_0000030", "", 3, None),
        ("bc/step_0000030", "", 3, True),
    ]
    assert [e.length for e in eps] == [5, 5, 5, 5]
    assert all(e.task == "reach" and e.meta["plan_file"] == str(plan.resolve()) for e in eps)
    assert eps[0].meta["plan"]["method"] == "lucb"


def test_recorder_resumes_a_plan_and_tags_a_fixed_checkpoint(live, tmp_path):
    from sensor_msgs.msg import JointState

    from twin.live.graph import NodeDesc
    from twin.live.realdata import read_bag
    from twin.live.runner import GraphRunner

    plan = write_plan(tmp_path / "plan.csv", TRIALS, meta={"task": "reach"})
    runs = [
        # resumed at the third trial; the plan wins over checkpoint (a warning is logged)
        {"plan_file": str(plan), "plan_start": 2, "checkpoint": "ignored/step_1"},
        # no plan: every episode tagged with the one checkpoint
        {"checkpoint": "bc/step_0000050"},
    ]
    tagged = []
    for k, params in enumerate(runs):
        desc = NodeDesc("recorder", "recorder", {"bag_dir": str(tmp_path / f"bags{k}"), **params})
        with GraphRunner([desc]) as graph, live.Probe() as probe:
            js = probe.pub("/joint_states", JointState)
            probe.wait_matched(js)
            start, end = _episode(live, probe, js, "/recorder/end_episode_failure")
            assert end.success, end.message
            if "plan_file" in params:
                assert start.message.startswith("trial 3/3: run bc/step_0000030;"), start.message
                assert not probe.call("/recorder/start_episode").success
            else:
                assert start.message.startswith("run bc/step_0000050; episode 0 started"), start.message
                _episode(live, probe, js, "/recorder/end_episode_success")
            node = graph.node("recorder")
            assert probe.call("/recorder/close_bag").success
            bags = list(node.bags)
        for b in bags:
            tagged += [{k: e.meta.get(k) for k in EPISODE_KEYS} for e in read_bag(b)]
    assert tagged == [
        {"checkpoint": "bc/step_0000030", "checkpoint_id": "", "plan_trial": 3},
        {"checkpoint": "bc/step_0000050", "checkpoint_id": None, "plan_trial": None},
        {"checkpoint": "bc/step_0000050", "checkpoint_id": None, "plan_trial": None},
    ]


def test_recorder_with_a_bad_plan_does_not_start(live, tmp_path):
    from twin.live.graph import NodeDesc
    from twin.live.runner import GraphRunner

    plan = write_plan(tmp_path / "plan.csv", TRIALS, meta={"task": "mug_to_sink"})
    bad = tmp_path / "bad.csv"
    bad.write_text("trial,checkpoint\n1,bc/a\n1,bc/b\n")
    for params, needle in (
        ({"plan_file": str(bad)}, "trial 1 appears twice"),
        ({"plan_file": str(plan), "task": "reach"}, "is for task 'mug_to_sink' but the recorder records task 'reach'"),
        ({"plan_file": str(plan), "task": "mug_to_sink", "plan_start": 4}, "plan_start=4 is outside plan"),
        ({"plan_file": str(plan), "task": "mug_to_sink", "plan_start": -1}, "use 0..2"),
    ):
        runner = GraphRunner([NodeDesc("recorder", "recorder", {"bag_dir": str(tmp_path / "bags"), **params})])
        with pytest.raises(ValueError, match=needle) as info:
            runner.start()
        assert "\n" not in str(info.value)
        assert not runner.nodes
    assert not (tmp_path / "bags").exists()
    # run on its own (as ros2 launch runs it): one line on stderr, exit code 2
    env = dict(os.environ, ROS_DOMAIN_ID=str(150 + os.getpid() % 80), PYTHONUNBUFFERED="1")
    missing = tmp_path / "no_plan.csv"
    r = subprocess.run(
        [sys.executable, "-m", "twin.live.recorder", "--ros-args", "-p", f"plan_file:={missing}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        cwd=str(ROOT),
    )
    err = [line for line in r.stderr.strip().splitlines() if line.startswith("error:")]
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert len(err) == 1 and str(missing) in err[0] and "does not exist" in err[0], r.stderr[-2000:]
    assert "Traceback" not in r.stderr
