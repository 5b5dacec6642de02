"""The data utilization law: how many samples of another data source (sim, human video) are worth
one real (teleoperated) sample, and which data mix to collect under a time budget.

Reference: "Teleportation, simulation, or human video? Data utilization law for robot
manipulation" (ICLR 2026 submission), section 3.4 and appendix B.4;
``/work/shared/papers/data-utilization-law.txt``.

Input: a table of training runs, one row per run, columns ``n_real`` (real samples, > 0),
``n_other`` (other samples, >= 0; 0 = a real-only run) and ``success`` (real-world success of
the trained policy in [0, 1]). Rows with the same ``(n_real, n_other)`` (e.g. seeds) are
averaged. At least one real-only row is required.

Sign convention (the paper's): ``eta > 0``: the other data helps, ``eta`` other samples give the
gain of one real sample (smaller is better); ``eta < 0``: it hurts, ``|eta|`` other samples undo
the gain of one real sample; ``eta = inf``: no measurable effect.

* Local ratio (:func:`local_ratio`): near an operating point, ``S = g_real*N_real + g_other*N_other``
  (paper eq. 1, no intercept). Two runs, a real-only one ``(N*, 0, S_real)`` and a mixed one
  ``(N', M, S_mix)``, give two linear equations for ``g_real, g_other``;
  ``eta_local = g_real / g_other``. With ``N' = N*`` (the paper's protocol: the same real subset
  with and without pre-training on ``M`` other samples):
  ``eta_local = (S_real / N*) * M / (S_mix - S_real)``.
* Global ratio (:func:`fit_power_law`, :func:`global_ratio`): fit ``S = alpha * N^beta`` to the
  real-only runs (least squares on ``log S = log alpha + beta log N``), invert it for a mixed run,
  ``N_eq = (S_mix / alpha)^(1/beta)`` (the real data that would reach ``S_mix`` alone), and
  ``eta_global = M / (N_eq - N')`` (paper eq. 2).
* Budget allocation (:func:`allocate_budget`), see its docstring for the model.
"""

from __future__ import annotations

import csv
import math
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

COLUMNS = ("n_real", "n_other", "success")


class UtilizationError(ValueError):
    """A run table or parameter the utilization law cannot use."""


class UtilizationWarning(UserWarning):
    """Rows were dropped or a result lies outside the model's range of validity."""


@dataclass(frozen=True)
class Run:
    """One (aggregated) training run: ``n_runs`` rows of the table with these sample counts."""

    n_real: float
    n_other: float
    success: float
    n_runs: int = 1

    @property
    def real_only(self) -> bool:
        return self.n_other == 0


def make_table(rows: Iterable[Mapping[str, Any]] | Any) -> list[Run]:
    """Validate rows (dicts, or a pandas DataFrame) with columns ``n_real, n_other, success`` and
    average rows with equal ``(n_real, n_other)``. Sorted by ``(n_other, n_real)``."""
    if hasattr(rows, "to_dict") and hasattr(rows, "columns"):
        missing = [c for c in COLUMNS if c not in rows.columns]
        if missing:
            raise UtilizationError(
                f"run table is missing column(s) {missing} (columns: {list(rows.columns)}); it needs {list(COLUMNS)}"
            )
        rows = rows.to_dict("records")
    groups: dict[tuple[float, float], list[float]] = {}
    n_rows = 0
    for i, row in enumerate(rows, start=1):
        n_rows += 1
        missing = [c for c in COLUMNS if c not in row or row[c] in (None, "")]
        if missing:
            raise UtilizationError(
                f"run table row {i} is missing {missing} (has {sorted(row)}); every row needs {list(COLUMNS)}"
            )
        try:
            n_real, n_other, success = (float(row[c]) for c in COLUMNS)
        except (TypeError, ValueError):
            values = {c: row[c] for c in COLUMNS}
            raise UtilizationError(f"run table row {i}: {values} has a non-number") from None
        if not all(math.isfinite(v) for v in (n_real, n_other, success)):
            raise UtilizationError(
                f"run table row {i}: values must be finite, got n_real={n_real}, n_other={n_other}, success={success}"
            )
        if n_real <= 0:
            raise UtilizationError(
                f"run table row {i}: n_real={n_real:g} must be > 0 (every run fine-tunes on real "
                "data, and the power law needs N > 0)"
            )
        if n_other < 0:
            raise UtilizationError(f"run table row {i}: n_other={n_other:g} must be >= 0 (0 for a real-only run)")
        if not 0.0 <= success <= 1.0:
            raise UtilizationError(f"run table row {i}: success={success:g} is outside [0, 1]; give it as a fraction")
        groups.setdefault((n_real, n_other), []).append(success)
    if n_rows == 0:
        raise UtilizationError("run table has no rows")
    runs = [Run(n_real=k[0], n_other=k[1], success=float(np.mean(v)), n_runs=len(v)) for k, v in groups.items()]
    runs.sort(key=lambda r: (r.n_other, r.n_real))
    if not any(r.real_only for r in runs):
        raise UtilizationError(
            "run table has no real-only rows (n_other == 0): both ratios compare against a "
            "policy trained on real data alone; add at least one such run"
        )
    return runs


