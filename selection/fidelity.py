"""Selection fidelity against a reality: how well a ranking score orders checkpoints as the
reality's own success does (SimplerEnv's MMRV, Pearson, Spearman, regret@1, each with a 95 %
bootstrap interval over checkpoints), whether that reality separates its checkpoints at all
at the number of episodes it ran, and the scatter of twin vs reality per checkpoint.

Used by ``twinrank demo`` (its fidelity step) and ``benchmarks/bench_selection``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from evaluator.results import wilson_interval
from selection.metrics import bootstrap_interval, mmrv, pearson, regret_at_1, spearman

#: the fidelity metrics, in table order (higher is better for the correlations, lower for the rest)
METRICS: tuple[tuple[str, Callable[..., float]], ...] = (
    ("MMRV", mmrv),
    ("Pearson", pearson),
    ("Spearman", spearman),
    ("regret@1", regret_at_1),
)


@dataclass(frozen=True)
class Estimate:
    """A metric's value and its 95 % bootstrap interval over checkpoints."""

    value: float
    lo: float
    hi: float

    def __str__(self) -> str:
        return f"{self.value:.3f} [{self.lo:.3f}, {self.hi:.3f}]"


def fidelity_metrics(
    score: Sequence[float], real: Sequence[float], resamples: int = 1000, seed: int = 0
) -> dict[str, Estimate]:
    """Each of :data:`METRICS` of ``score`` (higher = ranked better) against ``real`` success,
    with its 95 % percentile bootstrap interval over checkpoints (resampled in pairs)."""
    s, r = np.asarray(score, dtype=float), np.asarray(real, dtype=float)
    out: dict[str, Estimate] = {}
    for name, fn in METRICS:
        lo, hi = bootstrap_interval(fn, s, r, resamples=resamples, seed=seed)
        out[name] = Estimate(float(fn(s, r)), lo, hi)
    return out


def no_verdict_reason(real: Sequence[float], episodes: int) -> str:
    """Why a reality's success rates (``episodes`` each) cannot judge a ranking, or '' when
    they can: every checkpoint scored the same (MMRV trivially 0, correlations undefined), or
    its best and worst checkpoints' 95 % Wilson intervals overlap (its spread is noise at
    this n, so a small MMRV or a large correlation would be luck)."""
    y = np.asarray(real, dtype=float)
    if y.size < 2 or np.ptp(y) == 0:
        v = f"{y[0]:.2f}" if y.size else "nothing"
        return f"every checkpoint scored {v} in this reality: no ranking can be judged against it"
    best_lo = wilson_interval(round(float(y.max()) * episodes), episodes)[0]
    worst_hi = wilson_interval(round(float(y.min()) * episodes), episodes)[1]
    if best_lo <= worst_hi:
        return (
            f"this reality does not tell its best and worst checkpoints apart ({y.max():.2f} vs {y.min():.2f} at "
            f"n = {episodes}: 95 % intervals from {best_lo:.2f} and up to {worst_hi:.2f} overlap)"
        )
    return ""


def fidelity_scatter(
    sim: Sequence[float],
    reals: Mapping[str, Sequence[float]],
    top: int,
    task: str,
    path: Path,
    ranked_by: str = "score",
) -> Path:
    """One panel per reality: each checkpoint's twin success (perturbed) against the reality's,
    the checkpoint ranked first starred; written to ``path`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = np.asarray(sim, dtype=float)
    fig, axes = plt.subplots(1, len(reals), figsize=(5.2 * len(reals), 4.4), squeeze=False)
    for ax, (label, real) in zip(axes[0], reals.items(), strict=True):
        y = np.asarray(real, dtype=float)
        ax.scatter(x, y, s=36, c="tab:blue", edgecolor="k", linewidth=0.4, label="checkpoint")
        ax.scatter([x[top]], [y[top]], marker="*", s=220, c="gold", edgecolor="k", label=f"ranked first ({ranked_by})")
        ax.legend(loc="upper left", fontsize=8)
        ax.plot([0, 1], [0, 1], ls=":", c="grey", lw=1)
        ax.set_xlabel("sim success, perturbed (twin)")
        ax.set_ylabel(f"{label} success")
        ax.set_title(f"{task}: twin vs {label} ({len(x)} checkpoints)")
        ax.set_xlim(-0.03, 1.03)
        ax.set_ylim(-0.03, 1.03)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


__all__ = ["METRICS", "Estimate", "fidelity_metrics", "fidelity_scatter", "no_verdict_reason"]
