"""The ranking job: evaluation results + logged real data -> ingredients -> ranking -> promotion.

``rank_checkpoints`` is what ``twinrank rank`` and the nightly job run:

1. **Sim success** per checkpoint and condition from an evaluator campaign (run here, or
   resumed: the evaluator skips episodes already in its output folder).
2. **OOD scores** of the logged real data (rosbag2 bags, selection/realdata.py) in each
   checkpoint's own feature space, against a reference built from that checkpoint's sim
   rollouts: the observations the campaign of step 1 recorded in its first
   ``reference_episodes`` seeds of the spec's ``nominal`` and ``combined`` conditions (one
   rollout per episode serves both; cached per checkpoint and data, selection/ood.py).
3. **Rule** (selection/ranking.py): given, or chosen by leave-one-out over past validations
   (``validations_dir``), else the default.
4. **Outputs** in ``out_dir``: ``ranking.csv`` (every ingredient + score + rank),
   ``ranking.json`` (the same plus the rule, its reason, warnings), plots (scatter of sim
   success vs OOD, per-condition heat map, rank chart), an MLflow run with all of them, and
   the ``champion``/``challenger`` aliases (selection/promotion.py).

Bad input never stops the rest: a checkpoint with no evaluation, one whose observations the
bags do not carry, or whose OOD scoring fails keeps its row with a ``note`` (and ranks at
the bottom when its score cannot be computed); empty or broken bags are skipped with a
warning naming them (when no bag is usable, OOD is NaN for all and the rule falls back to
sim success alone, said in the warnings).
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from selection.ranking import DEFAULT_RULE, RuleChoice, choose_rule, ingredients_frame, load_validations, rank

NOMINAL = "nominal"


@dataclass
class RankResult:
    ranking: pd.DataFrame
    rule: str
    rule_reason: str
    out_dir: Path
    csv_path: Path
    json_path: Path
    plots: dict[str, Path] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    run_id: str = ""
    promotion: Any = None
    campaign: Any = None
    #: (draws, rows) posterior draws of the ranking's scores (selection.ranking.score_draws)
    score_draws: Any = None
    n_episodes: int | None = None  # paired episodes per checkpoint behind the probabilities
    #: the twin-fidelity check of the promotion gate (selection.calibration.TwinFidelity), when asked for
    fidelity: Any = None
    #: predicted real success (selection.prediction.PredictionResult)
    prediction: Any = None


# ---- ingredients ---------------------------------------------------------------------------
def sim_ingredients(summary: Any) -> dict[str, Any]:
    """Sim columns of one checkpoint from an evaluator ``CheckpointSummary``."""
    per = {c: float(s["success_rate"]) for c, s in summary.per_condition.items() if s.get("success_rate") is not None}
    perturbed = [v for c, v in per.items() if c != NOMINAL]
    row: dict[str, Any] = {
        "checkpoint": summary.label,
        "checkpoint_id": summary.checkpoint_id,
        "path": summary.path,
        "task": summary.task,
        "sim_nominal": per.get(NOMINAL, float(np.mean(list(per.values()))) if per else np.nan),
        "sim_perturbed": float(np.mean(perturbed)) if perturbed else per.get(NOMINAL, np.nan),
        "sim_overall": float(summary.overall.get("success_rate", np.nan)) if summary.overall else np.nan,
        "model_version": str(summary.info.get("model_version", "") or ""),
        "training_step": summary.info.get("training_step"),
        "run_id": summary.info.get("run_id", ""),
        "note": "" if summary.status == "ok" else f"evaluation {summary.status}: {summary.error}",
    }
    for c, v in per.items():
        row[f"sim/{c}"] = v
    return row


def load_real_observations(
    bags: Sequence[str | os.PathLike[str]], keys: Sequence[str], warn: Callable[[str], None]
) -> dict[str, np.ndarray] | None:
    """Observations ``keys`` of every episode in ``bags``, stacked (with ``episode_index``)."""
    from selection.ood import stack_episodes
    from selection.realdata import RealDataError, read_bag

    episodes: list[dict[str, np.ndarray]] = []
    for b in bags:
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                eps = read_bag(b, images=False)
            for w in caught:
                warn(f"{b}: {w.message}")
        except RealDataError as exc:
            warn(f"real-data bag skipped: {exc}")
            continue
        for ep in eps:
            missing = [k for k in keys if k not in ep.obs]
            if missing:
                warn(
                    f"{b} episode {ep.episode}: no observation {missing} (topics /twinrank/obs/<key>); "
                    f"episode not used for OOD"
                )
                continue
            episodes.append({k: ep.obs[k] for k in keys})
    if not episodes:
        return None
    return stack_episodes(episodes, list(keys))


@dataclass
class OODSettings:
    """OOD references: each checkpoint's observations in the first ``reference_episodes``
    seeds of the spec's ``nominal`` and ``combined`` conditions, recorded by the evaluation
    campaign itself (no second rollout)."""

    reference_episodes: int = 10
    cache_dir: str | None = None

    def record_request(self) -> Any:
        from evaluator.run import RecordRequest

        return RecordRequest(conditions=("nominal", "combined"), episodes=self.reference_episodes)


def ood_ingredients(
    path: str,
    ref_obs: dict[str, np.ndarray] | None,
    bags: Sequence[str | os.PathLike[str]],
    settings: OODSettings,
    warn: Callable[[str], None],
    real_cache: dict[tuple[str, ...], Any],
) -> dict[str, Any]:
    """OOD columns of one checkpoint (``ood`` and ``ood/<detector>``), or a ``note``.
    ``ref_obs``: its reference observations as the campaign recorded them
    (``CampaignResult.recorded_obs``)."""
    from policies.checkpoint import CheckpointError, load_checkpoint
    from selection.ood import OODError, build_reference, score

    try:
        policy = load_checkpoint(path)
    except (CheckpointError, OSError, ValueError) as exc:
        return {"note": f"OOD not scored: checkpoint cannot be loaded ({exc})"}
    if ref_obs is None:
        return {"note": "OOD not scored: the campaign recorded no reference observations for this checkpoint"}
    keys = tuple(policy.spec.obs_keys)
    if keys not in real_cache:
        real_cache[keys] = load_real_observations(bags, keys, warn)
    target = real_cache[keys]
    if target is None:
        return {"note": f"OOD not scored: no usable real-data episode carries observations {list(keys)}"}
    try:
        sha = policy.checkpoint_info.get("sha256", "")
        ref = build_reference(
            policy, ref_obs, cache_dir=settings.cache_dir, checkpoint_key=f"sha256:{sha}" if sha else None
        )
        s = score(policy, ref, target, per_observation=False)
    except (OODError, ValueError, RuntimeError) as exc:
        return {"note": f"OOD scoring failed: {exc}"}
    row: dict[str, Any] = {"ood": s.combined, "ood_n_real": s.n_target, "ood_n_ref": s.n_ref}
    for det, stats in s.summary.items():
        row[f"ood/{det}"] = float(stats.get("frac_ood", np.nan))
    return row


# ---- the job -----------------------------------------------------------------------------------
def rank_checkpoints(
    checkpoints: Sequence[str | os.PathLike[str]],
    spec: Any,
    real_logs: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    *,
    rule: str | None = None,
    validations_dir: str | os.PathLike[str] | None = None,
    tracking_uri: str | None = None,
    experiment: str = "twinrank-selection",
    promote: bool = True,
    executor: str = "local",
    workers: int | None = None,
    ood: OODSettings | None = None,
    progress: Any = None,
    campaign_dir: str | os.PathLike[str] | None = None,
    log: Callable[[str], None] | None = None,
    extra_columns: dict[str, dict[str, Any]] | None = None,
    threshold: float | None = None,
    force: bool = False,
    fidelity_gate: Any = None,
    real_outcomes: Mapping[str, Any] | None = None,
    prediction: Any = None,
) -> RankResult:
    """Evaluate (or resume), score OOD, rank, log to MLflow and promote. See the module docstring.

    ``extra_columns``: more ingredient columns per checkpoint label (e.g. ``train_loss``).
    ``threshold`` / ``force``: of the promotion rule (selection/promotion.py).
    ``fidelity_gate`` (selection.calibration.FidelityGate): promote only when the twin replays
    the real logs within its residual bound; otherwise nothing is promoted and a warning says
    which part failed and what to do (``result.fidelity`` holds the check).
    ``real_outcomes`` ({checkpoint label: selection.prediction.Outcome}, e.g. from a CSV) add to
    the outcomes of real episodes in ``real_logs`` that name their checkpoint; with any, each
    checkpoint's predicted real success and its interval (``prediction``: a
    selection.prediction.PredictConfig) join the ranking (``real_pred``, ``real_lo``,
    ``real_hi``, ``real_trials``...) and ``predictions.csv`` / ``predictions.json``; without,
    nothing is claimed about real success.
    """
    from evaluator.run import evaluate
    from evaluator.spec import EvalSpec, load_spec

    say = log or (lambda m: None)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []

    def warn(msg: str) -> None:
        notes.append(msg)
        say(f"warning: {msg}")

    if not isinstance(spec, EvalSpec):
        spec = load_spec(spec)
    settings = ood or OODSettings(cache_dir=str(out / "ood_cache"))
    if settings.cache_dir is None:
        settings.cache_dir = str(out / "ood_cache")
    say("evaluating checkpoints in the twin (finished episodes are reused)")
    campaign = evaluate(
        list(checkpoints),
        spec,
        Path(campaign_dir) if campaign_dir else out / "campaign",
        executor=executor,
        workers=workers,
        progress=progress,
        videos=False,
        record=settings.record_request() if real_logs else None,  # OOD references come from these rollouts
    )
    rows: list[dict[str, Any]] = []
    real_cache: dict[tuple[str, ...], Any] = {}
    bags = [str(b) for b in real_logs]
    if not bags:
        warn("no real-data logs to score OOD on: OOD scores are NaN and combined rules fall back to sim success")
    for s in campaign.checkpoints:
        row = sim_ingredients(s)
        if s.status != "ok":
            warn(f"checkpoint {s.label!r} has no complete evaluation ({s.status}: {s.error}); kept unranked")
            row["sim_nominal"] = row["sim_perturbed"] = np.nan
        elif bags:
            say(f"OOD scores of {s.label}")
            o = ood_ingredients(s.path, campaign.recorded_obs(s.checkpoint_id), bags, settings, warn, real_cache)
            if "note" in o:
                row["note"] = o.pop("note")
                warn(f"checkpoint {s.label!r}: {row['note']}")
            row.update(o)
        if extra_columns and s.label in extra_columns:
            row.update(extra_columns[s.label])
        rows.append(row)
    ingredients = _with_model_versions(ingredients_frame(rows), tracking_uri)
    choice = _choose(rule, validations_dir, ingredients)
    used_rule = choice.rule
    if used_rule not in ("sim_nominal", "sim_perturbed") and ingredients["ood"].isna().all():
        warn(f"no OOD score for any checkpoint: rule {used_rule!r} falls back to 'sim_perturbed'")
        used_rule = "sim_perturbed"
    ranking = rank(ingredients, used_rule)
    rated = [s for s in campaign.checkpoints if s.status == "ok" and s.overall.get("n")]
    if rated and all(not s.overall.get("successes") for s in rated):
        warn(
            f"no checkpoint succeeded in any of its {rated[0].overall['n']} episodes: the sim ranking carries no "
            f"information (every P(best) is a tie); train further or check the task before promoting"
        )
    draws, n_episodes = _score_draws(ranking, used_rule, campaign)
    ranking = _with_probabilities(ranking, draws, n_episodes)
    ranking, predicted = with_predictions(ranking, bags, real_outcomes, prediction, out, warn)
    result = RankResult(
        ranking=ranking,
        rule=used_rule,
        rule_reason=choice.reason,
        out_dir=out,
        csv_path=out / "ranking.csv",
        json_path=out / "ranking.json",
        warnings=notes,
        campaign=campaign,
        score_draws=draws,
        n_episodes=n_episodes,
        prediction=predicted,
    )
    ranking.to_csv(result.csv_path, index=False)
    _plots(result)
    try:
        result.run_id = _log_mlflow(result, spec, bags, tracking_uri, experiment, choice)
    except Exception as exc:  # noqa: BLE001 - any transport/server error: the ranking stays on disk
        warn(
            f"MLflow unreachable ({type(exc).__name__}: {str(exc)[:300]}): the ranking is kept in {out}, not "
            f"logged, and nothing is promoted"
        )
    if fidelity_gate is not None:
        result.fidelity = check_fidelity(result, bags, fidelity_gate, tracking_uri, say)
        if not result.fidelity.passed:
            warn(f"not promoted: {result.fidelity.reason()}")
            promote = False
    if promote and result.run_id:
        _promote(result, tracking_uri, warn, threshold=threshold, force=force)
        if result.promotion is not None:
            tracking_client(tracking_uri).set_tag(
                result.run_id, "twinrank.promotion_decision", result.promotion.decision[:5000]
            )
            result.ranking = _with_champion_comparison(result.ranking, result.score_draws, result.promotion)
            result.ranking.to_csv(result.csv_path, index=False)
    result.json_path.write_text(
        json.dumps(
            {
                "rule": result.rule,
                "rule_reason": result.rule_reason,
                "warnings": result.warnings,
                "run_id": result.run_id,
                "real_logs": bags,
                "spec": spec.name,
                "promotion": [p.__dict__ for p in result.promotion.promotions] if result.promotion else [],
                "ranking": json.loads(ranking.to_json(orient="records")),
                "rule_table": json.loads(choice.per_rule.to_json(orient="records"))
                if not choice.per_rule.empty
                else [],
            },
            indent=1,
        )
    )
    return result


#: prediction columns joined to the ranking (selection.prediction's frame -> ranking)
PREDICTION_COLUMNS = {
    "real_successes": "real_successes",
    "real_trials": "real_trials",
    "predicted": "real_pred",
    "lo": "real_lo",
    "hi": "real_hi",
    "method": "real_method",
    "share_real": "real_share",
}


def with_predictions(
    ranking: pd.DataFrame,
    bags: Sequence[str],
    outcomes: Mapping[str, Any] | None,
    cfg: Any,
    out: Path,
    warn: Callable[[str], None],
) -> tuple[pd.DataFrame, Any]:
    """The ranking with each checkpoint's predicted real success (selection/prediction.py) from
    the real outcomes in ``bags`` plus ``outcomes``; writes predictions.csv/json in ``out``."""
    from selection.prediction import PredictConfig, PredictionError, merge_outcomes, outcomes_from_bags, predict
    from selection.real_trials import write_predictions

    found = merge_outcomes(outcomes_from_bags(bags, ranking, warn) if bags else None, outcomes)
    df = ranking.drop(columns=[c for c in PREDICTION_COLUMNS.values() if c in ranking.columns])
    try:
        res = predict(df, found, cfg or PredictConfig())
    except PredictionError as exc:
        warn(f"no prediction of real success: {exc}")
        return df, None
    if res.claims_real:  # without real outcomes there is nothing to warn about: nothing is claimed
        for note in res.notes:
            warn(note)
    write_predictions(res, out)
    cols = res.frame.set_index("checkpoint")[list(PREDICTION_COLUMNS)].rename(columns=PREDICTION_COLUMNS)
    return df.join(cols, on="checkpoint"), res


def _choose(rule: str | None, validations_dir: Any, ingredients: pd.DataFrame) -> RuleChoice:
    if rule:
        return RuleChoice(rule, "given explicitly")
    vals = load_validations(validations_dir) if validations_dir else []
    return choose_rule(vals) if vals else RuleChoice(DEFAULT_RULE, f"no past validations: default {DEFAULT_RULE!r}")


def _plots(result: RankResult) -> None:
    from selection.plots import condition_heatmap, rank_chart, scatter_sim_vs_ood

    r = result.ranking
    result.plots = {
        "scatter": scatter_sim_vs_ood(r, result.out_dir / "sim_vs_ood.png"),
        "heatmap": condition_heatmap(r, result.out_dir / "condition_heatmap.png"),
        "rank_chart": rank_chart(r, result.out_dir / "rank_chart.png"),
    }


def _log_mlflow(
    result: RankResult, spec: Any, bags: list[str], tracking_uri: str | None, experiment: str, choice: RuleChoice
) -> str:

    from policies import tracking

    uri = tracking.resolve_tracking_uri(tracking_uri)
    client = tracking.setup(uri)
    tracking.wait_for_server(uri)
    exp_id = tracking.ensure_experiment(client, experiment)  # artifacts next to a local store, not in ./mlruns
    run = client.create_run(
        exp_id, run_name=f"rank-{spec.name}", tags={"twinrank.kind": "ranking", **tracking.source_tags("twinrank rank")}
    )
    rid = run.info.run_id
    client.log_param(rid, "rule", result.rule)
    client.log_param(rid, "rule_reason", result.rule_reason[:6000])
    client.log_param(rid, "spec", spec.name)
    client.log_param(rid, "checkpoints", len(result.ranking))
    client.log_param(rid, "real_logs", ";".join(Path(b).name for b in bags)[:6000] or "none")
    for _, row in result.ranking.iterrows():
        if pd.notna(row["rank"]):
            key = "".join(ch if ch.isalnum() or ch in "_-./ " else "_" for ch in str(row["checkpoint"]))
            client.log_metric(rid, f"score/{key}", float(row["score"]))
            client.log_metric(rid, f"rank/{key}", float(row["rank"]))
            if pd.notna(row.get("p_best")):
                client.log_metric(rid, f"p_best/{key}", float(row["p_best"]))
    if result.prediction is not None:
        from selection.real_trials import log_prediction

        log_prediction(client, rid, result.prediction)
    for name in ("predictions.csv", "predictions.json"):
        if (result.out_dir / name).is_file():
            client.log_artifact(rid, str(result.out_dir / name))
    client.log_artifact(rid, str(result.csv_path))
    for p in result.plots.values():
        client.log_artifact(rid, str(p), artifact_path="plots")
    if not choice.per_rule.empty:
        path = result.out_dir / "rule_choice.csv"
        choice.per_rule.to_csv(path, index=False)
        client.log_artifact(rid, str(path))
    client.set_terminated(rid)
    return rid


def _with_model_versions(ingredients: pd.DataFrame, tracking_uri: str | None) -> pd.DataFrame:
    """Fill ``model_version`` of checkpoints given as folders from the registry (by their
    ``checkpoint_dir`` tag), so the table, the report and the promotion name the same versions."""
    from selection.promotion import find_model_version

    df = ingredients.copy()
    if "model_version" not in df.columns:
        df["model_version"] = ""
    missing = [
        i for i, r in df.iterrows() if not str(r.get("model_version") or "").strip() or r["model_version"] == "nan"
    ]
    if not missing:
        return df
    try:
        client = tracking_client(tracking_uri)
        for i in missing:
            if df.loc[i, "path"]:
                df.loc[i, "model_version"] = find_model_version(client, df.loc[i, "path"]) or ""
    except Exception:  # noqa: BLE001 - an unreachable store: the promotion says so later
        pass
    return df


def tracking_client(tracking_uri: str | None) -> Any:
    from policies import tracking

    return tracking.setup(tracking_uri)


def _score_draws(ranking: pd.DataFrame, rule: str, campaign: Any) -> tuple[Any, int | None]:
    """Posterior draws of every ranked row's score (paired episodes of the fully evaluated
    checkpoints), or (None, None) when no checkpoint was evaluated."""
    from evaluator.decision import paired_posterior
    from selection.ranking import score_draws

    ok = [s for s in campaign.checkpoints if s.status == "ok" and s.overall.get("n")]
    if not ok:
        return None, None
    post = paired_posterior(campaign.episodes, [s.checkpoint_id for s in ok])
    return score_draws(ranking, rule, post), post.n


def _with_probabilities(ranking: pd.DataFrame, draws: Any, n: int | None) -> pd.DataFrame:
    """``p_best`` (under the rule), the score's 95 % posterior interval (``score_lo``,
    ``score_hi``) and ``mark``: "leader" / "indistinguishable at n = ..." (interval overlaps
    the leader's)."""
    from evaluator.decision import overlaps, p_best

    df = ranking.copy()
    df["p_best"] = df["score_lo"] = df["score_hi"] = np.nan
    df["mark"] = ""
    if draws is None:
        return df
    finite = np.where(np.isfinite(draws), draws, -np.inf)
    pb = p_best(finite)
    rated = df["score"].notna().to_numpy() & np.isfinite(draws).all(axis=0)
    df.loc[rated, "p_best"] = pb[rated]
    with np.errstate(all="ignore"):
        df.loc[rated, "score_lo"] = np.nanpercentile(draws[:, rated], 2.5, axis=0)
        df.loc[rated, "score_hi"] = np.nanpercentile(draws[:, rated], 97.5, axis=0)
    if rated.any():
        lead = int(np.nanargmax(np.where(rated, pb, np.nan)))
        for i in np.flatnonzero(rated):
            if i == lead:
                df.loc[i, "mark"] = "leader"
            elif overlaps(
                df.loc[i, "score_lo"], df.loc[i, "score_hi"], df.loc[lead, "score_lo"], df.loc[lead, "score_hi"]
            ):
                df.loc[i, "mark"] = f"indistinguishable at n = {n}"
    return df


def _with_champion_comparison(ranking: pd.DataFrame, draws: Any, promotion: Any) -> pd.DataFrame:
    """``p_beats_champion``: P(row beats the champion the ranking started from), when it is ranked."""
    from evaluator.decision import p_greater

    df = ranking.copy()
    df["p_beats_champion"] = np.nan
    champion = promotion.previous.get("champion") if promotion is not None else None
    if draws is None or not champion or "model_version" not in df.columns:
        return df
    rows = np.flatnonzero((df["model_version"] == champion).to_numpy())
    if not len(rows):
        return df
    j = int(rows[0])
    finite = np.where(np.isfinite(draws), draws, -np.inf)
    for i in range(len(df)):
        if i != j and np.isfinite(draws[:, i]).all():
            df.loc[i, "p_beats_champion"] = p_greater(finite, i, j)
    return df


def check_fidelity(result: RankResult, bags: Sequence[str], gate: Any, tracking_uri: str | None, say: Any) -> Any:
    """The twin-fidelity check of the promotion gate on the ranked task's logs, logged to the
    ranking's MLflow run (``fidelity/replay_residual_mm``, tag ``twinrank.fidelity``)."""
    from selection.calibration import twin_fidelity
    from selection.realdata import read_bag

    tasks = sorted({s.task for s in result.campaign.checkpoints if getattr(s, "task", "")}) if result.campaign else []
    task = tasks[0] if tasks else ""
    from selection.realdata import bag_info

    eps: list[Any] = []
    with_images = False  # camera frames of one bag are decoded (for the cameras' part), not of all
    for b in bags:
        frames = not with_images and any("/color/image" in t for t in bag_info(b).get("topics", {}))
        with_images = with_images or frames
        eps += read_bag(b, images=frames)
    say(f"twin fidelity: replaying up to {gate.max_episodes} logged episode(s) of {task}")
    fid = twin_fidelity(eps, task, gate)
    say(f"twin fidelity: {fid.summary()}")
    if result.run_id:
        try:
            client = tracking_client(tracking_uri)
            if np.isfinite(fid.residual_mm):
                client.log_metric(result.run_id, "fidelity/replay_residual_mm", fid.residual_mm)
            for name, v in fid.parts.items():
                if np.isfinite(v):
                    client.log_metric(result.run_id, f"fidelity/{name}", v)
            client.set_tag(result.run_id, "twinrank.fidelity", ("passed" if fid.passed else fid.reason())[:5000])
        except Exception:  # noqa: BLE001 - the check itself stands; MLflow trouble is reported elsewhere
            pass
    return fid


def _promote(
    result: RankResult,
    tracking_uri: str | None,
    warn: Callable[[str], None],
    threshold: float | None = None,
    force: bool = False,
) -> None:
    from policies import tracking
    from selection.promotion import PromotionError, promote

    client = tracking.setup(tracking_uri)
    try:
        result.promotion = promote(
            result.ranking,
            client,
            rule=result.rule,
            rule_reason=result.rule_reason,
            run_id=result.run_id,
            score_draws=result.score_draws,
            n_episodes=result.n_episodes,
            threshold=threshold,
            force=force,
        )
    except PromotionError as exc:
        warn(str(exc))
        return
    for w in result.promotion.warnings:
        warn(w)


__all__ = [
    "RankResult",
    "OODSettings",
    "rank_checkpoints",
    "sim_ingredients",
    "ood_ingredients",
    "load_real_observations",
]
