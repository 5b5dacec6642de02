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


def _train_bc(task: str, uri: str, out: Path, epochs: int, **sets: object) -> subprocess.CompletedProcess:
    """`twinrank train --algo bc --task TASK --epochs N --set k=v ...`, which must succeed."""
    args = [TWINRANK, "train", "--algo", "bc", "--task", task, "--epochs", str(epochs)]
    for k, v in sets.items():
        args += ["--set", f"{k}={v}"]
    p = subprocess.run(
        args + ["--tracking-uri", uri, "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
        env=dict(os.environ),
    )
    assert p.returncode == 0, p.stdout + p.stderr
    return p


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
    _train_bc(
        "push_t",
        uri,
        tmp_path,
        epochs=1,
        eval_episodes=0,
        **{"demos.episodes": 1, "demos.noise": 0, "demos.takeover_rounds": 0, "checkpoint_every": 1},
    )
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)  # an earlier test set a global one
    versions = client.search_model_versions("name='push_t-bc'")
    assert len(versions) == 1


def test_default_mug_to_sink_bc_trains_the_chunked_policy_with_takeover_rounds(tmp_path):
    """The documented `twinrank train --algo bc --task mug_to_sink` (scaled down): the chunked
    state policy, a takeover round driven by the first pass's checkpoint, a checkpoint per
    pass, each loadable and playing 4 actions of each planned chunk."""
    from policies import load_checkpoint
    from policies.data import iter_episodes
    from policies.demos import takeover_switch
    from twin.env import TwinEnv

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    p = _train_bc(
        "mug_to_sink",
        uri,
        tmp_path,
        epochs=2,
        eval_episodes=1,
        **{"demos.episodes": 4, "demos.takeover_rounds": 1, "demos.takeover_episodes": 4, "demos.workers": 1},
    )
    assert "takeover round 1" in p.stdout and "(n = 1)" in p.stdout
    (run_dir,) = tmp_path.glob("bc-mug_to_sink-*")
    ckpts = sorted((run_dir / "checkpoints").iterdir())
    assert [c.name for c in ckpts] == ["step_0000002", "step_0000004"]
    (takeovers,) = run_dir.glob("takeovers_round1.h5")
    switches = [takeover_switch(ep) for ep in iter_episodes(takeovers, ["state"])]
    assert switches and all(s is not None and 1 <= s <= 100 for s in switches)
    pol = load_checkpoint(ckpts[-1])
    assert type(pol).__name__ == "ChunkMLPPolicy" and pol.n_action_steps == 4
    with TwinEnv("mug_to_sink", control_mode="discrete") as env:
        obs, _ = env.reset(seed=3)
        pol.reset()
        planned = [pol.act_single(obs) for _ in range(4)]  # one plan covers 4 calls
        assert all(isinstance(a, int) and 0 <= a < 14 for a in planned)
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    assert len(client.search_model_versions("name='mug_to_sink-bc'")) == 2
