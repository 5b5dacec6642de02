"""`twinrank train` as a user runs it from anywhere: where MLflow puts things, what it prints,
and the registered versions as MLflow models (real MuJoCo, real local MLflow store)."""

import os
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest

TWINRANK = str(Path(sys.executable).with_name("twinrank"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("train_cli")
    store, elsewhere = root / "store", root / "elsewhere"
    store.mkdir()
    elsewhere.mkdir()
    uri = f"sqlite:///{store}/mlflow.db"
    p = subprocess.run(
        [
            TWINRANK,
            "train",
            "--algo",
            "bc",
            "--task",
            "reach",
            "--epochs",
            "2",
            "--set",
            "eval_episodes=0",
            "--set",
            "demos.episodes=2",
            "--set",
            "checkpoint_every=1",
            "--tracking-uri",
            uri,
            "--out",
            str(store / "train"),
        ],
        cwd=elsewhere,
        capture_output=True,
        text=True,
        timeout=900,
        env=dict(os.environ),
    )
    return root, store, elsewhere, uri, p


def test_artifacts_beside_the_store_not_in_the_working_directory(trained):
    root, store, elsewhere, uri, p = trained
    assert p.returncode == 0, p.stdout + p.stderr
    assert list(elsewhere.iterdir()) == [], list(elsewhere.rglob("*"))
    client = mlflow.MlflowClient(tracking_uri=uri)
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    assert runs
    for r in runs:
        assert r.info.artifact_uri.startswith((store / "mlartifacts").as_uri()), r.info.artifact_uri


def test_summary_says_not_evaluated_without_eval_episodes(trained):
    _, _, _, _, p = trained
    assert p.returncode == 0, p.stdout + p.stderr
    rows = [line for line in p.stdout.splitlines() if "step_000000" in line]
    assert len(rows) == 2 and all("not evaluated" in line for line in rows), p.stdout
    assert "0.00" not in "".join(rows)
    assert "torch thread(s)" in p.stdout


def test_registered_versions_are_mlflow_models_with_a_signature(trained):
    _, _, _, uri, p = trained
    assert p.returncode == 0, p.stdout + p.stderr
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    versions = client.search_model_versions("name = 'reach-bc'")
    assert len(versions) == 2
    for v in versions:
        assert len(v.tags["checkpoint_id"]) == 12 and v.tags["train_success_rate"] == "not evaluated"
    mlflow.set_registry_uri(uri)
    mlflow.set_tracking_uri(uri)
    model = mlflow.pyfunc.load_model("models:/reach-bc/2")
    inputs = model.metadata.get_input_schema().inputs
    assert [i.name for i in inputs] == ["state"]
    shape = inputs[0].shape
    assert model.metadata.flavors["twinrank"]["checkpoint_format"] == "safetensors+manifest"
    actions = model.predict({"state": np.zeros((3, *shape[1:]), np.float32)})
    assert actions.shape == (3,) and actions.dtype.kind == "i"


def test_a_config_trains_the_same_checkpoints_every_time(tmp_path):
    """The policy's initial weights come from the config's seed (they came from torch's global
    generator: the demo's checkpoints differed from run to run)."""
    from safetensors.numpy import load_file

    from policies.bc import BCConfig
    from policies.train import DemoCfg, TrainConfig, run_training

    cfg = TrainConfig(
        algo="bc",
        task="reach",
        demos=DemoCfg(episodes=2, seed=1000),
        bc=BCConfig(epochs=2),
        checkpoint_every=2,
        eval_episodes=0,
        experiment="t",
        model_name="reach-repro",
    )
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    runs = [run_training(cfg, tmp_path / f"run{i}", tracking_uri=uri, cache_dir=tmp_path / "cache") for i in (0, 1)]
    a, b = (load_file(str(r.checkpoints[-1].path / "model.safetensors")) for r in runs)
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(a[k], b[k]), k


def test_default_configs_train_each_task_in_a_mode_its_demonstrator_drives(tmp_path):
    """`twinrank train --algo bc --task push_t` used to fail at once (the default config asked
    for discrete actions; push_t's demonstrator acts in pusht_xy). Each task's default control
    mode is one its demonstrator drives, and the documented command trains and registers."""
    from policies.demos import demonstrator
    from policies.train import TrainConfigError, default_config
    from twin.env import TwinEnv

    for task in ("reach", "mug_to_sink", "box_to_shelf", "open_cabinet", "push_t"):
        for algo in ("bc", "ppo_bc", "distill"):
            cfg = default_config(algo, task)
            assert cfg.control_mode == ("pusht_xy" if task == "push_t" else "discrete"), (task, algo)
        env = TwinEnv(task, control_mode=default_config("bc", task).control_mode)
        env.reset(seed=0)
        assert demonstrator(env) is not None  # raises for a mode the demonstrator cannot drive
        env.close()
    with pytest.raises(TrainConfigError, match="unknown task"):
        default_config("bc", "no_such_task")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    p = subprocess.run(
        [TWINRANK, "train", "--algo", "bc", "--task", "push_t", "--epochs", "1", "--set", "eval_episodes=0"]
        + ["--set", "demos.episodes=1", "--set", "demos.noise=0", "--set", "demos.takeover_rounds=0"]
        + ["--set", "checkpoint_every=1", "--tracking-uri", uri, "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=900,
        env=dict(os.environ),
    )
    assert p.returncode == 0, p.stdout + p.stderr
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)  # an earlier test set a global one
    versions = client.search_model_versions("name='push_t-bc'")
    assert len(versions) == 1