def load_table(csv_path: str | Path) -> list[Run]:
    """:func:`make_table` of a CSV file with header ``n_real,n_other,success`` (extra columns ignored)."""
    p = Path(csv_path)
    if not p.is_file():
        raise UtilizationError(f"run table {str(p)!r} does not exist: check the path")
    with p.open(newline="") as fh:
        reader = csv.DictReader(fh)
        header = [h.strip() for h in (reader.fieldnames or [])]
        missing = [c for c in COLUMNS if c not in header]
        if missing:
            raise UtilizationError(
                f"run table {str(p)!r} is missing column(s) {missing} (columns: {header}); it needs {list(COLUMNS)}"
            )
        rows = [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in reader]
    return make_table(rows)


# ---------------------------------------------------------------------------------------------
# Local ratio


@dataclass(frozen=True)
class LocalRatio:
    """The two-run linear model around an operating point (see module docstring)."""

    n_real: float  # N*: real samples of the real-only run
    success_real: float
    n_real_mix: float  # N': real samples of the mixed run
    n_other: float  # M
    success_mix: float
    gamma_real: float
    gamma_other: float
    eta: float  # gamma_real / gamma_other; inf when gamma_other == 0


def local_ratio(real_only: Run, mixed: Run) -> LocalRatio:
    """Solve ``S = g_real*N_real + g_other*N_other`` through a real-only and a mixed run."""
    if not real_only.real_only:
        raise UtilizationError(f"the first run must be real-only (n_other == 0), got n_other={real_only.n_other:g}")
    if mixed.n_other <= 0:
        raise UtilizationError("the second run must contain other data (n_other > 0)")
    if real_only.success <= 0:
        raise UtilizationError(
            f"real-only success at N_real={real_only.n_real:g} is 0, so the real data's marginal "
            "value cannot be measured there: choose an operating point where the real-only policy "
            "reaches reasonable success"
        )
    a = np.array([[real_only.n_real, 0.0], [mixed.n_real, mixed.n_other]])
    g_real, g_other = np.linalg.solve(a, np.array([real_only.success, mixed.success]))
    eta = math.inf if g_other == 0 else float(g_real / g_other)
    if math.isinf(eta):
        warnings.warn(
            f"adding {mixed.n_other:g} other samples changed nothing at N_real={mixed.n_real:g}: "
            "eta is infinite (the other data has no measurable value)",
            UtilizationWarning,
            stacklevel=2,
        )
    return LocalRatio(
        n_real=real_only.n_real,
        success_real=real_only.success,
        n_real_mix=mixed.n_real,
        n_other=mixed.n_other,
        success_mix=mixed.success,
        gamma_real=float(g_real),
        gamma_other=float(g_other),
        eta=eta,
    )


