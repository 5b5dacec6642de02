"""The data utilization law (selection/utilization.py) and `twinrank utilization`.

Paper: "Teleportation, simulation, or human video? Data utilization law for robot manipulation"
(/work/shared/papers/data-utilization-law.txt): section 3.4 (eq. 1 local ratio, eq. 2 global ratio),
Table 1 (local ratios of simulation data), section 5.2 and Table 3 (budget decision: eta = 16 vs a
collection-speed ratio of 32 -> include sim; 133 real + 2132 sim in the time of 200 real demos).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from typer.testing import CliRunner

from selection.utilization import (
    Run,
    UtilizationError,
    UtilizationWarning,
    allocate_budget,
    fit_power_law,
    global_ratio,
    global_ratios,
    include_other,
    load_table,
    local_ratio,
    local_ratio_from_table,
    make_table,
    speed_ratio,
)
from twinrank.cli import app

runner = CliRunner()


# --- local ratio: the paper's Table 1 ------------------------------------------------------------

# (task, condition, N* real demos, S teleop, S +1000 sim, eta_local printed in Table 1). N* is the
# largest teleop subset of section 4.1 (200 / 300 / 500); the mixed run pre-trains on 1000 sim demos.
TABLE1 = [
    ("pick_dual_bottles", "in-domain", 200, 0.70, 0.55, -23),
    ("hand_over_block", "in-domain", 300, 0.70, 0.60, -23),
    ("hand_over_block", "unseen background", 300, 0.50, 0.65, 11),
    ("rank_rgb_blocks", "in-domain", 500, 0.45, 0.50, 18),
    ("rank_rgb_blocks", "unseen background", 500, 0.13, 0.20, 4),
]


@pytest.mark.parametrize("task,cond,n_star,s_real,s_mix,printed", TABLE1)
def test_local_ratio_reproduces_table_1(task, cond, n_star, s_real, s_mix, printed):
    lr = local_ratio(Run(n_star, 0, s_real), Run(n_star, 1000, s_mix))
    assert round(lr.eta) == printed
    # closed form for the paper's protocol: (S_real / N*) * M / (S_mix - S_real)
    assert lr.eta == pytest.approx(s_real / n_star * 1000 / (s_mix - s_real))
    assert lr.gamma_real == pytest.approx(s_real / n_star)


def test_table_1_pick_dual_bottles_unseen_background_is_not_reproducible():
    # Table 1 prints 16 (the value section 5.2 uses), but 0.20 -> 0.30 with 1000 sim at N* = 200 gives 10;
    # 16 would need N* = 125. The decision of section 5.2 is the same for both (32 > 16 > 10).
    assert local_ratio(Run(200, 0, 0.20), Run(200, 1000, 0.30)).eta == pytest.approx(10.0)
    assert include_other(16, 32) and include_other(10, 32)


def test_local_ratio_general_two_run_solve_and_sign():
    # S = 0.002 N_real + 0.0001 N_other (eta = 20), the mixed run at another real amount
    lr = local_ratio(Run(200, 0, 0.4), Run(100, 1000, 0.3))
    assert (lr.gamma_real, lr.gamma_other, lr.eta) == pytest.approx((0.002, 0.0001, 20.0))
    assert local_ratio(Run(200, 0, 0.4), Run(200, 1000, 0.3)).eta < 0  # other data hurts -> negative
    with pytest.warns(UtilizationWarning, match="changed nothing"):
        assert math.isinf(local_ratio(Run(200, 0, 0.4), Run(200, 1000, 0.4)).eta)
    with pytest.raises(UtilizationError, match="real-only success at N_real=200 is 0"):
        local_ratio(Run(200, 0, 0.0), Run(200, 1000, 0.3))


def test_local_ratio_from_table_picks_the_operating_point():
    runs = make_table(
        [
            {"n_real": 50, "n_other": 0, "success": 0.2},
            {"n_real": 100, "n_other": 0, "success": 0.3},
            {"n_real": 200, "n_other": 0, "success": 0.5},
            {"n_real": 100, "n_other": 1000, "success": 0.4},
            {"n_real": 200, "n_other": 500, "success": 0.55},
            {"n_real": 200, "n_other": 1000, "success": 0.6},
        ]
    )
    lr = local_ratio_from_table(runs)  # largest shared n_real (200), largest n_other there (1000)
    assert (lr.n_real, lr.n_other) == (200, 1000) and lr.eta == pytest.approx(0.0025 / 0.0001)
    lr = local_ratio_from_table(runs, n_real=100)
    assert lr.eta == pytest.approx((0.3 / 100) / (0.1 / 1000))
    assert local_ratio_from_table(runs, n_other=500).eta == pytest.approx(0.0025 / 0.0001)
    with pytest.raises(UtilizationError, match="n_real=50 needs a real-only and a mixed run"):
        local_ratio_from_table(runs, n_real=50)
    with pytest.raises(UtilizationError, match="no mixed rows"):
        local_ratio_from_table(make_table([{"n_real": 50, "n_other": 0, "success": 0.2}]))


# --- the worked decision (section 5.2, Table 3) --------------------------------------------------


def test_paper_worked_decision_eta_16_vs_speed_ratio_32_includes_sim():
    # 4 h buys 200 teleop demos -> 72 s each; simulation is 32x faster -> 2.25 s each
    speed = speed_ratio(72.0, 2.25)
    assert speed == 32.0
    assert include_other(16, speed)
    alloc = allocate_budget(4, 72.0, 2.25, eta=16, min_real=1)
    assert alloc.include_other and alloc.n_other > 0 and alloc.all_real_n == 200
    assert "32 > eta 16" in alloc.reason
    # the opposite cases: slower sim, harmful sim, useless sim, and the tie
    assert not include_other(16, 8) and not include_other(-23, 32) and not include_other(math.inf, 32)
    assert not include_other(32, 32)
    for eta in (-23.0, math.inf, 64.0):
        a = allocate_budget(4, 72.0, 2.25, eta=eta)
        assert not a.include_other and (a.n_real, a.n_other) == (200, 0)


def test_table_3_mix_fits_the_budget_and_beats_real_only_in_real_equivalents():
    # The paper does not state how 133 was chosen; with other data capped at its 2132 sim demos the
    # allocator spends the rest of the 4 h on real demos and gets exactly its 133.
    alloc = allocate_budget(4, 72.0, 2.25, eta=16, max_other=2132)
    assert (alloc.n_real, alloc.n_other) == (133, 2132)
    assert alloc.seconds_used <= alloc.budget_s == 4 * 3600
    assert alloc.n_equivalent_real == pytest.approx(133 + 2132 / 16) and alloc.n_equivalent_real > 200


def test_allocation_is_optimal_under_the_model():
    fit = fit_power_law([Run(n, 0, 0.02 * n**0.6) for n in (25, 50, 100)])
    cases = [
        (4, 72.0, 2.25, 16, 1, None),
        (4, 72.0, 2.25, 16, 50, 1000),
        (2, 60.0, 10.0, 4, 10, 300),
        (2, 60.0, 10.0, 8, 0, None),
        (3, 30.0, 3.0, -5, 0, None),
    ]
    for hours, c_real, c_other, eta, min_real, max_other in cases:
        a = allocate_budget(hours, c_real, c_other, eta, fit=fit, min_real=min_real, max_other=max_other)
        budget = hours * 3600
        assert a.seconds_used <= budget + 1e-6 and a.n_real >= min_real
        assert max_other is None or a.n_other <= max_other
        best = -math.inf  # brute force over every feasible whole-sample mix (N_eq is linear in n_other)
        for n_real in range(min_real, int(budget // c_real) + 1):
            n_other = int((budget - n_real * c_real) // c_other)
            n_other = n_other if max_other is None else min(n_other, max_other)
            best = max(best, n_real, n_real + n_other / eta)
        assert a.n_equivalent_real == pytest.approx(best)
        assert a.expected_success == pytest.approx(min(1.0, 0.02 * a.n_equivalent_real**0.6), rel=1e-9)
        assert a.expected_success >= a.all_real_success - 1e-12


def test_allocation_without_real_data_warns():
    with pytest.warns(UtilizationWarning, match="no real data"):
        a = allocate_budget(4, 72.0, 2.25, eta=16)
    assert (a.n_real, a.n_other) == (0, 6400)
    a = allocate_budget(4, 72.0, 2.25, eta=16, min_real=100)  # 100 real = 2 h, the other 2 h: 3200 sim
    assert (a.n_real, a.n_other) == (100, 3200)


def test_allocation_errors():
    with pytest.raises(UtilizationError, match="min_real=300 real samples take 6 h"):
        allocate_budget(4, 72.0, 2.25, eta=16, min_real=300)
    with pytest.raises(UtilizationError, match="cost_other_s=0"):
        allocate_budget(4, 72.0, 0, eta=16)
    with pytest.raises(UtilizationError, match="budget_hours"):
        allocate_budget(-1, 72.0, 2.25, eta=16)
    with pytest.raises(UtilizationError, match="eta"):
        allocate_budget(4, 72.0, 2.25, eta=float("nan"))


# --- global ratio: power law and its inversion ---------------------------------------------------


def test_power_law_recovers_known_alpha_beta():
    alpha, beta = 0.02, 0.6
    exact = fit_power_law([Run(n, 0, alpha * n**beta) for n in (25, 50, 100, 200, 400)])
    assert (exact.alpha, exact.beta, exact.r2) == pytest.approx((alpha, beta, 1.0), rel=1e-9)
    assert exact.equivalent_real(exact.predict(137.0)) == pytest.approx(137.0)
    rng = np.random.default_rng(1)  # 3 noisy seeds per scale, multiplicative noise of 3 %
    rows = [
        {"n_real": n, "n_other": 0, "success": alpha * n**beta * math.exp(rng.normal(0, 0.03))}
        for n in (25, 50, 100, 200, 400)
        for _ in range(3)
    ]
    noisy = fit_power_law(make_table(rows))
    assert noisy.n_points == 5  # seeds averaged per scale
    assert noisy.beta == pytest.approx(beta, abs=0.03) and noisy.alpha == pytest.approx(alpha, rel=0.15)
    assert noisy.r2 > 0.99


def test_global_ratio_inverts_the_power_law():
    alpha, beta, eta_true = 0.02, 0.6, 8.0
    real = [Run(n, 0, alpha * n**beta) for n in (25, 50, 100, 200)]
    helpful = Run(100, 800, alpha * (100 + 800 / eta_true) ** beta)  # worth 100 real samples
    harmful = Run(100, 500, alpha * 80**beta)  # 500 other samples undo 20 real ones
    fit = fit_power_law(real)
    g = global_ratio(fit, helpful)
    assert g.n_equivalent == pytest.approx(200.0) and g.eta == pytest.approx(eta_true)
    assert global_ratio(fit, harmful).eta == pytest.approx(-25.0)
    assert [r.eta for r in global_ratios(real + [helpful, harmful])] == pytest.approx([8.0, -25.0])


def test_power_law_edge_cases():
    with pytest.warns(UtilizationWarning, match="success 0 dropped"):
        fit = fit_power_law([Run(10, 0, 0.0), Run(50, 0, 0.2), Run(100, 0, 0.3)])
    assert fit.n_points == 2
    with pytest.raises(UtilizationError, match=">= 2 different n_real"):
        fit_power_law([Run(100, 0, 0.3), Run(100, 1000, 0.5)])
    flat = fit_power_law([Run(50, 0, 0.5), Run(100, 0, 0.4)])
    assert flat.beta < 0
    with pytest.raises(UtilizationError, match="beta=.* <= 0"):
        flat.equivalent_real(0.45)


# --- bad tables ----------------------------------------------------------------------------------


def test_bad_tables_give_clear_errors(tmp_path):
    with pytest.raises(UtilizationError, match=r"missing column\(s\) \['n_other'\]"):
        p = tmp_path / "nocol.csv"
        p.write_text("n_real,success\n100,0.5\n")
        load_table(p)
    with pytest.raises(UtilizationError, match="row 2 is missing \\['success'\\]"):
        make_table([{"n_real": 1, "n_other": 0, "success": 0.1}, {"n_real": 2, "n_other": 0}])
    with pytest.raises(UtilizationError, match="no real-only rows"):
        make_table([{"n_real": 100, "n_other": 1000, "success": 0.5}])
    with pytest.raises(UtilizationError, match="row 1: n_real=0 must be > 0"):
        make_table([{"n_real": 0, "n_other": 0, "success": 0.1}])
    with pytest.raises(UtilizationError, match="n_real=-5 must be > 0"):
        make_table([{"n_real": -5, "n_other": 0, "success": 0.1}])
    with pytest.raises(UtilizationError, match="n_other=-1 must be >= 0"):
        make_table([{"n_real": 5, "n_other": -1, "success": 0.1}])
    with pytest.raises(UtilizationError, match="success=75 is outside"):
        make_table([{"n_real": 5, "n_other": 0, "success": 75}])
    with pytest.raises(UtilizationError, match="non-number"):
        make_table([{"n_real": "many", "n_other": 0, "success": 0.1}])
    with pytest.raises(UtilizationError, match="no rows"):
        make_table([])
    with pytest.raises(UtilizationError, match="does not exist"):
        load_table(tmp_path / "absent.csv")


def test_table_from_csv_and_dataframe_average_duplicates(tmp_path):
    import pandas as pd

    p = tmp_path / "runs.csv"
    p.write_text("n_real,n_other,success,seed\n100,0,0.4,0\n100,0,0.6,1\n100,1000,0.7,0\n")
    runs = load_table(p)
    assert runs[0] == Run(100.0, 0.0, 0.5, n_runs=2) and runs[1].n_other == 1000
    df = pd.DataFrame({"n_real": [100, 100], "n_other": [0, 1000], "success": [0.5, 0.7]})
    assert [(r.n_real, r.n_other, r.success) for r in make_table(df)] == [(100, 0, 0.5), (100, 1000, 0.7)]
    with pytest.raises(UtilizationError, match=r"missing column\(s\) \['success'\]"):
        make_table(df.drop(columns="success"))


# --- CLI -----------------------------------------------------------------------------------------


def _table(tmp_path):
    p = tmp_path / "runs.csv"
    # real-only S = 0.0424 N^0.5; at N* = 200 adding 1000 sim lifts 0.60 -> 0.75: eta_local = 0.003/0.00015 = 20
    p.write_text("n_real,n_other,success\n50,0,0.30\n100,0,0.4243\n200,0,0.60\n200,1000,0.75\n")
    return p


def test_cli_utilization_reports_ratios_fit_and_decision(tmp_path):
    r = runner.invoke(
        app, ["utilization", str(_table(tmp_path)), "--budget-hours", "4", "--cost-real", "72", "--cost-other", "2.25"]
    )
    assert r.exit_code == 0, r.output
    out = " ".join(r.output.split())
    assert "eta_local = +20 at N_real=200" in out
    assert "N_real^0.5" in out and "eta_global" in out
    assert "decision: include other data" in out and "capped at 1000" in out
    # other data capped at the measured 1000: 168 real + 1000 sim gives N_eq 218.0, but whole samples do
    # better with 169 real (12168 s) + 992 sim (2232 s): N_eq = 169 + 992/20 = 218.6
    assert "chosen 169 992 4.00 218.6" in out  # the table row (plain columns when not on a terminal)
    r = runner.invoke(
        app, ["utilization", str(_table(tmp_path)), "--budget-hours", "4", "--cost-real", "72", "--cost-other", "9"]
    )  # speed ratio 8 < 20
    assert r.exit_code == 0 and "decision: real data only" in " ".join(r.output.split())


def test_cli_utilization_errors(tmp_path):
    r = runner.invoke(app, ["utilization", str(_table(tmp_path)), "--budget-hours", "4"])
    assert r.exit_code == 2 and "--cost-real" in r.output
    bad = tmp_path / "bad.csv"
    bad.write_text("n_real,n_other,success\n100,1000,0.5\n")
    r = runner.invoke(app, ["utilization", str(bad)])
    assert r.exit_code == 2 and "no real-only rows" in " ".join(r.output.split())
