"""MLflow record of an evaluation campaign: one parent run, one nested run per checkpoint.

A campaign is one parent run, keyed by (spec digest, checkpoint set, code version) in its
``twinrank.campaign_key`` tag: re-running a finished campaign, resuming an interrupted one,
or syncing one deferred by an outage updates that run and its nested runs (found by
``twinrank.checkpoint_id``) instead of logging them again.

Parent run: the spec, eval_info.json, Parquet tables and the campaign chart as artifacts;
summary metrics (``best_success``, ``mean_success``, ``checkpoints``, ``failed_checkpoints``,
``episodes``, ``episodes_per_s``, ``physics_share``); a Markdown description ranking the
checkpoints. Nested run per checkpoint: the headline metric ``success`` with its interval,
per-condition metrics grouped by ``/`` (``success/<condition>``, ``ci_low/…``,
``ci_high/…``, ``paired_drop/…``), the same artifact names in every run (``eval_info.json``,
``success_by_condition.png``, ``videos/``) so MLflow's Compare lines them up, the episodes
as a table (``episodes.json``, ``mlflow.log_table``), and tags linking the training run and
the registered model version (found by the checkpoint's content hash or folder when the
campaign was given a folder). Runs carry the campaign's real start/end times and the git
commit as their source. Metrics, params and tags go in batches (``log_batch``).

If the tracking server cannot be reached, nothing computed is lost: :func:`log_or_defer`
writes ``mlflow_pending.json`` in the campaign folder *before* contacting the server, waits
at most the tracking timeout (``policies.tracking.bound_http``), and removes the marker once
the campaign is logged; ``twinrank eval`` logs pending campaigns (:func:`pending_campaigns`,
:func:`load_campaign`) at its next start.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import platform
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from policies import tracking

PENDING = "mlflow_pending.json"
EXPERIMENT = "twinrank-eval"
CHECKPOINT_INFO = "eval_info.json"
CHECKPOINT_PLOT = "success_by_condition.png"
EPISODES_TABLE = "episodes.json"

StatusFn = Callable[[str], None]


@dataclass
class LoggedCampaign:
    parent_run_id: str
    checkpoint_runs: dict[str, str]  # checkpoint id -> nested run id
    updated: bool = False  # True when an existing parent run was updated


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


def campaign_key(result: Any) -> str:
    """The identity of a campaign in MLflow: spec digest, the set of checkpoint ids, code version."""
    ids = sorted(s.checkpoint_id for s in result.checkpoints)
    blob = json.dumps([result.spec_digest, ids, tracking.code_version()])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# batching helpers
# ---------------------------------------------------------------------------------------------


def _chunks(items: list[Any], n: int) -> Iterable[list[Any]]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


def _log_batch(
    client: Any,
    run_id: str,
    metrics: dict[str, float] | None = None,
    params: dict[str, Any] | None = None,
    tags: dict[str, Any] | None = None,
    ts_ms: int = 0,
) -> None:
    """Everything in as few calls as MLflow allows (1000 metrics, 100 params, 100 tags per call)."""
    from mlflow.entities import Metric, Param, RunTag

    ms = [Metric(k, float(v), ts_ms, 0) for k, v in (metrics or {}).items() if math.isfinite(float(v))]
    ps = [Param(k, str(v)[:6000]) for k, v in (params or {}).items()]
    tg = [RunTag(k, str(v)[:8000]) for k, v in (tags or {}).items()]
    for i in range(max(1, math.ceil(len(ms) / 1000), math.ceil(len(ps) / 100), math.ceil(len(tg) / 100))):
        m, p, t = ms[i * 1000 : (i + 1) * 1000], ps[i * 100 : (i + 1) * 100], tg[i * 100 : (i + 1) * 100]
        if m or p or t:
            client.log_batch(run_id, metrics=m, params=p, tags=t)


def _find_run(client: Any, exp_id: str, tags: dict[str, str]) -> Any | None:
    flt = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    runs = client.search_runs([exp_id], filter_string=flt, max_results=10, order_by=["attributes.start_time ASC"])
    return runs[0] if runs else None


def _ms(t: float | None, default: float) -> int:
    return int(1000 * (t if t is not None else default))


# ---------------------------------------------------------------------------------------------
# the record
# ---------------------------------------------------------------------------------------------


def _campaign_times(result: Any) -> tuple[float, float]:
    import time

    now = time.time()
    end = getattr(result, "finished_at", None) or now
    start = getattr(result, "started_at", None) or end
    return float(start), float(end)


def _success_text(s: Any) -> str:
    o = s.overall
    if not o.get("n") or o.get("success_rate") is None:
        return "not evaluated"
    return f"{o['success_rate']:.2f} [{o['ci_low']:.2f}, {o['ci_high']:.2f}] (n = {o['n']})"


def _parent_note(result: Any, runs: dict[str, str]) -> str:
    """The parent run's description (Markdown, shown on its Overview page)."""
    from evaluator.decision import METHOD, decision_mark

    spec = result.spec
    lines = [
        f"**Evaluation campaign** `{spec.name}` (spec {result.spec_digest[:8]}): "
        f"{len(result.checkpoints)} checkpoint(s), paired (condition, seed) list, Wilson 95 % intervals; "
        f"P(best): {METHOD}.",
        "",
        "| rank | checkpoint | success [95 % CI] (n) | P(best) | status |",
        "|---|---|---|---|---|",
    ]
    ranked = sorted(result.checkpoints, key=table_order)
    for s in ranked:
        d = s.decision
        status = s.status if not s.error else f"{s.status}: {s.error[:120]}"
        if decision_mark(d):
            status = f"{status}; {decision_mark(d)}"
        p_best = f"{d['p_best']:.2f}" if d.get("p_best") is not None else "-"
        lines.append(
            f"| {d.get('rank', '-')} | {s.label} | {_success_text(s)} | {p_best} | {status.replace('|', '/')} |"
        )
    lines += racing_lines(getattr(result, "racing", {}), {s.checkpoint_id: s.label for s in result.checkpoints})
    lines += ["", "Nested runs hold each checkpoint's metrics, `eval_info.json`, chart, videos and episode table."]
    return "\n".join(lines)


