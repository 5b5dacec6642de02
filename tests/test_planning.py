"""Real-trial planning (selection/planning.py) against exact posteriors and synthetic experiments
with known answers, repeated often enough for the checks to be able to fail. Fixed seeds
throughout."""

import numpy as np
import pytest
from scipy import stats
from scipy.special import expit

from selection.planning import (
    PlanningError,
    allocation,
    belief_mean,
    belief_quantiles,
    cell_edges,
    flat_prior,
    largest_remainder,
    p_best,
    p_eps_best,
    plan_trials,
    run_sequential,
    sample,
    update,
)

GRID = expit(np.linspace(-9, 9, 601))
CELL = float(np.diff(cell_edges(GRID)).max())  # the grid's resolution: 0.0075 at p = 0.5


def _belief(successes, trials):
    """Beliefs after ``successes`` of ``trials`` from the flat prior (= Beta(s + 1, n - s + 1))."""
    return update(GRID, flat_prior(GRID, len(trials)), successes, trials)


def _wrong_bound(runs: int, rate: float) -> int:
    """The most wrong choices out of ``runs`` a true wrong-choice rate of ``rate`` gives, except
    with probability 0.001."""
    return int(stats.binom.ppf(0.999, runs, rate))


# --- beliefs ----------------------------------------------------------------------------------------


def test_flat_prior_is_uniform_in_p():
    d = flat_prior(GRID, 2)
    assert d.shape == (2, GRID.size)
    assert np.allclose(belief_mean(GRID, d), 0.5, atol=1e-9)
    assert np.allclose(belief_quantiles(GRID, d, [0.05, 0.3, 0.95]), [0.05, 0.3, 0.95], atol=1e-9)
    x = sample(GRID, d, 20_000, np.random.default_rng(0))
    assert stats.kstest(x[:, 0], "uniform").pvalue > 0.001


def test_update_from_flat_prior_is_the_beta_posterior():
    s, n = np.array([0, 7, 40, 3]), np.array([5, 20, 50, 3])
    d = _belief(s, n)
    assert np.allclose(d.sum(axis=1), 1.0)
    assert np.allclose(belief_mean(GRID, d), (s + 1) / (n + 2), atol=CELL / 4)
    q = belief_quantiles(GRID, d, [0.05, 0.5, 0.95])
    exact = stats.beta.ppf([[0.05, 0.5, 0.95]], (s + 1)[:, None], (n - s + 1)[:, None])
    assert np.allclose(q, exact, atol=CELL / 2), q - exact
    # draws follow the same distribution
    x = sample(GRID, d, 20_000, np.random.default_rng(1))
    for k in range(len(s)):
        assert stats.kstest(x[:, k], stats.beta(s[k] + 1, n[k] - s[k] + 1).cdf).pvalue > 0.001


def test_update_is_sequential_and_stable_with_many_trials():
    one = _belief([30, 2], [50, 4])
    two = update(GRID, _belief([10, 1], [20, 2]), [20, 1], [30, 2])
    assert np.allclose(one, two, atol=1e-12)
    assert np.allclose(update(GRID, one, [0, 0], [0, 0]), one)
    big = _belief([1999, 1], [2000, 2000])  # underflows without log space
    assert np.all(np.isfinite(big))
    assert np.allclose(belief_mean(GRID, big), [2000 / 2002, 2 / 2002], atol=1e-3)


def test_bad_beliefs_are_refused():
    with pytest.raises(PlanningError):
        update(GRID, flat_prior(GRID, 2), [3, 1], [2, 1])  # more successes than trials
    with pytest.raises(PlanningError):
        update(GRID, np.zeros((1, GRID.size)), [0], [0])
    with pytest.raises(PlanningError):
        flat_prior(np.array([0.0, 0.5, 1.0]), 1)  # the grid must lie inside (0, 1)


# --- best and eps-best -----------------------------------------------------------------------------


def test_identical_beliefs_split_p_best_and_are_both_eps_best():
    d = _belief([600, 600], [1000, 1000])
    pb = p_best(GRID, d, draws=4000, rng=np.random.default_rng(2))
    assert np.allclose(pb, 0.5, atol=0.03) and pb.sum() == pytest.approx(1.0)  # no ties
    pe = p_eps_best(GRID, d, eps=0.05, draws=4000, rng=np.random.default_rng(2))
    assert np.all(pe > 0.95), pe  # exact: P(|difference| <= 0.05) = 0.99
    assert np.all(p_eps_best(GRID, d, eps=0.0, rng=np.random.default_rng(2)) < 0.55)


