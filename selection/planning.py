"""Real-trial planning: which checkpoints to run on the real robot next, and how often, to find
one within ``eps`` of the best at a given confidence.

Belief (the fixed interface): ``grid`` (G,), strictly increasing success rates in (0, 1), and
``density`` (K, G), non-negative masses of each checkpoint's real success rate ``p_k`` on the grid
points (rows need not be normalised; every function normalises them). The beliefs of different
checkpoints are independent. Each mass is read as spread uniformly over its grid point's *cell*:
the cells tile [0, 1], their edges are 0, the midpoints between neighbouring grid points, and 1.
The belief is therefore a piecewise-constant density, and the mean (:func:`belief_mean`), the
quantiles (:func:`belief_quantiles`), the draws (:func:`sample`: inverse CDF, uniform within the
cell, so two checkpoints tie with probability zero) and the flat prior (:func:`flat_prior`: masses
proportional to the cell widths, i.e. Beta(1, 1)) all describe the same distribution. The
likelihood of an update is evaluated at the grid points (quadrature on the grid); on the default
``expit(linspace(-9, 9, 601))`` grid the cells are at most 0.0075 wide.

Method:

* :func:`update`: Bayes' rule, ``density * p^s (1 - p)^(n - s)`` per checkpoint, in log space.
* Best and eps-best (:func:`p_best`, :func:`p_eps_best`): Monte Carlo over joint draws of all
  rates; ``P(best)`` is the share of draws in which a checkpoint has the highest rate,
  ``P(eps-best) = P(p_k >= max_j p_j - eps)``.
* Stopping (:func:`decide`): the leader is the checkpoint with the highest ``P(eps-best)`` (ties:
  higher ``P(best)``, then the lower index); the decision is done when its ``P(eps-best)`` reaches
  ``confidence``: the posterior probability that the recommended checkpoint is eps-optimal.
* Allocation (:func:`allocation`): top-two Thompson sampling, TTTS (Russo 2016, "Simple Bayesian
  algorithms for best arm identification", COLT 2016; Operations Research 68(6), 2020;
  arXiv:1602.08448).
  A trial goes with probability ``beta`` to the leader ``I`` = the argmax of a posterior draw,
  else to a challenger = the argmax of a fresh draw in which ``I`` is not the argmax (rejection
  sampling), and if ``max_tries`` fresh draws all have ``I`` on top, to the second best of the
  leader's own draw. The selection probabilities are computed from ``D`` joint draws: with
  ``a_j`` the share of draws won by ``j`` and ``s_Ij`` the share of the draws won by ``I`` in
  which ``j`` is second, ``psi_j = beta a_j + (1 - beta) sum_I a_I c_Ij``, where
  ``c_Ij = (1 - a_I^T) a_j / (1 - a_I) + a_I^T s_Ij`` (``j != I``, ``T = max_tries``) is the
  exact expectation of the rejection step over fresh draws from the same empirical distribution,
  so no extra randomness enters. With ``beta = 1/2`` and two checkpoints this is 1/2 each, as in
  Russo's analysis (the top two share the trials; a checkpoint that is certainly neither best nor
  second gets none).
* Plan (:func:`plan_trials`): the next batch of real trials, the allocation times the batch,
  rounded by largest remainders (shares below :data:`NEGLIGIBLE` get none), run in an interleaved
  order (:meth:`Plan.trial_list`); and a forecast by simulation under the current belief: "true"
  rates are drawn from the belief and :func:`run_sequential` (TTTS, the same batch) runs up to the
  remaining budget. Under the belief, the share of finished runs that chose a checkpoint more
  than ``eps`` below the true best is about ``1 - confidence`` or less (Bayesian calibration of
  the stopping rule; the Monte Carlo noise of the stopping probability, ~0.007 at 1000 draws, is
  the "about").
* :func:`run_sequential`: the simulated sequential experiment (Bernoulli outcomes from known
  true rates), TTTS or round-robin ("uniform") allocation, for forecasts and benchmarks. Each
  batch's arms are drawn independently from the TTTS probabilities; its draws come from the
  inverse CDFs tabulated at 4096 levels (within 1/4096 of the exact CDF, and only the rows that
  got trials are re-tabulated). With K = 18 checkpoints, the 601-point grid and 1000 draws a batch
  costs ~0.5 ms of CPU; a flat-prior run with batch = 2 on rates spread evenly over 0.1..0.85
  needs ~315 trials, ~80 ms (round-robin: ~1100 trials, ~240 ms).

A flat prior (:func:`flat_prior`) is the real-only baseline; a prior from the sim -> real
prediction model is the same interface with informative rows.

Frequentist caveat: the guarantee ``P(wrong | stopped) <= 1 - confidence`` holds on average over
true rates drawn from the belief (tests/test_planning.py checks it), not for every fixed set of
rates: the belief is looked at after every batch, and a best checkpoint only a little more than
``eps`` ahead of the next is often missed. Flat priors, eps = 0.05, confidence 0.95, batch 2, 300
runs each: rates (0.2, 0.4, 0.7, 0.75): 0-2 % wrong; (0.5, 0.6, 0.7): 12 %; (0.6, 0.69):
19 %; (0.6, 0.66): 27 %. Larger batches (fewer looks; batch 10: 8 %, 9 %, 24 %) and a higher
confidence (0.99: 4 %, 5 %, 11 %) reduce it, at the cost of trials.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd

DEFAULT_EPS = 0.05
DEFAULT_CONFIDENCE = 0.95
PLAN_DRAWS = 4000  # joint draws for the probabilities of a plan
SEQUENTIAL_DRAWS = 1000  # joint draws per batch in the simulated experiment
TOP_TWO_BETA = 0.5  # Russo's default: the leader gets half the trials
MAX_TRIES = 100  # fresh draws tried for a challenger before falling back to the second best
INVERSE_LEVELS = 4096  # levels of the tabulated inverse CDF of the simulated experiment
NEGLIGIBLE = 0.01  # allocation shares below this get no trial in a plan
#: checkpoints of a first batch: 9 with real outcomes let a 90 % held-out check certify its quantile
FIRST_CHECKPOINTS = 9
METHOD = (
    "top-two Thompson sampling (Russo 2016) on grid beliefs of the real success rates; stop when the "
    "leader's posterior probability of being within eps of the best reaches the confidence (selection/planning.py)"
)


class PlanningError(ValueError):
    """A belief, outcome or parameter the planner cannot use."""


# --- beliefs on the grid -----------------------------------------------------------------------


def cell_edges(grid: np.ndarray) -> np.ndarray:
    """(G + 1,): the edges of the grid points' cells: 0, the midpoints between neighbours, 1."""
    g = _check_grid(grid)
    return np.concatenate(([0.0], 0.5 * (g[1:] + g[:-1]), [1.0]))


