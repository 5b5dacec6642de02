"""Decisions under uncertainty from paired episodes: how sure is "A is the best"?

Every checkpoint of a campaign runs the same (condition, seed) episodes, so the comparison
between two checkpoints rests on the episodes where they differ. :func:`paired_posterior`
turns the episodes into posterior draws of each checkpoint's success rate per condition with
that pairing kept:

Model (a stratified, paired Bayesian bootstrap with a Dirichlet-process prior): within each
condition ``c`` with ``n_c`` paired episodes, a draw puts Dirichlet(a, ..., a) weights on the
episodes (the same weights for every checkpoint: an episode that is easy is easy for all of
them; ``a = (n_c - 1) / (n_c + 1)`` so that the spread of a mean matches its unbiased sampling
variance) plus a share ``w0 ~ Beta(m0, n_c)`` on a prior pseudo-population in which each
checkpoint's success rate is ``Beta(m0 / 2, m0 / 2)``, independently (``m0`` =
``prior_episodes``, default 2: the prior weighs as much as two episodes, one success and one
failure). That is the posterior of a Dirichlet process with concentration ``m0`` and a
uniform base measure, restricted to the rates.

Calibration (tests/test_decision.py, and measured once over n = 2..96 paired episodes and
true rates 0.1..0.9, 1000 repetitions each): two checkpoints with equal true success get
P(one beats the other) >= 0.95 in at most ~6 % of comparisons (5 % is the target of a
calibrated one-sided decision; the Bayesian bootstrap is slightly anti-conservative), and 0
times when their outcomes are identical. A checkpoint's overall success is the condition rates weighted by
the conditions' episode counts (the campaign's own definition: success over all episodes).
Two checkpoints with identical outcomes differ only through the prior part, so each is the
better one half of the time and none is ever "probably best"; with few episodes the prior
keeps probabilities away from 0 and 1 (2 of 2 against 0 of 2: P(better) = 0.92; 6 of 6 against
0 of 6: 0.997).

From the draws: :meth:`SuccessPosterior.p_best` (the share of draws in which a checkpoint has
the highest score; exact ties are split evenly, so a tie never favours the first checkpoint)
and :meth:`SuccessPosterior.p_beats` (a strictly better score; ties count one half). Any
ranking score that is a function of the success rates (e.g. a selection rule combining sim
success with OOD scores) gets the same probabilities by scoring every draw.

The draws are seeded from the episodes themselves, so the same campaign always prints the
same probabilities.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from evaluator.racing import METHOD as RACING_METHOD
from evaluator.spec import NOMINAL

DEFAULT_DRAWS = 4000
PRIOR_EPISODES = 2.0
METHOD = (
    "paired Bayesian bootstrap over (condition, seed) episodes with a Dirichlet-process prior worth "
    f"{PRIOR_EPISODES:g} episodes (evaluator/decision.py)"
)


@dataclass
class SuccessPosterior:
    """Posterior draws of success per checkpoint and condition (``draws``: (D, K, C))."""

    checkpoint_ids: list[str]
    conditions: list[str]
    weights: np.ndarray  # (C,) condition weights, summing to 1
    draws: np.ndarray  # (D, K, C)
    n: int  # paired episodes per checkpoint

    def index(self, checkpoint_id: str) -> int:
        return self.checkpoint_ids.index(checkpoint_id)

    def overall(self) -> np.ndarray:
        """(D, K): success over every episode (conditions weighted by their episode counts)."""
        return self.draws @ self.weights

    def condition(self, name: str) -> np.ndarray:
        """(D, K): success under one condition."""
        return self.draws[:, :, self.conditions.index(name)]

    def perturbed(self) -> np.ndarray:
        """(D, K): mean success over the perturbed conditions (nominal when there are none),
        the ``sim_perturbed`` of selection's rankings."""
        idx = [i for i, c in enumerate(self.conditions) if c != NOMINAL] or list(range(len(self.conditions)))
        return self.draws[:, :, idx].mean(axis=2)

    def p_best(self, scores: np.ndarray | None = None) -> np.ndarray:
        """(K,): P(best) of each checkpoint under ``scores`` (D, K) (default: overall success)."""
        return p_best(self.overall() if scores is None else scores)

    def p_beats(self, a: int, b: int, scores: np.ndarray | None = None) -> float:
        """P(checkpoint ``a`` scores higher than ``b``) (ties count one half)."""
        return p_greater(self.overall() if scores is None else scores, a, b)


def p_best(scores: np.ndarray) -> np.ndarray:
    """(K,) from (D, K) score draws: the share of draws in which each column is the maximum,
    exact ties split evenly (a tie never favours a position)."""
    s = np.asarray(scores, dtype=float)
    if s.ndim != 2 or s.shape[1] == 0:
        raise ValueError(f"scores must be (draws, checkpoints), got shape {s.shape}")
    top = s.max(axis=1, keepdims=True)
    winners = np.isclose(s, top, rtol=0.0, atol=1e-12) & np.isfinite(s)
    counts = winners.sum(axis=1, keepdims=True)
    share = np.where(counts > 0, winners / np.maximum(counts, 1), 0.0)
    return share.mean(axis=0)


