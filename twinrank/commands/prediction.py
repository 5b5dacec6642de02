"""`twinrank predict` (predicted real success with intervals) and `twinrank plan-real` (which
real trials to run next). See selection/prediction.py and selection/planning.py."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import typer

from twinrank import output
from twinrank.output import console, fail

RANKING_HELP = "ranking.csv of `twinrank rank` / nightly (or its folder): the sim and OOD columns of every checkpoint."
LOGS_HELP = "Real-data bags (or folders of bags) whose episodes name their checkpoint (repeatable)."
OUTCOMES_HELP = "CSV of real outcomes: checkpoint,successes,trials (or checkpoint,success per episode)."


def _inputs(ranking: Path, real_logs: list[Path] | None, outcomes: Path | None) -> tuple[Any, dict[str, Any]]:
    from selection.nightly import NightlyConfigError, resolve_real_logs
    from selection.prediction import PredictionError
    from selection.real_trials import gather_outcomes, load_ranking

    try:
        df = load_ranking(ranking)
        bags = resolve_real_logs([str(p) for p in real_logs or []], output.warn)
        found = gather_outcomes(df, bags, outcomes, output.warn)
    except (PredictionError, NightlyConfigError) as exc:
        fail(str(exc))
    return df, found


def _config(level: float, sim_column: str, seed: int = 0) -> Any:
    from selection.prediction import PredictConfig

    if not 0.5 <= level < 1:
        fail(f"--level {level}: give an interval level in [0.5, 1), e.g. 0.9")
    return PredictConfig(level=level, sim_column=sim_column, seed=seed)


def _prediction_rows(frame: Any) -> list[tuple[str, ...]]:
    import pandas as pd

    rows = []
    for _, r in frame.iterrows():
        n = int(r["real_trials"])
        pred = "no claim" if pd.isna(r["predicted"]) else f"{r['predicted']:.2f} [{r['lo']:.2f}, {r['hi']:.2f}]"
        worth = "-" if pd.isna(r.get("model_worth")) else f"{r['model_worth']:.0f}"
        share = "-" if pd.isna(r.get("share_real")) else f"{r['share_real']:.2f}"
        rows.append(
            (
                str(r["checkpoint"]),
                "n/a" if pd.isna(r["sim"]) else f"{r['sim']:.2f}",
                f"{int(r['real_successes'])}/{n}" if n else "-",
                pred,
                worth,
                share,
                str(r["method"]),
            )
        )
    return rows


def predict(
    ranking: Path = typer.Option(..., "--ranking", help=RANKING_HELP),
    real_logs: list[Path] = typer.Option(None, "--real-logs", help=LOGS_HELP),
    outcomes: Path = typer.Option(None, "--outcomes", help=OUTCOMES_HELP),
    level: float = typer.Option(0.9, help="Interval level."),
    sim_column: str = typer.Option("sim_perturbed", help="Sim success column of the ranking used as the feature."),
    out: Path = typer.Option(None, help="Output folder (default: the ranking's folder / prediction)."),
    tracking_uri: str = typer.Option(None, help="MLflow tracking URI (default: ./mlflow.db)."),
    mlflow: bool = typer.Option(
        True, "--mlflow/--no-mlflow", help="Log an MLflow run (experiment twinrank-prediction)."
    ),
) -> None:
    """Predicted real success of every checkpoint, with intervals, from sim/OOD and the real outcomes so far."""
    from selection.prediction import PredictionError
    from selection.real_trials import run_prediction

    df, found = _inputs(ranking, real_logs, outcomes)
    cfg = _config(level, sim_column)
    out = out or (ranking if ranking.is_dir() else ranking.parent) / "prediction"
    try:
        res, run_id = run_prediction(df, found, out, cfg, tracking_uri=tracking_uri, mlflow=mlflow, warn=output.warn)
    except PredictionError as exc:
        fail(str(exc))
    n_real = int(res.frame["real_trials"].sum())
    title = (
        f"Predicted real success ({res.level:.0%} intervals; {n_real} real trial(s) on "
        f"{int((res.frame['real_trials'] > 0).sum())} checkpoint(s))"
        if res.claims_real
        else "No real outcomes: sim success only, nothing claimed about real success"
    )
    output.print_table(
        title,
        (
            "checkpoint",
            "sim",
            "real s/n",
            f"real predicted [{res.level:.0%}]",
            "model worth (trials)",
            "share real",
            "how",
        ),
        _prediction_rows(res.frame),
        right=("sim", "real s/n", "model worth (trials)", "share real"),
    )
    console.print(f"method: {res.summary()}")
    for note in res.notes:
        output.warn(note)
    console.print(f"predictions: {out / 'predictions.csv'} ({out / 'predictions.json'})")
    if run_id:
        console.print(f"MLflow run {run_id}")


def plan_real(
    ranking: Path = typer.Option(..., "--ranking", help=RANKING_HELP),
    budget: int = typer.Option(..., min=0, help="Real trials still available."),
    real_logs: list[Path] = typer.Option(None, "--real-logs", help=LOGS_HELP),
    outcomes: Path = typer.Option(None, "--outcomes", help=OUTCOMES_HELP),
    eps: float = typer.Option(0.05, help="A checkpoint within eps of the best counts as best."),
    confidence: float = typer.Option(0.95, help="Posterior probability the choice must reach."),
    batch: int = typer.Option(None, min=1, help="Trials in this plan (default: about one per checkpoint, even)."),
    level: float = typer.Option(0.9, help="Interval level of the predictions."),
    sim_column: str = typer.Option("sim_perturbed", help="Sim success column of the ranking used as the feature."),
    seed: int = typer.Option(0, help="Seed of the plan's draws and forecast."),
    out: Path = typer.Option(None, help="Output folder (default: the ranking's folder / plan)."),
    tracking_uri: str = typer.Option(None, help="MLflow tracking URI (default: ./mlflow.db)."),
    mlflow: bool = typer.Option(
        True, "--mlflow/--no-mlflow", help="Log an MLflow run (experiment twinrank-prediction)."
    ),
) -> None:
    """Which checkpoints to run on the real robot next, and how often, to find the best within eps at a confidence."""
    from selection.planning import PlanningError
    from selection.prediction import PredictionError
    from selection.real_trials import record_prediction, run_plan
    from twin.live.plan import PlanError

    if not 0 < eps < 1 or not 0.5 <= confidence < 1:
        fail(f"--eps {eps} / --confidence {confidence}: give 0 < eps < 1 and 0.5 <= confidence < 1")
    df, found = _inputs(ranking, real_logs, outcomes)
    cfg = _config(level, sim_column, seed)
    out = out or (ranking if ranking.is_dir() else ranking.parent) / "plan"
    try:
        res = run_plan(df, found, out, budget, cfg=cfg, eps=eps, confidence=confidence, batch=batch, seed=seed)
        # the plan's beliefs are this prediction: recorded, not computed again
        run_id = record_prediction(res.prediction, df, out, tracking_uri=tracking_uri, mlflow=mlflow, warn=output.warn)
    except (PredictionError, PlanningError, PlanError) as exc:
        fail(str(exc))
    plan = res.plan
    output.print_table(
        f"Real-trial plan: {plan.total} trial(s) of {budget} available (eps {eps:g}, confidence {confidence:g})",
        ("checkpoint", "trials now", "P(eps-best)", "P(best)", "real success (belief) [90 %]"),
        [
            (
                r.label,
                str(r.trials) if r.trials else "-",
                "-" if math.isnan(r.p_eps_best) else f"{r.p_eps_best:.3f}",
                "-" if math.isnan(r.p_best) else f"{r.p_best:.3f}",
                f"{r.mean:.2f} [{r.lo90:.2f}, {r.hi90:.2f}]",
            )
            # a first batch has no probabilities yet: its rows go by trials
            for r in sorted(plan.rows, key=lambda r: -r.trials if math.isnan(r.p_eps_best) else -r.p_eps_best)
        ],
        right=("trials now", "P(eps-best)", "P(best)"),
    )
    console.print(plan.summary())
    for note in res.prediction.notes:
        output.warn(note)
    if res.plan_file is not None:
        console.print(f"plan: {res.plan_file} — run order: {', '.join(plan.trial_list())}")
        output.command(
            "the recorder follows it (tags each episode with its checkpoint):",
            f"ros2 run twin recorder --ros-args -p plan_file:={res.plan_file.resolve()}",
        )
        console.print("after the trials are logged, run plan-real again with the new bags to update the decision")
    else:
        console.print(f"no plan written: {plan.note}")
    if run_id:
        console.print(f"MLflow run {run_id}")


def register(app: typer.Typer) -> None:
    app.command("predict")(predict)
    app.command("plan-real")(plan_real)
