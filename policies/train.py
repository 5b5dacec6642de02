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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from policies.bc import episodes_to_samples, policy_samples, train_bc
from policies.data import Episode, data_digest, iter_episodes
from policies.demos import collect_demos, collect_takeovers
from policies.interface import Policy, PolicySpec, make_policy
from policies.mlflow_model import save_and_register
from policies.ppo import DemoBuffer, PPOTrainer, UpdateStats
from policies.rollout import success_rate
from policies.runtime import available_cores, set_torch_threads
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


def demo_workers(cfg: TrainConfig) -> int:
    """Processes that collect demonstrations: ``demos.workers``, 0 = one per core."""
    return cfg.demos.workers or available_cores()


def demo_dataset(
    cfg: TrainConfig,
    cache_dir: Path,
    control_mode: str | None,
    obs_keys: list[str] | None = None,
    observations: Any = None,
    progress: Callable[[int, Episode], None] | None = None,
) -> Path:
    """Collect (or reuse from the cache) the demonstrations the config asks for."""
    if cfg.demos.path:
        return Path(cfg.demos.path)
    demos = dataclasses.asdict(cfg.demos)
    for k in ("workers", "takeover_rounds", "takeover_episodes", "takeover_max_switch"):  # not the demos' content
        demos.pop(k)
    key = hashlib.sha256(
        json.dumps(
            [cfg.task, control_mode, demos, cfg.suite, repr(observations), OBSERVATION_VERSION],
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
        workers=demo_workers(cfg),
        progress=progress,
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


def _demo_progress(progress: ProgressFn | None, what: str, total: int) -> Callable[[int, Episode], None] | None:
    if progress is None:
        return None
    done = [0, 0]

    every = max(1, total // 20)  # about 20 lines in a log file
    progress(what, 0, total)  # starts the display's clock (rate, ETA) now

    def report(i: int, ep: Episode) -> None:
        done[0] += 1
        done[1] += int(ep.success)
        if done[0] % every == 0 or done[0] == total:
            progress(f"{what} ({done[1]} succeeded)", done[0], total)

    return report


def _run_bc(
    cfg: TrainConfig, out: Path, client: Any, run_id: str, progress: ProgressFn | None, cache: Path
) -> tuple[list[CheckpointRecord], list[dict[str, float]]]:
    env = TwinEnv(cfg.task, control_mode=cfg.control_mode)
    policy = build_policy(cfg, env)
    env.close()
    t0 = time.perf_counter()
    path = demo_dataset(
        cfg, cache, cfg.control_mode, progress=_demo_progress(progress, "expert demos", cfg.demos.episodes)
    )
    digest = data_digest(path)
    episodes = list(iter_episodes(path, policy.spec.obs_keys))
    if not episodes:
        raise ValueError(
            f"no demonstration to train on in {path}: none of the {cfg.demos.episodes} expert episodes "
            f"succeeded (demos.noise = {cfg.demos.noise}); lower demos.noise or set demos.only_success=false"
        )
    client.log_metric(run_id, "demos/episodes", len(episodes))
    client.log_metric(run_id, "demos/collect_s", time.perf_counter() - t0)
    records: list[CheckpointRecord] = []
    history: list[dict[str, float]] = []
    bc_cfg = dataclasses.replace(cfg.bc, seed=cfg.seed)
    rounds = 1 + cfg.demos.takeover_rounds
    total_epochs = rounds * bc_cfg.epochs
    for r in range(rounds):
        if r > 0:
            # DAgger-style round: the latest checkpoint drives, the expert finishes
            t1 = time.perf_counter()
            n = cfg.demos.takeover_episodes
            tk_path = out / f"takeovers_round{r}.h5"
            tk_path.unlink(missing_ok=True)  # a re-run's: its checkpoint is not this run's
            tk = collect_takeovers(
                cfg.task,
                records[-1].path,
                tk_path,
                n,
                control_mode=cfg.control_mode,
                seed=cfg.demos.seed + 100_000 * r,
                max_switch=cfg.demos.takeover_max_switch,
                workers=demo_workers(cfg),
                progress=_demo_progress(progress, f"takeover round {r}", n),
            )
            new = list(iter_episodes(tk, policy.spec.obs_keys))
            episodes += new
            # the checkpoint's data: the demos and every round so far
            digest = hashlib.sha256(f"{digest}+{data_digest(tk)}".encode()).hexdigest()[: len(digest)]
            client.log_metric(run_id, "demos/takeover_episodes", len(new), step=r)
            client.log_metric(run_id, "demos/takeover_collect_s", time.perf_counter() - t1, step=r)
        obs, acts = policy_samples(policy, episodes)
        client.log_metric(run_id, "demos/transitions", len(acts), step=r)
        offset = r * bc_cfg.epochs

        def on_epoch(epoch: int, loss: float, offset: int = offset) -> None:
            step = offset + epoch
            client.log_metric(run_id, "loss/bc", loss, step=step)
            history.append({"epoch": step, "loss/bc": loss})
            if step % cfg.checkpoint_every == 0 or epoch == bc_cfg.epochs:
                if progress is not None:
                    progress(f"BC epoch {step}: evaluating {cfg.eval_episodes} episodes", step, total_epochs)
                succ = success_rate(policy, cfg.task, _eval_seeds(cfg), control_mode=cfg.control_mode)
                if math.isfinite(succ):
                    client.log_metric(run_id, "eval/success_rate", succ, step=step)
                records.append(save_and_register(policy, cfg, out, client, run_id, step, digest, succ))
            if progress is not None and (step % max(1, total_epochs // 60) == 0 or step == total_epochs):
                progress(f"BC epoch {step} (loss {loss:.4f})", step, total_epochs)

        # each pass refits the normalization to everything so far (the takeovers included)
        train_bc(policy, obs, acts, bc_cfg, callback=on_epoch)
    client.log_metric(run_id, "train/wall_time_s", time.perf_counter() - t0)
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