def p_greater(scores: np.ndarray, a: int, b: int) -> float:
    """P(column ``a`` > column ``b``) over the draws; exact ties count one half."""
    s = np.asarray(scores, dtype=float)
    d = s[:, a] - s[:, b]
    tie = np.isclose(d, 0.0, rtol=0.0, atol=1e-12)
    return float(((d > 0) & ~tie).mean() + 0.5 * tie.mean())


def _dirichlet_a(n: int) -> float:
    """Dirichlet concentration per episode: (n - 1) / (n + 1) makes the posterior variance of a
    mean match its unbiased sampling variance (Dirichlet(1) alone is too narrow at small n)."""
    return max(0.5, (n - 1) / (n + 1))


def _seed(outcomes: np.ndarray, ids: Sequence[str], extra: int) -> int:
    h = hashlib.sha256(json.dumps([list(ids), int(extra)]).encode())
    h.update(np.ascontiguousarray(outcomes, dtype=np.uint8).tobytes())
    return int.from_bytes(h.digest()[:8], "little")


def paired_posterior(
    results: Iterable[Any],
    checkpoint_ids: Sequence[str],
    *,
    draws: int = DEFAULT_DRAWS,
    prior_episodes: float = PRIOR_EPISODES,
    seed: int | None = None,
) -> SuccessPosterior:
    """Posterior draws of the success of ``checkpoint_ids`` from their episode results (objects
    with ``checkpoint_id``, ``condition``, ``seed``, ``success``), on the episodes every one of
    them ran (the paired design gives them all the same). ``seed``: of the draws (default: a
    hash of the outcomes, so the same episodes give the same probabilities)."""
    ids = list(checkpoint_ids)
    if not ids:
        raise ValueError("no checkpoints to compare")
    by_ck: dict[str, dict[tuple[str, int], bool]] = {c: {} for c in ids}
    for r in results:
        if r.checkpoint_id in by_ck:
            by_ck[r.checkpoint_id][(str(r.condition), int(r.seed))] = bool(r.success)
    common = set.intersection(*(set(v) for v in by_ck.values()))
    if not common:
        raise ValueError("the checkpoints share no (condition, seed) episode: nothing to compare")
    conditions = list(dict.fromkeys(c for c, _ in sorted(common, key=lambda k: (k[0], k[1]))))
    rng_seed = seed
    per_cond: list[np.ndarray] = []
    counts = []
    keys_by_cond = {c: sorted(k for k in common if k[0] == c) for c in conditions}
    outcome_blocks = [
        np.array([[by_ck[ck][k] for ck in ids] for k in keys_by_cond[c]], dtype=float) for c in conditions
    ]
    if rng_seed is None:
        rng_seed = _seed(np.concatenate(outcome_blocks), ids, draws)
    rng = np.random.default_rng(rng_seed)
    m0 = float(prior_episodes)
    for y in outcome_blocks:  # y: (n_c, K)
        n_c = len(y)
        counts.append(n_c)
        g = rng.standard_gamma(_dirichlet_a(n_c), size=(draws, n_c))
        w = g / g.sum(axis=1, keepdims=True)
        observed = w @ y  # (D, K)
        if m0 > 0:
            w0 = rng.beta(m0, n_c, size=(draws, 1))
            base = rng.beta(m0 / 2.0, m0 / 2.0, size=(draws, len(ids)))
            observed = w0 * base + (1.0 - w0) * observed
        per_cond.append(observed)
    weights = np.asarray(counts, dtype=float)
    return SuccessPosterior(
        checkpoint_ids=ids,
        conditions=conditions,
        weights=weights / weights.sum(),
        draws=np.stack(per_cond, axis=2),
        n=int(weights.sum()),
    )


