"""Ranking plots (matplotlib, Agg): sim success vs OOD scatter, per-condition heat map, rank chart."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402


def _short(label: str, n: int = 28) -> str:
    return label if len(label) <= n else "…" + label[-(n - 1) :]


def scatter_sim_vs_ood(ranking: pd.DataFrame, path: str | Path, real: dict[str, float] | None = None) -> Path:
    """Perturbed sim success (y) against the combined OOD score (x), one point per checkpoint,
    coloured by the combined score; the champion is starred. With ``real`` (validation only),
    a second panel plots the score against the real (or proxy-real) success."""
    df = ranking[ranking["rank"].notna()]
    ncols = 2 if real else 1
    fig, axes = plt.subplots(1, ncols, figsize=(6 * ncols, 4.5), squeeze=False)
    ax = axes[0][0]
    sc = ax.scatter(df["ood"], df["sim_perturbed"], c=df["score"], cmap="viridis", s=50, edgecolors="k")
    fig.colorbar(sc, ax=ax, label=f"score ({df['rule'].iloc[0] if len(df) else ''})")
    for _, r in df.iterrows():
        ax.annotate(
            _short(str(r["checkpoint"]), 18),
            (r["ood"], r["sim_perturbed"]),
            fontsize=6,
            xytext=(3, 3),
            textcoords="offset points",
        )
    if len(df):
        top = df.iloc[0]
        ax.scatter([top["ood"]], [top["sim_perturbed"]], marker="*", s=300, c="red", label="champion")
        ax.legend(loc="lower left", fontsize=8)
    ax.set_xlabel("OOD score on logged real data (0 = in distribution)")
    ax.set_ylabel("sim success, perturbed conditions")
    ax.set_title("sim success vs OOD")
    ax.grid(alpha=0.3)
    if real:
        ax2 = axes[0][1]
        have = df[df["checkpoint"].isin(real)]
        ax2.scatter(have["score"], [real[c] for c in have["checkpoint"]], s=50, edgecolors="k")
        ax2.set_xlabel("combined score")
        ax2.set_ylabel("real success (validation)")
        ax2.set_title("score vs real outcome")
        ax2.grid(alpha=0.3)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def condition_heatmap(ranking: pd.DataFrame, path: str | Path) -> Path:
    """Success per (checkpoint, condition), checkpoints in rank order."""
    cols = [c for c in ranking.columns if c.startswith("sim/")]
    df = ranking.sort_values("rank", na_position="last")
    data = df[cols].to_numpy(dtype=float) if cols else np.zeros((len(df), 0))
    fig, ax = plt.subplots(figsize=(max(5.0, 0.5 * len(cols) + 3), max(3.0, 0.3 * len(df) + 1.5)))
    im = ax.imshow(data, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto")
    ax.set_xticks(range(len(cols)), [c[4:] for c in cols], rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(df)), [_short(str(c)) for c in df["checkpoint"]], fontsize=7)
    for i in range(data.shape[0]):
        for j in range(data.shape[1]):
            if np.isfinite(data[i, j]):
                ax.text(j, i, f"{data[i, j]:.2f}", ha="center", va="center", fontsize=6)
    fig.colorbar(im, ax=ax, label="success rate")
    ax.set_title("in-sim success per condition (rank order)")
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def rank_chart(ranking: pd.DataFrame, path: str | Path) -> Path:
    """Horizontal bars of the combined score, best at the top, with the two ingredients."""
    df = ranking[ranking["rank"].notna()].sort_values("rank", ascending=False)
    y = np.arange(len(df))
    fig, ax = plt.subplots(figsize=(8, max(3.0, 0.35 * len(df) + 1.5)))
    ax.barh(y, df["score"], color="tab:blue", alpha=0.8, label="combined score")
    ax.plot(df["sim_perturbed"], y, "o", color="tab:green", label="sim success (perturbed)")
    ax.plot(1.0 - df["ood"], y, "x", color="tab:red", label="1 - OOD")
    ax.set_yticks(y, [f"#{int(r)} {_short(str(c))}" for r, c in zip(df["rank"], df["checkpoint"])], fontsize=7)
    ax.set_xlabel("score")
    ax.set_title(f"ranking (rule {df['rule'].iloc[0] if len(df) else ''})")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


__all__ = ["scatter_sim_vs_ood", "condition_heatmap", "rank_chart"]


def predicted_real(frame: pd.DataFrame, path: str | Path, level: float, title: str = "") -> Path:
    """Predicted real success with its interval (y) against sim success (x), one point per
    checkpoint (selection/prediction.py): filled where the checkpoint has real trials (their
    observed rate as a cross), open where the prediction rests on the sim -> real model alone."""
    df = frame[frame["predicted"].notna()]
    fig, ax = plt.subplots(figsize=(6.5, 4.8))
    for has, face in ((True, "C0"), (False, "none")):
        d = df[(df["real_trials"] > 0) == has]
        if not len(d):
            continue
        ax.errorbar(
            d["sim"],
            d["predicted"],
            yerr=[d["predicted"] - d["lo"], d["hi"] - d["predicted"]],
            fmt="o",
            mfc=face,
            mec="C0",
            ecolor="C0",
            alpha=0.8,
            capsize=3,
            label=f"predicted, {level:.0%} interval ({'with' if has else 'no'} real trials)",
        )
    obs = df[df["real_trials"] > 0]
    if len(obs):
        ax.scatter(obs["sim"], obs["real_successes"] / obs["real_trials"], marker="x", c="C3", label="real trials")
    ax.plot([0, 1], [0, 1], ls=":", c="grey", lw=1)
    ax.set_xlim(-0.03, 1.03)
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel("sim success")
    ax.set_ylabel("real success")
    ax.set_title(title or "Predicted real success", fontsize=10)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