def flat_prior(grid: np.ndarray, k: int) -> np.ndarray:
    """(k, G): the uniform Beta(1, 1) belief for ``k`` checkpoints (mass = cell width), the
    real-only baseline."""
    if int(k) < 1:
        raise PlanningError(f"need at least one checkpoint, got {k}")
    w = np.diff(cell_edges(grid))
    return np.tile(w / w.sum(), (int(k), 1))


def normalise(grid: np.ndarray, density: np.ndarray) -> np.ndarray:
    """(K, G): ``density`` checked against ``grid`` and scaled so that every row sums to 1."""
    g = _check_grid(grid)
    d = np.asarray(density, dtype=float)
    if d.ndim != 2 or d.shape[1] != g.size or d.shape[0] < 1:
        raise PlanningError(f"density must be (checkpoints, {g.size}) for this grid, got shape {d.shape}")
    if not np.all(np.isfinite(d)) or np.any(d < 0):
        raise PlanningError("density must be finite and non-negative")
    total = d.sum(axis=1, keepdims=True)
    if np.any(total <= 0):
        raise PlanningError(f"checkpoints {np.flatnonzero(total[:, 0] <= 0).tolist()} have no belief mass")
    return d / total


def update(grid: np.ndarray, density: np.ndarray, successes: Sequence[int], trials: Sequence[int]) -> np.ndarray:
    """(K, G): the belief after ``successes[k]`` of ``trials[k]`` real trials of each checkpoint,
    ``density * p^s (1 - p)^(n - s)`` row by row (log space), rows normalised."""
    g = _check_grid(grid)
    d = normalise(g, density)
    s, n = _counts(successes, trials, d.shape[0])
    with np.errstate(divide="ignore"):
        log_d = np.log(d)
    return _posterior(log_d, np.log(g), np.log1p(-g), s, n)


