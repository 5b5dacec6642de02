"""Predicted real success per checkpoint, with intervals that widen when the sim->real model is wrong.

Inputs: the ranking's sim and OOD columns for every checkpoint of a task (``ranking.csv``
of ``twinrank rank`` / nightly) and real outcomes (successes of trials) for some of them.

Model (a binomial regression with one random effect per checkpoint, i.e. a logit-normal
hierarchical model fitted by empirical Bayes, as in Efron & Morris's shrinkage estimators):

    real success p_k = expit(x_k . beta + e_k),   e_k ~ N(0, tau^2),   s_k ~ Binomial(n_k, p_k)

``x_k`` holds an intercept, the logit of the checkpoint's sim success (``sim_column``, default
the perturbed-condition success) and its OOD score, standardised over the task's checkpoints.
The features are chosen among {intercept}, {intercept, sim}, {intercept, sim, OOD} (OOD only
from 6 checkpoints with real outcomes on) by BIC on the real outcomes: when sim success says
nothing about reality, the intercept-only model wins and every checkpoint gets the same prior.
A share of checkpoints may never succeed (an atom at success 0, with its own fitted
probability: early checkpoints of a family often fail every episode, which a logit-normal
spread cannot hold); a checkpoint that may be one of them gets an interval from 0. ``beta``,
``tau`` and that share are fitted by maximising the marginal likelihood (the random effect
integrated out on a logit grid) with weak priors (beta ~ N(0, 2.5^2) on standardised features,
tau ~ half-Cauchy(0, 1)); beta's uncertainty is carried by draws from the Laplace
approximation, tau's by a scaled inverse chi-square with m - F degrees of freedom (as in a
regression's prediction interval).

Per checkpoint the belief on p_k is the model's predictive (a mixture over those draws) times
the likelihood of its own real trials, on a grid; the interval is its central ``level``
quantiles. A checkpoint with many trials ends up at its own data (close to its Wilson
interval); one with none gets the model's prediction interval.

Validity when the model is wrong (the intervals widen, they do not lie): the random-effect
spread is multiplied by an inflation factor ``lambda >= 1`` calibrated by leave-one-checkpoint-
out: each checkpoint with real outcomes is predicted from the others (refitted without it),
and lambda is the smallest value on a ladder (1 ... 8) at which the central ``level``
predictive sets of the held-out outcomes (which include the binomial noise of their own
trials) contain at least the split-conformal quantile's share of them (ceil(level (m + 1))
of m). A non-linear or biased sim->real relation
shows up as larger held-out errors, hence a larger tau and lambda; if even the largest lambda
does not cover, the model is declared useless and only real trials count (flat prior). This
is conformal calibration of a scale (split-conformal in spirit, Vovk et al. 2005; the
leave-one-out variant is the jackknife of Barber et al. 2021); its guarantee is over
exchangeable checkpoints and approximate for small numbers of them, so the coverage is
checked on synthetic data with known answers (tests/test_prediction.py) and measured on both
proxy-real engines (benchmarks/bench_prediction.py).

With real outcomes for fewer than ``min_checkpoints`` (3) checkpoints there is no model:
checkpoints with trials get their Wilson interval, the others the sim estimate without any
claim on real success. With none at all, nothing is claimed about real success: the output
is the sim estimate and says so.

Contributions: ``model_worth`` is the number of real trials the model's prior is worth for
that checkpoint (the beta-equivalent sample size of its predictive: mean (1 - mean) / var - 1);
``share_real`` = n_k / (n_k + model_worth) is the share of its own real trials in the
prediction, ``share_model`` the rest; ``from_sim`` and ``from_ood`` are the shifts (logit) of
its predicted success from the average checkpoint due to each feature.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.optimize import minimize
from scipy.special import expit, gammaln, logsumexp
from scipy.stats import norm

from evaluator.results import wilson_interval
from selection.planning import flat_prior, update

DEFAULT_LEVEL = 0.9
#: the random-effect spread multipliers tried by the leave-one-out calibration
INFLATION_LADDER = (1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 6.0, 8.0)
#: logit grid on which beliefs live (success expit(U) in (4.5e-5, 1 - 4.5e-5))
U = np.linspace(-10.0, 10.0, 241)
DU = float(U[1] - U[0])
GRID = expit(U)
METHOD = (
    "logit-normal binomial regression on sim/OOD features (empirical Bayes), random-effect spread "
    "inflated by leave-one-checkpoint-out calibration (selection/prediction.py)"
)
MIN_CHECKPOINTS = 3
MIN_FOR_OOD = 6
#: prior log-odds that a checkpoint never succeeds (N(-2, 1.5^2): about 1 in 8, broad)
ZERO_PRIOR_LOGIT = -2.0
_PARAM_DRAWS = 120
_TAU_MIN = 0.12  # above the grid spacing (0.083), where sums over the grid integrate the normal


class PredictionError(ValueError):
    """Bad input to the predictor (names the problem and the fix)."""


@dataclass(frozen=True)
class Outcome:
    """Real trials of one checkpoint."""

    successes: int
    trials: int

    def __post_init__(self) -> None:
        if self.trials < 0 or not 0 <= self.successes <= self.trials:
            raise PredictionError(f"real outcome {self.successes} of {self.trials}: successes must be in 0..trials")


@dataclass
class PredictConfig:
    level: float = DEFAULT_LEVEL
    sim_column: str = "sim_perturbed"
    ood_column: str = "ood"
    #: sim episodes behind each sim success (for the logit's clipping); None: 0.01 .. 0.99
    sim_episodes: int | None = None
    min_checkpoints: int = MIN_CHECKPOINTS
    seed: int = 0


@dataclass
class FittedModel:
    features: list[str]  # e.g. ["intercept", "sim", "ood"]
    beta: np.ndarray
    tau: float
    inflation: float
    loo_covered: int  # held-out real outcomes inside their predictive sets at the chosen inflation
    loo_n: int
    loo_lpd: float
    zero_share: float = 0.0  # fitted share of checkpoints that never succeed (p = 0)
    useless: bool = False  # no inflation covered: the prior is flat, real trials only

    def describe(self) -> str:
        if self.useless:
            return (
                f"the sim->real model did not predict held-out checkpoints ({self.loo_covered} of {self.loo_n} "
                f"covered at the widest spread): predictions use real trials only"
            )
        coefs = ", ".join(f"{f} {b:+.2f}" for f, b in zip(self.features, self.beta))
        return (
            f"logit(real) = {coefs} (standardised), checkpoint spread tau {self.tau:.2f} x {self.inflation:g}, "
            f"never-succeeding share {self.zero_share:.2f}; "
            f"held-out check: {self.loo_covered} of {self.loo_n} real outcomes inside their predictive sets"
        )


@dataclass
class PredictionResult:
    """One row per checkpoint in ``frame``; beliefs on :data:`GRID` in ``density`` (K, G)."""

    frame: pd.DataFrame
    level: float
    method: str
    model: FittedModel | None
    grid: np.ndarray
    density: np.ndarray
    claims_real: bool  # False: no real outcomes, nothing is claimed about real success
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        if not self.claims_real:
            return "no real outcomes: sim success shown, no claim on real success"
        return self.model.describe() if self.model is not None else self.method

    def to_json(self) -> dict[str, Any]:
        rows = self.frame.replace({np.nan: None}).to_dict(orient="records")
        return {
            "level": self.level,
            "method": self.method,
            "claims_real_success": self.claims_real,
            "model": None
            if self.model is None
            else {
                "features": self.model.features,
                "beta": [float(b) for b in self.model.beta],
                "tau": self.model.tau,
                "inflation": self.model.inflation,
                "loo_covered": self.model.loo_covered,
                "loo_n": self.model.loo_n,
                "useless": self.model.useless,
                "zero_share": self.model.zero_share,
                "description": self.model.describe(),
            },
            "notes": self.notes,
            "checkpoints": rows,
        }


# ---- real outcomes ---------------------------------------------------------------------------
def outcomes_from_csv(path: str | os.PathLike[str]) -> dict[str, Outcome]:
    """Real outcomes from a CSV: ``checkpoint`` plus either ``successes,trials`` (one row per
    checkpoint or several, summed) or ``success`` (one row per episode, 0/1 or true/false)."""
    p = Path(path)
    if not p.is_file():
        raise PredictionError(f"outcomes CSV {p} does not exist; give a CSV with checkpoint,successes,trials")
    try:
        df = pd.read_csv(p, comment="#")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise PredictionError(f"outcomes CSV {p} is not readable as CSV ({exc}); write checkpoint,successes,trials")
    if "checkpoint" not in df.columns:
        raise PredictionError(f"outcomes CSV {p} has no 'checkpoint' column (columns: {list(df.columns)})")
    out: dict[str, list[int]] = {}
    if {"successes", "trials"} <= set(df.columns):
        for _, r in df.iterrows():
            s, n = _int(r["successes"], p), _int(r["trials"], p)
            acc = out.setdefault(str(r["checkpoint"]), [0, 0])
            acc[0] += s
            acc[1] += n
    elif "success" in df.columns:
        for _, r in df.iterrows():
            v = r["success"]
            if isinstance(v, str):
                v = {"true": 1, "false": 0, "1": 1, "0": 0}.get(v.strip().lower(), v)
            if pd.isna(v) or v not in (0, 1, True, False):
                raise PredictionError(f"outcomes CSV {p}: success {v!r} is not 0/1 or true/false")
            acc = out.setdefault(str(r["checkpoint"]), [0, 0])
            acc[0] += int(v)
            acc[1] += 1
    else:
        raise PredictionError(
            f"outcomes CSV {p} needs columns successes,trials (per checkpoint) or success (per episode); "
            f"it has {list(df.columns)}"
        )
    try:
        return {k: Outcome(s, n) for k, (s, n) in out.items()}
    except PredictionError as exc:
        raise PredictionError(f"outcomes CSV {p}: {exc}") from None


def _int(v: Any, p: Path) -> int:
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise PredictionError(f"outcomes CSV {p}: {v!r} is not a whole number") from None
    if not math.isfinite(f) or f != int(f):
        raise PredictionError(f"outcomes CSV {p}: {v!r} is not a whole number")
    return int(f)


def episode_checkpoint(meta: Mapping[str, Any]) -> tuple[str, str]:
    """(checkpoint label, checkpoint id) an episode was run with, from its start event's keys
    (``checkpoint`` / ``checkpoint_id``, written by the recorder following a plan and by the
    proxy-real domain) or a ``source`` of the form ``policy:<name>``; ('', '') if unknown."""
    label = str(meta.get("checkpoint") or "")
    cid = str(meta.get("checkpoint_id") or "")
    src = str(meta.get("source") or "")
    if not label and src.startswith("policy:"):
        label = src.split(":", 1)[1]
    return label, cid


def outcomes_from_bags(
    bags: Sequence[str | os.PathLike[str]], checkpoints: pd.DataFrame, warn: Any = None
) -> dict[str, Outcome]:
    """Real outcomes per checkpoint (keyed by the ranking's ``checkpoint`` label) from logged
    episodes: each episode's checkpoint (see :func:`episode_checkpoint`) is matched by id,
    then label, then the label's last part; episodes with an unknown outcome or checkpoint are
    skipped (counted in one warning per bag)."""
    from selection.realdata import RealDataError, read_bag

    say = warn or (lambda m: None)
    by_id = {str(r["checkpoint_id"]): str(r["checkpoint"]) for _, r in checkpoints.iterrows() if r.get("checkpoint_id")}
    labels = [str(x) for x in checkpoints["checkpoint"]]
    tails: dict[str, list[str]] = {}
    for lab in labels:
        tails.setdefault(lab.rsplit("/", 1)[-1], []).append(lab)
    acc: dict[str, list[int]] = {}
    for b in bags:
        try:
            eps = read_bag(b, images=False)
        except RealDataError as exc:
            say(f"real outcomes: bag skipped: {exc}")
            continue
        unknown_outcome = unknown_ckpt = 0
        for ep in eps:
            if ep.success is None:
                unknown_outcome += 1
                continue
            label, cid = episode_checkpoint(ep.meta)
            name = by_id.get(cid) or (label if label in labels else "")
            if not name and len(tails.get(label.rsplit("/", 1)[-1], [])) == 1:
                name = tails[label.rsplit("/", 1)[-1]][0]
            if not name:
                unknown_ckpt += 1
                continue
            a = acc.setdefault(name, [0, 0])
            a[0] += int(bool(ep.success))
            a[1] += 1
        if unknown_outcome or unknown_ckpt:
            say(
                f"real outcomes: {b}: {unknown_outcome} episode(s) without an outcome and {unknown_ckpt} whose "
                f"checkpoint is not in the ranking skipped (episodes name theirs in the start event's "
                f"'checkpoint'/'checkpoint_id', as the recorder does when it follows a plan)"
            )
    return {k: Outcome(s, n) for k, (s, n) in acc.items()}


def merge_outcomes(*parts: Mapping[str, Outcome] | None) -> dict[str, Outcome]:
    """Outcomes of several sources added per checkpoint."""
    acc: dict[str, Outcome] = {}
    for part in parts:
        for k, o in (part or {}).items():
            prev = acc.get(k, Outcome(0, 0))
            acc[k] = Outcome(prev.successes + o.successes, prev.trials + o.trials)
    return acc


# ---- the model ---------------------------------------------------------------------------------
def _logit_sim(x: np.ndarray, n: int | None) -> np.ndarray:
    lo = 0.5 / (n + 1) if n else 0.01
    return np.log(np.clip(x, lo, 1 - lo) / (1 - np.clip(x, lo, 1 - lo)))


def _standardise(v: np.ndarray) -> np.ndarray | None:
    ok = np.isfinite(v)
    if ok.sum() < 2 or np.nanstd(v[ok]) < 1e-9:
        return None
    z = (v - np.nanmean(v[ok])) / np.nanstd(v[ok])
    return np.where(ok, z, 0.0)  # a missing value counts as an average checkpoint


def _binom_loglik(s: np.ndarray, n: np.ndarray) -> np.ndarray:
    """(m, G) log Binomial(s | n, expit(U)) including the coefficient."""
    s, n = s[:, None].astype(float), n[:, None].astype(float)
    coef = gammaln(n + 1) - gammaln(s + 1) - gammaln(n - s + 1)
    return coef + s * -np.logaddexp(0.0, -U)[None] + (n - s) * -np.logaddexp(0.0, U)[None]


def _log_prior_u(mu: np.ndarray, sd: float | np.ndarray) -> np.ndarray:
    """(.., G) log of the normal density on the logit grid times its spacing (grid masses)."""
    mu, sd = np.asarray(mu, dtype=float)[..., None], np.asarray(sd, dtype=float)[..., None]
    return -0.5 * ((U - mu) / sd) ** 2 - np.log(sd) + (math.log(DU) - 0.5 * math.log(2 * math.pi))


def _split(theta: np.ndarray, f: int) -> tuple[np.ndarray, float, np.ndarray]:
    """theta = [beta (f), log tau, gamma (the never-succeeds share's coefficients)]."""
    return theta[:f], float(theta[f]), theta[f + 1 :]


def _zero_design(X: np.ndarray) -> np.ndarray:
    """Features of the never-succeeds share: the intercept alone (a sim slope there made 0 of 10
    real trials on a checkpoint with sim 0 look certain to be 0; measured on reach)."""
    return X[:, :1]


def _neg_log_post(theta: np.ndarray, X: np.ndarray, ll: np.ndarray) -> float:
    beta, log_tau, gamma = _split(theta, X.shape[1])
    tau = _TAU_MIN + math.exp(log_tau)
    a = _log_prior_u(X @ beta, tau) + ll  # (m, G)
    top = a.max(axis=1)
    cont = top + np.log(np.exp(a - top[:, None]).sum(axis=1))
    eta = _zero_design(X) @ gamma  # log-odds that a checkpoint never succeeds (an atom at p = 0)
    log_pi, log_1pi = -np.logaddexp(0.0, -eta), -np.logaddexp(0.0, eta)
    marg = np.logaddexp(log_pi + ll[:, 0], log_1pi + cont).sum()  # grid point 0 stands for p = 0
    prior = (
        -0.5 * np.sum((beta[1:] / 2.5) ** 2)
        - 0.5 * (beta[0] / 5.0) ** 2
        - math.log1p(tau**2)
        + log_tau
        - 0.5 * ((gamma[0] - ZERO_PRIOR_LOGIT) / 1.5) ** 2
        - 0.5 * np.sum((gamma[1:] / 2.5) ** 2)
    )
    return float(-(marg + prior))


def _hessian(f: Any, x: np.ndarray, h: float = 1e-3) -> np.ndarray:
    d = x.size
    H = np.empty((d, d))
    for i in range(d):
        for j in range(i, d):
            ei, ej = np.eye(d)[i] * h, np.eye(d)[j] * h
            v = (f(x + ei + ej) - f(x + ei - ej) - f(x - ei + ej) + f(x - ei - ej)) / (4 * h * h)
            H[i, j] = H[j, i] = v
    return H


@dataclass
class _Fit:
    theta: np.ndarray
    draws: np.ndarray  # (D, F + 1 + Fz): beta..., tau, gamma...
    f: int = 1


def _fit(X: np.ndarray, ll: np.ndarray, rng: np.random.Generator, start: np.ndarray | None = None) -> _Fit:
    f = X.shape[1]
    fz = _zero_design(X).shape[1]
    x0 = np.zeros(f + 1 + fz)
    x0[f] = math.log(0.5)
    x0[f + 1] = ZERO_PRIOR_LOGIT
    if start is not None:  # leave-one-out fits start from the fit to all
        x0 = start.copy()
    res = minimize(_neg_log_post, x0, args=(X, ll), method="BFGS")  # L-BFGS-B: ~6 ms per step in setulb
    theta = res.x
    H = _hessian(lambda t: _neg_log_post(t, X, ll), theta)
    w, V = np.linalg.eigh((H + H.T) / 2)
    w = np.maximum(w, 1e-2)  # flat directions: bounded, broad
    cov = (V / w) @ V.T
    d = theta.size
    z = rng.standard_normal((_PARAM_DRAWS, d))
    draws = theta + z @ np.linalg.cholesky(cov + 1e-12 * np.eye(d)).T
    # the spread as in a regression's prediction interval with m - F degrees of freedom: the
    # fitted tau made unbiased (x m / nu) and drawn from its scaled inverse chi-square; with few
    # checkpoints the random effect is Student-t-like, its tails heavy (a Laplace draw of
    # log tau around the maximum of the marginal likelihood under-covered: measured 0.80 on a
    # biased relation with 6 checkpoints)
    m = X.shape[0]
    nu = max(m - f, 1)
    tau_hat = _TAU_MIN + math.exp(theta[f])
    draws[:, f] = tau_hat * np.sqrt(m / nu) * np.sqrt(nu / rng.chisquare(nu, _PARAM_DRAWS))
    draws[:, f] = np.minimum(draws[:, f], 20.0)
    return _Fit(theta, draws, f)


def beta_of(fit: _Fit) -> np.ndarray:
    return fit.theta[: fit.f]


def tau_of(fit: _Fit) -> float:
    return _TAU_MIN + math.exp(fit.theta[fit.f])


def zero_share(fit: _Fit, X: np.ndarray) -> float:
    """The fitted share of never-succeeding checkpoints, averaged over the family."""
    return float(np.mean(expit(_zero_design(X) @ fit.theta[fit.f + 1 :])))


def _predictive(fit: _Fit, x: np.ndarray, inflation: float) -> np.ndarray:
    """(G,) grid masses of the model's predictive for a checkpoint with features ``x``."""
    f = fit.f
    mu = fit.draws[:, :f] @ x
    lp = _log_prior_u(mu, fit.draws[:, f] * inflation)  # (D, G)
    lp = lp - logsumexp(lp, axis=1, keepdims=True)
    pi = expit(fit.draws[:, f + 1 :] @ x[: fit.draws.shape[1] - f - 1])  # (D,) never-succeeds share
    mass = (1 - pi)[:, None] * np.exp(lp)
    mass[:, 0] += pi
    m = mass.mean(axis=0)
    return m / m.sum()


@functools.lru_cache(maxsize=64)
def _binom_table(n: int) -> np.ndarray:
    """(n + 1, G) Binomial(s | n, expit(U)) for s = 0..n."""
    return np.exp(_binom_loglik(np.arange(n + 1), np.full(n + 1, n)))


def _covered(pred: np.ndarray, s: int, n: int, level: float) -> bool:
    """Whether ``s`` of ``n`` lies in the central ``level`` predictive set of the outcome."""
    pmf = _binom_table(n) @ pred
    pmf = pmf / pmf.sum()
    a = (1 - level) / 2
    return bool(pmf[: s + 1].sum() >= a - 1e-12 and pmf[s:].sum() >= a - 1e-12)


def _log_pred(pred: np.ndarray, s: int, n: int) -> float:
    ll = _binom_loglik(np.array([s]), np.array([n]))[0]
    return float(logsumexp(ll + np.log(np.maximum(pred, 1e-300))))


def _loo(X: np.ndarray, s: np.ndarray, n: np.ndarray, rng: np.random.Generator, full: _Fit) -> tuple[float, list[_Fit]]:
    """Leave-one-checkpoint-out over the checkpoints with real outcomes: the summed log
    predictive density of each held-out outcome and the fit without each checkpoint (each
    started from ``full``, the fit to all)."""
    m = len(s)
    lpd = 0.0
    fits = []
    for i in range(m):
        keep = np.arange(m) != i
        fit = _fit(X[keep], _binom_loglik(s[keep], n[keep]), rng, start=full.theta)
        fits.append(fit)
        lpd += _log_pred(_predictive(fit, X[i], 1.0), int(s[i]), int(n[i]))
    return lpd, fits


def _loo_coverage(fits: list[_Fit], X: np.ndarray, s: np.ndarray, n: np.ndarray, level: float) -> list[int]:
    """Held-out outcomes inside their central ``level`` predictive sets, per inflation of the ladder."""
    return [
        sum(_covered(_predictive(f, X[i], lam), int(s[i]), int(n[i]), level) for i, f in enumerate(fits))
        for lam in INFLATION_LADDER
    ]


def _quantiles(mass: np.ndarray, qs: Iterable[float]) -> list[float]:
    """Quantiles of the belief; the lowest (highest) grid point stands for 0 (1): a checkpoint
    that may never succeed gets an interval from 0."""
    c = np.cumsum(mass)
    c = c / c[-1]
    out = [float(np.interp(q, c, GRID)) for q in qs]
    return [0.0 if v <= GRID[0] else 1.0 if v >= GRID[-1] else v for v in out]


def _worth(mass: np.ndarray) -> float:
    mean = float(mass @ GRID)
    var = float(mass @ (GRID - mean) ** 2)
    return max(0.0, mean * (1 - mean) / max(var, 1e-12) - 1.0)


def flat_belief() -> np.ndarray:
    """Uniform on success (Beta(1, 1)) as grid masses (the planner's flat prior on this grid)."""
    return flat_prior(GRID, 1)[0]


def predict(
    ingredients: pd.DataFrame, outcomes: Mapping[str, Outcome], cfg: PredictConfig | None = None
) -> PredictionResult:
    """Predicted real success of every checkpoint in ``ingredients`` (needs ``checkpoint`` and
    the sim column; ``ood`` optional) given real ``outcomes`` for some (keyed by checkpoint)."""
    cfg = cfg or PredictConfig()
    if not 0.5 <= cfg.level < 1:
        raise PredictionError(f"level {cfg.level}: give an interval level in [0.5, 1), e.g. 0.9")
    if "checkpoint" not in ingredients.columns:
        raise PredictionError("the ranking has no 'checkpoint' column; pass a ranking.csv written by twinrank rank")
    if cfg.sim_column not in ingredients.columns:
        have = [c for c in ingredients.columns if c.startswith("sim")]
        raise PredictionError(f"the ranking has no {cfg.sim_column!r} column; choose one of {have} (--sim-column)")
    labels = [str(c) for c in ingredients["checkpoint"]]
    unknown = sorted(set(outcomes) - set(labels))
    notes: list[str] = []
    if unknown:
        notes.append(f"real outcomes of {', '.join(unknown)} ignored: not in the ranking")
    K = len(labels)
    sim = ingredients[cfg.sim_column].to_numpy(float)
    s = np.array([outcomes[c].successes if c in outcomes else 0 for c in labels])
    n = np.array([outcomes[c].trials if c in outcomes else 0 for c in labels])
    lab = n > 0
    m = int(lab.sum())
    rows: list[dict[str, Any]] = []
    qs = ((1 - cfg.level) / 2, (1 + cfg.level) / 2)
    base = {"checkpoint": labels, "sim": sim, "real_successes": s, "real_trials": n}
    if m == 0:
        notes.append("no real outcomes: the sim success is shown, nothing is claimed about real success")
        rows = [
            {"predicted": np.nan, "lo": np.nan, "hi": np.nan, "method": "sim only (no real outcomes)"} for _ in labels
        ]
        return _result(base, rows, cfg, None, flat_prior(GRID, K), False, notes, "sim only")
    if m < cfg.min_checkpoints:
        notes.append(
            f"real outcomes for {m} checkpoint(s): a sim->real model needs {cfg.min_checkpoints}; checkpoints "
            f"with trials get their own Wilson interval, the others no claim on real success"
        )
        z = float(norm.ppf(qs[1]))
        for k in range(K):
            if n[k]:
                lo, hi = wilson_interval(int(s[k]), int(n[k]), z=z)
                rows.append({"predicted": s[k] / n[k], "lo": lo, "hi": hi, "method": "real trials only (Wilson)"})
            else:
                rows.append(
                    {"predicted": np.nan, "lo": np.nan, "hi": np.nan, "method": "no claim (too few real outcomes)"}
                )
        density = update(GRID, flat_prior(GRID, K), s, n)
        return _result(base, rows, cfg, None, density, True, notes, "real trials only")

    rng = np.random.default_rng(cfg.seed)
    z_sim = _standardise(_logit_sim(sim, cfg.sim_episodes))
    ood = ingredients[cfg.ood_column].to_numpy(float) if cfg.ood_column in ingredients.columns else np.full(K, np.nan)
    z_ood = _standardise(ood)
    candidates: list[tuple[list[str], np.ndarray]] = [(["intercept"], np.ones((K, 1)))]
    if z_sim is not None:
        candidates.append((["intercept", "sim"], np.column_stack([np.ones(K), z_sim])))
        if z_ood is not None and m >= MIN_FOR_OOD:
            candidates.append((["intercept", "sim", "ood"], np.column_stack([np.ones(K), z_sim, z_ood])))
    # features by BIC on the fits to all checkpoints with trials: a feature enters only when it
    # raises the log posterior by more than log(m) / 2
    ll = _binom_loglik(s[lab], n[lab])
    best = None
    for feats, X in candidates:
        full = _fit(X[lab], ll, rng)
        bic = 2 * _neg_log_post(full.theta, X[lab], ll) + len(feats) * math.log(m)
        if best is None or bic < best[0]:
            best = (bic, feats, X, full)
    assert best is not None
    _, feats, X, fit = best
    lpd, loo_fits = _loo(X[lab], s[lab], n[lab], rng, fit)
    covered = _loo_coverage(loo_fits, X[lab], s[lab], n[lab], cfg.level)
    own_fit = dict(zip(np.flatnonzero(lab).tolist(), loo_fits))
    need = min(m, math.ceil(cfg.level * (m + 1) - 1e-9))  # the split-conformal quantile
    ok = [j for j, c in enumerate(covered) if c >= need]
    if ok:
        lam = INFLATION_LADDER[ok[0]]
        model = FittedModel(feats, beta_of(fit), tau_of(fit), lam, covered[ok[0]], m, lpd, zero_share(fit, X))
    else:
        lam = INFLATION_LADDER[-1]
        model = FittedModel(
            feats, beta_of(fit), tau_of(fit), lam, covered[-1], m, lpd, zero_share(fit, X), useless=True
        )
        notes.append(model.describe())
    if m < math.ceil(cfg.level / (1 - cfg.level) - 1e-9):
        notes.append(
            f"real outcomes for {m} checkpoints: the held-out check cannot certify {cfg.level:.0%} intervals "
            f"with fewer than {math.ceil(cfg.level / (1 - cfg.level) - 1e-9)} (its quantile is their maximum); "
            f"the intervals are model-based until more checkpoints have real trials"
        )
    beta = model.beta
    # a checkpoint with real trials gets the model fitted without them (no double counting)
    priors = np.stack(
        [flat_belief() if model.useless else _predictive(own_fit.get(k, fit), X[k], lam) for k in range(K)]
    )
    density = update(GRID, priors, s, n)
    for k in range(K):
        post = density[k]
        lo, hi = _quantiles(post, qs)
        worth = 0.0 if model.useless else _worth(priors[k])
        share_real = n[k] / (n[k] + worth) if n[k] + worth > 0 else 0.0
        row = {
            "predicted": float(post @ GRID),
            "lo": lo,
            "hi": hi,
            "method": "real trials only (sim model failed its check)"
            if model.useless
            else "model + real trials"
            if n[k]
            else "model",
            "model_worth": worth,
            "share_real": share_real,
            "share_model": 1.0 - share_real,
            "from_sim": float(beta[feats.index("sim")] * X[k, feats.index("sim")]) if "sim" in feats else 0.0,
            "from_ood": float(beta[feats.index("ood")] * X[k, feats.index("ood")]) if "ood" in feats else 0.0,
        }
        rows.append(row)
    return _result(base, rows, cfg, model, density, True, notes, METHOD)


def _result(
    base: dict[str, Any],
    rows: list[dict[str, Any]],
    cfg: PredictConfig,
    model: FittedModel | None,
    density: np.ndarray,
    claims: bool,
    notes: list[str],
    method: str,
) -> PredictionResult:
    frame = pd.DataFrame(base)
    extra = pd.DataFrame(rows)
    frame = pd.concat([frame, extra], axis=1)
    for col in ("model_worth", "share_real", "share_model", "from_sim", "from_ood"):
        if col not in frame.columns:
            frame[col] = np.nan
    frame["level"] = cfg.level
    frame["real_rate"] = np.where(
        frame["real_trials"] > 0, frame["real_successes"] / frame["real_trials"].clip(lower=1), np.nan
    )
    return PredictionResult(frame, cfg.level, method, model, GRID.copy(), density, claims, notes)


__all__ = [
    "DEFAULT_LEVEL",
    "GRID",
    "METHOD",
    "FittedModel",
    "Outcome",
    "PredictConfig",
    "PredictionError",
    "PredictionResult",
    "episode_checkpoint",
    "flat_belief",
    "merge_outcomes",
    "outcomes_from_bags",
    "outcomes_from_csv",
    "predict",
]
