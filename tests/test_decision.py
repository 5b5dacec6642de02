"""Decisions under uncertainty (evaluator/decision.py) against synthetic outcomes with known
answers, with enough repetitions for the checks to be able to fail."""

from types import SimpleNamespace as NS

import numpy as np

from evaluator.decision import p_best, p_greater, paired_posterior, ranks_with_ties


def _results(outcomes: dict[str, list[bool]], conditions: int = 1) -> list[NS]:
    """Paired episodes: outcomes[checkpoint][j] is episode j (condition j % conditions, seed j)."""
    return [
        NS(checkpoint_id=ck, condition=f"c{j % conditions}", seed=j, success=bool(y))
        for ck, ys in outcomes.items()
        for j, y in enumerate(ys)
    ]


def test_identical_checkpoints_are_each_best_one_time_in_k_and_never_decided():
    rng = np.random.default_rng(0)
    ys = list(rng.random(48) < 0.4)
    ids = [f"same{k}" for k in range(5)]
    post = paired_posterior(_results({i: ys for i in ids}, conditions=6), ids)
    pb = post.p_best()
    assert np.allclose(pb, 0.2, atol=0.03), pb
    assert abs(post.p_beats(0, 1) - 0.5) < 0.03


def test_the_pairing_is_used():
    """A succeeds on every episode B succeeds on, plus 4 more (24/48 vs 20/48): all 4 discordant
    episodes favour A. Paired, A is better with P > 0.95; two independent rates with the same
    counts would leave it at ~0.8."""
    b = [j < 20 for j in range(48)]
    a = [j < 24 for j in range(48)]
    post = paired_posterior(_results({"a": a, "b": b}), ["a", "b"])
    assert post.p_beats(0, 1) > 0.95
    rng = np.random.default_rng(0)
    unpaired = (rng.beta(25, 25, 100_000) > rng.beta(21, 29, 100_000)).mean()
    assert unpaired < 0.85


def test_calibration_on_equal_and_unequal_true_rates():
    """Two checkpoints with equal true success: P(beats) >= 0.95 in few comparisons (a calibrated
    one-sided decision: 5 %; 400 repetitions per case, the bound 8 % is 2.7 standard errors
    above 5 %). Clearly different ones (0.85 vs 0.35 over 24 paired episodes): decided almost
    always."""
    rng = np.random.default_rng(7)
    for n in (6, 24):
        for p in (0.3, 0.7):
            false = 0
            for rep in range(400):
                ya, yb = rng.random(n) < p, rng.random(n) < p
                post = paired_posterior(_results({"a": ya, "b": yb}), ["a", "b"], draws=1000, seed=rep)
                false += post.p_beats(0, 1) >= 0.95
            assert false / 400 <= 0.08, (n, p, false / 400)
    hits = 0
    for rep in range(200):
        ya, yb = rng.random(24) < 0.85, rng.random(24) < 0.35
        hits += paired_posterior(_results({"a": ya, "b": yb}), ["a", "b"], draws=1000, seed=rep).p_beats(0, 1) >= 0.95
    assert hits / 200 >= 0.9, hits / 200


def test_few_episodes_keep_probabilities_away_from_certainty():
    post = paired_posterior(_results({"a": [True, True], "b": [False, False]}), ["a", "b"])
    assert 0.8 < post.p_beats(0, 1) < 0.95  # 2 of 2 against 0 of 2 is not proof


def test_ties_are_split_and_ranked_equal():
    s = np.array([[0.5, 0.5, 0.2], [0.5, 0.5, 0.9]])
    assert np.allclose(p_best(s), [0.25, 0.25, 0.5])
    assert p_greater(s, 0, 1) == 0.5
    assert ranks_with_ties([0.4, 0.7, 0.4, None, 0.1]) == ["2=", "1", "2=", "-", "4"]


def test_same_outcomes_give_the_same_probabilities():
    rng = np.random.default_rng(3)
    out = {k: list(rng.random(30) < 0.5) for k in ("a", "b", "c")}
    one = paired_posterior(_results(out, 3), list(out)).p_best()
    two = paired_posterior(_results(out, 3), list(out)).p_best()
    assert np.array_equal(one, two)
