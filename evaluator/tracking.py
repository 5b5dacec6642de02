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
    return hashlib.sha256(json.dumps(list(spec.seed_list())).encode()).hexdigest()[:12]


def log_campaign(result: Any, tracking_uri: str | None = None, experiment: str = EXPERIMENT,
                 campaign_name: str = "") -> LoggedCampaign:
    """Log a :class:`evaluator.run.CampaignResult`; raises on an unreachable server."""
    client = tracking.setup(tracking_uri)
    exp_id = tracking.ensure_experiment(client, experiment)
    spec = result.spec
    versions = package_versions()
    tasks = ",".join(sorted({c.task for c in result.checkpoints if c.task})) or ",".join(spec.tasks)
    common = {"spec_digest": result.spec_digest, "seeds_digest": seeds_digest(spec), "tasks": tasks,
              **{f"version.{k}": v for k, v in versions.items()}}
    parent = client.create_run(exp_id, run_name=campaign_name or f"eval-{spec.name}-{result.spec_digest[:8]}",
                               tags={"twinrank.kind": "eval_campaign", "twinrank.tasks": tasks})
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


def load_campaign(folder: str | Path) -> Any:
    """A campaign as written on disk (its eval_info.json), in the shape :func:`log_campaign` reads."""
    from types import SimpleNamespace

    from evaluator.results import CheckpointSummary
    from evaluator.spec import EvalSpec

    folder = Path(folder)
    info = json.loads((folder / "eval_info.json").read_text())
    plot = folder / "success_by_condition.png"
    return SimpleNamespace(
        out_dir=folder, spec=EvalSpec.from_dict(info["spec"]), spec_digest=info["spec_digest"],
        checkpoints=[CheckpointSummary(**c) for c in info["checkpoints"]], eval_info_path=folder / "eval_info.json",
        episodes_parquet=folder / "episodes.parquet", conditions_parquet=folder / "conditions.parquet",
        plot_path=plot if plot.exists() else None, executor=str(info.get("executor", "")))


def pending_campaigns(root: str | Path) -> list[Path]:
    return sorted(p.parent for p in Path(root).glob(f"**/{PENDING}"))


def resolve_model_uri(uri: str, cache_dir: str | Path, tracking_uri: str | None = None) -> tuple[Path, dict[str, str]]:
    """``models:/<name>/<version>`` or ``models:/<name>@<alias>`` -> a local checkpoint
    directory (the training run's own copy when it still exists, else downloaded from the
    model version's artifacts) and {registered_model, model_version, run_id}."""
    from mlflow.artifacts import download_artifacts

    from evaluator.run import CheckpointResolveError

    body = uri[len("models:/"):]
    client = tracking.setup(tracking_uri)
    try:
        if "@" in body:
            name, alias = body.split("@", 1)
            mv = client.get_model_version_by_alias(name, alias)
        else:
            name, _, version = body.rpartition("/")
            mv = client.get_model_version(name, version)
    except Exception as exc:  # noqa: BLE001 - MLflow raises several types
        raise CheckpointResolveError(f"{uri}: not found in the MLflow registry at "
                                     f"{tracking.resolve_tracking_uri(tracking_uri)} ({exc})") from exc
    info = {"registered_model": mv.name, "model_version": str(mv.version), "run_id": mv.run_id or ""}
    local = Path(mv.tags.get("checkpoint_dir", ""))
    if mv.tags.get("checkpoint_dir") and (local / "manifest.json").is_file():
        return local, info
    dest = Path(cache_dir) / f"{mv.name}-v{mv.version}"
    if not (dest / "manifest.json").is_file():
        dest.mkdir(parents=True, exist_ok=True)
        download_artifacts(artifact_uri=mv.source, dst_path=str(dest), tracking_uri=client.tracking_uri)
        inner = [p.parent for p in dest.rglob("manifest.json")]
        if not inner:
            raise CheckpointResolveError(f"{uri}: artifacts at {mv.source} hold no manifest.json")
        return inner[0], info
    return dest, info
