"""Adaptive racing: evaluate many checkpoints in rounds, drop the ones confidently worse than
another, stop once the best is identified within ``epsilon``.

Design. Every checkpoint of a task runs the same episodes in the same order (the pairing is
kept): the spec's (condition, seed) list, shuffled once with a seed from the spec's digest
(:func:`evaluator.run.race_order`). A round is the next ``round_episodes`` episodes of that
order for every surviving checkpoint. Run to its end, the race is the fixed design: the
*estimand* is each checkpoint's success over the spec's whole list, the number the fixed
campaign would report.

Evidence (anytime-valid, so looking after every round costs no error): for every ordered pair
(a, b) of surviving checkpoints two *tests by betting* run on the paired differences
``D = y_a - y_b`` (in {-1, 0, 1}) in the shuffled order:

- elimination: ``H0: success(a) <= success(b)`` on the list;
- within epsilon: ``H0: success(b) >= success(a) + epsilon`` on the list (differences ``D + epsilon``).

The episodes are drawn from the list without replacement, so under a null the next difference
has conditional mean at most ``m_t = -(sum of past differences) / (episodes left)``; the wealth
``W = prod(1 + lambda_t (D_t - m_t))`` is then a non-negative supermartingale that starts at 1,
and by Ville's inequality it ever reaches ``1 / alpha`` with probability at most ``alpha``,
however often it is looked at (the randomness is the shuffle alone: no assumption about the
episodes, the policies or the simulator). The bet ``lambda_t`` is predictable (from the
differences before ``t``): aGRAPA, mean / second moment of the past increments, shrunk by one
pseudo-observation and capped so that a wealth never falls by more than 75 % in one episode
(Waudby-Smith & Ramdas, "Estimating means of bounded random variables by betting", JRSS-B
2024, which also gives the without-replacement form). Two checkpoints that agree on most
episodes have a small second moment, so the bets grow quickly where the difference is
consistent. A null that the episodes already seen make impossible (the rest of the list cannot
close the gap) is rejected outright.

Rules, after each round (``K`` checkpoints at the start, ``threshold = 2 (K - 1) / delta``):

- a checkpoint ``b`` is eliminated when some surviving ``a`` has elimination wealth over ``b`` at
  the threshold (``a`` is confidently better than ``b``); ``1 / wealth`` is an anytime-valid
  p-value, printed with the elimination;
- the race stops, with winner ``a``, when ``a``'s within-epsilon wealth over every other survivor
  is at the threshold, or when one checkpoint is left, or when the list is spent: then the
  survivors' success on the whole list decides (the fixed design's rule) and a tie stays a tie.

Guarantee: the winner's success on the spec's list is within ``epsilon`` of the best
checkpoint's with probability at least ``1 - delta``. Proof sketch: a wrong answer needs either
the best checkpoint eliminated (one of the ``K - 1`` elimination tests against it rejects a true
null: at most ``(K - 1) * delta / (2 (K - 1)) = delta / 2``) or a within-epsilon stop for an
``a`` more than ``epsilon`` worse than the best (one of ``K - 1`` true nulls of that kind
rejects: at most ``delta / 2``). How well the list's success stands for the true success is
the fixed design's question, answered by its Wilson intervals and P(best). Checked on synthetic
Bernoulli checkpoints in ``tests/test_racing.py`` and on real families in
``benchmarks/bench_racing.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

METHOD = (
    "anytime-valid tests by betting on the paired episode differences of a shared shuffled list, "
    "threshold 2(K-1)/delta (evaluator/racing.py)"
)


class RacingError(ValueError):
    """Racing settings that cannot work."""


@dataclass(frozen=True)
class RacingCfg:
    """Adaptive racing settings: ``epsilon`` (success) and ``delta`` of the guarantee "the
    winner is within epsilon of the best with probability >= 1 - delta"; ``max_bet``: the
    largest share of a test's wealth staked on one episode."""

    epsilon: float = 0.05
    delta: float = 0.05
    max_bet: float = 0.75

    def validate(self) -> RacingCfg:
        if not 0.0 <= self.epsilon < 1.0:
            raise RacingError(f"epsilon = {self.epsilon}: give a success difference in [0, 1), e.g. 0.05")
        if not 0.0 < self.delta < 1.0:
            raise RacingError(f"delta = {self.delta}: give an error probability in (0, 1), e.g. 0.05")
        if not 0.0 < self.max_bet < 1.0:
            raise RacingError(f"max_bet = {self.max_bet}: give a betting cap in (0, 1)")
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Elimination:
    """Why a checkpoint left the race: ``by`` was confidently better after ``episodes``
    paired episodes, at the end of round ``round``; ``wealth`` reached ``threshold`` (an
    anytime-valid p-value of ``1 / wealth`` against "not worse")."""

    checkpoint_id: str
    round: int
    episodes: int
    by: str
    wealth: float
    threshold: float
    success: float
    by_success: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self, labels: dict[str, str] | None = None) -> str:
        """One line: when, against whom, with what evidence (``labels``: id -> name to show)."""
        by = (labels or {}).get(self.by, self.by)
        if np.isfinite(self.wealth):
            evidence = f"evidence {self.wealth:.0f} >= {self.threshold:.0f}, p <= {1.0 / self.wealth:.2g}"
        else:
            evidence = "the episodes left in the list cannot close the gap"
        return (
            f"eliminated in round {self.round} at n = {self.episodes}: success {self.success:.2f} vs "
            f"{self.by_success:.2f} of {by} ({evidence})"
        )


