"""Champion promotion in the MLflow model registry: aliases, not stages, and never on noise.

The rule (:func:`promote`), from each ranked checkpoint's P(best) under the ranking's rule
(posterior draws of the scores, evaluator/decision.py: paired episodes):

* The candidate is the checkpoint with the highest P(best); when several share it (e.g.
  identical checkpoints), there is no candidate and nothing moves: a tie never promotes the
  first in input order.
* A current ``champion`` is replaced only when P(candidate beats champion) >= the threshold
  (default 0.95; per registered model in its tag ``twinrank.promotion_threshold``); otherwise
  it stays and the reason says so, with the numbers. A champion missing from the ranking
  cannot be compared: it stays, with a warning.
* Without a champion, the first promotion needs P(best) >= the threshold, or ``force``
  (``--force``), which the reason records.
* ``challenger`` goes to the most probable best after the champion (unless tied).

Each chosen version is tagged with why (``promotion_reason``: the rule, the probabilities, n
and the ranking run; ``promotion_rule``, ``promotion_score``, ``promotion_p_best``,
``promoted_at``, ``promotion_run_id``), and the registered model keeps the last decision in
its ``champion_reason`` tag, so the registry alone answers "why is this one on the robot?".

A checkpoint is matched to its model version by the ranking's ``model_version`` column
(``name/version``), else by the ``checkpoint_dir`` tag that training writes on every version
it registers. Checkpoints without a model version cannot be promoted: they are skipped with
a warning naming them.
"""

from __future__ import annotations

import datetime as _dt
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

CHAMPION = "champion"
CHALLENGER = "challenger"
DEFAULT_THRESHOLD = 0.95
THRESHOLD_TAG = "twinrank.promotion_threshold"


class PromotionError(RuntimeError):
    """Nothing could be promoted (no ranked checkpoint has a model version)."""


@dataclass
class Promotion:
    alias: str
    name: str
    version: str
    checkpoint: str
    score: float
    reason: str


@dataclass
class PromotionResult:
    promotions: list[Promotion] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    previous: dict[str, str] = field(default_factory=dict)  # alias -> "name/version" before
    #: what was decided about the champion and why, with the probabilities, n and the runs
    decision: str = ""
    p_best: dict[str, float] = field(default_factory=dict)  # checkpoint -> P(best) under the rule
    threshold: float = 0.0

    def by_alias(self, alias: str) -> Promotion | None:
        return next((p for p in self.promotions if p.alias == alias), None)


def _split(mv: str) -> tuple[str, str] | None:
    if not isinstance(mv, str) or "/" not in mv:
        return None
    name, _, version = mv.rpartition("/")
    return (name, version) if name and version.isdigit() else None


def find_model_version(client: Any, checkpoint_dir: str | os.PathLike[str]) -> str | None:
    """``name/version`` of the newest registered version whose ``checkpoint_dir`` tag is this directory."""
    from policies.tracking import find_model_version as find

    mv = find(client, checkpoint_dir)
    return f"{mv.name}/{mv.version}" if mv is not None else None


def _current(client: Any, name: str, alias: str) -> str | None:
    try:
        v = client.get_model_version_by_alias(name, alias)
    except Exception:  # noqa: BLE001 - no such alias yet
        return None
    return f"{v.name}/{v.version}"


def promotion_threshold(client: Any, name: str, default: float = DEFAULT_THRESHOLD) -> float:
    """The registered model's promotion threshold (tag ``twinrank.promotion_threshold``), else ``default``."""
    try:
        tag = client.get_registered_model(name).tags.get(THRESHOLD_TAG)
    except Exception:  # noqa: BLE001 - a model without the tag / not yet created
        tag = None
    try:
        t = float(tag) if tag not in (None, "") else float(default)
    except ValueError:
        raise PromotionError(
            f"registered model {name!r}: tag {THRESHOLD_TAG}={tag!r} is not a probability; set e.g. 0.95"
        ) from None
    if not 0.5 < t <= 1.0:
        raise PromotionError(f"promotion threshold {t} for {name!r} must lie in (0.5, 1]; the default is 0.95")
    return t


