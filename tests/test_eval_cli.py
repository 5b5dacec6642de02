"""`twinrank eval` end to end: registered checkpoints -> campaign -> MLflow (real local store).

Also the faults found when the CLI was tried as a new user would (issue 15): a checkpoint
that fails at env setup, exit codes, an unreachable or silent tracking server, duplicate
campaign runs after an outage, the MLflow record (grouped metrics, per-checkpoint artifacts,
episode table, times, source commit, model-version links), and plain output under cron.
"""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
from typer.testing import CliRunner

from policies import PolicySpec, make_policy, save_checkpoint, tracking
from twin.env import TwinEnv
from twinrank.cli import app

runner = CliRunner()
TWINRANK = str(Path(sys.executable).with_name("twinrank"))

SPEC = """name: t
tasks: [reach]
suite: default
conditions: [nominal, light_intensity]
episodes_per_condition: 2
batch_size: 2
video: {enabled: false}
"""


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    """Two checkpoints registered as versions 1 and 2 of 'reach-test' in a local store."""
    root = tmp_path_factory.mktemp("reg")
    uri = f"sqlite:///{root}/mlflow.db"
    client = tracking.setup(uri)
    exp = tracking.ensure_experiment(client, "train")
    run = client.create_run(exp)
    env = TwinEnv("reach")
    spec = PolicySpec.from_env(env, obs_keys=["state"])
    env.close()
    import torch

    for i in (1, 2):
        torch.manual_seed(i)
        d = save_checkpoint(make_policy("mlp", {}, spec), root / f"ck{i}", training_step=i, run_id=run.info.run_id)
        client.log_artifacts(run.info.run_id, str(d), artifact_path=f"checkpoints/ck{i}")
        tracking.register_checkpoint(
            client, "reach-test", run.info.run_id, f"checkpoints/ck{i}", tags={"checkpoint_dir": str(d)}
        )
    client.set_registered_model_alias("reach-test", "latest-good", "2")
    (root / "spec.yaml").write_text(SPEC)
    return root, uri, run.info.run_id


def _campaign_runs(uri: str) -> tuple[list, list]:
    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("twinrank-eval")
    runs = client.search_runs([exp.experiment_id]) if exp else []
    parents = [x for x in runs if x.data.tags.get("twinrank.kind") == "eval_campaign"]
    children = [x for x in runs if x.data.tags.get("twinrank.kind") == "eval_checkpoint"]
    return parents, children


def _eval(root: Path, *args: str) -> object:
    return runner.invoke(app, ["eval", *args, "--spec", str(root / "spec.yaml"), "--executor", "inline"])


def test_eval_models_uris_logs_parent_and_nested_runs(registered):
    root, uri, train_run = registered
    out = root / "campaign"
    r = _eval(root, "models:/reach-test/1", "models:/reach-test@latest-good", "--out", str(out), "--tracking-uri", uri)
    assert r.exit_code == 0, r.output
    info = json.loads((out / "eval_info.json").read_text())
    assert len(info["checkpoints"]) == 2 and len(info["per_episode"]) == 2 * 2 * 2
    parents, children = _campaign_runs(uri)
    assert len(parents) == 1 and len(children) == 2
    parent = parents[0]
    pid = parent.info.run_id
    client = mlflow.MlflowClient(tracking_uri=uri)
    # the parent: summary metrics, description, real times, source commit
    assert parent.data.metrics["checkpoints"] == 2 and parent.data.metrics["episodes"] == 8
    assert 0.0 <= parent.data.metrics["best_success"] <= 1.0
    assert "| checkpoint |" in parent.data.tags["mlflow.note.content"]
    camp = info["campaign"]
    assert abs(parent.info.start_time / 1000 - camp["started_at"]) < 1.0
    assert abs(parent.info.end_time / 1000 - camp["finished_at"]) < 1.0
    assert parent.info.end_time > parent.info.start_time
    assert parent.data.tags["mlflow.source.name"] == "twinrank eval"
    assert parent.data.tags["twinrank.code_version"] == tracking.code_version()
    for c in children:
        assert c.data.tags["mlflow.parentRunId"] == pid
        assert c.data.tags["twinrank.training_run_id"] == train_run
        assert c.data.tags["twinrank.model_version"] in ("1", "2")
        m = c.data.metrics
        assert 0.0 <= m["Overall/success"] <= 1.0 and m["Overall/episodes"] == 4
        # grouped with "/" (headline group first in MLflow's ASCII order), nothing flattened with "."
        assert {
            "Success/nominal",
            "Success/light_intensity",
            "ci_low/nominal",
            "ci_high/light_intensity",
            "paired_drop/light_intensity",
            "Overall/ci_low",
            "Overall/ci_high",
        } <= set(m)
        assert sorted({k.split("/")[0] for k in m})[:2] == ["Overall", "Success"]
        assert not any("." in k for k in m)
        assert c.data.params["spec_digest"] == info["spec_digest"]
        assert "version.mujoco" in c.data.params
        # the same artifact names in every nested run (Compare lines them up) + the episode table
        names = {a.path for a in client.list_artifacts(c.info.run_id)}
        assert {"eval_info.json", "success_by_condition.png", "episodes.json"} <= names, names
        table = json.loads(
            Path(
                mlflow.artifacts.download_artifacts(
                    run_id=c.info.run_id, artifact_path="episodes.json", tracking_uri=uri
                )
            ).read_text()
        )
        assert len(table["data"]) == 4 and "condition" in table["columns"]
        assert c.info.end_time >= c.info.start_time >= parent.info.start_time - 1000
    names = {a.path for a in client.list_artifacts(pid)}
    assert {"eval_info.json", "episodes.parquet", "spec.yaml"} <= names