@dataclass
class RaceResult:
    """The outcome of a race: ``winner`` (None when survivors tie on success), ``stop``
    (``identified`` | ``last_standing`` | ``budget`` | ``no_survivors``), the eliminations in
    order, the episodes each checkpoint ran and their total (``budget``: per checkpoint)."""

    checkpoint_ids: list[str]
    winner: str | None
    stop: str
    rounds: int
    episodes_run: dict[str, int]
    eliminations: list[Elimination] = field(default_factory=list)
    survivors: list[str] = field(default_factory=list)
    withdrawn: dict[str, str] = field(default_factory=dict)
    episodes: int = 0
    budget: int = 0
    cfg: RacingCfg = field(default_factory=RacingCfg)
    threshold: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": METHOD,
            "cfg": self.cfg.to_dict(),
            "threshold": self.threshold,
            "winner": self.winner,
            "stop": self.stop,
            "rounds": self.rounds,
            "episodes": self.episodes,
            "budget_per_checkpoint": self.budget,
            "episodes_run": self.episodes_run,
            "survivors": self.survivors,
            "withdrawn": self.withdrawn,
            "eliminations": [e.to_dict() for e in self.eliminations],
        }

    def describe_stop(self) -> str:
        if self.stop == "identified" and self.winner is None:
            return (
                f"the best is within {self.cfg.epsilon:g} of the survivors tied at the top "
                f"(1 - delta = {1 - self.cfg.delta:g}), round {self.rounds}"
            )
        if self.stop == "identified":
            return f"best identified within {self.cfg.epsilon:g} at 1 - delta = {1 - self.cfg.delta:g} in round {self.rounds}"
        if self.stop == "last_standing":
            return f"one checkpoint left after round {self.rounds}"
        if self.stop == "no_survivors":
            return f"no checkpoint left after round {self.rounds} (all failed)"
        tie = "" if self.winner else "; the survivors tie"
        return f"episode budget spent after round {self.rounds} with {len(self.survivors)} survivor(s){tie}"