def decide_campaign(
    summaries: Sequence[Any],
    results: Iterable[Any],
    *,
    draws: int = DEFAULT_DRAWS,
    races: dict[str, Any] | None = None,
) -> None:
    """Fill ``summary.decision`` of every evaluated checkpoint of a campaign: ``p_best``
    (overall success, paired episodes), ``rank`` (ties share a rank, "2="), ``leader`` (the
    highest P(best)), ``indistinguishable`` (its Wilson 95 % interval overlaps the leader's),
    ``n`` (paired episodes each), ``method``, ``order`` (position in the ranked table).
    Checkpoints of different tasks are compared within their task. ``races`` (adaptive mode,
    task -> :class:`evaluator.racing.RaceResult`): the probabilities are over the survivors
    (they ran the same episodes); an eliminated checkpoint gets ``eliminated`` (when, by whom,
    the evidence) and ``mark`` instead of a P(best), and ranks after every survivor, the later
    eliminated first."""
    results = list(results)
    races = races or {}
    labels = {s.checkpoint_id: s.label for s in summaries}
    by_task: dict[str, list[Any]] = {}
    for s in summaries:
        s.decision = {}
        if s.status == "ok" and s.overall.get("n"):
            by_task.setdefault(s.task, []).append(s)
    for task, members in by_task.items():
        race = races.get(task)
        elim = {e.checkpoint_id: e for e in race.eliminations} if race is not None else {}
        group = [s for s in members if s.checkpoint_id not in elim]
        out = sorted(
            (s for s in members if s.checkpoint_id in elim),
            key=lambda s: (-elim[s.checkpoint_id].round, -s.overall["success_rate"], s.label),
        )
        if group:
            post = paired_posterior(
                [r for r in results if r.task == task], [s.checkpoint_id for s in group], draws=draws
            )
            pb = post.p_best()
            lead = group[int(np.argmax(pb))]
            ranks = ranks_with_ties([s.overall["success_rate"] for s in group])
            for s, p, rank in zip(group, pb, ranks):
                same = s is lead
                s.decision = {
                    "p_best": float(p),
                    "rank": rank,
                    "leader": same,
                    "indistinguishable": (not same)
                    and overlaps(
                        s.overall["ci_low"], s.overall["ci_high"], lead.overall["ci_low"], lead.overall["ci_high"]
                    ),
                    "p_beats_leader": None if same else post.p_beats(group.index(s), group.index(lead)),
                    "n": post.n,
                    "method": METHOD,
                }
            ordered = sorted(group, key=lambda s: (-s.overall["success_rate"], -s.decision["p_best"], s.label))
            for k, s in enumerate(ordered):
                s.decision["order"] = k
                if race is not None:
                    s.decision["race"] = {"stop": race.stop, "winner": race.winner == s.checkpoint_id}
        for k, s in enumerate(out):
            e = elim[s.checkpoint_id]
            s.decision = {
                "p_best": None,
                "rank": str(len(group) + k + 1),
                "leader": False,
                "indistinguishable": False,
                "eliminated": e.to_dict(),
                "mark": e.describe(labels),
                "n": e.episodes,
                "method": RACING_METHOD,
                "order": len(group) + k,
            }


def p_beats_reference(summaries: Sequence[Any], results: Iterable[Any], reference_id: str) -> dict[str, float]:
    """P(checkpoint beats ``reference_id``) (e.g. the registered model's current champion) for
    every fully evaluated checkpoint of its task, from the paired episodes; {} when the
    reference was not evaluated here."""
    ok = [s for s in summaries if s.status == "ok" and s.overall.get("n")]
    ref = next((s for s in ok if s.checkpoint_id == reference_id), None)
    if ref is None:
        return {}
    group = [s for s in ok if s.task == ref.task]
    post = paired_posterior([r for r in results if r.task == ref.task], [s.checkpoint_id for s in group])
    j = post.index(reference_id)
    return {s.checkpoint_id: post.p_beats(i, j) for i, s in enumerate(group) if s.checkpoint_id != reference_id}


def decision_mark(decision: dict[str, Any]) -> str:
    """The table's mark of a checkpoint: "leader", "indistinguishable at n = 48" or ""."""
    if not decision:
        return ""
    if decision.get("mark"):
        return str(decision["mark"])
    if decision.get("leader"):
        return "leader"
    return f"indistinguishable at n = {decision['n']}" if decision.get("indistinguishable") else ""


def ranks_with_ties(values: Sequence[float | None]) -> list[str]:
    """Competition ranks ("1", "2=", "2=", "4") of ``values`` (higher is better; None and NaN
    get "-"): equal values share a rank, marked "=", so input order never breaks a tie."""
    vals = [None if v is None or not np.isfinite(v) else float(v) for v in values]
    ranked = sorted((v for v in vals if v is not None), reverse=True)
    out = []
    for v in vals:
        if v is None:
            out.append("-")
            continue
        r = 1 + sum(1 for x in ranked if x > v + 1e-12)
        tied = sum(1 for x in ranked if abs(x - v) <= 1e-12) > 1
        out.append(f"{r}=" if tied else str(r))
    return out


def overlaps(lo: float, hi: float, lead_lo: float, lead_hi: float) -> bool:
    """Whether an interval [lo, hi] overlaps the leader's."""
    return lo <= lead_hi and hi >= lead_lo


__all__ = [
    "p_beats_reference",
    "decide_campaign",
    "decision_mark",
    "DEFAULT_DRAWS",
    "METHOD",
    "PRIOR_EPISODES",
    "SuccessPosterior",
    "overlaps",
    "p_best",
    "p_greater",
    "paired_posterior",
    "ranks_with_ties",
]