def test_a_clearly_better_checkpoint_is_best():
    d = _belief([80, 40, 45], [100, 100, 100])
    assert p_best(GRID, d, rng=np.random.default_rng(3))[0] > 0.999
    pe = p_eps_best(GRID, d, rng=np.random.default_rng(3))
    assert pe[0] > 0.999 and pe[1] < 0.01


def test_allocation_is_top_two_thompson_sampling():
    two = allocation(GRID, _belief([30, 10], [40, 40]), rng=np.random.default_rng(4))
    assert np.allclose(two, 0.5)  # with two checkpoints the leader and the challenger share
    d = _belief([30, 29, 10, 0], [40, 40, 40, 40])
    psi = allocation(GRID, d, rng=np.random.default_rng(4))
    assert psi.sum() == pytest.approx(1.0)
    assert psi[0] + psi[1] > 0.99 and psi[0] > 0.3 and psi[1] > 0.3
    assert psi[3] == 0.0
    assert allocation(GRID, flat_prior(GRID, 1)).tolist() == [1.0]


def test_largest_remainder_rounding():
    assert largest_remainder(np.array([0.5, 0.3, 0.2]), 4).tolist() == [2, 1, 1]
    assert largest_remainder(np.array([0.6, 0.395, 0.005]), 3).tolist() == [2, 1, 0]  # negligible share
    assert largest_remainder(np.full(6, 1 / 6), 4).tolist() == [1, 1, 1, 1, 0, 0]


# --- the sequential experiment ---------------------------------------------------------------------


def test_sequential_flat_prior_chooses_an_eps_best_checkpoint():
    """0.7 and 0.75 are both within eps of the best; choosing 0.2 or 0.4 is wrong."""
    true_p = np.array([0.2, 0.4, 0.7, 0.75])
    rng = np.random.default_rng(5)
    runs = [run_sequential(true_p, GRID, flat_prior(GRID, 4), rng=rng) for _ in range(200)]
    assert all(r.done for r in runs)
    assert sum(not r.correct for r in runs) <= _wrong_bound(200, 0.05)
    assert all(r.counts.sum() == r.trials for r in runs)
    assert all(r.chosen in (2, 3) if r.correct else r.chosen in (0, 1) for r in runs)


def test_sequential_is_calibrated_when_the_truth_is_drawn_from_the_prior():
    """The stopping rule's promise is Bayesian: over true rates drawn from the prior, at most
    1 - confidence of the decisions are wrong."""
    rng = np.random.default_rng(6)
    prior = flat_prior(GRID, 3)
    truths = sample(GRID, prior, 300, rng)
    runs = [run_sequential(t, GRID, prior, max_trials=400, rng=rng) for t in truths]
    decided = [r for r in runs if r.done]
    assert len(decided) >= 280
    assert sum(not r.correct for r in decided) <= _wrong_bound(len(decided), 0.05)


def test_an_informative_correct_prior_needs_fewer_trials():
    true_p = np.array([0.2, 0.4, 0.7, 0.75])
    flat = flat_prior(GRID, 4)
    informed = update(GRID, flat, np.round(100 * true_p), np.full(4, 100))  # worth 100 trials each
    rng = np.random.default_rng(7)
    flat_runs = [run_sequential(true_p, GRID, flat, rng=rng) for _ in range(100)]
    informed_runs = [run_sequential(true_p, GRID, informed, rng=rng) for _ in range(100)]
    flat_mean = np.mean([r.trials for r in flat_runs])  # ~105
    informed_mean = np.mean([r.trials for r in informed_runs])  # ~17
    assert informed_mean < 0.5 * flat_mean, (informed_mean, flat_mean)
    assert sum(not r.correct for r in informed_runs) <= _wrong_bound(100, 0.05)


def test_a_decision_done_at_the_start_takes_no_trials():
    prior = _belief([1800, 200, 100], [2000, 2000, 2000])
    r = run_sequential([0.9, 0.1, 0.05], GRID, prior, rng=np.random.default_rng(8))
    assert (r.trials, r.chosen, r.done, r.correct) == (0, 0, True, True)


