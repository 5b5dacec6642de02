"""Ranking-quality metrics: how well a ranking score (sim success, a predicted score) orders
checkpoints the way their real-world success does.

Conventions (all functions):

* Arguments are ``(sim, real)``: ``sim`` is the ranking score (higher = better, any scale),
  ``real`` the real-world success of the same checkpoints in the same order (a rate in [0, 1]
  by convention; the metrics themselves accept any finite floats). Both must have the same
  length, at least 2 entries, and no NaN/inf.
* :func:`mmrv` is SimplerEnv's Mean Maximum Rank Violation, exactly as
  ``simpler_env/utils/metrics.py::mean_maximum_rank_violation`` (simpler-env/SimplerEnv, commit
  6f5a5f7): for each checkpoint ``i``, the largest ``|real_i - real_j|`` over the ``j`` with
  ``(sim_i > sim_j) != (real_i > real_j)`` (strict inequalities), then the mean over ``i``.
  It is in the units of ``real`` (0 = no violation). It is not symmetric: the violation size is
  measured on ``real``, so the argument order matters (note that SimplerEnv's README snippet
  passes ``(real, sim)``; its own ``tools/calc_metrics*.py`` scripts pass ``(sim, real)`` as here).
  With ties the attribution matters: a pair tied in sim but not in real counts for the
  checkpoint with the *higher* real success only.
* :func:`pearson`, :func:`spearman` and :func:`kendall_tau` (tau-b) come from ``scipy.stats``.
  For a constant vector they are undefined: they return NaN and emit :class:`MetricWarning`.
  (SimplerEnv's own ``pearson_correlation`` returns 1 when the centred vectors are equal and 0
  otherwise in that case; we prefer an explicit NaN.)
* Ties in the score are broken pessimistically everywhere a single order is needed
  (:func:`regret_at_1`, :func:`topk_recall`): among checkpoints with equal scores, the one
  with the *lower* real success is ranked first. A score that cannot separate checkpoints
  gets no credit for a lucky tie-break: regret@1 is the worst case over the tied top group.

Loading results: :func:`load_real_results` (``checkpoint,real_success`` CSV, or ``success``),
:func:`load_scores` (a ranking CSV: ``checkpoint`` plus one or more score columns) and
:func:`compare_ranking` (align by checkpoint name, warn about names only one side knows).
"""

from __future__ import annotations

import csv
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

REAL_COLUMNS = ("real_success", "success")


class SelectionMetricsError(ValueError):
    """Inputs the ranking metrics cannot use (lengths differ, too few checkpoints, bad CSV)."""


class MetricWarning(UserWarning):
    """A metric is undefined for these inputs (NaN returned) or inputs were dropped."""


