"""Campaign plots (matplotlib, headless): success rate per condition and paired drops."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from evaluator.results import CheckpointSummary


def plot_campaign(summaries: Sequence[CheckpointSummary], path: str | Path, title: str = "") -> Path | None:
    """A PNG with two panels: success rate per condition (one bar per checkpoint, Wilson 95 %
    error bars) and the paired drop from nominal per condition (95 % paired t interval).
    Returns None when no checkpoint has results."""
    import matplotlib
    import numpy as np
    from matplotlib.figure import Figure  # no pyplot: no global backend or figure state

    rows = [s for s in summaries if s.per_condition and s.overall.get("n")]
    if not rows:
        return None
    conds: list[str] = []
    for s in rows:
        for c in s.per_condition:
            if c not in conds:
                conds.append(c)
    drops = [c for c in conds if any(c in s.paired_drop for s in rows)]
    n_ck = len(rows)
    width = 0.8 / n_ck
    x = np.arange(len(conds))
    fig_w = max(6.0, 0.45 * len(conds) * max(1, n_ck) ** 0.5 + 2.0)
    fig = Figure(figsize=(fig_w, 7.5 if drops else 4.2))
    axes = fig.subplots(2 if drops else 1, 1, squeeze=False)
    ax = axes[0, 0]
    cmap = matplotlib.colormaps["tab10"]
    for j, s in enumerate(rows):
        rates, lo, hi = [], [], []
        for c in conds:
            st = s.per_condition.get(c)
            r = st["success_rate"] if st and st["success_rate"] is not None else np.nan
            rates.append(r)
            lo.append(r - st["ci_low"] if st and st["n"] else 0.0)
            hi.append(st["ci_high"] - r if st and st["n"] else 0.0)
        label = f"{s.label} ({s.checkpoint_id[:8]})"
        ax.bar(
            x + (j - (n_ck - 1) / 2) * width,
            rates,
            width,
            yerr=[lo, hi],
            capsize=2,
            label=label,
            color=cmap(j % 10),
            alpha=0.85,
        )
    ax.set_xticks(x, conds, rotation=45, ha="right", fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("success rate (Wilson 95%)")
    ax.set_title(title or "success rate by condition")
    ax.legend(fontsize=7, loc="upper right")
    ax.grid(axis="y", alpha=0.3)
    if drops:
        ax2 = axes[1, 0]
        xd = np.arange(len(drops))
        for j, s in enumerate(rows):
            m, lo, hi = [], [], []
            for c in drops:
                d = s.paired_drop.get(c, {})
                v = d.get("mean")
                m.append(np.nan if v is None else v)
                lo.append(0.0 if v is None else v - d["ci_low"])
                hi.append(0.0 if v is None else d["ci_high"] - v)
            ax2.bar(
                xd + (j - (n_ck - 1) / 2) * width, m, width, yerr=[lo, hi], capsize=2, color=cmap(j % 10), alpha=0.85
            )
        ax2.axhline(0.0, color="black", linewidth=0.8)
        ax2.set_ylim(-1.05, 1.05)
        ax2.set_xticks(xd, drops, rotation=45, ha="right", fontsize=8)
        ax2.set_ylabel("paired drop from nominal")
        ax2.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p, dpi=100)
    return p


__all__ = ["plot_campaign"]
