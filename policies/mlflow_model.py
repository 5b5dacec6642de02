"""Registered checkpoints as MLflow models, without pickles.

:func:`save_and_register` is how a training run (:mod:`policies.train`,
:mod:`policies.distill`) writes a checkpoint, logs it and registers it as a model version.

:func:`write_mlmodel` adds an ``MLmodel`` file to a checkpoint folder (``model.safetensors`` +
``manifest.json``) before it is logged and registered, so MLflow's Model registry shows the
version's input/output signature (one tensor per observation key, the action) and two flavors:

- ``twinrank``: the checkpoint format (weights and manifest file names, policy class, task,
  control mode); :func:`load_policy` loads it with :func:`policies.load_checkpoint`.
- ``python_function`` with ``loader_module: policies.mlflow_model`` (module-based, no
  cloudpickle): ``mlflow.pyfunc.load_model(uri).predict({obs_key: batch, ...})`` returns the
  policy's deterministic actions for a batch of observations.
"""

from __future__ import annotations

import math
import os
import platform
from pathlib import Path
from typing import Any

import numpy as np

from policies.train_config import CheckpointRecord, TrainConfig

FLAVOR = "twinrank"
MLMODEL = "MLmodel"


def signature_of(spec: Any) -> Any:
    """The MLflow signature of a :class:`policies.PolicySpec`: one tensor per observation key
    (batch dimension -1), the action tensor (int64 index for discrete actions)."""
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    inputs = Schema([TensorSpec(np.dtype(o.dtype), (-1, *o.shape), name=o.key) for o in spec.observations])
    act = spec.action
    out = (
        TensorSpec(np.dtype("int64"), (-1,), name="action")
        if act.n is not None
        else TensorSpec(np.dtype("float32"), (-1, *act.shape), name="action")
    )
    return ModelSignature(inputs=inputs, outputs=Schema([out]))


def write_mlmodel(checkpoint_dir: str | os.PathLike[str], run_id: str = "", artifact_path: str = "") -> Path:
    """Write ``MLmodel`` (signature + ``twinrank`` and ``python_function`` flavors) into a
    checkpoint folder; returns its path. The checkpoint id (a hash of the weights and
    manifest) is unchanged."""
    import mlflow
    from mlflow.models import Model

    from policies.checkpoint import read_manifest
    from policies.interface import PolicySpec

    d = Path(checkpoint_dir)
    manifest = read_manifest(d)
    spec = PolicySpec.from_dict(manifest["spec"])
    model = Model(artifact_path=artifact_path or None, run_id=run_id or None)
    model.add_flavor(
        FLAVOR,
        checkpoint_format="safetensors+manifest",
        weights="model.safetensors",
        manifest="manifest.json",
        policy_class=str(manifest.get("policy_class", "")),
        task=spec.task,
        control_mode=spec.action.control_mode,
        twinrank_format_version=manifest.get("format_version", 1),
    )
    mlflow.pyfunc.add_to_model(
        model, loader_module="policies.mlflow_model", data=".", python_version=platform.python_version()
    )
    model.signature = signature_of(spec)
    path = d / MLMODEL
    model.save(str(path))
    return path


def load_policy(model_dir: str | os.PathLike[str], device: str = "cpu") -> Any:
    """The policy of a folder holding an ``MLmodel`` with the ``twinrank`` flavor (or a plain checkpoint)."""
    from policies.checkpoint import load_checkpoint

    return load_checkpoint(model_dir, device=device)


def save_and_register(
    policy: Any,
    cfg: TrainConfig,
    out: Path,
    client: Any,
    run_id: str,
    step: int,
    digest: str,
    success: float,
    extra: dict[str, Any] | None = None,
) -> CheckpointRecord:
    """Write a checkpoint, log it as an artifact of the run and register it as a model version."""
    from policies import tracking
    from policies.checkpoint import checkpoint_id, save_checkpoint

    ckpt_dir = out / "checkpoints" / f"step_{step:07d}"
    evaluated = math.isfinite(success)
    save_checkpoint(
        policy,
        ckpt_dir,
        training_step=step,
        run_id=run_id,
        data_digest=digest,
        extra={"algo": cfg.algo, "train_success_rate": success if evaluated else None, **(extra or {})},
    )
    artifact_path = f"checkpoints/step_{step:07d}"
    write_mlmodel(ckpt_dir, run_id=run_id, artifact_path=artifact_path)  # signature + flavors in the registry
    client.log_artifacts(run_id, str(ckpt_dir), artifact_path=artifact_path)
    version = tracking.register_checkpoint(
        client,
        cfg.registered_model,
        run_id,
        artifact_path,
        tags={
            "task": cfg.task,
            "algo": cfg.algo,
            "training_step": str(step),
            "train_success_rate": f"{success:.3f}" if evaluated else "not evaluated",
            "train_success_episodes": str(cfg.eval_episodes if evaluated else 0),
            "checkpoint_dir": str(ckpt_dir.resolve()),
            "checkpoint_id": checkpoint_id(ckpt_dir),
        },
    )
    if evaluated:
        client.log_metric(run_id, "checkpoint/success_rate", success, step=step)
    return CheckpointRecord(step=step, path=ckpt_dir, success_rate=success, model_version=version)


class _PyfuncPolicy:
    """What ``mlflow.pyfunc`` wraps: a batch of observations in, deterministic actions out."""

    def __init__(self, policy: Any) -> None:
        self.policy = policy

    def predict(self, model_input: Any, params: dict[str, Any] | None = None) -> np.ndarray:
        if not isinstance(model_input, dict):
            raise TypeError(
                f"give a dict of observation arrays keyed by {self.policy.spec.obs_keys}, not "
                f"{type(model_input).__name__}"
            )
        obs = {k: np.asarray(v) for k, v in model_input.items()}
        self.policy.reset()  # every call is a fresh batch of episodes (chunked policies drop old chunks)
        return np.asarray(self.policy.act(obs, deterministic=True))


def _load_pyfunc(data_path: str) -> _PyfuncPolicy:
    """Entry point of the ``python_function`` flavor (``loader_module``)."""
    return _PyfuncPolicy(load_policy(data_path))


__all__ = ["FLAVOR", "MLMODEL", "load_policy", "save_and_register", "signature_of", "write_mlmodel"]
