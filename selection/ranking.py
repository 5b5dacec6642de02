"""Combined ranking of checkpoints from sim success and OOD scores (VSDR-style).

The ingredients of a ranking are one row per checkpoint (a :class:`pandas.DataFrame`,
:func:`ingredients_frame`), always kept in the output so that any rule can be recomputed:

====================  ===========================================================================
column                meaning
====================  ===========================================================================
``checkpoint``        the checkpoint's label (unique within a ranking)
``checkpoint_id``     content id of the checkpoint directory (evaluator)
``model_version``     ``name/version`` in the MLflow registry, when known
``task``              the task it was evaluated on
``sim_nominal``       in-sim success rate under the nominal condition
``sim_perturbed``     mean in-sim success over the perturbed conditions (each factor alone and
                      combined); ``sim_nominal`` when the spec had none
``sim_overall``       success over every episode of the campaign
``sim/<condition>``   success per condition
``ood``               the combined OOD score in [0, 1] (0 = the logged real observations look
                      like the checkpoint's own sim rollouts; selection/ood.py)
``ood/<detector>``    each detector's calibrated score
``train_loss``        last training loss when known (a baseline ranking only)
====================  ===========================================================================

Rules (higher score = better; :data:`RULES`):

* ``sim_nominal`` / ``sim_perturbed``: sim success alone (baselines).
* ``ood_only``: ``1 - ood`` (baseline).
* ``vsdr``: sim success weighted by the in-distribution probability,
  ``sim_perturbed * (1 - ood)`` (VSDR's combination: a policy that succeeds in sim but whose
  features see the real data as out of distribution is discounted).
* ``rank_average``: mean of the percentile ranks of ``sim_perturbed`` and of ``-ood``.
* ``ood_gate``: ``sim_perturbed``, minus 1 for checkpoints whose ``ood`` exceeds 0.5 (OOD
  as a veto; the gate only reorders across it).
* ``sim_minus_ood_<l>``: ``sim_perturbed - l * ood`` for l in 0.25, 0.5, 1.

Equal scores share a rank (the rows are listed by ``sim_perturbed``, then ``sim_nominal``, then
the checkpoint label, so a ranking is a pure function of its ingredients, but a tie is never
a better rank). How sure a ranking is: :func:`score_draws` scores posterior draws of the sim
ingredients (evaluator/decision.py), which gives each checkpoint's P(best) under the rule.

Choosing the rule (:func:`choose_rule`): when real (or proxy-real) outcomes of earlier
checkpoints exist (:class:`Validation`), each rule is scored by MMRV against them (lower is
better, Pearson breaks ties) and the default is picked by leave-one-out: with two or more
validations, the rule chosen on all but one is scored on the held-out one, for each in turn;
with one validation, the same is done leaving out one checkpoint at a time. The rule picked
most often wins (ties: better mean MMRV, then the order of :data:`RULES`), and the report
says which rule, the leave-one-out MMRV of the procedure, and the per-rule table. With no
validation the default is ``vsdr``.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

DEFAULT_RULE = "vsdr"
OOD_GATE = 0.5


class RankingError(ValueError):
    """Ingredients or a rule that cannot be ranked; the message names what is missing."""


def _pct_rank(x: pd.Series) -> pd.Series:
    return x.rank(method="average", pct=True)


def _need(df: pd.DataFrame, *cols: str) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise RankingError(f"the ingredients have no column(s) {missing}; present: {list(df.columns)}")


def _ood(df: pd.DataFrame) -> pd.Series:
    _need(df, "ood")
    return df["ood"].astype(float)


RULES: dict[str, Callable[[pd.DataFrame], pd.Series]] = {
    "sim_nominal": lambda d: d["sim_nominal"].astype(float),
    "sim_perturbed": lambda d: d["sim_perturbed"].astype(float),
    "ood_only": lambda d: 1.0 - _ood(d),
    "vsdr": lambda d: d["sim_perturbed"].astype(float) * (1.0 - _ood(d)),
    "rank_average": lambda d: 0.5 * (_pct_rank(d["sim_perturbed"].astype(float)) + _pct_rank(-_ood(d))),
    "ood_gate": lambda d: d["sim_perturbed"].astype(float) - (_ood(d) > OOD_GATE).astype(float),
    "sim_minus_ood_0.25": lambda d: d["sim_perturbed"].astype(float) - 0.25 * _ood(d),
    "sim_minus_ood_0.5": lambda d: d["sim_perturbed"].astype(float) - 0.5 * _ood(d),
    "sim_minus_ood_1": lambda d: d["sim_perturbed"].astype(float) - 1.0 * _ood(d),
}
# Rules that combine both ingredients: the candidates for the default.
COMBINED_RULES = ["vsdr", "rank_average", "ood_gate", "sim_minus_ood_0.25", "sim_minus_ood_0.5", "sim_minus_ood_1"]
# The baselines of the benchmark, in the order (training loss is lower-is-better).
BASELINES = ["train_loss", "sim_nominal", "sim_perturbed", "ood_only"]


def rule_scores(ingredients: pd.DataFrame, rule: str) -> pd.Series:
    """The score of every checkpoint under ``rule`` (index = the frame's index)."""
    if rule == "train_loss":
        _need(ingredients, "train_loss")
        return -ingredients["train_loss"].astype(float)
    if rule not in RULES:
        raise RankingError(f"unknown ranking rule {rule!r}; rules: {', '.join(RULES)}")
    _need(ingredients, "sim_nominal", "sim_perturbed")
    return RULES[rule](ingredients).astype(float)


def rank(ingredients: pd.DataFrame, rule: str = DEFAULT_RULE) -> pd.DataFrame:
    """The ingredients sorted best first, with ``score`` and ``rank`` (1 = best) added.

    Rows whose score cannot be computed (a checkpoint without evaluation or OOD score) are
    kept at the bottom with ``rank`` NaN and a ``note``.
    """
    if ingredients.empty:
        raise RankingError("nothing to rank: no checkpoint has ingredients")
    df = ingredients.copy()
    df["score"] = rule_scores(df, rule)
    df["rule"] = rule
    ok = df["score"].notna()
    if "note" not in df.columns:
        df["note"] = ""
    df.loc[~ok, "note"] = df.loc[~ok, "note"].where(df.loc[~ok, "note"] != "", f"no score under rule {rule!r}")
    ranked = df[ok].sort_values(
        ["score", "sim_perturbed", "sim_nominal", "checkpoint"], ascending=[False, False, False, True], kind="mergesort"
    )
    # equal scores share a rank (competition ranking): a tie never ranks the first in input order higher
    ranked = ranked.assign(rank=ranked["score"].rank(method="min", ascending=False).astype(float))
    rest = df[~ok].assign(rank=np.nan)
    return pd.concat([ranked, rest]).reset_index(drop=True)


# ---- how sure a ranking is ----------------------------------------------------------------------
def score_draws(ranking: pd.DataFrame, rule: str, posterior: Any, draws: int = 1000) -> np.ndarray:
    """(draws, rows) scores of the ranking's rows under ``rule`` with the sim ingredients
    replaced by posterior draws (:class:`evaluator.decision.SuccessPosterior` over the rows'
    ``checkpoint_id``; OOD and the other ingredients as measured). Rows without draws (not
    fully evaluated) score NaN."""
    ids = list(ranking["checkpoint_id"]) if "checkpoint_id" in ranking.columns else []
    cols = [posterior.checkpoint_ids.index(c) if c in posterior.checkpoint_ids else -1 for c in ids]
    d = min(int(draws), posterior.draws.shape[0])
    nominal = posterior.condition("nominal")[:d] if "nominal" in posterior.conditions else posterior.overall()[:d]
    perturbed = posterior.perturbed()[:d]
    out = np.full((d, len(ranking)), np.nan)
    have = [j for j, c in enumerate(cols) if c >= 0]
    if not have:
        return out
    frame = ranking.iloc[have].reset_index(drop=True).copy()
    idx = [cols[j] for j in have]
    for i in range(d):
        frame["sim_nominal"] = nominal[i, idx]
        frame["sim_perturbed"] = perturbed[i, idx]
        out[i, have] = rule_scores(frame, rule).to_numpy(dtype=float)
    return out


# ---- validations and the choice of rule --------------------------------------------------------
@dataclass
class Validation:
    """Ingredients of earlier checkpoints with their real (or proxy-real) success rates."""

    ingredients: pd.DataFrame
    real: dict[str, float]
    name: str = ""
    domain: str = "real"  # or "proxy-real"

    def aligned(self) -> tuple[pd.DataFrame, np.ndarray]:
        df = self.ingredients[self.ingredients["checkpoint"].isin(self.real)].reset_index(drop=True)
        return df, np.array([self.real[c] for c in df["checkpoint"]], dtype=float)

    def to_json(self, path: str | Path) -> Path:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(
            json.dumps(
                {
                    "name": self.name,
                    "domain": self.domain,
                    "real": self.real,
                    "ingredients": json.loads(self.ingredients.to_json(orient="records")),
                },
                indent=1,
            )
        )
        return p

    @staticmethod
    def from_json(path: str | Path) -> Validation:
        d = json.loads(Path(path).read_text())
        return Validation(
            pd.DataFrame(d["ingredients"]),
            {k: float(v) for k, v in d["real"].items()},
            d.get("name", Path(path).stem),
            d.get("domain", "real"),
        )


def load_validations(directory: str | Path) -> list[Validation]:
    p = Path(directory)
    return [Validation.from_json(f) for f in sorted(p.glob("*.json"))] if p.is_dir() else []


def _mmrv(sim: np.ndarray, real: np.ndarray) -> float:
    from selection.metrics import mmrv

    return float(mmrv(list(map(float, sim)), list(map(float, real))))


def _pearson(sim: np.ndarray, real: np.ndarray) -> float:
    if len(sim) < 2 or np.std(sim) == 0 or np.std(real) == 0:
        return float("nan")
    return float(np.corrcoef(sim, real)[0, 1])


def rule_quality(df: pd.DataFrame, real: np.ndarray, rule: str) -> tuple[float, float]:
    """(MMRV, Pearson) of ``rule``'s scores against ``real`` (rows aligned)."""
    s = rule_scores(df, rule).to_numpy(dtype=float)
    ok = np.isfinite(s)
    return _mmrv(s[ok], real[ok]), _pearson(s[ok], real[ok])


def _best(parts: Sequence[tuple[pd.DataFrame, np.ndarray]], candidates: Sequence[str]) -> tuple[str, float]:
    best, best_key = candidates[0], (math.inf, math.inf, 0)
    for k, r in enumerate(candidates):
        vals = [rule_quality(df, real, r) for df, real in parts if len(df) >= 2]
        if not vals:
            continue
        m = float(np.mean([v[0] for v in vals]))
        p = float(np.nanmean([v[1] for v in vals])) if any(np.isfinite(v[1]) for v in vals) else -math.inf
        key = (m, -p, k)
        if key < best_key:
            best, best_key = r, key
    return best, best_key[0]


@dataclass
class RuleChoice:
    rule: str
    reason: str
    per_rule: pd.DataFrame = field(default_factory=pd.DataFrame)  # rule, mmrv, pearson, loo_picks
    loo_mmrv: float = float("nan")


def choose_rule(validations: Iterable[Validation], candidates: Sequence[str] = COMBINED_RULES) -> RuleChoice:
    """Pick the default rule by leave-one-out over past validations (see the module docstring)."""
    validations = list(validations)
    parts = [v.aligned() for v in validations]
    parts = [(df, real) for df, real in parts if len(df) >= 2]
    if not parts:
        return RuleChoice(DEFAULT_RULE, f"no validation with real outcomes yet: default rule {DEFAULT_RULE!r}")
    if len(parts) >= 2:
        folds = [([p for j, p in enumerate(parts) if j != i], parts[i]) for i in range(len(parts))]
        unit = "validation"
    else:
        df, real = parts[0]
        if len(df) < 3:
            return RuleChoice(
                DEFAULT_RULE,
                f"one validation of {len(df)} checkpoints is too small to choose a rule: default rule {DEFAULT_RULE!r}",
            )
        folds = []
        for i in range(len(df)):
            keep = np.arange(len(df)) != i
            folds.append(([(df[keep].reset_index(drop=True), real[keep])], (df, real)))
        unit = "checkpoint"
    picks: Counter[str] = Counter()
    held: list[float] = []
    for train, (df, real) in folds:
        r, _ = _best(train, candidates)
        picks[r] += 1
        if unit == "validation":
            held.append(rule_quality(df, real, r)[0])
    rows = []
    for r in candidates:
        q = [rule_quality(df, real, r) for df, real in parts]
        rows.append(
            {
                "rule": r,
                "mmrv": float(np.mean([a for a, _ in q])),
                "pearson": float(np.nanmean([b for _, b in q])) if any(np.isfinite(b) for _, b in q) else np.nan,
                "loo_picks": picks.get(r, 0),
            }
        )
    per_rule = pd.DataFrame(rows)
    order = sorted(
        candidates,
        key=lambda r: (-picks.get(r, 0), float(per_rule.set_index("rule").loc[r, "mmrv"]), list(candidates).index(r)),
    )
    chosen = order[0]
    n = sum(picks.values())
    loo = float(np.mean(held)) if held else float("nan")
    reason = (
        f"chosen by leave-one-{unit}-out over {len(parts)} validation(s) "
        f"({sum(len(df) for df, _ in parts)} checkpoints with real outcomes): picked in {picks[chosen]}/{n} "
        f"folds; MMRV on all validations {per_rule.set_index('rule').loc[chosen, 'mmrv']:.3f}"
    )
    if held:
        reason += f"; held-out MMRV of the procedure {loo:.3f}"
    return RuleChoice(chosen, reason, per_rule, loo)


def ingredients_frame(rows: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """Ingredients from dict rows (one per checkpoint), with the required columns checked."""
    df = pd.DataFrame(list(rows))
    if df.empty:
        raise RankingError("no checkpoint rows")
    _need(df, "checkpoint", "sim_nominal", "sim_perturbed")
    if df["checkpoint"].duplicated().any():
        dup = sorted(df.loc[df["checkpoint"].duplicated(), "checkpoint"].unique())
        raise RankingError(f"checkpoint labels must be unique within a ranking; repeated: {dup}")
    if "ood" not in df.columns:
        df["ood"] = np.nan
    return df


__all__ = [
    "RULES",
    "COMBINED_RULES",
    "BASELINES",
    "DEFAULT_RULE",
    "RankingError",
    "Validation",
    "RuleChoice",
    "rank",
    "rule_scores",
    "rule_quality",
    "choose_rule",
    "load_validations",
    "ingredients_frame",
]
