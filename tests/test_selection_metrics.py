"""Ranking-quality metrics (selection/metrics.py) and `twinrank validate`.

The reference case reproduces SimplerEnv's published pick-coke-can numbers (Li et al., "Evaluating
Real-World Robot Manipulation Policies in Simulation", arXiv:2405.05941; Google Robot, pick coke can,
SIMPLER *Visual Matching*: MMRV 0.031, Pearson 0.975). The paired table is SimplerEnv's own,
``simpler_env/utils/metrics.py`` in github.com/simpler-env/SimplerEnv (commit 6f5a5f7):
``REAL_PERF["google_robot_pick_coke_can"]`` and ``SIMPLER_PERF["google_robot_pick_coke_can"]``.
``REAL_PERF`` is the mean over the horizontal / vertical / standing can orientations of the per-
orientation real success in ``tools/calc_metrics_evaluation_videos.py`` (checked below);
``SIMPLER_PERF`` is unlabelled in that file; it is the Visual Matching sim success averaged over the
same three orientations (a third-party table built with SimplerEnv's evaluation scripts, the
Diffusion Transformer Policy README, arXiv:2410.15959, lists RT-1-X 0.567, RT-2-X 0.787 and Octo-Base
0.17 as ``coke_can/matching_avg``, and 0.49 / 0.823 / 0.006 as ``coke_can/variant_avg``). So the
figures match for: Visual Matching, orientation average, these six checkpoints (OpenVLA, added to
the repository later, is not in the table).
"""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
from typer.testing import CliRunner

from selection.metrics import (
    MetricWarning,
    SelectionMetricsError,
    compare_ranking,
    kendall_tau,
    load_real_results,
    load_scores,
    mmrv,
    pearson,
    ranking_quality,
    regret_at_1,
    spearman,
    topk_recall,
)
from twinrank.cli import app

runner = CliRunner()

# simpler_env/utils/metrics.py (commit 6f5a5f7), task google_robot_pick_coke_can
CKPTS = ["rt-2-x", "rt-1-converged", "rt-1-15pct", "rt-1-x", "rt-1-begin", "octo-base"]
REAL = [0.907, 0.853, 0.920, 0.760, 0.133, 0.293]
SIM_VISUAL_MATCHING = [0.787, 0.857, 0.710, 0.567, 0.027, 0.170]
# tools/calc_metrics_evaluation_videos.py, coke_can_real_success[orientation][ckpt] (same checkpoint order)
REAL_BY_ORIENTATION = {
    "horizontal": [0.92, 0.96, 1.0, 0.88, 0.20, 0.44],
    "vertical": [0.80, 0.88, 0.96, 0.56, 0.00, 0.20],
    "standing": [1.00, 0.72, 0.80, 0.84, 0.20, 0.24],
}


def simplerenv_mmrv_loop(sim, real):
    """SimplerEnv's loop (mean_maximum_rank_violation), restated as an independent oracle."""
    out = []
    for i in range(len(sim)):
        worst = 0.0
        for j in range(len(sim)):
            if (sim[i] > sim[j]) != (real[i] > real[j]):
                worst = max(worst, abs(real[i] - real[j]))
        out.append(worst)
    return float(np.mean(out))


# --- the published SimplerEnv figures ------------------------------------------------------------