def _best(rows: list[tuple[int, pd.Series, tuple[str, str]]], p_best: np.ndarray, exclude: set[int]) -> tuple[Any, str]:
    """The row with the highest P(best) among ``rows`` not in ``exclude`` (None and why, on a tie)."""
    left = [r for r in rows if r[0] not in exclude and np.isfinite(p_best[r[0]])]
    if not left:
        return None, "no other ranked checkpoint with a model version"
    top = max(p_best[r[0]] for r in left)
    at_top = [r for r in left if p_best[r[0]] >= top - 1e-9]
    if len(at_top) > 1:
        names = ", ".join(repr(str(r[1]["checkpoint"])) for r in at_top)
        return None, f"{names} tie at P(best) {top:.2f}"
    return at_top[0], ""


def promote(
    ranking: pd.DataFrame,
    client: Any,
    *,
    rule: str,
    rule_reason: str = "",
    run_id: str = "",
    score_draws: np.ndarray | None = None,
    n_episodes: int | None = None,
    threshold: float | None = None,
    force: bool = False,
    dry_run: bool = False,
) -> PromotionResult:
    """Champion and challenger, never on noise (see the module docstring).

    ``score_draws``: (draws, rows) posterior draws of the ranking's scores
    (:func:`selection.ranking.score_draws`) giving P(best) and P(a beats b); without them
    nothing can be decided (only ``force`` promotes). ``threshold``: overrides the registered
    model's (tag ``twinrank.promotion_threshold``, default 0.95). ``force``: promote the most
    probable best without a current champion even below the threshold (said in the reason).
    """
    from evaluator.decision import p_best as p_best_of
    from evaluator.decision import p_greater

    result = PromotionResult()
    ranking = ranking.reset_index(drop=True)
    ok = ranking["rank"].notna() & ranking["score"].notna()
    rows: list[tuple[int, pd.Series, tuple[str, str]]] = []
    for i, row in ranking[ok].iterrows():
        mv = _split(str(row.get("model_version") or ""))
        if mv is None and row.get("path"):
            found = find_model_version(client, row["path"])
            mv = _split(found) if found else None
        if mv is None:
            result.warnings.append(
                f"checkpoint {row['checkpoint']!r} has no registered model version and cannot be promoted; register it "
                f"(training does) or rank models:/NAME/VERSION"
            )
            continue
        rows.append((int(i), row, mv))
    if not rows:
        raise PromotionError(
            "no ranked checkpoint has a registered model version: nothing to promote"
            + ("; " + "; ".join(result.warnings) if result.warnings else "")
        )
    draws = None if score_draws is None else np.asarray(score_draws, dtype=float)
    have = draws is not None and draws.shape[1] == len(ranking)
    if have:
        finite = np.where(np.isfinite(draws), draws, -np.inf)
        pb = p_best_of(finite)
    else:
        pb = np.full(len(ranking), np.nan)
    result.p_best = {str(ranking.loc[i, "checkpoint"]): float(pb[i]) for i, _, _ in rows}
    n_txt = f"n = {n_episodes} paired episodes per checkpoint" if n_episodes else "n unknown"
    runs_txt = f"ranking run {run_id}" if run_id else "ranking not logged"
    cand, tie = _best(rows, pb, set())
    name = (cand or rows[0])[2][0]
    t = float(threshold) if threshold is not None else promotion_threshold(client, name)
    result.threshold = t
    current = _current(client, name, CHAMPION)
    if current is not None:
        result.previous[CHAMPION] = current
    prev_chal = _current(client, name, CHALLENGER)
    if prev_chal is not None:
        result.previous[CHALLENGER] = prev_chal
    champ_row = next((r for r in rows if f"{r[2][0]}/{r[2][1]}" == current), None)
    new_champion = None
    if not have and not force:
        result.decision = f"nothing decided: no posterior draws of the scores ({runs_txt})"
    elif cand is None:
        result.decision = f"champion unchanged: no single best checkpoint ({tie}; {n_txt})"
    elif champ_row is not None and champ_row[0] == cand[0]:
        result.decision = (
            f"champion {current} stays: it is the most probable best (P(best) {pb[cand[0]]:.2f}; {n_txt}; {runs_txt})"
        )
        new_champion = cand
    elif champ_row is not None:
        p = p_greater(np.where(np.isfinite(draws), draws, -np.inf), cand[0], champ_row[0]) if have else float("nan")
        verdict = "replaces" if p >= t else "does not replace"
        result.decision = (
            f"{cand[1]['checkpoint']} ({cand[2][0]}/{cand[2][1]}) {verdict} champion {current}: P(it beats the "
            f"champion) = {p:.3f} {'>=' if p >= t else '<'} threshold {t:.2f} under rule {rule!r} (P(best) "
            f"{pb[cand[0]]:.2f} vs {pb[champ_row[0]]:.2f}; {n_txt}; {runs_txt})"
        )
        new_champion = cand if p >= t else champ_row
    elif current is not None:
        result.decision = (
            f"champion {current} stays: it is not in this ranking, so no challenger can be compared with it; "
            f"rank it with the challengers ({runs_txt})"
        )
        result.warnings.append(result.decision)
    elif pb[cand[0]] >= t or force:
        how = (
            f"P(best) {pb[cand[0]]:.3f} >= threshold {t:.2f}"
            if pb[cand[0]] >= t
            else (f"FORCED (--force): P(best) {pb[cand[0]]:.3f} < threshold {t:.2f}")
        )
        result.decision = (
            f"first champion {cand[1]['checkpoint']} ({cand[2][0]}/{cand[2][1]}) under rule {rule!r}: {how} "
            f"({n_txt}; {runs_txt})"
        )
        new_champion = cand
    else:
        result.decision = (
            f"no champion yet: the most probable best, {cand[1]['checkpoint']}, has P(best) {pb[cand[0]]:.3f} < "
            f"threshold {t:.2f} under rule {rule!r} ({n_txt}; {runs_txt}); evaluate more episodes, or --force"
        )
    if rule_reason:
        result.decision += f"; rule {rule_reason}"
    chosen: list[tuple[str, tuple[int, pd.Series, tuple[str, str]]]] = []
    if new_champion is not None:
        chosen.append((CHAMPION, new_champion))
    challenger, why = _best(rows, pb, {new_champion[0]} if new_champion is not None else set())
    if challenger is not None and have:
        chosen.append((CHALLENGER, challenger))
    elif why and have:
        result.warnings.append(f"challenger unchanged: {why}")
    now = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    for alias, (i, row, (mname, version)) in chosen:
        score = float(row["score"])
        reason = (
            result.decision
            if alias == CHAMPION
            else (
                f"challenger by rule {rule!r}: the most probable best after the champion (P(best) {pb[i]:.2f}; score "
                f"{score:.3f}, sim perturbed {float(row['sim_perturbed']):.2f}, OOD {float(row['ood']):.2f}; {n_txt}; "
                f"{runs_txt})"
            )
        )
        result.promotions.append(Promotion(alias, mname, version, str(row["checkpoint"]), score, reason))
        if dry_run:
            continue
        client.set_registered_model_alias(mname, alias, version)
        for k, v in {
            "promotion_reason": reason,
            "promotion_rule": rule,
            "promotion_score": f"{score:.6f}",
            "promotion_p_best": f"{pb[i]:.4f}",
            "promoted_at": now,
            "promotion_alias": alias,
            "promotion_run_id": run_id,
        }.items():
            client.set_model_version_tag(mname, version, k, v)
        if alias == CHAMPION:
            client.set_registered_model_tag(mname, "champion_reason", reason)
    return result


__all__ = [
    "CHALLENGER",
    "CHAMPION",
    "DEFAULT_THRESHOLD",
    "THRESHOLD_TAG",
    "Promotion",
    "PromotionError",
    "PromotionResult",
    "find_model_version",
    "promote",
    "promotion_threshold",
]
