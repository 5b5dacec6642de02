"""`twinrank eval` end to end: registered checkpoints -> campaign -> MLflow (real local store)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
from typer.testing import CliRunner

from policies import PolicySpec, make_policy, save_checkpoint
from twin.env import TwinEnv
from twinrank.cli import app
from twinrank import tracking

runner = CliRunner()

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
        tracking.register_checkpoint(client, "reach-test", run.info.run_id, f"checkpoints/ck{i}",
                                     tags={"checkpoint_dir": str(d)})
    client.set_registered_model_alias("reach-test", "latest-good", "2")
    (root / "spec.yaml").write_text(SPEC)
    return root, uri, run.info.run_id


def test_eval_models_uris_logs_parent_and_nested_runs(registered):
    root, uri, train_run = registered
    out = root / "campaign"
    r = runner.invoke(app, ["eval", "models:/reach-test/1", "models:/reach-test@latest-good", "--spec",
                            str(root / "spec.yaml"), "--out", str(out), "--executor", "inline", "--tracking-uri", uri])
    assert r.exit_code == 0, r.output
    info = json.loads((out / "eval_info.json").read_text())
    assert len(info["checkpoints"]) == 2 and len(info["per_episode"]) == 2 * 2 * 2
    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("twinrank-eval")
    runs = client.search_runs([exp.experiment_id])
    parents = [x for x in runs if x.data.tags.get("twinrank.kind") == "eval_campaign"]
    children = [x for x in runs if x.data.tags.get("twinrank.kind") == "eval_checkpoint"]
    assert len(parents) == 1 and len(children) == 2
    pid = parents[0].info.run_id
    for c in children:
        assert c.data.tags["mlflow.parentRunId"] == pid
        assert c.data.tags["twinrank.training_run_id"] == train_run
        assert c.data.tags["twinrank.model_version"] in ("1", "2")
        assert 0.0 <= c.data.metrics["success_rate"] <= 1.0
        assert "success_rate.nominal" in c.data.metrics and "ci_high.light_intensity" in c.data.metrics
        assert c.data.params["spec_digest"] == info["spec_digest"]
        assert "version.mujoco" in c.data.params
    names = {a.path for a in client.list_artifacts(pid)}
    assert {"eval_info.json", "episodes.parquet", "spec.yaml"} <= names


def test_unknown_model_version_fails_only_that_checkpoint(registered):
    root, uri, _ = registered
    out = root / "campaign2"
    r = runner.invoke(app, ["eval", "models:/reach-test/1", "models:/reach-test/99", "--spec", str(root / "spec.yaml"),
                            "--out", str(out), "--executor", "inline", "--tracking-uri", uri, "--no-mlflow"])
    assert r.exit_code == 0, r.output
    info = json.loads((out / "eval_info.json").read_text())
    status = sorted(c["status"] for c in info["checkpoints"])
    assert status == ["failed", "ok"]
    assert any("reach-test/99" in c["error"] for c in info["checkpoints"])


def test_unreachable_tracking_server_keeps_results_and_syncs_next_run(registered, monkeypatch):
    root, uri, _ = registered
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    out = root / "offline" / "c1"
    ck = str(root / "ck1")
    r = runner.invoke(app, ["eval", ck, "--spec", str(root / "spec.yaml"), "--out", str(out), "--executor", "inline",
                            "--tracking-uri", "http://127.0.0.1:9"])
    assert r.exit_code == 0, r.output
    assert "synced on the next run" in r.output
    assert (out / "eval_info.json").exists() and (out / "mlflow_pending.json").exists()
    # Next run (another campaign in the same parent folder) with a reachable store syncs it.
    out2 = root / "offline" / "c2"
    r = runner.invoke(app, ["eval", ck, "--spec", str(root / "spec.yaml"), "--out", str(out2), "--executor", "inline",
                            "--tracking-uri", uri])
    assert r.exit_code == 0, r.output
    assert "synced pending campaign" in r.output and not (out / "mlflow_pending.json").exists()
    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("twinrank-eval")
    campaigns = [x for x in client.search_runs([exp.experiment_id])
                 if x.data.tags.get("twinrank.kind") == "eval_campaign"]
    assert len(campaigns) >= 3


def test_console_script_with_local_worker_processes(registered):
    root, uri, _ = registered
    out = root / "local"
    env = dict(os.environ)
    exe = Path(sys.executable).with_name("twinrank")
    p = subprocess.run([str(exe), "eval", str(root / "ck1"), str(root / "ck2"), "--spec", str(root / "spec.yaml"),
                        "--out", str(out), "--workers", "2", "--no-mlflow"], capture_output=True, text=True, env=env,
                       timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "Ranking" in p.stdout
    assert len(json.loads((out / "eval_info.json").read_text())["per_episode"]) == 8