def test_simplerenv_pick_coke_can_visual_matching_pearson_and_mmrv():
    # the real column is the orientation average of the per-orientation table
    avg = np.mean([REAL_BY_ORIENTATION[o] for o in ("horizontal", "vertical", "standing")], axis=0)
    assert np.round(avg, 3).tolist() == REAL
    assert round(pearson(SIM_VISUAL_MATCHING, REAL), 3) == 0.975
    assert round(mmrv(SIM_VISUAL_MATCHING, REAL), 3) == 0.031
    # by hand: only rt-1-converged, rt-2-x and rt-1-15pct are out of order; their worst violations are
    # |0.853-0.920|, |0.907-0.853| and |0.920-0.853|, the others 0: (0.067 + 0.054 + 0.067) / 6
    assert mmrv(SIM_VISUAL_MATCHING, REAL) == pytest.approx((0.067 + 0.054 + 0.067) / 6, abs=1e-12)
    # argument order matters: (real, sim) measures violations in sim units and gives another number
    assert round(mmrv(REAL, SIM_VISUAL_MATCHING), 3) == 0.062
    q = ranking_quality(SIM_VISUAL_MATCHING, REAL, k=3)
    assert q["regret_at_1"] == pytest.approx(0.920 - 0.853)  # sim picks rt-1-converged, real best is rt-1-15pct
    assert q["topk_recall"] == 1.0  # the same three checkpoints lead in sim and real, in another order
    assert q["spearman"] == pytest.approx(1 - 6 * 8 / (6 * 35))  # rank differences 0,2,2,0,0,0 -> sum d^2 = 8
    assert q["kendall_tau"] == pytest.approx(0.6)  # 3 discordant pairs of 15: (15 - 2*3) / 15


# --- MMRV by hand --------------------------------------------------------------------------------


def test_mmrv_perfect_and_reversed_orders():
    real = [0.1, 0.3, 0.5, 0.7, 0.9]
    assert mmrv([1, 2, 3, 4, 5], real) == 0.0
    assert mmrv([10, 20, 30, 40, 50], real) == 0.0  # scale-free in the score
    # reversed: every pair violates, each checkpoint's worst is its distance to the farther end
    assert mmrv([5, 4, 3, 2, 1], real) == pytest.approx((0.8 + 0.6 + 0.4 + 0.6 + 0.8) / 5)


def test_mmrv_one_swapped_pair():
    # only (ckpt 1, ckpt 2) disagree: both get |0.5 - 0.4| = 0.1; mean over 4 checkpoints
    assert mmrv([1, 2, 3, 4], [0.1, 0.5, 0.4, 0.9]) == pytest.approx(0.2 / 4)
    # a swap between far-apart checkpoints costs more than a swap of near neighbours
    assert mmrv([1, 2, 3, 4], [0.1, 0.9, 0.5, 0.6]) > mmrv([1, 2, 3, 4], [0.1, 0.5, 0.4, 0.9])


def test_mmrv_ties_follow_simplerenv_attribution():
    # sim ties, real does not: the violation goes to the checkpoint with the HIGHER real success only
    # (SimplerEnv: (sim_i > sim_j) != (real_i > real_j)); a '<' version would give 2/3 here
    assert mmrv([0, 0, 0], [1, 0, 0]) == pytest.approx(1 / 3)
    assert mmrv([0, 0, 0], [1, 1, 0]) == pytest.approx(2 / 3)
    # real ties, sim does not: the violation is |real_i - real_j| = 0
    assert mmrv([1, 2, 3], [0.5, 0.5, 0.5]) == 0.0
    # constant score on spread-out real success is a bad ranking
    assert mmrv([1, 1, 1], [0.1, 0.5, 0.9]) == pytest.approx((0.8 + 0.4 + 0.0) / 3)


def test_mmrv_matches_simplerenv_loop_with_many_ties():
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(2, 9))
        sim = rng.integers(0, 4, n).astype(float)  # few distinct values -> many ties
        real = rng.integers(0, 5, n) / 4.0
        assert mmrv(sim, real) == pytest.approx(simplerenv_mmrv_loop(sim, real), abs=1e-12)


# --- correlations, regret, top-k -----------------------------------------------------------------


def test_correlations_by_hand():
    assert pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert pearson([1, 2, 3], [0.3, 0.2, 0.1]) == pytest.approx(-1.0)
    assert pearson([0, 1, 2, 3], [0, 1, 0, 1]) == pytest.approx(1 / math.sqrt(5))  # cov 0.25*4 / sqrt(5*1)
    assert spearman([1, 2, 3, 4], [0.1, 0.2, 0.9, 0.95]) == pytest.approx(1.0)  # monotone, not linear
    assert kendall_tau([1, 2, 3, 4], [0.1, 0.3, 0.2, 0.4]) == pytest.approx((5 - 1) / 6)


