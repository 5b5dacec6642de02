"""Training runs end to end: demos -> BC -> checkpoints registered in a real local MLflow store."""

import mlflow
import pytest
from typer.testing import CliRunner

from policies import load_checkpoint
from policies.bc import BCConfig
from policies.train import DemoCfg, TrainConfig, TrainConfigError, run_training
from twinrank.cli import app


def test_bc_run_registers_every_checkpoint_as_a_model_version(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cfg = TrainConfig(
        algo="bc",
        task="reach",
        demos=DemoCfg(episodes=8, seed=1000),
        bc=BCConfig(epochs=300, batch_size=512),
        checkpoint_every=100,
        eval_episodes=12,
        experiment="t",
        model_name="reach-bc-test",
    )
    result = run_training(cfg, tmp_path / "run", tracking_uri=uri, cache_dir=tmp_path / "cache")
    assert [r.step for r in result.checkpoints] == [100, 200, 300]
    client = mlflow.MlflowClient(tracking_uri=uri)
    versions = client.search_model_versions("name='reach-bc-test'")
    assert sorted(int(v.version) for v in versions) == [1, 2, 3]
    for v in versions:
        assert v.run_id == result.run_id and int(v.tags["training_step"]) in (100, 200, 300)
    assert all(0.0 <= r.success_rate <= 1.0 for r in result.checkpoints)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED" and "loss/bc" in run.data.metrics and "eval/success_rate" in run.data.metrics
    for r in result.checkpoints:
        pol = load_checkpoint(r.path)
        assert pol.checkpoint_info["training_step"] == r.step
        assert pol.checkpoint_info["run_id"] == result.run_id


def test_train_config_errors_name_the_field(tmp_path):
    with pytest.raises(TrainConfigError, match="unknown field.*'lerning_rate'"):
        TrainConfig.from_dict({"algo": "bc", "bc": {"lerning_rate": 1}})
    with pytest.raises(TrainConfigError, match="unknown task 'pour'"):
        TrainConfig.from_dict({"task": "pour"})
    bad = tmp_path / "bad.yaml"
    bad.write_text("algo: dance\n")
    r = CliRunner().invoke(app, ["train", str(bad)])
    assert r.exit_code == 2 and "algo = 'dance'" in r.output


@pytest.mark.slow
def test_ppo_bc_run_leaves_checkpoints_of_different_quality(tmp_path):
    """A PPO+BC run (BC warm start, then RL) registers a family whose in-sim success spreads:
    the first checkpoint (1k env steps) is still about as good as its BC warm start, later ones
    better. This is the family the evaluator and selector rank."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cfg = TrainConfig(
        algo="ppo_bc",
        task="reach",
        demos=DemoCfg(episodes=5, seed=1000),
        total_env_steps=8000,
        checkpoint_every=5,
        eval_episodes=20,
        experiment="t",
        model_name="reach-ppo-bc-test",
    )
    cfg.ppo.num_envs, cfg.ppo.n_steps = 8, 25
    result = run_training(cfg, tmp_path / "run", tracking_uri=uri, cache_dir=tmp_path / "cache")
    steps = [r.step for r in result.checkpoints]
    rates = [r.success_rate for r in result.checkpoints]
    print("checkpoint success:", dict(zip(steps, rates)))
    assert steps == [1000 * i for i in range(1, 9)]
    assert max(rates) - min(rates) >= 0.15, rates
    assert max(rates[4:]) > rates[0], rates  # RL improves on the warm start
    client = mlflow.MlflowClient(tracking_uri=uri)
    versions = client.search_model_versions("name='reach-ppo-bc-test'")
    by_step = {int(v.tags["training_step"]): float(v.tags["train_success_rate"]) for v in versions}
    assert by_step == pytest.approx(dict(zip(steps, rates)), abs=1e-3)


@pytest.mark.slow
def test_diffusion_bc_on_push_t_end_to_end(tmp_path):
    """Diffusion BC from push_t demos through the training core: checkpoints registered,
    loadable, and running in the twin as a chunked policy (quality is not asserted here: a
    few CPU epochs; the policy's learning is tested in test_policies)."""
    from policies.train import default_config, with_overrides

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cfg = with_overrides(
        default_config("diffusion_bc", "push_t"),
        **{
            "demos.episodes": 3,
            "bc.epochs": 4,
            "checkpoint_every": 2,
            "eval_episodes": 1,
            "experiment": "t",
            "model_name": "pusht-diffusion-test",
            "policy_config": {
                "state_dims": 5,
                "network": "mlp",
                "mlp_hidden": 64,
                "mlp_blocks": 2,
                "horizon": 8,
                "n_action_steps": 4,
                "num_inference_steps": 5,
            },
        },
    )
    result = run_training(cfg, tmp_path / "run", tracking_uri=uri, cache_dir=tmp_path / "cache")
    assert [r.step for r in result.checkpoints] == [2, 4]
    client = mlflow.MlflowClient(tracking_uri=uri)
    assert len(client.search_model_versions("name='pusht-diffusion-test'")) == 2
    pol = load_checkpoint(result.checkpoints[-1].path)
    assert pol.policy_name == "diffusion" and pol.chunked and pol.spec.task == "push_t"
    run = client.get_run(result.run_id)
    hist = [m.value for m in client.get_metric_history(result.run_id, "loss/bc")]
    assert run.info.status == "FINISHED" and len(hist) == 4 and hist[-1] < hist[0]