class Race:
    """The state of one race (one task's checkpoints). Feed it every episode's outcomes in the
    race order with :meth:`observe` (NaN for eliminated checkpoints), call :meth:`settle` at the
    end of every round; :attr:`done` says when to stop."""

    def __init__(self, checkpoint_ids: Sequence[str], cfg: RacingCfg, budget: int) -> None:
        cfg.validate()
        if not checkpoint_ids:
            raise RacingError("no checkpoints to race")
        if int(budget) < 1:
            raise RacingError(f"budget = {budget}: need at least one episode per checkpoint")
        self.ids = list(checkpoint_ids)
        self.cfg = cfg
        self.budget = int(budget)
        k = len(self.ids)
        self.threshold = 2.0 * max(k - 1, 1) / cfg.delta
        self.alive = np.ones(k, dtype=bool)
        self.t = np.zeros((k, k))  # paired episodes seen per pair
        self.s_d = np.zeros((k, k))  # sum of D = y_a - y_b
        self.tests = {"elim": _Test(k, 0.0), "eps": _Test(k, cfg.epsilon)}
        self.sums = np.zeros(k)  # successes per checkpoint
        self.n = np.zeros(k, dtype=int)  # episodes per checkpoint
        self.round = 0
        self.eliminations: list[Elimination] = []
        self.stop: str | None = None
        self.winner: str | None = None
        self.withdrawn: dict[str, str] = {}  # checkpoint -> why it left without evidence

    def observe(self, values: Sequence[float]) -> None:
        """One episode of the race order: each checkpoint's outcome (1 success, 0 failure), NaN
        for a checkpoint that no longer runs."""
        v = np.asarray(values, dtype=float)
        if v.shape != (len(self.ids),):
            raise RacingError(f"an episode needs {len(self.ids)} outcomes, got shape {v.shape}")
        run = self.alive & np.isfinite(v)
        if not run[self.alive].all():
            raise RacingError("every surviving checkpoint must run every episode (the pairing)")
        if int(self.n[run].max(initial=0)) >= self.budget:
            raise RacingError(f"the race has a budget of {self.budget} episodes per checkpoint")
        pair = np.outer(run, run)
        np.fill_diagonal(pair, False)
        x = np.where(run, v, 0.0)
        d = x[:, None] - x[None, :]  # d[a, b] = y_a - y_b
        left = self.budget - self.t  # episodes of the list not yet seen, this one included
        for test in self.tests.values():
            test.update(d, self.s_d, self.t, left, pair, cap=self.cfg.max_bet)
        self.t += pair
        self.s_d += np.where(pair, d, 0.0)
        self.sums += x
        self.n += run

    def means(self) -> np.ndarray:
        return self.sums / np.maximum(self.n, 1)

    def withdraw(self, i: int, reason: str) -> None:
        """Take checkpoint ``i`` out of the race without evidence (it failed to run)."""
        if self.alive[i]:
            self.alive[i] = False
            self.withdrawn[self.ids[i]] = reason

    def settle(self) -> None:
        """End of a round: eliminate, then decide whether to stop."""
        self.round += 1
        alive = np.flatnonzero(self.alive)
        if len(alive) == 0:
            self.stop, self.winner = "no_survivors", None
            return
        thr = self.threshold
        means = self.means()
        w_elim, w_eps = self.tests["elim"].wealth, self.tests["eps"].wealth
        out: list[tuple[int, int]] = []
        for b in alive:
            others = [a for a in alive if a != b]
            if not others:
                continue
            a = max(others, key=lambda a: w_elim[a, b])
            if w_elim[a, b] >= thr:
                out.append((int(b), int(a)))
        if len(out) >= len(alive):  # never eliminate everyone (needs contradictory evidence)
            out = [o for o in out if o[0] != int(alive[np.argmax(means[alive])])]
        for b, a in out:
            self.alive[b] = False
            self.eliminations.append(
                Elimination(
                    checkpoint_id=self.ids[b],
                    round=self.round,
                    episodes=int(self.n[b]),
                    by=self.ids[a],
                    wealth=float(w_elim[a, b]),
                    threshold=float(thr),
                    success=float(means[b]),
                    by_success=float(means[a]),
                )
            )
        alive = np.flatnonzero(self.alive)
        if len(alive) == 1:
            self.stop, self.winner = "last_standing", self.ids[int(alive[0])]
            return
        top = means[alive].max()
        leaders = [int(i) for i in alive if abs(means[i] - top) <= 1e-12]
        for a in sorted(alive, key=lambda i: -means[i]):
            if all(w_eps[a, b] >= thr for b in alive if b != a):
                # within epsilon of the best; equal success with another survivor stays a tie
                self.stop = "identified"
                self.winner = self.ids[int(a)] if leaders == [int(a)] else None
                return
        if int(self.n[alive].max()) >= self.budget:
            self.stop = "budget"
            self.winner = self.ids[leaders[0]] if len(leaders) == 1 else None

    @property
    def done(self) -> bool:
        return self.stop is not None

    def next_episodes(self, round_episodes: int) -> int:
        """How many episodes of the race order the survivors run in the next round."""
        done = int(self.n[self.alive].max()) if self.alive.any() else self.budget
        return max(0, min(int(round_episodes), self.budget - done))

    def result(self) -> RaceResult:
        return RaceResult(
            checkpoint_ids=list(self.ids),
            winner=self.winner,
            stop=self.stop or "running",
            rounds=self.round,
            episodes_run={c: int(n) for c, n in zip(self.ids, self.n)},
            eliminations=list(self.eliminations),
            survivors=[self.ids[i] for i in np.flatnonzero(self.alive)],
            withdrawn=dict(self.withdrawn),
            episodes=int(self.n.sum()),
            budget=self.budget,
            cfg=self.cfg,
            threshold=self.threshold,
        )


