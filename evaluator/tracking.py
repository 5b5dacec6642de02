"""MLflow logging of an evaluation campaign: one parent run, one nested run per checkpoint.

Parent run: the spec (artifact), spec digest, seed-list digest, simulator/package versions,
the campaign's eval_info.json, Parquet tables and bar chart. Nested run per checkpoint:
params (checkpoint id, model version, spec digest, versions, seed-list digest), metrics
(overall and per-condition success with Wilson bounds, paired drops), artifacts (its
eval_info slice, videos), tags linking to the training run and the registered model
version.

If the tracking server cannot be reached, nothing computed is lost: the campaign folder
keeps every result and a ``mlflow_pending.json`` marker; :func:`sync_pending` (called at the
start of the next ``twinrank eval``) logs it when the server is back.
"""

from __future__ import annotations

import hashlib
import json
import platform
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from twinrank import tracking

PENDING = "mlflow_pending.json"
EXPERIMENT = "twinrank-eval"


@dataclass
class LoggedCampaign:
    parent_run_id: str
    checkpoint_runs: dict[str, str]  # checkpoint id -> nested run id


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("twinrank", "mujoco", "torch", "numpy", "gymnasium", "mlflow"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "missing"
    return out


def seeds_digest(spec: Any) -> str:
    return hashlib.sha256(json.dumps(list(spec.seeds)).encode()).hexdigest()[:12]


def log_campaign(result: Any, tracking_uri: str | None = None, experiment: str = EXPERIMENT,
                 campaign_name: str = "") -> LoggedCampaign:
    """Log a :class:`evaluator.run.CampaignResult`; raises on an unreachable server."""
    client = tracking.setup(tracking_uri)
    exp_id = tracking.ensure_experiment(client, experiment)
    spec = result.spec
    versions = package_versions()
    common = {"spec_digest": result.spec_digest, "seeds_digest": seeds_digest(spec), "task": spec.task,
              **{f"version.{k}": v for k, v in versions.items()}}
    parent = client.create_run(exp_id, run_name=campaign_name or f"eval-{spec.task}-{result.spec_digest[:8]}",
                               tags={"twinrank.kind": "eval_campaign", "twinrank.task": spec.task})
    pid = parent.info.run_id
    for k, v in common.items():
        client.log_param(pid, k, str(v))
    client.log_param(pid, "n_checkpoints", len(result.checkpoints))
    client.log_param(pid, "executor", result.executor)
    spec_path = Path(result.out_dir) / "spec.yaml"
    if not spec_path.exists():
        spec.to_yaml(spec_path)
    for path in (spec_path, result.eval_info_path, result.episodes_parquet, result.conditions_parquet, result.plot_path):
        if path is not None and Path(path).exists():
            client.log_artifact(pid, str(path))
    runs: dict[str, str] = {}
    for s in result.checkpoints:
        tags = {"mlflow.parentRunId": pid, "twinrank.kind": "eval_checkpoint", "twinrank.checkpoint_id": s.checkpoint_id,
                "twinrank.status": s.status}
        if s.info.get("run_id"):
            tags["twinrank.training_run_id"] = str(s.info["run_id"])
        if s.info.get("model_version"):
            tags["twinrank.model_version"] = str(s.info["model_version"])
            tags["twinrank.registered_model"] = str(s.info.get("registered_model", ""))
        if s.error:
            tags["twinrank.error"] = s.error[:4000]
        child = client.create_run(exp_id, run_name=s.label or s.checkpoint_id, tags=tags)
        cid = child.info.run_id
        params = {**common, "checkpoint_id": s.checkpoint_id, "checkpoint_path": s.path,
                  "model_version": s.info.get("model_version", ""), "policy_class": s.info.get("policy_class", ""),
                  "training_step": s.info.get("training_step", "")}
        for k, v in params.items():
            client.log_param(cid, k, str(v)[:500])
        for k, v in s.metrics().items():
            client.log_metric(cid, k.replace("/", "."), float(v))
        slice_path = Path(result.out_dir) / "checkpoints" / f"{s.checkpoint_id}.json"
        slice_path.parent.mkdir(parents=True, exist_ok=True)
        slice_path.write_text(json.dumps(s.to_dict(), indent=2, default=str))
        client.log_artifact(cid, str(slice_path))
        for v in s.videos:
            if v.get("path") and Path(v["path"]).exists():
                client.log_artifact(cid, str(v["path"]), artifact_path="videos")
        client.set_terminated(cid, status="FINISHED" if s.status == "ok" else "FAILED")
        runs[s.checkpoint_id] = cid
    client.set_terminated(pid)
    return LoggedCampaign(parent_run_id=pid, checkpoint_runs=runs)


def log_or_defer(result: Any, tracking_uri: str | None = None, **kwargs: Any) -> LoggedCampaign | None:
    """Log the campaign; if MLflow is unreachable, leave a pending marker and return None."""
    marker = Path(result.out_dir) / PENDING
    try:
        logged = log_campaign(result, tracking_uri, **kwargs)
    except Exception as exc:  # noqa: BLE001 - any transport/server error defers the upload
        marker.write_text(json.dumps({"tracking_uri": tracking.resolve_tracking_uri(tracking_uri),
                                      "error": f"{type(exc).__name__}: {exc}"[:2000], "kwargs": kwargs}))
        return None
    marker.unlink(missing_ok=True)
    return logged


def pending_campaigns(root: str | Path) -> list[Path]:
    return sorted(p.parent for p in Path(root).glob(f"**/{PENDING}"))