def table_order(s: Any) -> tuple[Any, ...]:
    """Ranked-table order: per task, the decision's order (success, then P(best); an adaptive
    campaign ranks its survivors before the eliminated checkpoints); then checkpoints rated
    without a decision, by success; unrated ones last."""
    d = s.decision or {}
    rate = s.overall.get("success_rate") if s.overall.get("n") else None
    if d.get("order") is not None:
        return (0, str(s.task), float(d["order"]), s.label)
    return (2 if rate is None else 1, -(rate if rate is not None else -1.0), -(d.get("p_best") or 0.0), s.label)


def racing_lines(racing: dict[str, Any], labels: dict[str, str]) -> list[str]:
    """Markdown/plain lines describing adaptive races (empty for a fixed campaign)."""
    from evaluator.racing import METHOD

    if not racing:
        return []
    lines = ["", f"Adaptive racing ({METHOD}):"]
    for task, r in racing.items():
        cfg = r.get("cfg", {})
        budget = int(r.get("budget_per_checkpoint") or 0) * len(r.get("episodes_run", {}))
        used = int(r.get("episodes") or 0)
        saved = f", {budget / used:.1f}x fewer than the fixed design's {budget}" if used else ""
        winner = labels.get(r.get("winner") or "", "none (the survivors tie)")
        lines.append(
            f"- `{task}`: stop `{r.get('stop')}` after round {r.get('rounds')} (epsilon {cfg.get('epsilon')}, "
            f"delta {cfg.get('delta')}); winner {winner}; {used} episodes{saved}"
        )
        for e in r.get("eliminations", []):
            lines.append(
                f"  - {labels.get(e['checkpoint_id'], e['checkpoint_id'])}: round {e['round']}, n = {e['episodes']}, "
                f"success {e['success']:.2f} vs {e['by_success']:.2f} of {labels.get(e['by'], e['by'])}, "
                f"evidence {e['wealth']:.3g} (threshold {e['threshold']:.3g})"
            )
        for cid, why in r.get("withdrawn", {}).items():
            lines.append(f"  - {labels.get(cid, cid)}: withdrawn ({why[:200]})")
    return lines


def _checkpoint_note(s: Any, model: str) -> str:
    lines = [f"**Checkpoint** `{s.label}` (id {s.checkpoint_id}, task {s.task or '?'}): success {_success_text(s)}."]
    if model:
        name, _, version = model.rpartition("/")
        lines.append(f"Registered model version: [{model}](#/models/{name}/versions/{version}).")
    if s.error:
        lines.append(f"Failed: {s.error[:2000]}")
    worst = s.worst_condition()
    if worst and s.per_condition.get(worst, {}).get("n"):
        w = s.per_condition[worst]
        lines.append(
            f"Worst condition: `{worst}` ({w['success_rate']:.2f} [{w['ci_low']:.2f}, {w['ci_high']:.2f}], "
            f"n = {w['n']})."
        )
    return "\n\n".join(lines)