def belief_mean(grid: np.ndarray, density: np.ndarray) -> np.ndarray:
    """(K,): the mean success rate of each checkpoint (cell centres weighted by the masses)."""
    edges = cell_edges(grid)
    return normalise(grid, density) @ (0.5 * (edges[1:] + edges[:-1]))


def belief_quantiles(grid: np.ndarray, density: np.ndarray, q: Sequence[float]) -> np.ndarray:
    """(K, len(q)): quantiles of each checkpoint's belief (the CDF is linear within a cell)."""
    edges = cell_edges(grid)
    cdf = _cdf(normalise(grid, density))
    qs = np.asarray(q, dtype=float)
    if np.any((qs < 0) | (qs > 1)):
        raise PlanningError(f"quantiles must lie in [0, 1], got {qs.tolist()}")
    return np.stack([np.interp(qs, c, edges) for c in cdf])


def sample(grid: np.ndarray, density: np.ndarray, draws: int, rng: np.random.Generator) -> np.ndarray:
    """(draws, K): independent draws of every checkpoint's rate, by inverse CDF with a uniform
    position within the grid cell (no two checkpoints tie)."""
    edges = cell_edges(grid)
    return _sample(_flat_cdf(_cdf(normalise(grid, density))), edges, int(draws), rng)


# --- best and eps-best ---------------------------------------------------------------------------


def p_best(
    grid: np.ndarray, density: np.ndarray, draws: int = PLAN_DRAWS, rng: np.random.Generator | None = None
) -> np.ndarray:
    """(K,): P(p_k is the highest rate), the share of joint draws each checkpoint wins (``rng``:
    default seeded with 0, as everywhere in this module)."""
    x = sample(grid, density, draws, _rng(rng))
    return np.bincount(x.argmax(axis=1), minlength=x.shape[1]) / x.shape[0]


