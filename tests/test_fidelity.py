"""Selection fidelity (selection/fidelity.py): the metrics of a ranking against a reality with
their bootstrap intervals, and the rule that a reality which does not separate its checkpoints
gives no verdict (synthetic data with known answers)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from selection.fidelity import fidelity_metrics, fidelity_scatter, no_verdict_reason
from selection.metrics import mmrv, pearson, regret_at_1, spearman


def test_a_score_that_orders_as_reality_does_is_perfect_and_a_reversed_one_is_not():
    real = np.linspace(0.05, 0.9, 12)
    good = fidelity_metrics(real * 0.5 + 0.1, real)
    assert good["MMRV"].value == 0.0 and good["regret@1"].value == 0.0
    assert good["Pearson"].value == pytest.approx(1.0) and good["Spearman"].value == pytest.approx(1.0)
    bad = fidelity_metrics(-real, real)
    assert bad["Pearson"].value == pytest.approx(-1.0)
    assert bad["regret@1"].value == pytest.approx(real.max() - real.min())
    assert bad["MMRV"].value == pytest.approx(mmrv(-real, real)) and bad["MMRV"].value > 0.3


def test_values_are_the_metrics_and_intervals_bracket_them():
    rng = np.random.default_rng(3)
    for _ in range(20):
        real = rng.uniform(0, 1, 14)
        score = real + rng.normal(0, 0.2, 14)
        m = fidelity_metrics(score, real, resamples=300)
        for name, fn in (("MMRV", mmrv), ("Pearson", pearson), ("Spearman", spearman), ("regret@1", regret_at_1)):
            assert m[name].value == pytest.approx(fn(score, real))
            assert m[name].lo <= m[name].hi
        # a correlation's bootstrap interval holds its estimate (a max-type metric's may not)
        assert m["Pearson"].lo <= m["Pearson"].value <= m["Pearson"].hi
        assert str(m["MMRV"]).count("[") == 1


def test_a_reality_gives_a_verdict_only_when_it_separates_best_from_worst():
    assert "every checkpoint scored 0.00" in no_verdict_reason([0.0, 0.0, 0.0], 50)
    assert no_verdict_reason([0.9, 0.5, 0.1], 20) == ""  # 18/20 vs 2/20: intervals far apart
    reason = no_verdict_reason([0.3, 0.25, 0.2], 20)  # 6/20 vs 4/20: noise at this n
    assert "overlap" in reason and "n = 20" in reason
    # the same rates separate with enough episodes: the rule is about n, not about the gap
    assert no_verdict_reason([0.35, 0.2], 20) != ""
    assert no_verdict_reason([0.35, 0.2], 400) == ""


def test_scatter_has_a_panel_per_reality(tmp_path):
    one = fidelity_scatter([0.1, 0.5, 0.9], {"a": [0.0, 0.4, 0.8]}, 2, "box_to_shelf", tmp_path / "one.png")
    two = fidelity_scatter(
        [0.1, 0.5, 0.9], {"a": [0.0, 0.4, 0.8], "b": [0.1, 0.1, 0.3]}, 2, "box_to_shelf", tmp_path / "two.png"
    )
    w1, h1 = Image.open(one).size
    w2, h2 = Image.open(two).size
    assert h1 == h2 and w2 > 1.8 * w1


def test_observation_ood_flags_what_the_twin_never_observes():
    """observation_ood on synthetic data with known answers, over 20 draws: logged observations
    from the twin's own distribution are flagged at the 5 % its 95th-percentile threshold
    allows; shifted by 6 standard deviations along one of 6 features, all are; by 3, about
    half (the k-th neighbour distance in 6-D grows less than the shift: measured 0.58); a log
    half shifted by 6 is flagged about half."""
    from selection.calibration import observation_ood

    same, far, near, half = [], [], [], []
    for seed in range(20):
        rng = np.random.default_rng(seed)
        twin = rng.normal(size=(600, 6))
        logged = rng.normal(size=(300, 6))
        by6, by3 = logged.copy(), logged.copy()
        by6[:, 2] += 6.0
        by3[:, 2] += 3.0
        same.append(observation_ood(twin, logged))
        far.append(observation_ood(twin, by6))
        near.append(observation_ood(twin, by3))
        half.append(observation_ood(twin, np.concatenate([logged[:150], by6[150:]])))
    assert 0.03 <= np.mean(same) <= 0.07 and max(same) <= 0.12, same
    assert min(far) >= 0.95, far
    assert 0.3 <= np.mean(near) <= 0.85 and np.mean(near) > np.mean(same) + 0.2, near
    assert abs(np.mean(half) - (np.mean(same) + np.mean(far)) / 2) <= 0.05, half