def _parent_metrics(result: Any) -> dict[str, float]:
    rated = [
        s.overall["success_rate"]
        for s in result.checkpoints
        if s.overall.get("n") and s.overall.get("success_rate") is not None
    ]
    out: dict[str, float] = {
        "checkpoints": len(result.checkpoints),
        "failed_checkpoints": sum(1 for s in result.checkpoints if s.status == "failed"),
        "episodes": sum(int(s.overall.get("n") or 0) for s in result.checkpoints),
    }
    if rated:
        out["best_success"] = max(rated)
        out["mean_success"] = sum(rated) / len(rated)
    start, end = _campaign_times(result)
    if end > start and out["episodes"]:
        out["episodes_per_s"] = out["episodes"] / (end - start)
    share = getattr(result, "physics_share", None)
    if share is not None:
        out["physics_share"] = float(share)
    racing = getattr(result, "racing", {}) or {}
    if racing:
        used = sum(int(r.get("episodes") or 0) for r in racing.values())
        budget = sum(int(r.get("budget_per_checkpoint") or 0) * len(r.get("episodes_run", {})) for r in racing.values())
        out["racing_episodes"] = used
        out["racing_fixed_design_episodes"] = budget
        out["racing_eliminated"] = sum(len(r.get("eliminations", [])) for r in racing.values())
        if used:
            out["racing_episode_ratio"] = budget / used
    return out


def _episode_table(result: Any, checkpoint_id: str) -> dict[str, list[Any]]:
    from evaluator.results import episode_rows

    rows = episode_rows(_episodes(result, checkpoint_id), result.checkpoints)
    # (condition, seed) first: MLflow's Evaluation view groups by them and compares the
    # outcome columns across the selected checkpoint runs (the run is the checkpoint)
    cols = ["condition", "seed", "success", "failure_reason", "return", "length"]
    return {c: [r[c] for r in rows] for c in cols}


def _episodes(result: Any, checkpoint_id: str) -> list[Any]:
    eps = getattr(result, "episodes", None)
    if eps is None:  # a campaign loaded from disk
        from evaluator.results import EpisodeResult

        eps = []
        path = Path(result.out_dir) / "episodes.jsonl"
        if path.is_file():
            for line in path.read_text().splitlines():
                try:
                    eps.append(EpisodeResult.from_dict(json.loads(line)))
                except (ValueError, KeyError, TypeError):
                    continue
        result.episodes = eps
    return [r for r in eps if r.checkpoint_id == checkpoint_id]


def _link_model_version(client: Any, s: Any) -> str:
    """``name/version`` of the checkpoint's registered model version (given, or found by
    content hash / folder), recorded in ``s.info``; "" when it has none."""
    if s.info.get("model_version") and s.info.get("registered_model"):
        return f"{s.info['registered_model']}/{s.info['model_version']}"
    if s.status == "failed" and not s.path:
        return ""
    mv = tracking.find_model_version(client, s.path or None, s.checkpoint_id)
    if mv is None:
        return ""
    s.info.update({"registered_model": mv.name, "model_version": str(mv.version)})
    if mv.run_id and not s.info.get("run_id"):
        s.info["run_id"] = mv.run_id
    return f"{mv.name}/{mv.version}"