def local_ratio_from_table(runs: list[Run], n_real: float | None = None, n_other: float | None = None) -> LocalRatio:
    """:func:`local_ratio` at an operating point of the table: the real-only run with ``n_real``
    real samples and the mixed run with the same ``n_real`` (and ``n_other`` other samples).

    Defaults: ``n_real`` = the largest real amount that has both a real-only and a mixed run (the
    paper's operating point is a real amount with reasonable success; its Table 1 uses the largest
    subsets), ``n_other`` = the largest other amount run at that ``n_real``.
    """
    real = {r.n_real: r for r in runs if r.real_only}
    mixed = [r for r in runs if not r.real_only]
    if not mixed:
        raise UtilizationError(
            "run table has no mixed rows (n_other > 0): the exchange rate needs at least one run with other data"
        )
    shared = sorted({r.n_real for r in mixed} & set(real))
    if n_real is None:
        if not shared:
            raise UtilizationError(
                f"no n_real has both a real-only and a mixed run (real-only: {sorted(real)}, "
                f"mixed: {sorted({r.n_real for r in mixed})}): run the same real subset with and "
                "without the other data"
            )
        n_real = shared[-1]
    if n_real not in real or n_real not in {r.n_real for r in mixed}:
        raise UtilizationError(
            f"operating point n_real={n_real:g} needs a real-only and a mixed run with that many "
            f"real samples; available: {shared}"
        )
    candidates = {r.n_other: r for r in mixed if r.n_real == n_real}
    if n_other is None:
        n_other = max(candidates)
    if n_other not in candidates:
        raise UtilizationError(
            f"no mixed run with n_real={n_real:g} and n_other={n_other:g}; available n_other: {sorted(candidates)}"
        )
    return local_ratio(real[n_real], candidates[n_other])


# ---------------------------------------------------------------------------------------------
# Global ratio


@dataclass(frozen=True)
class PowerLawFit:
    """``S = alpha * N_real^beta`` fitted to real-only runs; ``r2`` is in log-log space."""

    alpha: float
    beta: float
    n_points: int
    r2: float
    n_min: float
    n_max: float

    def predict(self, n_real: float) -> float:
        """Success predicted for ``n_real`` real samples (not capped)."""
        return float(self.alpha * float(n_real) ** self.beta)

    def equivalent_real(self, success: float) -> float:
        """``N_eq = (success / alpha)^(1/beta)``: the real data that alone reaches ``success``."""
        if self.beta <= 0:
            raise UtilizationError(
                f"fitted beta={self.beta:.3g} <= 0: success does not grow with real data in this "
                "table, so no amount of real data is 'equivalent'; add real-only runs at more data "
                "scales"
            )
        if success < 0:
            raise UtilizationError(f"success={success:g} < 0")
        return float((success / self.alpha) ** (1.0 / self.beta))


def fit_power_law(runs: list[Run]) -> PowerLawFit:
    """Least-squares fit of ``log S = log alpha + beta log N`` on the real-only runs.

    Real-only runs with success 0 cannot enter a log fit: they are dropped with a
    :class:`UtilizationWarning`. At least two distinct ``n_real`` with success > 0 are needed.
    """
    real = [r for r in runs if r.real_only]
    zero = [r for r in real if r.success <= 0]
    if zero:
        warnings.warn(
            f"real-only runs with success 0 dropped from the power-law fit (log 0): n_real="
            f"{', '.join(f'{r.n_real:g}' for r in zero)}",
            UtilizationWarning,
            stacklevel=2,
        )
    real = [r for r in real if r.success > 0]
    if len(real) < 2:
        raise UtilizationError(
            f"the power-law fit needs real-only runs at >= 2 different n_real with success > 0, "
            f"got {len(real)}: add real-only runs at more data scales"
        )
    x = np.log([r.n_real for r in real])
    y = np.log([r.success for r in real])
    beta, log_alpha = np.polyfit(x, y, 1)
    resid = y - (log_alpha + beta * x)
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    r2 = 1.0 - float(np.sum(resid**2)) / ss_tot if ss_tot > 0 else 1.0
    return PowerLawFit(
        alpha=float(math.exp(log_alpha)),
        beta=float(beta),
        n_points=len(real),
        r2=r2,
        n_min=min(r.n_real for r in real),
        n_max=max(r.n_real for r in real),
    )