def _vectors(sim: Sequence[float], real: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(sim, dtype=float).reshape(-1)
    r = np.asarray(real, dtype=float).reshape(-1)
    if s.shape != r.shape:
        raise SelectionMetricsError(
            f"sim has {s.size} entries but real has {r.size}: pass one score and one real success per checkpoint, "
            "in the same order (compare_ranking aligns dicts by checkpoint name)"
        )
    if s.size < 2:
        raise SelectionMetricsError(
            f"need at least 2 checkpoints to compare rankings, got {s.size}: add real results for more checkpoints"
        )
    for name, v in (("sim", s), ("real", r)):
        bad = np.flatnonzero(~np.isfinite(v))
        if bad.size:
            raise SelectionMetricsError(
                f"{name} has non-finite values at positions {bad.tolist()}: "
                "drop those checkpoints or fill in their values"
            )
    return s, r


def mmrv(sim: Sequence[float], real: Sequence[float]) -> float:
    """Mean Maximum Rank Violation (SimplerEnv's exact convention, see the module docstring).

    ``mean_i max_{j: (sim_i > sim_j) != (real_i > real_j)} |real_i - real_j|`` (0 when no ``j``
    qualifies). 0 is a perfect order; the worst case is bounded by ``max(real) - min(real)``.
    """
    s, r = _vectors(sim, real)
    sim_gt = s[:, None] > s[None, :]  # [i, j] = sim_i > sim_j
    real_gt = r[:, None] > r[None, :]
    gap = np.abs(r[:, None] - r[None, :])
    per_ckpt = np.where(sim_gt != real_gt, gap, 0.0).max(axis=1)
    return float(per_ckpt.mean())


def _constant(kind: str, which: str, v: np.ndarray) -> bool:
    if np.all(v == v[0]):
        warnings.warn(
            f"{kind} is undefined because the {which} vector is constant (all {v[0]:g}); returning NaN",
            MetricWarning,
            stacklevel=4,
        )
        return True
    return False


def _correlation(kind: str, sim: Sequence[float], real: Sequence[float]) -> float:
    s, r = _vectors(sim, real)
    if _constant(kind, "score", s) or _constant(kind, "real", r):
        return float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if kind == "pearson":
            value = stats.pearsonr(s, r)[0]
        elif kind == "spearman":
            value = stats.spearmanr(s, r)[0]
        else:
            value = stats.kendalltau(s, r)[0]  # tau-b (accounts for ties)
    return float(value)


def pearson(sim: Sequence[float], real: Sequence[float]) -> float:
    """Pearson correlation of score and real success (NaN + :class:`MetricWarning` if either is constant)."""
    return _correlation("pearson", sim, real)


def spearman(sim: Sequence[float], real: Sequence[float]) -> float:
    """Spearman rank correlation (ties get average ranks; NaN + warning if either is constant)."""
    return _correlation("spearman", sim, real)


def kendall_tau(sim: Sequence[float], real: Sequence[float]) -> float:
    """Kendall's tau-b (NaN + warning if either is constant)."""
    return _correlation("kendall_tau", sim, real)


def score_order(sim: Sequence[float], real: Sequence[float]) -> list[int]:
    """Indices from best to worst score; equal scores: lower real success first (pessimistic)."""
    s, r = _vectors(sim, real)
    return [int(i) for i in np.lexsort((r, -s))]  # last key is primary: -score ascending, then real ascending


def regret_at_1(sim: Sequence[float], real: Sequence[float]) -> float:
    """``max(real) - real[top]``: the real success lost by deploying the checkpoint the score ranks
    first instead of the real best. 0 is perfect. Ties for the top score: the worst real success
    among the tied checkpoints is used (see module docstring)."""
    s, r = _vectors(sim, real)
    top = score_order(s, r)[0]
    return float(r.max() - r[top])


def topk_recall(sim: Sequence[float], real: Sequence[float], k: int) -> float:
    """Fraction of the real top-k that the score's top-k contains: ``|R ∩ S| / k``.

    ``S`` is the score's first ``k`` checkpoints (pessimistic tie-break); ``R`` is every checkpoint
    whose real success is at least the k-th largest real success (ties at the boundary are all in
    ``R``, so any of several equally good checkpoints counts). Requires ``1 <= k <= n``; with
    ``k == n`` the recall is trivially 1.
    """
    s, r = _vectors(sim, real)
    if not 1 <= k <= s.size:
        raise SelectionMetricsError(f"k={k} but there are {s.size} checkpoints: choose 1 <= k <= {s.size}")
    picked = score_order(s, r)[:k]
    threshold = np.sort(r)[::-1][k - 1]
    return float(sum(1 for i in picked if r[i] >= threshold) / k)


def ranking_quality(sim: Sequence[float], real: Sequence[float], k: int = 3) -> dict[str, float]:
    """All metrics at once: ``n, k, mmrv, pearson, spearman, kendall_tau, regret_at_1, topk_recall``.

    ``topk_recall`` is NaN (with a :class:`MetricWarning`) when ``k`` exceeds the number of
    checkpoints; the other metrics are still computed.
    """
    s, r = _vectors(sim, real)
    if k < 1:
        raise SelectionMetricsError(f"k={k}: top-k recall needs k >= 1")
    if k > s.size:
        warnings.warn(
            f"top-{k} recall is undefined with only {s.size} checkpoints; reported as NaN (choose k <= {s.size})",
            MetricWarning,
            stacklevel=2,
        )
        recall = float("nan")
    else:
        recall = topk_recall(s, r, k)
    return {
        "n": int(s.size),
        "k": int(k),
        "mmrv": mmrv(s, r),
        "pearson": pearson(s, r),
        "spearman": spearman(s, r),
        "kendall_tau": kendall_tau(s, r),
        "regret_at_1": regret_at_1(s, r),
        "topk_recall": recall,
    }


def bootstrap_interval(
    metric: Any,
    sim: Sequence[float],
    real: Sequence[float],
    *,
    level: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``metric(sim, real)`` over checkpoints: checkpoints are
    resampled with replacement, in pairs (a checkpoint keeps its score and its real success).

    Resamples on which the metric is undefined (a constant vector: a correlation is NaN) are
    left out of the percentiles, which is why this is not ``scipy.stats.bootstrap`` (it takes
    the percentiles of all resamples and answers NaN when one is NaN). Returns ``(nan, nan)``
    when fewer than half the resamples give a value."""
    s, r = _vectors(sim, real)
    if not 0.0 < level < 1.0:
        raise SelectionMetricsError(f"level = {level}: give a confidence level in (0, 1), e.g. 0.95")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, s.size, size=(int(resamples), s.size))
    values = np.full(len(idx), np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MetricWarning)
        for b, i in enumerate(idx):
            values[b] = metric(s[i], r[i])
    ok = values[np.isfinite(values)]
    if ok.size < len(values) / 2:
        return float("nan"), float("nan")
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(ok, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


# ---------------------------------------------------------------------------------------------
# Loading and aligning results by checkpoint name


def _read_csv(path: str | Path, what: str) -> tuple[list[str], list[dict[str, str]]]:
    p = Path(path)
    if not p.is_file():
        raise SelectionMetricsError(f"{what} file {str(p)!r} does not exist: check the path")
    with p.open(newline="") as fh:
        reader = csv.DictReader(fh)
        header = [h.strip() for h in (reader.fieldnames or [])]
        rows = [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in reader]
    if not header:
        raise SelectionMetricsError(f"{what} file {str(p)!r} is empty: it needs a header row")
    if "checkpoint" not in header:
        raise SelectionMetricsError(
            f"{what} file {str(p)!r} has no 'checkpoint' column (columns: {header}): "
            "name the checkpoint column 'checkpoint'"
        )
    if not rows:
        raise SelectionMetricsError(f"{what} file {str(p)!r} has a header but no rows")
    return header, rows


def _parse_column(
    path: str | Path, rows: list[dict[str, str]], column: str, unit_interval: bool, allow_missing: bool = False
) -> dict[str, float]:
    out: dict[str, float] = {}
    skipped: list[str] = []
    for line, row in enumerate(rows, start=2):  # line 1 is the header
        name = row.get("checkpoint", "")
        if not name:
            raise SelectionMetricsError(f"{path}: line {line} has an empty checkpoint name")
        if name in out:
            raise SelectionMetricsError(
                f"{path}: checkpoint {name!r} appears twice (again on line {line}); keep one row per checkpoint"
            )
        raw = row.get(column, "")
        if allow_missing and raw.lower() in ("", "nan", "none", "null"):
            skipped.append(name)
            continue
        try:
            value = float(raw)
        except ValueError:
            raise SelectionMetricsError(f"{path}: line {line} ({name!r}): {column}={raw!r} is not a number") from None
        if not math.isfinite(value):
            raise SelectionMetricsError(f"{path}: line {line} ({name!r}): {column}={raw!r} is not finite")
        if unit_interval and not 0.0 <= value <= 1.0:
            raise SelectionMetricsError(
                f"{path}: line {line} ({name!r}): {column}={value:g} is outside [0, 1]; "
                "give success as a fraction (e.g. 0.85, not 85)"
            )
        out[name] = value
    if skipped:
        warnings.warn(
            f"{path}: no {column!r} value for {len(skipped)} checkpoint(s), not ranked: {', '.join(skipped)}",
            MetricWarning,
            stacklevel=3,
        )
    return out


def load_real_results(csv_path: str | Path) -> dict[str, float]:
    """``{checkpoint: real success}`` from a CSV with columns ``checkpoint`` and ``real_success``
    (or ``success``). Values must be fractions in [0, 1]; an error names the offending line."""
    header, rows = _read_csv(csv_path, "real-results")
    column = next((c for c in REAL_COLUMNS if c in header), None)
    if column is None:
        raise SelectionMetricsError(
            f"real-results file {str(csv_path)!r} has no 'real_success' or 'success' column (columns: {header})"
        )
    return _parse_column(csv_path, rows, column, unit_interval=True)


def load_scores(csv_path: str | Path, column: str = "score") -> dict[str, float]:
    """``{checkpoint: score}`` from a ranking CSV (``checkpoint`` plus score columns); higher = better.

    Rows with an empty or ``nan`` score (a checkpoint the ranking could not score) are skipped with a
    :class:`MetricWarning` naming them; any other non-number is an error."""
    header, rows = _read_csv(csv_path, "ranking")
    if column not in header:
        others = [c for c in header if c != "checkpoint"]
        raise SelectionMetricsError(
            f"ranking file {str(csv_path)!r} has no score column {column!r}; "
            f"available: {others} (choose one with --column)"
        )
    return _parse_column(csv_path, rows, column, unit_interval=False, allow_missing=True)


@dataclass
class RankingComparison:
    """Result of :func:`compare_ranking`.

    ``checkpoints``: the checkpoints in both inputs, best score first; ``sim``/``real`` their
    values in that order. ``unknown``: named by the real results but absent from the ranking
    (dropped). ``missing_real``: in the ranking without a real result (not scored).
    """

    checkpoints: list[str]
    sim: list[float]
    real: list[float]
    metrics: dict[str, float]
    unknown: list[str] = field(default_factory=list)
    missing_real: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (NaN becomes None)."""
        metrics = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in self.metrics.items()}
        return {
            "metrics": metrics,
            "checkpoints": [
                {"checkpoint": c, "score": s, "real_success": r}
                for c, s, r in zip(self.checkpoints, self.sim, self.real)
            ],
            "unknown_in_real": self.unknown,
            "missing_real": self.missing_real,
        }


def compare_ranking(scores: Mapping[str, float], real: Mapping[str, float], k: int = 3) -> RankingComparison:
    """Align ``scores`` and ``real`` by checkpoint name and compute :func:`ranking_quality`.

    Real results for checkpoints the ranking does not know are dropped with a :class:`MetricWarning`
    naming them; ranked checkpoints without real results are listed in ``missing_real``. At least
    2 checkpoints must be in both.
    """
    unknown = sorted(c for c in real if c not in scores)
    missing = sorted(c for c in scores if c not in real)
    if unknown:
        warnings.warn(
            f"real results name {len(unknown)} checkpoint(s) not in the ranking, dropped: {', '.join(unknown)}",
            MetricWarning,
            stacklevel=2,
        )
    common = [c for c in scores if c in real]
    if len(common) < 2:
        raise SelectionMetricsError(
            f"only {len(common)} checkpoint(s) appear in both the ranking and the real results "
            f"(ranking: {sorted(scores)[:10]}, real: {sorted(real)[:10]}): the names must match exactly"
        )
    s = [float(scores[c]) for c in common]
    r = [float(real[c]) for c in common]
    order = score_order(s, r)
    common = [common[i] for i in order]
    s = [s[i] for i in order]
    r = [r[i] for i in order]
    return RankingComparison(
        checkpoints=common, sim=s, real=r, metrics=ranking_quality(s, r, k=k), unknown=unknown, missing_real=missing
    )
