"""Training runs from a config: PPO+BC, PPO, BC, diffusion BC and teacher-student distillation,
logged to MLflow with periodic checkpoints registered as model versions.

A run writes ``<out>/checkpoints/step_<N>/{model.safetensors, manifest.json}`` every
``checkpoint_every`` updates (PPO) or epochs (BC), evaluates each checkpoint's in-sim
success on fixed seeds, logs params/losses/success to one MLflow run, logs every checkpoint
as an artifact and registers it as a new version of the registered model ``model_name``.
The periodic checkpoints of one run differ genuinely in quality (early ones are worse),
which is what the evaluator ranks.

Config (YAML or dataclass)::

    algo: ppo_bc            # ppo_bc | ppo | bc | diffusion_bc | distill
    task: reach
    control_mode: discrete
    policy: mlp             # registry name (policies.list_policies())
    policy_config: {hidden_sizes: [256, 256]}
    obs_keys: [state]
    demos: {episodes: 10, noise: 0.0, epsilon: 0.0, seed: 1000}
    total_env_steps: 20000  # PPO
    ppo: {num_envs: 8, n_steps: 25, bc_coef: 0.1}
    bc: {epochs: 30}
    checkpoint_every: 5
    eval_episodes: 10
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
import yaml

from policies.bc import BCConfig, episodes_to_samples, train_bc
from policies.checkpoint import save_checkpoint
from policies.data import data_digest, iter_episodes
from policies.demos import collect_demos
from policies.interface import Policy, PolicySpec, make_policy
from policies.ppo import DemoBuffer, PPOConfig, PPOTrainer, UpdateStats, evaluate_policy
from policies.runtime import set_torch_threads
from twin.env import TwinEnv
from twin.scene import dataclass_from_dict

Algo = Literal["ppo_bc", "ppo", "bc", "diffusion_bc", "distill"]


class TrainConfigError(ValueError):
    """A training config names an unknown algorithm, task, field or value."""


@dataclass
class DemoCfg:
    episodes: int = 10
    noise: float = 0.0
    epsilon: float = 0.0
    seed: int = 1000
    only_success: bool = True
    path: str = ""  # an existing dataset to use instead of collecting


@dataclass
class TrainConfig:
    algo: Algo = "ppo_bc"
    task: str = "reach"
    control_mode: str | None = "discrete"
    policy: str = "mlp"
    policy_config: dict[str, Any] = field(default_factory=dict)
    obs_keys: list[str] = field(default_factory=lambda: ["state"])
    suite: str | None = None
    demos: DemoCfg = field(default_factory=DemoCfg)
    total_env_steps: int = 20000
    ppo: PPOConfig = field(default_factory=PPOConfig)
    bc: BCConfig = field(default_factory=BCConfig)
    distill: dict[str, Any] = field(default_factory=dict)
    checkpoint_every: int = 5
    eval_episodes: int = 10
    eval_seed: int = 10_000
    seed: int = 0
    experiment: str = "twinrank-train"
    model_name: str = ""  # registered model; default "<task>-<algo>"
    run_name: str = ""

    @property
    def registered_model(self) -> str:
        return self.model_name or f"{self.task}-{self.algo}"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "TrainConfig":
        try:
            cfg = dataclass_from_dict(TrainConfig, d, strict=True)
        except (TypeError, ValueError) as exc:
            raise TrainConfigError(f"invalid training config: {exc}") from exc
        cfg.validate()
        return cfg

    @staticmethod
    def from_yaml(path: str | Path) -> "TrainConfig":
        p = Path(path)
        if not p.is_file():
            raise TrainConfigError(f"training config {p} not found")
        data = yaml.safe_load(p.read_text()) or {}
        if not isinstance(data, dict):
            raise TrainConfigError(f"{p}: a training config is a YAML mapping of fields")
        return TrainConfig.from_dict(data)

    def validate(self) -> None:
        from twin.tasks import TaskError, get_task_class

        if self.algo not in ("ppo_bc", "ppo", "bc", "diffusion_bc", "distill"):
            raise TrainConfigError(f"algo = {self.algo!r}: use ppo_bc, ppo, bc, diffusion_bc or distill")
        try:
            get_task_class(self.task)
        except TaskError as exc:
            raise TrainConfigError(str(exc)) from exc
        if self.algo in ("ppo_bc", "ppo") and self.total_env_steps <= 0:
            raise TrainConfigError("total_env_steps must be positive for PPO")
        if self.checkpoint_every <= 0:
            raise TrainConfigError("checkpoint_every must be >= 1")

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True, default=str).encode()).hexdigest()[:12]


@dataclass
class CheckpointRecord:
    step: int
    path: Path
    success_rate: float
    model_version: str = ""


@dataclass
class TrainResult:
    run_id: str
    checkpoints: list[CheckpointRecord]
    history: list[dict[str, float]]


ProgressFn = Callable[[str, float, float], None]  # (description, completed, total)


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def demo_dataset(cfg: TrainConfig, cache_dir: Path, control_mode: str | None, obs_keys: list[str] | None = None,
                 observations: Any = None) -> Path:
    """Collect (or reuse from the cache) the demonstrations the config asks for."""
    if cfg.demos.path:
        return Path(cfg.demos.path)
    key = hashlib.sha256(json.dumps([cfg.task, control_mode, dataclasses.asdict(cfg.demos), cfg.suite,
                                     repr(observations)], sort_keys=True).encode()).hexdigest()[:12]
    path = cache_dir / f"demos_{cfg.task}_{key}.h5"
    if path.exists():
        return path
    tmp = path.with_suffix(".partial.h5")
    tmp.unlink(missing_ok=True)
    collect_demos(cfg.task, tmp, cfg.demos.episodes, control_mode=control_mode, observations=observations,
                  suite=cfg.suite, noise=cfg.demos.noise, epsilon=cfg.demos.epsilon, seed=cfg.demos.seed,
                  only_success=cfg.demos.only_success)
    tmp.rename(path)
    return path


def build_policy(cfg: TrainConfig, env: TwinEnv) -> Policy:
    spec = PolicySpec.from_env(env, obs_keys=cfg.obs_keys, task=cfg.task)
    return make_policy(cfg.policy, cfg.policy_config, spec)


def run_training(cfg: TrainConfig, out_dir: str | Path, *, tracking_uri: str | None = None,
                 progress: ProgressFn | None = None, cache_dir: str | Path | None = None) -> TrainResult:
    """Run one training job end to end (demos, training, checkpoints, MLflow)."""
    from policies import tracking

    set_torch_threads("training")
    out = Path(out_dir)
    (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    cache = Path(cache_dir) if cache_dir else out.parent / ".cache"
    cache.mkdir(parents=True, exist_ok=True)
    client = tracking.setup(tracking_uri)
    exp_id = tracking.ensure_experiment(client, cfg.experiment)
    run = client.create_run(exp_id, run_name=cfg.run_name or f"{cfg.algo}-{cfg.task}-{cfg.digest()}",
                            tags={"twinrank.kind": "train", "twinrank.task": cfg.task, "twinrank.algo": cfg.algo})
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


def save_and_register(policy: Policy, cfg: TrainConfig, out: Path, client: Any, run_id: str, step: int,
                      digest: str, success: float, extra: dict[str, Any] | None = None) -> CheckpointRecord:
    """Write a checkpoint, log it as an artifact of the run and register it as a model version."""
    from policies import tracking
    from policies.checkpoint import checkpoint_id
    from policies.mlflow_model import write_mlmodel

    ckpt_dir = out / "checkpoints" / f"step_{step:07d}"
    evaluated = math.isfinite(success)
    save_checkpoint(policy, ckpt_dir, training_step=step, run_id=run_id, data_digest=digest,
                    extra={"algo": cfg.algo, "train_success_rate": success if evaluated else None, **(extra or {})})
    artifact_path = f"checkpoints/step_{step:07d}"
    write_mlmodel(ckpt_dir, run_id=run_id, artifact_path=artifact_path)  # signature + flavors in the registry
    client.log_artifacts(run_id, str(ckpt_dir), artifact_path=artifact_path)
    version = tracking.register_checkpoint(
        client, cfg.registered_model, run_id, artifact_path,
        tags={"task": cfg.task, "algo": cfg.algo, "training_step": str(step),
              "train_success_rate": f"{success:.3f}" if evaluated else "not evaluated",
              "train_success_episodes": str(cfg.eval_episodes if evaluated else 0),
              "checkpoint_dir": str(ckpt_dir.resolve()), "checkpoint_id": checkpoint_id(ckpt_dir)})
    if evaluated:
        client.log_metric(run_id, "checkpoint/success_rate", success, step=step)
    return CheckpointRecord(step=step, path=ckpt_dir, success_rate=success, model_version=version)


def _eval_seeds(cfg: TrainConfig) -> list[int]:
    return [cfg.eval_seed + i for i in range(cfg.eval_episodes)]


def _run_ppo(cfg: TrainConfig, out: Path, client: Any, run_id: str, progress: ProgressFn | None,
             cache: Path) -> tuple[list[CheckpointRecord], list[dict[str, float]]]:
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
            succ = evaluate_policy(policy, cfg.task, _eval_seeds(cfg), control_mode=cfg.control_mode)
            if math.isfinite(succ):
                client.log_metric(run_id, "eval/success_rate", succ, step=s.env_steps)
            records.append(save_and_register(policy, cfg, out, client, run_id, s.env_steps, digest, succ))
            policy.train()
        if progress is not None:
            progress(f"PPO update {s.update} ({s.fps:.0f} env-steps/s)", min(s.env_steps, cfg.total_env_steps),
                     cfg.total_env_steps)

    try:
        trainer.train(cfg.total_env_steps, callback=on_update)
    finally:
        trainer.close()
    client.log_metric(run_id, "train/wall_time_s", time.perf_counter() - t0)
    return records, history


def _run_bc(cfg: TrainConfig, out: Path, client: Any, run_id: str, progress: ProgressFn | None,
            cache: Path) -> tuple[list[CheckpointRecord], list[dict[str, float]]]:
    env = TwinEnv(cfg.task, control_mode=cfg.control_mode)
    policy = build_policy(cfg, env)
    env.close()
    path = demo_dataset(cfg, cache, cfg.control_mode)
    digest = data_digest(path)
    episodes = list(iter_episodes(path, policy.spec.obs_keys))
    obs, acts = episodes_to_samples(episodes, policy.spec.obs_keys, policy.n_obs_steps, policy.horizon,
                                    getattr(policy, "action_offset", 0))
    client.log_metric(run_id, "demos/transitions", len(acts))
    records: list[CheckpointRecord] = []
    history: list[dict[str, float]] = []
    bc_cfg = dataclasses.replace(cfg.bc, seed=cfg.seed)

    def on_epoch(epoch: int, loss: float) -> None:
        client.log_metric(run_id, "loss/bc", loss, step=epoch)
        history.append({"epoch": epoch, "loss/bc": loss})
        if epoch % cfg.checkpoint_every == 0 or epoch == bc_cfg.epochs:
            succ = evaluate_policy(policy, cfg.task, _eval_seeds(cfg), control_mode=cfg.control_mode)
            if math.isfinite(succ):
                client.log_metric(run_id, "eval/success_rate", succ, step=epoch)
            records.append(save_and_register(policy, cfg, out, client, run_id, epoch, digest, succ))
        if progress is not None:
            progress(f"BC epoch {epoch} (loss {loss:.4f})", epoch, bc_cfg.epochs)

    train_bc(policy, obs, acts, bc_cfg, callback=on_epoch)
    return records, history


def default_config(algo: str, task: str) -> TrainConfig:
    """Sensible starting configs per algorithm (small enough for a laptop CPU)."""
    if algo == "diffusion_bc":
        # push_t: condition on gym-pusht's 5-d state (agent xy, block xy, block angle), as the
        # field's Diffusion Policy does.
        return TrainConfig(algo="diffusion_bc", task=task, control_mode=None, policy="diffusion",
                           policy_config={"state_dims": 5} if task == "push_t" else {}, obs_keys=["state"], demos=DemoCfg(episodes=30), bc=BCConfig(epochs=60, batch_size=256),
                           checkpoint_every=10, eval_episodes=10)
    if algo == "bc":
        return TrainConfig(algo="bc", task=task, demos=DemoCfg(episodes=20), bc=BCConfig(epochs=40),
                           checkpoint_every=5)
    if algo == "distill":
        return TrainConfig(algo="distill", task=task, policy="pointcloud", obs_keys=["point_cloud", "proprio"])
    return TrainConfig(algo=algo, task=task)  # type: ignore[arg-type]


def with_overrides(cfg: TrainConfig, **overrides: Any) -> TrainConfig:
    data = cfg.to_dict()
    for k, v in overrides.items():
        if v is None:
            continue
        node = data
        parts = k.split(".")
        for p in parts[:-1]:
            node = node[p]
        node[parts[-1]] = v
    return TrainConfig.from_dict(data)


__all__ = ["TrainConfig", "DemoCfg", "TrainResult", "CheckpointRecord", "run_training", "default_config",
           "with_overrides", "TrainConfigError", "save_and_register"]