def test_constant_vectors_give_nan_with_a_warning():
    for fn in (pearson, spearman, kendall_tau):
        with pytest.warns(MetricWarning, match="constant"):
            assert math.isnan(fn([0.5, 0.5, 0.5], [0.1, 0.2, 0.3]))
        with pytest.warns(MetricWarning, match="real vector is constant"):
            assert math.isnan(fn([1, 2, 3], [0.2, 0.2, 0.2]))


def test_regret_at_1_and_its_tie_rule():
    assert regret_at_1([0.9, 0.8, 0.1], [0.5, 0.9, 0.2]) == pytest.approx(0.4)
    assert regret_at_1([3, 2, 1], [0.9, 0.5, 0.1]) == 0.0
    # two checkpoints tie for the top score: the worse real one counts (pessimistic)
    assert regret_at_1([1, 1, 0], [0.9, 0.3, 0.5]) == pytest.approx(0.6)
    assert regret_at_1([1, 1, 0], [0.3, 0.9, 0.5]) == pytest.approx(0.6)  # independent of input order


def test_topk_recall_by_hand():
    sim, real = [5, 4, 3, 2, 1], [0.9, 0.1, 0.8, 0.7, 0.2]
    assert topk_recall(sim, real, 1) == 1.0
    assert topk_recall(sim, real, 2) == 0.5  # score top-2 {0, 1}, real top-2 {0, 2}
    assert topk_recall(sim, real, 3) == pytest.approx(2 / 3)  # {0,1,2} vs {0,2,3}
    # real ties at the boundary: either tied checkpoint counts
    assert topk_recall([4, 1, 3, 2], [0.9, 0.5, 0.5, 0.1], 2) == 1.0
    # score ties at the boundary: broken pessimistically (the lower real one is picked)
    assert topk_recall([2, 1, 1], [0.9, 0.8, 0.1], 2) == 0.5
    with pytest.raises(SelectionMetricsError, match="k=6"):
        topk_recall(sim, real, 6)


def test_metrics_detect_a_bad_ranking():
    real = [0.1, 0.3, 0.5, 0.7, 0.9]
    good = ranking_quality([0.15, 0.2, 0.6, 0.61, 0.99], real, k=2)
    bad = ranking_quality([0.9, 0.7, 0.5, 0.3, 0.1], real, k=2)
    assert good["mmrv"] == 0 and good["regret_at_1"] == 0 and good["topk_recall"] == 1
    assert good["spearman"] == pytest.approx(1) and good["kendall_tau"] == pytest.approx(1)
    assert bad["mmrv"] == pytest.approx(0.64) and bad["regret_at_1"] == pytest.approx(0.8)
    assert bad["topk_recall"] == 0 and bad["spearman"] == pytest.approx(-1) and bad["pearson"] == pytest.approx(-1)


def test_input_errors_name_the_problem():
    with pytest.raises(SelectionMetricsError, match="sim has 3 entries but real has 2"):
        mmrv([1, 2, 3], [0.1, 0.2])
    with pytest.raises(SelectionMetricsError, match="at least 2 checkpoints"):
        ranking_quality([1.0], [0.5])
    with pytest.raises(SelectionMetricsError, match="non-finite"):
        pearson([1, float("nan"), 3], [0.1, 0.2, 0.3])
    with pytest.warns(MetricWarning, match="top-3 recall is undefined"):
        q = ranking_quality([1, 2], [0.1, 0.2], k=3)
    assert math.isnan(q["topk_recall"]) and q["mmrv"] == 0 and q["regret_at_1"] == 0


# --- CSV loading and alignment -------------------------------------------------------------------


def _write(path, text):
    path.write_text(text)
    return path