def test_unknown_model_version_fails_only_that_checkpoint_and_exits_2(registered):
    root, uri, _ = registered
    out = root / "campaign2"
    r = _eval(
        root, "models:/reach-test/1", "models:/reach-test/99", "--out", str(out), "--tracking-uri", uri, "--no-mlflow"
    )
    assert r.exit_code == 2, r.output
    assert "has no version 99" in r.output
    info = json.loads((out / "eval_info.json").read_text())
    status = sorted(c["status"] for c in info["checkpoints"])
    assert status == ["failed", "ok"]
    assert any("reach-test/99" in c["error"] and "no version 99" in c["error"] for c in info["checkpoints"])


def test_missing_checkpoint_or_registered_model_exits_non_zero(registered, tmp_path):
    root, uri, _ = registered
    r = _eval(root, "/no/such/dir", "--out", str(tmp_path / "a"), "--tracking-uri", uri)
    assert r.exit_code == 2, r.output
    assert "/no/such/dir does not exist" in r.output
    r = _eval(root, "models:/missing@champion", "--out", str(tmp_path / "b"), "--tracking-uri", uri)
    assert r.exit_code == 2, r.output
    assert "registered model 'missing' not found" in r.output
    # brackets in names and messages are printed as written (no Rich markup)
    r = _eval(root, str(tmp_path / "ck[v2]"), "--out", str(tmp_path / "c"), "--tracking-uri", uri)
    assert r.exit_code == 2 and "ck[v2] does not exist" in r.output, r.output


def test_checkpoint_failing_at_env_setup_is_a_row_and_the_campaign_is_logged(registered, tmp_path):
    """A checkpoint of another task in the evaluated folder: its row names the reason, the
    others are evaluated, the campaign reaches MLflow, exit code 4."""
    root, _, _ = registered
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    family = tmp_path / "family"
    env = TwinEnv("mug_to_sink")
    other = save_checkpoint(
        make_policy("mlp", {}, PolicySpec.from_env(env, obs_keys=["state"])), family / "mug", training_step=1
    )
    env.close()
    import shutil

    shutil.copytree(root / "ck1", family / "reach1")
    r = _eval(root, str(family), "--out", str(tmp_path / "c"), "--tracking-uri", uri)
    assert r.exit_code == 4, r.output
    assert "Traceback" not in r.output and "TypeError" not in r.output
    assert "mug_to_sink" in r.output and "failed" in r.output
    info = json.loads((tmp_path / "c" / "eval_info.json").read_text())
    by_path = {c["path"]: c for c in info["checkpoints"]}
    assert by_path[str(other.resolve())]["status"] == "failed"
    parents, children = _campaign_runs(uri)
    assert len(parents) == 1 and len(children) == 2
    assert {c.info.status for c in children} == {"FINISHED", "FAILED"}
    assert not (tmp_path / "c" / "mlflow_pending.json").exists()