@dataclass(frozen=True)
class GlobalRatio:
    """Paper eq. 2 for one mixed run."""

    n_real: float  # N'
    n_other: float  # M
    success: float  # S_mix
    n_equivalent: float  # N_eq
    eta: float  # M / (N_eq - N'); inf when N_eq == N'


def global_ratio(fit: PowerLawFit, mixed: Run) -> GlobalRatio:
    """``eta_global = n_other / (N_eq - n_real)`` with ``N_eq`` from the real-only power law."""
    if mixed.n_other <= 0:
        raise UtilizationError("global_ratio needs a mixed run (n_other > 0)")
    n_eq = fit.equivalent_real(mixed.success)
    delta = n_eq - mixed.n_real
    eta = math.inf if delta == 0 else mixed.n_other / delta
    return GlobalRatio(n_real=mixed.n_real, n_other=mixed.n_other, success=mixed.success, n_equivalent=n_eq, eta=eta)


def global_ratios(runs: list[Run], fit: PowerLawFit | None = None) -> list[GlobalRatio]:
    """:func:`global_ratio` for every mixed run of the table (fitting the power law if not given)."""
    fit = fit or fit_power_law(runs)
    return [global_ratio(fit, r) for r in runs if not r.real_only]


# ---------------------------------------------------------------------------------------------
# Budget allocation


def speed_ratio(cost_real_s: float, cost_other_s: float) -> float:
    """How many other samples can be collected in the time of one real sample."""
    for name, v in (("cost_real_s", cost_real_s), ("cost_other_s", cost_other_s)):
        if not (math.isfinite(v) and v > 0):
            raise UtilizationError(f"{name}={v!r}: collection time per sample must be a positive number of seconds")
    return float(cost_real_s) / float(cost_other_s)


def include_other(eta: float, speed: float) -> bool:
    """The paper's rule (section 5.2): other data is worth collecting iff it helps (``eta > 0``)
    and its speed advantage outweighs its lower value (``speed > eta``). At ``speed == eta`` both
    sources buy the same value per hour; real data is kept (the better-validated source)."""
    return 0 < eta < speed


@dataclass(frozen=True)
class Allocation:
    """The data mix chosen by :func:`allocate_budget` and the numbers behind it."""

    n_real: int
    n_other: int
    seconds_used: float
    budget_s: float
    eta: float
    speed_ratio: float
    include_other: bool
    n_equivalent_real: float  # n_real + n_other / eta when other data is included, else n_real
    expected_success: float | None  # min(1, alpha * n_equivalent_real^beta) when a fit is given
    all_real_n: int  # the real-only alternative: as many real samples as the budget buys
    all_real_success: float | None
    reason: str


def _floor(x: float) -> int:
    return int(math.floor(x + 1e-9))