def test_load_real_results_and_scores(tmp_path):
    real = _write(tmp_path / "real.csv", "checkpoint,real_success\na,0.5\nb,1\n")
    assert load_real_results(real) == {"a": 0.5, "b": 1.0}
    alias = _write(tmp_path / "alias.csv", "checkpoint,success,notes\na,0.25,x\n")
    assert load_real_results(alias) == {"a": 0.25}
    rank = _write(tmp_path / "rank.csv", "checkpoint,score,nominal\na,3,0.9\nb,2,0.1\n")
    assert load_scores(rank) == {"a": 3.0, "b": 2.0}
    assert load_scores(rank, column="nominal") == {"a": 0.9, "b": 0.1}
    # a checkpoint the ranking could not score (empty / nan cell) is skipped with a warning naming it
    holes = _write(tmp_path / "holes.csv", "checkpoint,score\na,3\nb,\nc,nan\n")
    with pytest.warns(MetricWarning, match="not ranked: b, c"):
        assert load_scores(holes) == {"a": 3.0}


def test_load_errors_name_row_and_fix(tmp_path):
    pct = _write(tmp_path / "pct.csv", "checkpoint,real_success\na,0.5\nb,85\n")
    with pytest.raises(SelectionMetricsError, match=r"line 3 \('b'\).*outside \[0, 1\]"):
        load_real_results(pct)
    nocol = _write(tmp_path / "nocol.csv", "checkpoint,rate\na,0.5\n")
    with pytest.raises(SelectionMetricsError, match="no 'real_success' or 'success' column"):
        load_real_results(nocol)
    dup = _write(tmp_path / "dup.csv", "checkpoint,success\na,0.5\na,0.6\n")
    with pytest.raises(SelectionMetricsError, match="'a' appears twice"):
        load_real_results(dup)
    text = _write(tmp_path / "text.csv", "checkpoint,score\na,high\n")
    with pytest.raises(SelectionMetricsError, match="line 2 .*'high' is not a number"):
        load_scores(text)
    with pytest.raises(SelectionMetricsError, match=r"no score column 'sim'; available: \['score'\]"):
        load_scores(text, column="sim")
    with pytest.raises(SelectionMetricsError, match="does not exist"):
        load_real_results(tmp_path / "missing.csv")