def log_campaign(
    result: Any,
    tracking_uri: str | None = None,
    experiment: str = EXPERIMENT,
    campaign_name: str = "",
    status: StatusFn | None = None,
) -> LoggedCampaign:
    """Log (or update) a :class:`evaluator.run.CampaignResult` or a campaign loaded from disk;
    raises on an unreachable server (after at most the tracking timeout)."""
    say = status or (lambda msg: None)
    uri = tracking.resolve_tracking_uri(tracking_uri)
    client = tracking.setup(uri)
    tracking.wait_for_server(uri, on_wait=say)
    exp_id = tracking.ensure_experiment(client, experiment)
    spec = result.spec
    key = campaign_key(result)
    start, end = _campaign_times(result)
    versions = package_versions()
    tasks = ",".join(sorted({c.task for c in result.checkpoints if c.task})) or ",".join(spec.tasks)
    common = {
        "spec_digest": result.spec_digest,
        "seeds_digest": seeds_digest(spec),
        "tasks": tasks,
        **{f"version.{k}": v for k, v in versions.items()},
    }
    src = tracking.source_tags("twinrank eval")
    existing = _find_run(client, exp_id, {"twinrank.campaign_key": key, "twinrank.kind": "eval_campaign"})
    if existing is None:
        parent = client.create_run(
            exp_id,
            run_name=campaign_name or f"eval-{spec.name}-{result.spec_digest[:8]}",
            start_time=_ms(start, end),
            tags={"twinrank.kind": "eval_campaign", "twinrank.campaign_key": key},
        )
        pid = parent.info.run_id
        _log_batch(client, pid, params={**common, "n_checkpoints": len(result.checkpoints), "spec": spec.name})
    else:
        pid = existing.info.run_id
        say(f"updating campaign run {pid} (same spec, checkpoints and code version)")
    spec_path = Path(result.out_dir) / "spec.yaml"
    if not spec_path.exists():
        spec.to_yaml(spec_path)
    for path in (
        spec_path,
        result.eval_info_path,
        result.episodes_parquet,
        result.conditions_parquet,
        result.plot_path,
    ):
        if path is not None and Path(path).exists():
            client.log_artifact(pid, str(path))
    runs: dict[str, str] = {}
    for s in result.checkpoints:
        model = _link_model_version(client, s)
        cid = _log_checkpoint(client, exp_id, pid, s, result, common, src, model, (start, end))
        runs[s.checkpoint_id] = cid
    _log_batch(
        client,
        pid,
        metrics=_parent_metrics(result),
        ts_ms=_ms(end, end),
        tags={
            **src,
            "twinrank.tasks": tasks,
            "twinrank.executor": str(getattr(result, "executor", "")),
            "twinrank.design": "adaptive" if getattr(result, "racing", {}) else "fixed",
            "mlflow.note.content": _parent_note(result, runs),
            "twinrank.last_logged": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        },
    )
    failed = any(s.status == "failed" for s in result.checkpoints)
    client.set_terminated(pid, status="FINISHED", end_time=_ms(end, end))
    if failed:
        client.set_tag(
            pid,
            "twinrank.failed_checkpoints",
            ",".join(s.label for s in result.checkpoints if s.status == "failed")[:5000],
        )
    return LoggedCampaign(parent_run_id=pid, checkpoint_runs=runs, updated=existing is not None)


def _log_checkpoint(
    client: Any,
    exp_id: str,
    pid: str,
    s: Any,
    result: Any,
    common: dict[str, Any],
    src: dict[str, str],
    model: str,
    span: tuple[float, float],
) -> str:
    import mlflow

    tags: dict[str, Any] = {
        **src,
        "mlflow.parentRunId": pid,
        "twinrank.kind": "eval_checkpoint",
        "twinrank.checkpoint_id": s.checkpoint_id,
        "twinrank.status": s.status,
        "twinrank.checkpoint_path": s.path,
        "mlflow.note.content": _checkpoint_note(s, model),
    }
    if s.info.get("run_id"):
        tags["twinrank.training_run_id"] = str(s.info["run_id"])
    if model:
        tags["twinrank.registered_model"], tags["twinrank.model_version"] = model.rsplit("/", 1)
    if s.error:
        tags["twinrank.error"] = s.error[:4000]
    start = s.started_at if s.started_at is not None else span[0]
    end = s.finished_at if s.finished_at is not None else span[1]
    found = _find_run(client, exp_id, {"mlflow.parentRunId": pid, "twinrank.checkpoint_id": s.checkpoint_id})
    if found is None:
        child = client.create_run(
            exp_id,
            run_name=s.label or s.checkpoint_id,
            start_time=_ms(start, end),
            tags={"mlflow.parentRunId": pid, "twinrank.checkpoint_id": s.checkpoint_id},
        )
        cid = child.info.run_id
        _log_batch(
            client,
            cid,
            params={
                **common,
                "checkpoint_id": s.checkpoint_id,
                "policy_class": s.info.get("policy_class", ""),
                "training_step": s.info.get("training_step", ""),
                "task": s.task,
            },
        )
    else:
        cid = found.info.run_id
    _log_batch(client, cid, metrics=s.metrics(), tags=tags, ts_ms=_ms(end, end))
    folder = Path(result.out_dir) / "checkpoints" / s.checkpoint_id
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CHECKPOINT_INFO).write_text(json.dumps(s.to_dict(), indent=2, default=str))
    client.log_artifact(cid, str(folder / CHECKPOINT_INFO))
    if s.per_condition:
        from evaluator.plots import plot_campaign

        plot = plot_campaign([s], folder / CHECKPOINT_PLOT, title=f"{s.label}: success by condition")
        if plot is not None:
            client.log_artifact(cid, str(plot))
        table = _episode_table(result, s.checkpoint_id)
        if table["seed"]:
            mlflow.log_table(data=table, artifact_file=EPISODES_TABLE, run_id=cid)
    for v in s.videos:
        if v.get("path") and Path(v["path"]).exists():
            client.log_artifact(cid, str(v["path"]), artifact_path="videos")
    client.set_terminated(cid, status="FINISHED" if s.status == "ok" else "FAILED", end_time=_ms(end, end))
    if model:  # the registry side of the link: the version names its latest evaluation
        name, version = model.rsplit("/", 1)
        for k, v in {
            "last_eval_run_id": cid,
            "last_eval_campaign_run_id": pid,
            "last_eval_success": f"{_success_text(s)}, spec {result.spec.name}",
        }.items():
            client.set_model_version_tag(name, version, k, v)
    return cid