def p_eps_best(
    grid: np.ndarray,
    density: np.ndarray,
    eps: float = DEFAULT_EPS,
    draws: int = PLAN_DRAWS,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """(K,): P(p_k >= max_j p_j - eps), by Monte Carlo over joint draws."""
    return _eps_best(sample(grid, density, draws, _rng(rng)), _check_eps(eps))


@dataclass(frozen=True)
class Decision:
    """The current recommendation: the ``leader`` (index and ``label``), the posterior probability
    ``p_eps_best`` that it is within ``eps`` of the best, and whether that reaches ``confidence``."""

    leader: int
    label: str
    p_eps_best: float
    p_best: float
    eps: float
    confidence: float
    done: bool

    def __str__(self) -> str:
        verdict = "decided" if self.done else "not decided"
        return (
            f"{verdict}: {self.label} is within {self.eps:g} of the best with P = {self.p_eps_best:.3f} "
            f"(target {self.confidence:g}; P(best) = {self.p_best:.3f})"
        )


def decide(
    labels: Sequence[str],
    grid: np.ndarray,
    density: np.ndarray,
    *,
    eps: float = DEFAULT_EPS,
    confidence: float = DEFAULT_CONFIDENCE,
    draws: int = PLAN_DRAWS,
    rng: np.random.Generator | None = None,
) -> Decision:
    """The :class:`Decision` of the belief: leader = highest P(eps-best) (ties: P(best), then the
    first), done when its P(eps-best) >= ``confidence``."""
    x = sample(grid, density, draws, _rng(rng))
    labels = _labels(labels, x.shape[1])
    return _decision(labels, _eps_best(x, _check_eps(eps)), _wins(x), eps, _check_confidence(confidence))


# --- allocation (top-two Thompson sampling) -------------------------------------------------------


def allocation(
    grid: np.ndarray,
    density: np.ndarray,
    eps: float = DEFAULT_EPS,
    draws: int = PLAN_DRAWS,
    rng: np.random.Generator | None = None,
    beta: float = TOP_TWO_BETA,
    max_tries: int = MAX_TRIES,
) -> np.ndarray:
    """(K,): top-two Thompson sampling selection probabilities under the belief (sum 1); see the
    module docstring for the formula. ``eps`` is validated but not used: plain TTTS aims at the
    best checkpoint, and eps enters through the stopping rule (:func:`decide`)."""
    _check_eps(eps)
    if not 0.0 <= beta <= 1.0:
        raise PlanningError(f"beta must lie in [0, 1], got {beta}")
    return _ttts(sample(grid, density, draws, _rng(rng)), float(beta), int(max_tries))


def largest_remainder(shares: np.ndarray, total: int, negligible: float = NEGLIGIBLE) -> np.ndarray:
    """(K,) integers summing to ``total``: ``total * shares`` rounded by largest remainders, after
    dropping shares below ``negligible`` (ties: the larger share, then the first)."""
    a = np.clip(np.asarray(shares, dtype=float), 0.0, None)
    if a.sum() <= 0:
        raise PlanningError("allocation has no positive share")
    kept = np.where(a >= negligible, a, 0.0)
    if kept.sum() > 0:
        a = kept
    a = a / a.sum()
    quota = a * int(total)
    n = np.floor(quota).astype(int)
    rest = int(total) - int(n.sum())
    order = np.lexsort((np.arange(a.size), -a, -(quota - n)))
    n[order[:rest]] += 1
    return n


# --- the simulated sequential experiment ----------------------------------------------------------


@dataclass(frozen=True)
class SequentialResult:
    """One simulated experiment: ``trials`` run in total (``counts`` per checkpoint), the
    ``chosen`` checkpoint (the leader when it stopped or the trials ran out), whether the stopping
    rule was met (``done``) and whether the choice is within eps of the true best (``correct``)."""

    trials: int
    chosen: int
    done: bool
    correct: bool
    counts: np.ndarray = field(repr=False)


def run_sequential(
    true_p: Sequence[float],
    grid: np.ndarray,
    prior_density: np.ndarray,
    *,
    eps: float = DEFAULT_EPS,
    confidence: float = DEFAULT_CONFIDENCE,
    batch: int = 2,
    max_trials: int = 1000,
    allocation: Literal["ttts", "uniform"] = "ttts",
    rng: np.random.Generator,
    draws: int = SEQUENTIAL_DRAWS,
    beta: float = TOP_TWO_BETA,
) -> SequentialResult:
    """Simulate the sequential procedure against known ``true_p``: from ``prior_density``, repeat
    {stop if the leader's P(eps-best) >= ``confidence`` (``draws`` joint draws); else run ``batch``
    trials (fewer when ``max_trials`` is near), each on a checkpoint drawn from the TTTS
    probabilities of the same draws ("ttts") or in round-robin order over all checkpoints
    ("uniform"); Bernoulli(true_p) outcomes; Bayes update}. ``correct``: ``true_p[chosen] >=
    max(true_p) - eps``. ``rng`` is required: repeated runs must not share a stream.

    Cost (K = 18, G = 601, draws = 1000, measured on the 2-core development machine): ~0.5 ms of
    CPU per batch; with batch = 2 a flat-prior run over rates spread evenly on 0.1..0.85 takes
    ~315 trials, ~80 ms."""
    g = _check_grid(grid)
    prior = normalise(g, prior_density)
    k = prior.shape[0]
    p = np.asarray(true_p, dtype=float)
    if p.shape != (k,) or np.any(~np.isfinite(p)) or np.any((p < 0) | (p > 1)):
        raise PlanningError(f"true_p must be {k} rates in [0, 1], got {p.tolist()}")
    eps = _check_eps(eps)
    confidence = _check_confidence(confidence)
    if int(batch) < 1 or int(max_trials) < 0:
        raise PlanningError(f"batch must be >= 1 and max_trials >= 0, got {batch}, {max_trials}")
    if allocation not in ("ttts", "uniform"):
        raise PlanningError(f"allocation must be 'ttts' or 'uniform', got {allocation!r}")
    edges = cell_edges(g)
    log_g, log_1g = np.log(g), np.log1p(-g)
    with np.errstate(divide="ignore"):
        log_prior = np.log(prior)
    inverse = _inverse_table(_cdf(prior), edges)
    s = np.zeros(k)
    n = np.zeros(k)
    total = 0
    next_arm = 0
    done = False
    while True:
        x = _sample_table(inverse, draws, rng)
        first = x.argmax(axis=1)
        pe = _eps_best(x, eps)
        leader = _leader(pe, np.bincount(first, minlength=k) / draws)
        if pe[leader] >= confidence:
            done = True
            break
        if total >= max_trials:
            break
        m = min(int(batch), int(max_trials) - total)
        if allocation == "ttts":
            psi = _ttts(x, beta, MAX_TRIES, first)
            arms = rng.choice(k, size=m, p=psi)
        else:
            arms = (next_arm + np.arange(m)) % k
            next_arm = int(arms[-1] + 1) % k
        wins = rng.random(m) < p[arms]
        ds = np.bincount(arms, weights=wins, minlength=k)
        dn = np.bincount(arms, minlength=k)
        s += ds
        n += dn
        total += m
        rows = np.flatnonzero(dn)
        post = _posterior(log_prior[rows], log_g, log_1g, s[rows], n[rows])
        inverse[:, rows] = _inverse_table(_cdf(post), edges)
    correct = bool(p[leader] >= p.max() - eps - 1e-12)
    return SequentialResult(trials=total, chosen=int(leader), done=done, correct=correct, counts=n.astype(int))


# --- the plan --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlanRow:
    """One checkpoint of a plan: the trials to run now, its TTTS share, its probabilities and its
    belief (mean and 90 % interval)."""

    label: str
    trials: int
    allocation: float
    p_eps_best: float
    p_best: float
    mean: float
    lo90: float
    hi90: float


@dataclass(frozen=True)
class Forecast:
    """The simulated future under the current belief: ``runs`` experiments with true rates drawn
    from the belief, TTTS with the plan's batch, up to ``budget`` more trials. Trials quantiles are
    ``inf`` when that share of runs does not finish within the budget. ``p_wrong``: the chosen
    checkpoint (the leader when the budget ran out) is more than eps below the true best, over all
    runs; ``p_wrong_if_done``: the same over the runs that finished (NaN when none did)."""

    runs: int
    budget: int
    batch: int
    trials_median: float
    trials_p90: float
    p_done: float
    p_wrong: float
    p_wrong_if_done: float


@dataclass(frozen=True)
class Plan:
    """The next batch of real trials (``rows``, in the labels' order; ``batch``: their total, 0
    when none are needed or the ``budget`` is spent), the current :class:`Decision`, the forecast
    (None when ``forecast_runs`` was 0) and a one-line ``note``."""

    rows: list[PlanRow]
    decision: Decision
    batch: int
    budget: int
    forecast: Forecast | None
    note: str
    method: str = METHOD

    @property
    def trials(self) -> dict[str, int]:
        return {r.label: r.trials for r in self.rows}

    @property
    def total(self) -> int:
        return sum(r.trials for r in self.rows)

    def as_frame(self) -> pd.DataFrame:
        """One row per checkpoint (columns: the :class:`PlanRow` fields)."""
        cols = ["label", "trials", "allocation", "p_eps_best", "p_best", "mean", "lo90", "hi90"]
        return pd.DataFrame([[getattr(r, c) for c in cols] for r in self.rows], columns=cols)

    def trial_list(self) -> list[str]:
        """The batch as a run order with each checkpoint's trials spread evenly over it (its j-th of
        n trials at position (j + 1/2) / n; ties: the labels' order), so drift of the real cell
        during the batch hits every checkpoint alike."""
        keys = [((j + 0.5) / r.trials, i, r.label) for i, r in enumerate(self.rows) for j in range(r.trials)]
        return [label for _, _, label in sorted(keys)]

    def summary(self) -> str:
        lines = [str(self.decision), self.note]
        if self.forecast is not None:
            f = self.forecast
            lines.append(
                f"forecast ({f.runs} simulated runs, budget {f.budget}): trials median {_fmt(f.trials_median)}, "
                f"90th percentile {_fmt(f.trials_p90)}, P(done within budget) {f.p_done:.2f}, "
                f"P(wrong choice) {f.p_wrong:.3f} ({_fmt(f.p_wrong_if_done, '.3f')} when done)"
            )
        return "\n".join(lines)


def first_batch(
    labels: Sequence[str],
    sim: Sequence[float],
    grid: np.ndarray,
    density: np.ndarray,
    budget: int,
    *,
    tried: Sequence[int] = (),
    batch: int | None = None,
    per_checkpoint: int = 2,
    eps: float = DEFAULT_EPS,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
) -> Plan:
    """A first batch when too few checkpoints have real outcomes to relate sim to real:
    ``per_checkpoint`` trials on each of ``batch / per_checkpoint`` checkpoints without trials
    (``tried``: trials so far per checkpoint), spread evenly over the sim ranking from the top
    down, so the next prediction sees the whole range of sim success. Default ``batch``:
    ``per_checkpoint`` x up to :data:`FIRST_CHECKPOINTS` checkpoints, at most ``budget``."""
    g = _check_grid(grid)
    d = normalise(g, density)
    k = d.shape[0]
    labels = _labels(labels, k)
    n_tried = np.zeros(k, dtype=int) if len(tried) == 0 else np.asarray(tried, dtype=int)
    # default: per_checkpoint trials on up to FIRST_CHECKPOINTS fresh checkpoints
    n_fresh = int((n_tried == 0).sum())
    default = per_checkpoint * min(n_fresh, FIRST_CHECKPOINTS)
    batch = min(default if batch is None else int(batch), int(budget))
    fresh = [
        i for i in np.argsort(-np.nan_to_num(np.asarray(sim, dtype=float), nan=-1.0), kind="stable") if not n_tried[i]
    ]
    trials = np.zeros(k, dtype=int)
    n_pick = min(len(fresh), max(1, batch // max(1, per_checkpoint)))
    if n_pick and batch:
        picks = [fresh[int(round(j))] for j in np.linspace(0, len(fresh) - 1, n_pick)]
        for j in range(batch):  # round-robin over the picks: per_checkpoint each, the rest from the top
            trials[picks[j % n_pick]] += 1
    x = sample(g, d, PLAN_DRAWS, np.random.default_rng(seed))
    decision = _decision(labels, _eps_best(x, _check_eps(eps)), _wins(x), eps, _check_confidence(confidence))
    nan = np.full(k, np.nan)
    rows = _plan_rows(labels, g, d, trials, trials / max(1, trials.sum()), nan, nan)
    note = (
        f"first batch: {int(trials.sum())} trials on {int((trials > 0).sum())} checkpoints spread over the sim ranking, "
        f"to relate sim to real; then plan again"
    )
    return Plan(rows=rows, decision=decision, batch=int(trials.sum()), budget=int(budget), forecast=None, note=note)


def _plan_rows(
    labels: list[str],
    grid: np.ndarray,
    density: np.ndarray,
    trials: np.ndarray,
    alloc: np.ndarray,
    pe: np.ndarray,
    pb: np.ndarray,
) -> list[PlanRow]:
    mean = belief_mean(grid, density)
    q = belief_quantiles(grid, density, [0.05, 0.95])
    return [
        PlanRow(
            labels[i],
            int(trials[i]),
            float(alloc[i]),
            float(pe[i]),
            float(pb[i]),
            float(mean[i]),
            float(q[i, 0]),
            float(q[i, 1]),
        )
        for i in range(len(labels))
    ]


def default_batch(k: int, budget: int) -> int:
    """About one trial per checkpoint before re-planning: ``K`` rounded down to even, at least 2
    (the top two share a batch), at most ``budget``."""
    return max(0, min(int(budget), max(2, int(k) // 2 * 2)))


def plan_trials(
    labels: Sequence[str],
    grid: np.ndarray,
    density: np.ndarray,
    budget: int,
    *,
    eps: float = DEFAULT_EPS,
    confidence: float = DEFAULT_CONFIDENCE,
    batch: int | None = None,
    seed: int = 0,
    forecast_runs: int = 200,
    draws: int = PLAN_DRAWS,
) -> Plan:
    """The next ``batch`` real trials (default :func:`default_batch`; never more than ``budget``,
    the trials still allowed) for the checkpoints ``labels`` under the belief (``grid``,
    ``density``): the TTTS allocation rounded by largest remainders, none when the decision is
    already done. The forecast simulates ``forecast_runs`` experiments from the belief
    (:func:`run_sequential`, TTTS, the same batch, up to ``budget`` trials). Deterministic for a
    given ``seed``. Cost: dominated by the forecast, forecast_runs x (batches per run) x ~0.5 ms
    for K = 18 (200 runs, batch 18, budget 300: ~1.6 s)."""
    g = _check_grid(grid)
    d = normalise(g, density)
    k = d.shape[0]
    labels = _labels(labels, k)
    eps = _check_eps(eps)
    confidence = _check_confidence(confidence)
    if int(budget) < 0:
        raise PlanningError(f"budget must be >= 0, got {budget}")
    budget = int(budget)
    batch = default_batch(k, budget) if batch is None else min(int(batch), budget)
    if batch < 0 or (batch == 0 and budget > 0):
        raise PlanningError(f"batch must be >= 1, got {batch}")
    plan_seed, forecast_seed = np.random.SeedSequence(seed).spawn(2)
    x = sample(g, d, draws, np.random.default_rng(plan_seed))
    pe = _eps_best(x, eps)
    pb = _wins(x)
    decision = _decision(labels, pe, pb, eps, confidence)
    psi = _ttts(x, TOP_TWO_BETA, MAX_TRIES)
    if decision.done:
        trials = np.zeros(k, dtype=int)
        note = f"no trials: the decision is done ({decision.label}, P(eps-best) {decision.p_eps_best:.3f} >= {confidence:g})"
    elif budget == 0:
        trials = np.zeros(k, dtype=int)
        note = f"no trials: the budget is spent; best guess {decision.label} (P(eps-best) {decision.p_eps_best:.3f})"
    else:
        trials = largest_remainder(psi, batch)
        note = f"run {batch} trials on {int((trials > 0).sum())} checkpoints, then update the belief and plan again"
    rows = _plan_rows(labels, g, d, trials, psi, pe, pb)
    forecast = None
    if forecast_runs > 0:
        forecast = _forecast(
            g, d, budget, max(batch, 1), eps, confidence, int(forecast_runs), np.random.default_rng(forecast_seed)
        )
    return Plan(rows=rows, decision=decision, batch=int(trials.sum()), budget=budget, forecast=forecast, note=note)


def _forecast(
    grid: np.ndarray,
    density: np.ndarray,
    budget: int,
    batch: int,
    eps: float,
    confidence: float,
    runs: int,
    rng: np.random.Generator,
) -> Forecast:
    truths = sample(grid, density, runs, rng)
    results = [
        run_sequential(t, grid, density, eps=eps, confidence=confidence, batch=batch, max_trials=budget, rng=rng)
        for t in truths
    ]
    done = np.array([r.done for r in results])
    wrong = np.array([not r.correct for r in results])
    needed = np.where(done, [r.trials for r in results], np.inf)
    return Forecast(
        runs=runs,
        budget=budget,
        batch=batch,
        trials_median=float(np.quantile(needed, 0.5, method="higher")),
        trials_p90=float(np.quantile(needed, 0.9, method="higher")),
        p_done=float(done.mean()),
        p_wrong=float(wrong.mean()),
        p_wrong_if_done=float(wrong[done].mean()) if done.any() else float("nan"),
    )


# --- internals -------------------------------------------------------------------------------------


def _check_grid(grid: np.ndarray) -> np.ndarray:
    g = np.asarray(grid, dtype=float)
    if g.ndim != 1 or g.size < 2:
        raise PlanningError(f"grid must be a vector of at least 2 rates, got shape {g.shape}")
    if not (np.all(np.isfinite(g)) and g[0] > 0.0 and g[-1] < 1.0 and np.all(np.diff(g) > 0)):
        raise PlanningError("grid must be strictly increasing rates in the open interval (0, 1)")
    return g


def _check_eps(eps: float) -> float:
    if not 0.0 <= float(eps) < 1.0:
        raise PlanningError(f"eps must lie in [0, 1), got {eps}")
    return float(eps)


def _check_confidence(confidence: float) -> float:
    if not 0.0 < float(confidence) < 1.0:
        raise PlanningError(f"confidence must lie in (0, 1), got {confidence}")
    return float(confidence)


def _labels(labels: Sequence[str], k: int) -> list[str]:
    out = [str(x) for x in labels]
    if len(out) != k:
        raise PlanningError(f"{len(out)} labels for {k} checkpoint beliefs")
    return out


def _rng(rng: np.random.Generator | None) -> np.random.Generator:
    return np.random.default_rng(0) if rng is None else rng


def _counts(successes: Sequence[int], trials: Sequence[int], k: int) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(successes, dtype=float).reshape(-1)
    n = np.asarray(trials, dtype=float).reshape(-1)
    if s.shape != (k,) or n.shape != (k,):
        raise PlanningError(f"successes and trials need one count per checkpoint ({k}), got {s.size} and {n.size}")
    if np.any(s < 0) or np.any(s > n) or np.any(s != np.round(s)) or np.any(n != np.round(n)):
        raise PlanningError("counts must be integers with 0 <= successes <= trials")
    return s, n


def _posterior(log_d: np.ndarray, log_g: np.ndarray, log_1g: np.ndarray, s: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Rows ``exp(log_d + s log p + (n - s) log(1 - p))``, normalised."""
    lp = log_d + s[:, None] * log_g + (n - s)[:, None] * log_1g
    w = np.exp(lp - lp.max(axis=1, keepdims=True))
    return w / w.sum(axis=1, keepdims=True)


def _cdf(d: np.ndarray) -> np.ndarray:
    """(K, G + 1): the CDF at the cell edges of normalised rows (exactly 0 and 1 at the ends)."""
    c = np.cumsum(d, axis=1)
    c = c / c[:, -1:]
    return np.concatenate((np.zeros((d.shape[0], 1)), c), axis=1)


def _flat_cdf(cdf: np.ndarray) -> np.ndarray:
    """The CDF rows laid end to end, row k shifted to [2k, 2k + 1], for one np.interp call."""
    return (cdf + 2.0 * np.arange(cdf.shape[0])[:, None]).ravel()


def _sample(flat_cdf: np.ndarray, edges: np.ndarray, draws: int, rng: np.random.Generator) -> np.ndarray:
    """Inverse-CDF draws of the piecewise-uniform beliefs (linear interpolation of the CDF)."""
    k = flat_cdf.size // edges.size
    u = rng.random((draws, k)) + 2.0 * np.arange(k)
    return np.interp(u, flat_cdf, np.tile(edges, k))


def _inverse_table(cdf: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """(INVERSE_LEVELS + 1, K): each row's inverse CDF at the levels 0, 1/M, ..., 1 (columns:
    checkpoints, so that a draw's K lookups are adjacent in memory)."""
    levels = np.linspace(0.0, 1.0, INVERSE_LEVELS + 1)
    return np.stack([np.interp(levels, c, edges) for c in cdf], axis=1)


def _sample_table(inverse: np.ndarray, draws: int, rng: np.random.Generator) -> np.ndarray:
    """(draws, K) from the tabulated inverse CDFs, linear between levels: every draw falls between
    the exact quantiles of its level, so the CDF is off by at most 1 / INVERSE_LEVELS."""
    m, k = inverse.shape[0] - 1, inverse.shape[1]
    u = rng.random((draws, k)) * m
    i = np.minimum(u.astype(np.intp), m - 1)
    flat = inverse.ravel()
    at = i * k + np.arange(k)
    lo = flat[at]
    return lo + (u - i) * (flat[at + k] - lo)


def _wins(x: np.ndarray) -> np.ndarray:
    return np.bincount(x.argmax(axis=1), minlength=x.shape[1]) / x.shape[0]


def _eps_best(x: np.ndarray, eps: float) -> np.ndarray:
    return (x >= x.max(axis=1, keepdims=True) - eps).mean(axis=0)


def _leader(pe: np.ndarray, pb: np.ndarray) -> int:
    return int(np.lexsort((-np.arange(pe.size), pb, pe))[-1])


def _decision(labels: list[str], pe: np.ndarray, pb: np.ndarray, eps: float, confidence: float) -> Decision:
    i = _leader(pe, pb)
    return Decision(
        leader=i,
        label=labels[i],
        p_eps_best=float(pe[i]),
        p_best=float(pb[i]),
        eps=float(eps),
        confidence=float(confidence),
        done=bool(pe[i] >= confidence),
    )


def _ttts(x: np.ndarray, beta: float, max_tries: int, first: np.ndarray | None = None) -> np.ndarray:
    """TTTS selection probabilities from joint draws ``x`` (D, K); see the module docstring."""
    d, k = x.shape
    if k == 1:
        return np.ones(1)
    if first is None:
        first = x.argmax(axis=1)
    wins = np.bincount(first, minlength=k).astype(float)
    a = wins / d
    rest = 1.0 - a
    cond = np.where(rest[:, None] > 0, a[None, :] / np.where(rest > 0, rest, 1.0)[:, None], 0.0)
    np.fill_diagonal(cond, 0.0)
    stuck = a ** max(int(max_tries), 1)  # P(every fresh draw has the leader on top)
    challenger = (1.0 - stuck)[:, None] * cond
    if stuck.max() > 1e-12:  # the fallback matters: the second best of the leader's own draw
        second = np.argpartition(x, k - 2, axis=1)[:, k - 2]
        pairs = np.bincount(first * k + second, minlength=k * k).reshape(k, k).astype(float)
        challenger += stuck[:, None] * pairs / np.maximum(wins, 1.0)[:, None]
    psi = beta * a + (1.0 - beta) * (a @ challenger)
    return psi / psi.sum()


def _fmt(v: float, spec: str = "g") -> str:
    if np.isnan(v):
        return "n/a"
    return "more than the budget" if np.isinf(v) else format(v, spec)
