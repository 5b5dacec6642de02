"""The ``twinrank predict`` and ``twinrank plan-real`` jobs: a ranking and real outcomes in,
predictions, a real-trial plan, files and an MLflow run out.

* :func:`load_ranking`: ``ranking.csv`` of ``twinrank rank`` / nightly (or its folder).
* :func:`gather_outcomes`: real outcomes per checkpoint from logged episodes that name their
  checkpoint (the recorder following a plan; proxy-real checkpoint logs) plus an outcomes CSV.
* :func:`run_prediction`: :func:`selection.prediction.predict`, then ``predictions.csv``,
  ``predictions.json``, ``predictions.png`` in ``out_dir`` and (optionally) an MLflow run.
* :func:`run_plan`: the prediction's beliefs -> :func:`selection.planning.plan_trials` ->
  ``plan.csv`` (the file the recorder follows, :mod:`twin.live.plan`) and ``plan_table.csv``.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from selection.prediction import (
    Outcome,
    PredictConfig,
    PredictionError,
    PredictionResult,
    merge_outcomes,
    outcomes_from_bags,
    outcomes_from_csv,
    predict,
)

EXPERIMENT = "twinrank-prediction"


def load_ranking(path: str | os.PathLike[str]) -> pd.DataFrame:
    """The ranking table (``ranking.csv``, or a folder holding one)."""
    p = Path(path)
    if p.is_dir():
        p = p / "ranking.csv"
    if not p.is_file():
        raise PredictionError(
            f"ranking {p} not found; give the ranking.csv (or its folder) written by `twinrank rank` or nightly"
        )
    try:
        df = pd.read_csv(p)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise PredictionError(f"ranking {p} is not a readable CSV ({exc}); give the ranking.csv of `twinrank rank`")
    if "checkpoint" not in df.columns or df.empty:
        raise PredictionError(f"ranking {p} has no checkpoints (no 'checkpoint' column or no rows)")
    return df


def gather_outcomes(
    ranking: pd.DataFrame,
    bags: Sequence[str | os.PathLike[str]],
    outcomes_csv: str | os.PathLike[str] | None,
    warn: Callable[[str], None],
) -> dict[str, Outcome]:
    """Real outcomes per checkpoint: episodes in ``bags`` naming their checkpoint, plus the CSV."""
    return merge_outcomes(
        outcomes_from_bags(bags, ranking, warn) if bags else None,
        outcomes_from_csv(outcomes_csv) if outcomes_csv is not None else None,
    )


def _ordered(ranking: pd.DataFrame) -> pd.DataFrame:
    if "rank" in ranking.columns:
        return ranking.assign(_r=ranking["rank"].fillna(np.inf)).sort_values("_r", kind="stable").drop(columns="_r")
    return ranking


def write_predictions(res: PredictionResult, out: Path) -> None:
    """``predictions.csv`` and ``predictions.json`` in ``out``."""
    res.frame.to_csv(out / "predictions.csv", index=False)
    (out / "predictions.json").write_text(json.dumps(res.to_json(), indent=1))


def run_prediction(
    ranking: pd.DataFrame,
    outcomes: Mapping[str, Outcome],
    out_dir: str | os.PathLike[str],
    cfg: PredictConfig | None = None,
    *,
    tracking_uri: str | None = None,
    mlflow: bool = True,
    warn: Callable[[str], None] = lambda m: None,
) -> tuple[PredictionResult, str]:
    """Predict, then :func:`record_prediction`; returns the result and the run id."""
    res = predict(_ordered(ranking), outcomes, cfg)
    return res, record_prediction(res, ranking, out_dir, tracking_uri=tracking_uri, mlflow=mlflow, warn=warn)


def record_prediction(
    res: PredictionResult,
    ranking: pd.DataFrame,
    out_dir: str | os.PathLike[str],
    *,
    tracking_uri: str | None = None,
    mlflow: bool = True,
    warn: Callable[[str], None] = lambda m: None,
) -> str:
    """Write predictions.csv/json/png in ``out_dir`` and log an MLflow run (``mlflow``) with them
    and any plan files there; returns the run id ('' when not logged; a store that does not
    answer is a warning, the files stay)."""
    from selection.plots import predicted_real

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_predictions(res, out)
    task = str(ranking["task"].dropna().iloc[0]) if "task" in ranking.columns and ranking["task"].notna().any() else ""
    if res.claims_real:
        predicted_real(
            res.frame, out / "predictions.png", res.level, f"Predicted real success{f' ({task})' if task else ''}"
        )
    run_id = ""
    if mlflow:
        try:
            run_id = _log_mlflow(res, out, tracking_uri, task)
        except Exception as exc:  # noqa: BLE001 - any transport/server error: the files stay on disk
            warn(f"MLflow unreachable ({type(exc).__name__}: {str(exc)[:300]}): predictions kept in {out}, not logged")
    return run_id


def _log_mlflow(res: PredictionResult, out: Path, tracking_uri: str | None, task: str) -> str:
    from policies import tracking

    uri = tracking.resolve_tracking_uri(tracking_uri)
    client = tracking.setup(uri)
    tracking.wait_for_server(uri)
    exp_id = tracking.ensure_experiment(client, EXPERIMENT)
    run = client.create_run(
        exp_id,
        run_name=f"predict-{task or 'task'}",
        tags={"twinrank.kind": "prediction", **tracking.source_tags("twinrank predict")},
    )
    rid = run.info.run_id
    client.log_param(rid, "claims_real_success", res.claims_real)
    log_prediction(client, rid, res)
    for name in ("predictions.csv", "predictions.json", "predictions.png", "plan.csv", "plan_table.csv"):
        if (out / name).is_file():
            client.log_artifact(rid, str(out / name))
    client.set_terminated(rid)
    return rid


def log_prediction(client: Any, rid: str, res: PredictionResult) -> None:
    """The prediction on an MLflow run: its method, level, real-trial counts and, when it claims
    real success, ``real_pred/<checkpoint>`` with ``real_lo/`` and ``real_hi/``."""
    client.log_param(rid, "prediction_level", res.level)
    client.log_param(rid, "prediction", res.summary()[:6000])
    client.log_metric(rid, "real_trials", float(res.frame["real_trials"].sum()))
    client.log_metric(rid, "checkpoints_with_real_trials", float((res.frame["real_trials"] > 0).sum()))
    if not res.claims_real:
        return
    for _, row in res.frame.iterrows():
        if pd.notna(row["predicted"]):
            key = "".join(ch if ch.isalnum() or ch in "_-./ " else "_" for ch in str(row["checkpoint"]))
            client.log_metric(rid, f"real_pred/{key}", float(row["predicted"]))
            client.log_metric(rid, f"real_lo/{key}", float(row["lo"]))
            client.log_metric(rid, f"real_hi/{key}", float(row["hi"]))


@dataclass
class PlanOutput:
    plan: Any  # selection.planning.Plan
    prediction: PredictionResult
    plan_file: Path | None  # None: no trials needed (decision done, or no budget)
    table_file: Path


def run_plan(
    ranking: pd.DataFrame,
    outcomes: Mapping[str, Outcome],
    out_dir: str | os.PathLike[str],
    budget: int,
    *,
    cfg: PredictConfig | None = None,
    eps: float = 0.05,
    confidence: float = 0.95,
    batch: int | None = None,
    seed: int = 0,
    forecast_runs: int = 200,
) -> PlanOutput:
    """The next real trials: predictions (with real outcomes so far) as the beliefs, top-two
    Thompson sampling over them; ``plan.csv`` for the recorder when trials are needed."""
    from selection.planning import first_batch, plan_trials
    from twin.live.plan import PlannedTrial, write_plan

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ordered = _ordered(ranking)
    pred = predict(ordered, outcomes, cfg)
    labels = [str(c) for c in ordered["checkpoint"]]
    with_trials = int((pred.frame["real_trials"] > 0).sum())
    if with_trials < (cfg or PredictConfig()).min_checkpoints:
        # nothing relates sim to real yet: spread a first batch over the sim ranking
        plan = first_batch(
            labels,
            pred.frame["sim"].to_numpy(float),
            pred.grid,
            pred.density,
            budget,
            tried=pred.frame["real_trials"].to_numpy(int),
            batch=batch,
            eps=eps,
            confidence=confidence,
            seed=seed,
        )
    else:
        plan = plan_trials(
            labels,
            pred.grid,
            pred.density,
            budget,
            eps=eps,
            confidence=confidence,
            batch=batch,
            seed=seed,
            forecast_runs=forecast_runs,
        )
    table = plan.as_frame()
    table_file = out / "plan_table.csv"
    table.to_csv(table_file, index=False)
    plan_file = None
    if plan.total > 0:
        info = ordered.set_index("checkpoint")
        trials = [
            PlannedTrial(
                i + 1,
                lab,
                str(info.at[lab, "checkpoint_id"])
                if "checkpoint_id" in info.columns and pd.notna(info.at[lab, "checkpoint_id"])
                else "",
                str(info.at[lab, "path"]) if "path" in info.columns and pd.notna(info.at[lab, "path"]) else "",
            )
            for i, lab in enumerate(plan.trial_list())
        ]
        task = (
            str(ordered["task"].dropna().iloc[0]) if "task" in ordered.columns and ordered["task"].notna().any() else ""
        )
        plan_file = write_plan(
            out / "plan.csv",
            trials,
            meta={
                "task": task,
                "created": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
                "budget": int(budget),
                "eps": float(eps),
                "confidence": float(confidence),
                "method": "top-two Thompson sampling on predicted real success (twinrank plan-real)",
            },
        )
    elif (out / "plan.csv").exists():
        (out / "plan.csv").unlink()  # an old plan must not be followed after the decision is done
    return PlanOutput(plan, pred, plan_file, table_file)


__all__ = [
    "EXPERIMENT",
    "PlanOutput",
    "gather_outcomes",
    "load_ranking",
    "log_prediction",
    "record_prediction",
    "run_plan",
    "run_prediction",
    "write_predictions",
]
