"""Training runs from a config: PPO+BC, PPO, BC, diffusion BC and teacher-student distillation,
logged to MLflow with periodic checkpoints registered as model versions.

A run writes ``<out>/checkpoints/step_<N>/{model.safetensors, manifest.json}`` every
``checkpoint_every`` updates (PPO) or epochs (BC), evaluates each checkpoint's in-sim
success on fixed seeds, logs params/losses/success to one MLflow run, logs every checkpoint
as an artifact and registers it as a new version of the registered model ``model_name``.
The periodic checkpoints of one run differ genuinely in quality (early ones are worse),
which is what the evaluator ranks.

The config (YAML or dataclass, with an example) is :class:`policies.train_config.TrainConfig`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from policies.bc import episodes_to_samples, train_bc
from policies.data import data_digest, iter_episodes
from policies.demos import collect_demos
from policies.interface import Policy, PolicySpec, make_policy
from policies.mlflow_model import save_and_register
from policies.ppo import DemoBuffer, PPOTrainer, UpdateStats
from policies.rollout import success_rate
from policies.runtime import set_torch_threads
from policies.train_config import (
    CheckpointRecord,
    DemoCfg,
    ProgressFn,
    TrainConfig,
    TrainConfigError,
    TrainResult,
    default_config,
    with_overrides,
)
from twin.env import OBSERVATION_VERSION, TwinEnv


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def demo_dataset(
    cfg: TrainConfig,
    cache_dir: Path,
    control_mode: str | None,
    obs_keys: list[str] | None = None,
    observations: Any = None,
) -> Path:
    """Collect (or reuse from the cache) the demonstrations the config asks for."""
    if cfg.demos.path:
        return Path(cfg.demos.path)
    key = hashlib.sha256(
        json.dumps(
            [cfg.task, control_mode, dataclasses.asdict(cfg.demos), cfg.suite, repr(observations), OBSERVATION_VERSION],
            sort_keys=True,
        ).encode()
    ).hexdigest()[:12]
    path = cache_dir / f"demos_{cfg.task}_{key}.h5"
    if path.exists():
        return path
    tmp = path.with_suffix(".partial.h5")
    tmp.unlink(missing_ok=True)
    collect_demos(
        cfg.task,
        tmp,
        cfg.demos.episodes,
        control_mode=control_mode,
        observations=observations,
        suite=cfg.suite,
        noise=cfg.demos.noise,
        epsilon=cfg.demos.epsilon,
        seed=cfg.demos.seed,
        only_success=cfg.demos.only_success,
    )
    tmp.rename(path)
    return path


def build_policy(cfg: TrainConfig, env: TwinEnv) -> Policy:
    spec = PolicySpec.from_env(env, obs_keys=cfg.obs_keys, task=cfg.task)
    return make_policy(cfg.policy, cfg.policy_config, spec)


def run_training(
    cfg: TrainConfig,
    out_dir: str | Path,
    *,
    tracking_uri: str | None = None,
    progress: ProgressFn | None = None,
    cache_dir: str | Path | None = None,
) -> TrainResult:
    """Run one training job end to end (demos, training, checkpoints, MLflow)."""
    from policies import tracking

    set_torch_threads("training")
    torch.manual_seed(cfg.seed)  # the policy's initial weights: a config trains the same checkpoints every time
    out = Path(out_dir)
    (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    cache = Path(cache_dir) if cache_dir else out.parent / ".cache"
    cache.mkdir(parents=True, exist_ok=True)
    client = tracking.setup(tracking_uri)
    exp_id = tracking.ensure_experiment(client, cfg.experiment)
    run = client.create_run(
        exp_id,
        run_name=cfg.run_name or f"{cfg.algo}-{cfg.task}-{cfg.digest()}",
        tags={"twinrank.kind": "train", "twinrank.task": cfg.task, "twinrank.algo": cfg.algo},
    )
    run_id = run.info.run_id
    for k, v in _flatten(cfg.to_dict()).items():
        client.log_param(run_id, k, str(v)[:500])
    (out / "train_config.yaml").write_text(yaml.safe_dump(json.loads(json.dumps(cfg.to_dict(), default=str))))
    client.log_artifact(run_id, str(out / "train_config.yaml"))
    records: list[CheckpointRecord] = []
    history: list[dict[str, float]] = []
    status = "FAILED"
    try:
        if cfg.algo == "distill":
            from policies.distill import run_distillation

            records, history = run_distillation(cfg, out, client, run_id, progress=progress, cache_dir=cache)
        elif cfg.algo in ("ppo", "ppo_bc"):
            records, history = _run_ppo(cfg, out, client, run_id, progress, cache)
        else:
            records, history = _run_bc(cfg, out, client, run_id, progress, cache)
        status = "FINISHED"
    finally:
        client.set_terminated(run_id, status=status)
    return TrainResult(run_id=run_id, checkpoints=records, history=history)


def _eval_seeds(cfg: TrainConfig) -> list[int]:
    return [cfg.eval_seed + i for i in range(cfg.eval_episodes)]


def _run_ppo(
    cfg: TrainConfig, out: Path, client: Any, run_id: str, progress: ProgressFn | None, cache: Path
) -> tuple[list[CheckpointRecord], list[dict[str, float]]]:
    env = TwinEnv(cfg.task, control_mode=cfg.control_mode)
    policy = build_policy(cfg, env)
    env.close()
    demos = None
    digest = ""
    ppo_cfg = dataclasses.replace(cfg.ppo, seed=cfg.seed)
    if cfg.algo == "ppo":
        ppo_cfg = dataclasses.replace(ppo_cfg, bc_coef=0.0)
    if ppo_cfg.bc_coef > 0:
        path = demo_dataset(cfg, cache, cfg.control_mode)
        digest = data_digest(path)
        obs, acts = episodes_to_samples(list(iter_episodes(path, policy.spec.obs_keys)), policy.spec.obs_keys)
        demos = DemoBuffer(obs, acts, seed=cfg.seed)
        policy.fit_normalizer(obs)
        client.log_metric(run_id, "demos/transitions", len(acts))
    trainer = PPOTrainer(policy, cfg.task, ppo_cfg, demos=demos, control_mode=cfg.control_mode, suite=cfg.suite)
    records: list[CheckpointRecord] = []
    history: list[dict[str, float]] = []
    t0 = time.perf_counter()

    def on_update(s: UpdateStats) -> None:
        m = {k: v for k, v in s.metrics().items() if np.isfinite(v)}
        for k, v in m.items():
            client.log_metric(run_id, k, float(v), step=s.env_steps)
        history.append({"env_steps": s.env_steps, **m})
        if s.update % cfg.checkpoint_every == 0 or s.env_steps >= cfg.total_env_steps:
            succ = success_rate(policy, cfg.task, _eval_seeds(cfg), control_mode=cfg.control_mode)
            if math.isfinite(succ):
                client.log_metric(run_id, "eval/success_rate", succ, step=s.env_steps)
            records.append(save_and_register(policy, cfg, out, client, run_id, s.env_steps, digest, succ))
            policy.train()
        if progress is not None:
            progress(
                f"PPO update {s.update} ({s.fps:.0f} env-steps/s)",
                min(s.env_steps, cfg.total_env_steps),
                cfg.total_env_steps,
            )

    try:
        trainer.train(cfg.total_env_steps, callback=on_update)
    finally:
        trainer.close()
    client.log_metric(run_id, "train/wall_time_s", time.perf_counter() - t0)
    return records, history


def _run_bc(
    cfg: TrainConfig, out: Path, client: Any, run_id: str, progress: ProgressFn | None, cache: Path
) -> tuple[list[CheckpointRecord], list[dict[str, float]]]:
    env = TwinEnv(cfg.task, control_mode=cfg.control_mode)
    policy = build_policy(cfg, env)
    env.close()
    path = demo_dataset(cfg, cache, cfg.control_mode)
    digest = data_digest(path)
    episodes = list(iter_episodes(path, policy.spec.obs_keys))
    obs, acts = episodes_to_samples(
        episodes, policy.spec.obs_keys, policy.n_obs_steps, policy.horizon, getattr(policy, "action_offset", 0)
    )
    client.log_metric(run_id, "demos/transitions", len(acts))
    records: list[CheckpointRecord] = []
    history: list[dict[str, float]] = []
    bc_cfg = dataclasses.replace(cfg.bc, seed=cfg.seed)

    def on_epoch(epoch: int, loss: float) -> None:
        client.log_metric(run_id, "loss/bc", loss, step=epoch)
        history.append({"epoch": epoch, "loss/bc": loss})
        if epoch % cfg.checkpoint_every == 0 or epoch == bc_cfg.epochs:
            succ = success_rate(policy, cfg.task, _eval_seeds(cfg), control_mode=cfg.control_mode)
            if math.isfinite(succ):
                client.log_metric(run_id, "eval/success_rate", succ, step=epoch)
            records.append(save_and_register(policy, cfg, out, client, run_id, epoch, digest, succ))
        if progress is not None:
            progress(f"BC epoch {epoch} (loss {loss:.4f})", epoch, bc_cfg.epochs)

    train_bc(policy, obs, acts, bc_cfg, callback=on_epoch)
    return records, history


__all__ = [
    "TrainConfig",
    "DemoCfg",
    "TrainResult",
    "CheckpointRecord",
    "run_training",
    "default_config",
    "with_overrides",
    "TrainConfigError",
    "save_and_register",
]