def test_uniform_allocation_is_round_robin_and_max_trials_is_respected():
    r = run_sequential(
        [0.5, 0.5, 0.5],
        GRID,
        flat_prior(GRID, 3),
        batch=4,
        max_trials=25,
        allocation="uniform",
        rng=np.random.default_rng(9),
    )
    assert not r.done and r.trials == 25
    assert r.counts.tolist() == [9, 8, 8]
    assert r.correct  # all equal: any choice is within eps


# --- the plan --------------------------------------------------------------------------------------


def test_plan_sums_to_the_batch_and_skips_a_certainly_worse_checkpoint():
    labels = ["a", "b", "c", "d", "e"]
    d = _belief([14, 13, 12, 3, 1], [20, 20, 20, 60, 20])
    plan = plan_trials(labels, GRID, d, budget=60, forecast_runs=20, seed=1)
    assert plan.batch == 4 == plan.total  # default: K rounded down to even
    assert plan.trials["d"] == 0 and plan.trials["e"] == 0
    assert not plan.decision.done and plan.decision.label in ("a", "b", "c")
    frame = plan.as_frame()
    assert frame["trials"].sum() == 4 and list(frame["label"]) == labels
    assert (frame["lo90"] < frame["mean"]).all() and (frame["mean"] < frame["hi90"]).all()
    f = plan.forecast
    assert f is not None and f.runs == 20 and 0.0 <= f.p_done <= 1.0
    assert f.trials_median <= f.trials_p90
    again = plan_trials(labels, GRID, d, budget=60, forecast_runs=20, seed=1)
    assert again.trials == plan.trials and again.forecast == plan.forecast  # deterministic


def test_plan_batch_follows_the_allocation():
    d = _belief([14, 13, 12, 3, 1], [20, 20, 20, 60, 20])
    plan = plan_trials(list("abcde"), GRID, d, budget=200, batch=40, forecast_runs=0)
    psi = np.array([r.allocation for r in plan.rows])
    assert plan.total == 40 and plan.forecast is None
    assert np.all(np.abs(np.array(list(plan.trials.values())) - 40 * psi) <= 1.0 + 40 * 0.01)


def test_trial_list_interleaves():
    d = _belief([14, 13, 12], [20, 20, 20])
    plan = plan_trials(["a", "b", "c"], GRID, d, budget=100, batch=12, forecast_runs=0)
    order = plan.trial_list()
    assert sorted(order) == sorted(label for label, n in plan.trials.items() for _ in range(n))
    for label, n in plan.trials.items():
        if n >= 2:
            first_half = order[: len(order) // 2].count(label)
            assert abs(first_half - n / 2) <= 1, (order, label)
    assert all(a != b for a, b in zip(order, order[1:])) or max(plan.trials.values()) > len(order) / 2


def test_plan_when_done_has_no_trials():
    d = _belief([190, 100, 20], [200, 200, 200])
    plan = plan_trials(["a", "b", "c"], GRID, d, budget=50, forecast_runs=20)
    assert plan.decision.done and plan.decision.label == "a"
    assert plan.total == 0 and plan.trial_list() == [] and "done" in plan.note
    assert plan.forecast.p_done == 1.0 and plan.forecast.trials_median == 0.0


def test_first_batch_spreads_over_the_sim_ranking_and_skips_tried_checkpoints():
    from selection.planning import first_batch

    grid = np.linspace(0.005, 0.995, 199)
    labels = [f"c{i}" for i in range(10)]
    sim = np.linspace(0.9, 0.0, 10)  # c0 best in sim
    plan = first_batch(labels, sim, grid, flat_prior(grid, 10), budget=40, batch=6)
    assert plan.total == 6 and plan.trials == {**{lab: 0 for lab in labels}, "c0": 2, "c4": 2, "c9": 2}
    tried = np.zeros(10, dtype=int)
    tried[0] = 3
    plan = first_batch(labels, sim, grid, flat_prior(grid, 10), budget=4, batch=10, tried=tried)
    assert plan.total == 4 and plan.trials["c0"] == 0 and plan.trials["c1"] == 2 and plan.trials["c9"] == 2