class _Test:
    """Wealth of the one-sided tests "a is not better than b (by more than -shift)" for every
    ordered pair, on the paired differences drawn without replacement from the list: under the
    null (the list's total of ``D + shift`` is <= 0) the next difference has conditional mean at
    most ``m = -(sum of past D + shift) / (episodes left)``, and the wealth bets on ``D + shift - m``."""

    def __init__(self, k: int, shift: float) -> None:
        self.shift = float(shift)
        self.wealth = np.ones((k, k))
        self.s_x = np.zeros((k, k))  # sum of past centred increments
        self.s_xx = np.zeros((k, k))

    def update(
        self, d: np.ndarray, s_d: np.ndarray, t: np.ndarray, left: np.ndarray, pair: np.ndarray, cap: float = 0.75
    ) -> None:
        sh = self.shift
        m = -(s_d + sh * t) / np.maximum(left, 1.0)  # the null's conditional mean of D + shift
        mean = self.s_x / (t + 1.0)  # aGRAPA: E[x] / E[x^2] of the past, one pseudo-observation
        second = (0.25 + self.s_xx) / (t + 1.0)
        lam = np.clip(mean / second, 0.0, None)
        # 1 + lam * (x - m) >= 1 - cap for every possible x >= -1 + shift
        room = 1.0 - sh + m
        lam = np.minimum(lam, np.where(room > 1e-12, cap / np.maximum(room, 1e-12), 0.0))
        x = d + sh - m
        impossible = pair & (room < -1e-12)  # the null cannot hold any more: past gains exceed what is left
        self.wealth = np.where(pair, self.wealth * (1.0 + lam * x), self.wealth)
        self.wealth = np.where(impossible, np.inf, self.wealth)
        self.s_x += np.where(pair, x, 0.0)
        self.s_xx += np.where(pair, x * x, 0.0)


def race_outcomes(
    outcomes: np.ndarray, cfg: RacingCfg | None = None, ids: Sequence[str] | None = None, round_episodes: int = 12
) -> RaceResult:
    """Race on precomputed outcomes: ``outcomes`` (K, N), each checkpoint's success (0/1) on the
    N episodes in race order (synthetic checkpoints, benchmarks; the evaluator runs the same
    :class:`Race` on live episodes)."""
    y = np.asarray(outcomes, dtype=float)
    if y.ndim != 2:
        raise RacingError(f"outcomes must be (checkpoints, episodes), got shape {y.shape}")
    names = list(ids) if ids is not None else [str(i) for i in range(y.shape[0])]
    race = Race(names, cfg or RacingCfg(), y.shape[1])
    pos = 0
    while not race.done:
        n = race.next_episodes(round_episodes)
        for j in range(pos, pos + n):
            race.observe(np.where(race.alive, y[:, j], np.nan))
        pos += n
        race.settle()
    return race.result()


__all__ = ["METHOD", "Elimination", "Race", "RaceResult", "RacingCfg", "RacingError", "race_outcomes"]