# ---------------------------------------------------------------------------------------------
# deferral
# ---------------------------------------------------------------------------------------------


def log_or_defer(
    result: Any, tracking_uri: str | None = None, status: StatusFn | None = None, **kwargs: Any
) -> LoggedCampaign | None:
    """Log the campaign. The pending marker is written first and removed once logged: if the
    server is unreachable (or this process dies while logging) the marker stays, the results
    stay on disk, and None is returned."""
    marker = Path(result.out_dir) / PENDING
    record = {
        "tracking_uri": tracking.resolve_tracking_uri(tracking_uri),
        "kwargs": kwargs,
        "since": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "error": "not logged yet",
    }
    marker.write_text(json.dumps(record))
    try:
        logged = log_campaign(result, tracking_uri, status=status, **kwargs)
    except Exception as exc:  # noqa: BLE001 - any transport/server error defers the upload
        record["error"] = f"{type(exc).__name__}: {exc}"[:2000]
        marker.write_text(json.dumps(record))
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
    campaign = info.get("campaign", {})
    return SimpleNamespace(
        out_dir=folder,
        spec=EvalSpec.from_dict(info["spec"]),
        spec_digest=info["spec_digest"],
        checkpoints=[CheckpointSummary(**c) for c in info["checkpoints"]],
        eval_info_path=folder / "eval_info.json",
        episodes_parquet=folder / "episodes.parquet",
        conditions_parquet=folder / "conditions.parquet",
        plot_path=plot if plot.exists() else None,
        executor=str(campaign.get("executor", info.get("executor", ""))),
        started_at=campaign.get("started_at"),
        finished_at=campaign.get("finished_at"),
        physics_share=campaign.get("physics_share"),
        racing=info.get("racing", {}),
        episodes=None,
    )


def pending_campaigns(root: str | Path) -> list[Path]:
    return sorted(p.parent for p in Path(root).glob(f"**/{PENDING}") if (p.parent / "eval_info.json").is_file())


def sync_pending(
    root: str | Path, tracking_uri: str | None = None, skip: Iterable[str | Path] = (), status: StatusFn | None = None
) -> list[Path]:
    """Log the campaigns under ``root`` whose upload was deferred (except ``skip``); returns
    the folders synced. Stops at the first that fails to log (the server is still down)."""
    skipped = {Path(p).resolve() for p in skip}
    done: list[Path] = []
    for folder in pending_campaigns(root):
        if folder.resolve() in skipped:
            continue
        marker = json.loads((folder / PENDING).read_text() or "{}")
        if log_or_defer(load_campaign(folder), tracking_uri, status=status, **marker.get("kwargs", {})) is None:
            break
        done.append(folder)
    return done


def resolve_model_uri(uri: str, cache_dir: str | Path, tracking_uri: str | None = None) -> tuple[Path, dict[str, str]]:
    """``models:/<name>/<version>`` or ``models:/<name>@<alias>`` -> a local checkpoint
    directory (the training run's own copy when it still exists, else downloaded from the
    model version's artifacts) and {registered_model, model_version, run_id}."""
    from mlflow.artifacts import download_artifacts

    from evaluator.run import CheckpointResolveError

    client = tracking.setup(tracking_uri)
    try:
        tracking.wait_for_server(client.tracking_uri)
        mv = tracking.get_model_version(client, uri)
    except tracking.RegisteredModelNotFound as exc:
        raise CheckpointResolveError(str(exc)) from exc
    except Exception as exc:  # noqa: BLE001 - transport errors of any kind
        raise CheckpointResolveError(
            f"{uri}: the MLflow registry at {client.tracking_uri} could not be read ({type(exc).__name__}: {exc})"
        ) from exc
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