def test_compare_ranking_drops_unknown_and_reports_missing():
    scores = {"a": 0.9, "b": 0.5, "c": 0.1, "d": 0.7}
    real = {"a": 0.8, "b": 0.4, "c": 0.2, "ghost": 1.0, "phantom": 0.0}
    with pytest.warns(MetricWarning, match="not in the ranking, dropped: ghost, phantom"):
        cmp = compare_ranking(scores, real, k=1)
    assert cmp.checkpoints == ["a", "b", "c"]  # best score first
    assert cmp.unknown == ["ghost", "phantom"] and cmp.missing_real == ["d"]
    assert cmp.metrics["n"] == 3 and cmp.metrics["mmrv"] == 0 and cmp.metrics["regret_at_1"] == 0
    assert json.dumps(cmp.to_dict())  # JSON-ready
    with pytest.raises(SelectionMetricsError, match="only 1 checkpoint"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", MetricWarning)
            compare_ranking({"a": 1.0, "b": 2.0}, {"a": 0.5, "x": 0.5})


# --- CLI -----------------------------------------------------------------------------------------


def _coke_can_files(tmp_path):
    rank = tmp_path / "ranking.csv"
    rank.write_text(
        "checkpoint,score,reversed\n"
        + "".join(f"{c},{s},{-s}\n" for c, s in zip(CKPTS, SIM_VISUAL_MATCHING))
        + "extra-ckpt,0.5,-0.5\n"
    )
    real = tmp_path / "real.csv"
    real.write_text("checkpoint,real_success\n" + "".join(f"{c},{r}\n" for c, r in zip(CKPTS, REAL)) + "ghost,0.4\n")
    return rank, real


def test_cli_validate_prints_metrics_warnings_and_json(tmp_path):
    rank, real = _coke_can_files(tmp_path)
    out = tmp_path / "m" / "metrics.json"
    r = runner.invoke(app, ["validate", str(rank), "--real", str(real), "--json", str(out)])
    assert r.exit_code == 0, r.output
    assert "0.031" in r.output and "0.975" in r.output
    assert "ghost" in r.output and "extra-ckpt" in r.output  # unknown warned, missing reported
    data = json.loads(out.read_text())
    assert round(data["metrics"]["mmrv"], 3) == 0.031 and data["unknown_in_real"] == ["ghost"]
    assert data["missing_real"] == ["extra-ckpt"] and data["checkpoints"][0]["checkpoint"] == "rt-1-converged"


def test_cli_validate_column_choice_and_errors(tmp_path):
    rank, real = _coke_can_files(tmp_path)
    out = tmp_path / "rev.json"
    r = runner.invoke(
        app, ["validate", str(rank), "--real", str(real), "--column", "reversed", "--k", "2", "--json", str(out)]
    )
    assert r.exit_code == 0, r.output
    m = json.loads(out.read_text())["metrics"]
    assert m["pearson"] == pytest.approx(-0.975434, abs=1e-6) and m["topk_recall"] == 0.0 and m["k"] == 2
    r = runner.invoke(app, ["validate", str(rank), "--real", str(real), "--column", "nope"])
    assert r.exit_code == 2 and "no score column 'nope'" in r.output
    bad = tmp_path / "bad.csv"
    bad.write_text("checkpoint,real_success\nrt-2-x,90.7\n")
    r = runner.invoke(app, ["validate", str(rank), "--real", str(bad)])
    assert r.exit_code == 2 and "outside" in r.output


def test_ranking_quality_keys_are_stable():
    q = ranking_quality([1, 2, 3], [0.1, 0.2, 0.3], k=2)
    assert set(q) == {"n", "k", "mmrv", "pearson", "spearman", "kendall_tau", "regret_at_1", "topk_recall"}
    # every metric is invariant to a strictly increasing transform of the score, except Pearson
    p = ranking_quality([1, 2, 30], [0.1, 0.2, 0.3], k=2)
    for key in ("mmrv", "spearman", "kendall_tau", "regret_at_1", "topk_recall"):
        assert p[key] == q[key]
    assert p["pearson"] < q["pearson"]


# ---- bootstrap intervals over checkpoints --------------------------------------------------------
def test_bootstrap_interval_covers_the_true_correlation_at_its_level():
    """Synthetic families with a known population correlation (bivariate normal, rho = 0.6,
    30 checkpoints): the 95 % interval of Pearson's r covers rho in about 95 % of 300 families
    (percentile bootstrap of r slightly under-covers at this n; bounds 0.87..0.99). A 50 %
    interval must cover far less often: the test can tell the level apart."""
    from selection.metrics import bootstrap_interval

    rho, n = 0.6, 30
    cov = [[1.0, rho], [rho, 1.0]]

    def r(a, b):  # Pearson's r without scipy's per-call checks (240k calls)
        return float(np.corrcoef(a, b)[0, 1]) if a.std() > 0 and b.std() > 0 else float("nan")

    rng = np.random.default_rng(7)
    hit95 = hit50 = 0
    reps = 300
    for k in range(reps):
        x = rng.multivariate_normal([0.0, 0.0], cov, size=n)
        lo, hi = bootstrap_interval(r, x[:, 0], x[:, 1], resamples=400, seed=k)
        hit95 += lo <= rho <= hi
        lo, hi = bootstrap_interval(r, x[:, 0], x[:, 1], level=0.5, resamples=400, seed=k)
        hit50 += lo <= rho <= hi
    assert 0.87 <= hit95 / reps <= 0.99, hit95 / reps
    assert 0.35 <= hit50 / reps <= 0.65, hit50 / reps


def test_bootstrap_interval_of_a_perfect_ranking_and_degenerate_resamples():
    from selection.metrics import bootstrap_interval

    real = np.linspace(0.05, 0.95, 12)
    assert bootstrap_interval(mmrv, real * 2, real) == (0.0, 0.0)
    assert bootstrap_interval(pearson, real * 2, real) == pytest.approx((1.0, 1.0))
    # two checkpoints: half the resamples repeat one checkpoint (constant vectors, r undefined)
    lo, hi = bootstrap_interval(pearson, [0.1, 0.9], [0.2, 0.8], resamples=200)
    assert (lo, hi) == pytest.approx((1.0, 1.0)) or (math.isnan(lo) and math.isnan(hi))
    with pytest.raises(SelectionMetricsError, match="level"):
        bootstrap_interval(pearson, real, real, level=1.5)