def allocate_budget(
    budget_hours: float,
    cost_real_s: float,
    cost_other_s: float,
    eta: float,
    fit: PowerLawFit | None = None,
    min_real: int = 0,
    max_other: int | None = None,
) -> Allocation:
    """The data mix ``(n_real, n_other)`` that maximizes expected real-world success under a
    collection-time budget.

    Model: expected success ``S(N_real, N_other) = min(1, alpha * N_eq^beta)`` with
    ``N_eq = N_real + N_other / eta``: other samples are converted to real ones at the exchange rate
    ``eta`` (normally the local ratio) and the real-only power law (``fit``) maps real data to
    success. Since ``S`` increases with ``N_eq`` (``alpha, beta > 0``), the best mix maximizes
    ``N_eq`` subject to ``cost_real_s*N_real + cost_other_s*N_other <= budget``: a linear program
    whose optimum is a corner. One second buys ``1/cost_real_s`` real-equivalents as real data or
    ``1/(eta*cost_other_s)`` as other data, so other data wins iff ``0 < eta < speed ratio``
    (:func:`include_other`). The decision does not depend on ``alpha, beta``; ``fit`` is only used
    to report expected success.

    Then: ``min_real`` real samples are always collected (other data is used as pre-training before
    real fine-tuning; the paper reports that other-only training fails), other data fills the rest
    of the budget up to ``max_other`` (the range over which ``eta`` was measured or the pool that
    can be generated; ``None`` = no cap), and leftover time buys real samples. Without other data
    the whole budget buys real samples. Counts are whole samples: with other data included, every
    ``n_real >= min_real`` is tried with the rest of the budget filled by other data, and the largest
    ``N_eq`` wins (ties: more real data), which is the corner above up to rounding.
    """
    speed = speed_ratio(cost_real_s, cost_other_s)
    if not (math.isfinite(budget_hours) and budget_hours > 0):
        raise UtilizationError(f"budget_hours={budget_hours!r} must be a positive number")
    if math.isnan(eta) or eta == 0:
        raise UtilizationError(f"eta={eta!r}: the exchange rate must be a nonzero number (inf = no effect)")
    if min_real < 0 or (max_other is not None and max_other < 0):
        raise UtilizationError(f"min_real={min_real} and max_other={max_other} must be >= 0")
    if fit is not None and not (fit.alpha > 0 and fit.beta > 0):
        raise UtilizationError(
            f"the power-law fit has alpha={fit.alpha:.3g}, beta={fit.beta:.3g}: success must grow "
            "with real data (alpha, beta > 0) for the expected-success model"
        )
    budget_s = float(budget_hours) * 3600.0
    if min_real * cost_real_s > budget_s + 1e-9:
        hours = min_real * cost_real_s / 3600
        raise UtilizationError(
            f"min_real={min_real} real samples take {hours:.3g} h, more than the budget of "
            f"{budget_hours:g} h: lower min_real or raise the budget"
        )
    all_real = _floor(budget_s / cost_real_s)
    use_other = include_other(eta, speed)
    if use_other:
        # whole samples: enumerate n_real, fill the rest with other data (capped), keep the best N_eq;
        # this is the LP corner up to rounding. Ties go to more real data.
        n_reals = np.arange(min_real, all_real + 1, dtype=np.int64)
        n_others = np.floor((budget_s - n_reals * cost_real_s) / cost_other_s + 1e-9).astype(np.int64)
        if max_other is not None:
            n_others = np.minimum(n_others, int(max_other))
        n_eqs = n_reals + n_others / eta
        best = int(np.flatnonzero(n_eqs >= n_eqs.max() - 1e-9)[-1])
        n_real, n_other, n_eq = int(n_reals[best]), int(n_others[best]), float(n_eqs[best])
        reason = (
            f"speed ratio {speed:.3g} > eta {eta:.3g}: an hour buys {3600 / cost_real_s:.3g} real samples or "
            f"{3600 / cost_other_s:.3g} other samples (= {3600 / (cost_other_s * eta):.3g} real-equivalents), "
            "so other data is more cost-effective"
        )
        if n_real == 0:
            warnings.warn(
                "the allocation has no real data; eta was measured with real fine-tuning data, so this is "
                "outside the model: set min_real",
                UtilizationWarning,
                stacklevel=2,
            )
    else:
        n_other, n_real, n_eq = 0, all_real, float(all_real)
        if eta < 0:
            reason = f"eta {eta:.3g} < 0: the other data is detrimental, collect real data only"
        elif math.isinf(eta):
            reason = "eta is infinite: the other data had no measurable effect, collect real data only"
        else:
            reason = (
                f"speed ratio {speed:.3g} <= eta {eta:.3g}: real data buys more value per hour, collect real data only"
            )

    def expected(n: float) -> float | None:
        return None if fit is None else min(1.0, fit.predict(n))

    return Allocation(
        n_real=n_real,
        n_other=n_other,
        seconds_used=n_real * cost_real_s + n_other * cost_other_s,
        budget_s=budget_s,
        eta=eta,
        speed_ratio=speed,
        include_other=use_other,
        n_equivalent_real=n_eq,
        expected_success=expected(n_eq),
        all_real_n=all_real,
        all_real_success=expected(all_real),
        reason=reason,
    )