def _blackhole() -> tuple[socket.socket, int]:
    """A TCP port that accepts connections and never answers (a hung server)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(64)
    return s, s.getsockname()[1]


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_silent_tracking_server_defers_within_the_timeout_and_marks_pending_first(registered, tmp_path):
    root, _, _ = registered
    sock, port = _blackhole()
    out = tmp_path / "c"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_HTTP_REQUEST")}
    cmd = [
        TWINRANK,
        "eval",
        str(root / "ck1"),
        "--spec",
        str(root / "spec.yaml"),
        "--out",
        str(out),
        "--executor",
        "inline",
        "--tracking-uri",
        f"http://127.0.0.1:{port}",
        "--tracking-timeout",
        "4",
    ]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines = []
    marker_while_waiting = None
    try:
        for line in proc.stdout:
            lines.append(line)
            if "waiting for the MLflow tracking server" in line and marker_while_waiting is None:
                marker_while_waiting = (out / "mlflow_pending.json").exists()
        code = proc.wait(timeout=300)
    finally:
        proc.kill()
        sock.close()
    elapsed = time.monotonic() - t0
    text = "".join(lines)
    assert code == 5, text
    assert marker_while_waiting is True, text  # written before contacting the server, said while waiting
    assert (out / "mlflow_pending.json").exists() and (out / "eval_info.json").exists()
    assert "MLflow at http://127.0.0.1" in text and "unreachable" in text
    # MLflow's own defaults retried for minutes (200 s - 4.5 min measured); the budget is 4 s
    # plus evaluation and start-up, far under that whatever the load.
    assert elapsed < 150, (elapsed, text)


def test_outage_then_sync_and_reruns_keep_one_parent_run(registered, tmp_path):
    """Deferred campaign synced when the server is back, then re-run twice: one parent run, one
    nested run per checkpoint, updated (never duplicated)."""
    root, _, _ = registered
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    out = tmp_path / "campaigns" / "c1"
    args = [str(root / "ck1"), str(root / "ck2"), "--out", str(out)]
    r = _eval(root, *args, "--tracking-uri", f"http://127.0.0.1:{_closed_port()}", "--tracking-timeout", "2")
    assert r.exit_code == 5, r.output
    assert (out / "mlflow_pending.json").exists()
    # another campaign in the same parent folder syncs the pending one first
    other = tmp_path / "campaigns" / "c2"
    r = _eval(root, str(root / "ck1"), "--out", str(other), "--tracking-uri", uri)
    assert r.exit_code == 0, r.output
    assert "synced pending campaign" in r.output and not (out / "mlflow_pending.json").exists()
    # the same command again: the finished campaign is updated, not logged again
    for _ in range(2):
        r = _eval(root, *args, "--tracking-uri", uri)
        assert r.exit_code == 0, r.output
        assert "updated" in r.output
    parents, children = _campaign_runs(uri)
    keys = [p.data.tags["twinrank.campaign_key"] for p in parents]
    assert len(parents) == 2 and len(set(keys)) == 2  # c1 and c2, once each
    c1 = next(p for p in parents if p.data.params["n_checkpoints"] == "2")
    mine = [c for c in children if c.data.tags["mlflow.parentRunId"] == c1.info.run_id]
    assert len(mine) == 2
    # a pending marker left by a process killed while logging is synced without a duplicate
    (out / "mlflow_pending.json").write_text(json.dumps({"tracking_uri": uri, "kwargs": {}}))
    r = _eval(root, str(root / "ck1"), "--out", str(other), "--tracking-uri", uri)
    assert r.exit_code == 0 and "synced pending campaign" in r.output, r.output
    parents, children = _campaign_runs(uri)
    assert len(parents) == 2 and len(children) == 3


def test_folder_checkpoint_is_linked_to_its_registered_version(registered, tmp_path):
    root, uri, train_run = registered
    out = tmp_path / "c"
    r = _eval(root, str(root / "ck2"), "--out", str(out), "--tracking-uri", uri)
    assert r.exit_code == 0, r.output
    parents, children = _campaign_runs(uri)
    child = next(
        c
        for c in children
        if c.data.tags["mlflow.parentRunId"]
        in {p.info.run_id for p in parents if p.data.tags.get("twinrank.kind") == "eval_campaign"}
        and c.data.tags.get("twinrank.checkpoint_path") == str((root / "ck2").resolve())
    )
    assert child.data.tags["twinrank.registered_model"] == "reach-test"
    assert child.data.tags["twinrank.model_version"] == "2"
    assert child.data.tags["twinrank.training_run_id"] == train_run
    assert "#/models/reach-test/versions/2" in child.data.tags["mlflow.note.content"]


def test_plain_output_when_not_a_terminal(registered, tmp_path):
    """Under cron (stdout a file, 80 columns): full names, the UI command on one line, plain
    progress lines, an announced MLflow upload."""
    root, uri, _ = registered
    deep = tmp_path / "a-rather-long-training-run-name-that-does-not-fit-in-eighty-columns" / "checkpoints"
    import shutil

    shutil.copytree(root / "ck1", deep / "step_0000001")
    env = {**os.environ, "COLUMNS": "80", "TERM": "dumb"}
    p = subprocess.run(
        [
            TWINRANK,
            "eval",
            str(deep.parent),
            "--spec",
            str(root / "spec.yaml"),
            "--out",
            str(tmp_path / "c"),
            "--executor",
            "inline",
            "--tracking-uri",
            uri,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    label = "a-rather-long-training-run-name-that-does-not-fit-in-eighty-columns/step_0000001"
    assert label in p.stdout
    assert "uploading the campaign to MLflow" in p.stdout
    ui = [line for line in p.stdout.splitlines() if "ui --backend-store-uri" in line]
    assert len(ui) == 1 and "--workers 1" in ui[0] and uri in ui[0]
    progress = [line for line in p.stdout.splitlines() if "episodes (0 already done)" in line]
    assert progress and any("4/4" in line for line in progress)
    assert "\r" not in p.stdout and "\x1b[" not in p.stdout and "━" not in p.stdout


def test_console_script_with_local_worker_processes(registered):
    root, uri, _ = registered
    out = root / "local"
    exe = Path(sys.executable).with_name("twinrank")
    p = subprocess.run(
        [
            str(exe),
            "eval",
            str(root / "ck1"),
            str(root / "ck2"),
            "--spec",
            str(root / "spec.yaml"),
            "--out",
            str(out),
            "--workers",
            "2",
            "--no-mlflow",
        ],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=600,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    assert "Ranking" in p.stdout
    assert len(json.loads((out / "eval_info.json").read_text())["per_episode"]) == 8


def test_empty_spec_file_is_refused(registered, tmp_path):
    root, uri, _ = registered
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    r = runner.invoke(
        app, ["eval", str(root / "ck1"), "--spec", str(empty), "--out", str(tmp_path / "c"), "--no-mlflow"]
    )
    assert r.exit_code == 2, r.output
    assert "is empty" in r.output and not (tmp_path / "c").exists()


def test_identical_checkpoints_tie_in_the_table_with_p_best_one_in_k(registered, tmp_path):
    """The same weights saved under three names: one shared rank, P(best) about 1/3 each, marked
    indistinguishable from the leader; never ordered by input."""
    import torch

    root, uri, _ = registered
    env = TwinEnv("reach")
    spec = PolicySpec.from_env(env, obs_keys=["state"])
    env.close()
    torch.manual_seed(5)
    policy = make_policy("mlp", {}, spec)
    family = tmp_path / "same"
    for k in range(3):
        save_checkpoint(policy, family / f"copy{k}", training_step=k)
    r = _eval(root, str(family), "--out", str(tmp_path / "c"), "--no-mlflow")
    assert r.exit_code == 0, r.output
    info = json.loads((tmp_path / "c" / "eval_info.json").read_text())
    ranking = info["aggregated"]["ranking"]
    assert len(ranking) == 3 and {row["rank"] for row in ranking} == {"1="}
    assert all(abs(row["p_best"] - 1 / 3) < 0.05 for row in ranking), ranking
    assert sum(row["indistinguishable_from_leader"] for row in ranking) == 2
    assert len([line for line in r.output.splitlines() if line.strip().startswith("1=")]) == 3, r.output
    assert "indistinguishable at n = 4" in r.output and "P(best)" in r.output
