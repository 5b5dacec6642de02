"""Predicted real success (selection/prediction.py) on synthetic checkpoint families whose
sim -> real relation is known: coverage of the 90 % intervals on checkpoints without real
trials and on those with some, for a linear, a non-linear and a biased relation; a checkpoint
with many trials ends at its Wilson interval; no real outcomes -> no claim on real success."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.special import expit, logit
from scipy.stats import binomtest, norm

from evaluator.results import wilson_interval
from selection.prediction import (
    Outcome,
    PredictConfig,
    PredictionError,
    episode_checkpoint,
    outcomes_from_bags,
    outcomes_from_csv,
    predict,
)

SIM_EPISODES = 48


def _family(kind: str, rng: np.random.Generator, K: int = 24) -> tuple[pd.DataFrame, np.ndarray]:
    """K checkpoints: sim success from SIM_EPISODES episodes of a true twin rate; the real rate
    a known function of the twin rate; an OOD score that is noise."""
    s = rng.uniform(0.05, 0.95, K)
    sim = rng.binomial(SIM_EPISODES, s) / SIM_EPISODES
    if kind == "linear":
        p = expit(-0.5 + 0.9 * logit(s) + rng.normal(0, 0.3, K))
    elif kind == "nonlinear":
        p = s**3
    elif kind == "biased":
        p = np.clip(s - 0.25, 0.01, 1.0)
    elif kind == "zeros":  # a third never succeed (as early checkpoints of a family do)
        p = np.where(s < 0.35, 0.0, expit(-0.5 + 0.9 * logit(s)))
    else:  # unrelated: sim says nothing
        p = rng.uniform(0.05, 0.95, K)
    df = pd.DataFrame({"checkpoint": [f"c{i:02d}" for i in range(K)], "sim_perturbed": sim, "ood": rng.normal(0, 1, K)})
    return df, p


def _coverage(kind: str, reps: int, m: int, k: int, seed: int) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    hit = {True: [], False: []}
    width = {True: [], False: []}
    for r in range(reps):
        df, p = _family(kind, rng)
        idx = rng.choice(len(df), m, replace=False)
        out = {df.checkpoint[i]: Outcome(int(rng.binomial(k, p[i])), k) for i in idx}
        f = predict(df, out, PredictConfig(sim_episodes=SIM_EPISODES, seed=r)).frame
        inside = (f["lo"] <= p) & (p <= f["hi"])
        with_trials = f["real_trials"] > 0
        for flag in (True, False):
            hit[flag] += list(inside[with_trials == flag])
            width[flag] += list((f["hi"] - f["lo"])[with_trials == flag])
    return {
        "held": float(np.mean(hit[False])),
        "n_held": len(hit[False]),
        "trials": float(np.mean(hit[True])),
        "n_trials": len(hit[True]),
        "w_held": float(np.mean(width[False])),
        "w_trials": float(np.mean(width[True])),
    }


def _not_below(rate: float, n: int, target: float = 0.9) -> None:
    """The coverage is not significantly below ``target`` (one-sided binomial test at 1 %)."""
    hits = round(rate * n)
    pv = binomtest(hits, n, target, alternative="less").pvalue
    assert pv > 0.01, f"coverage {rate:.3f} over {n} intervals is below {target} (p = {pv:.4f})"


@pytest.mark.parametrize("kind", ["linear", "nonlinear", "biased", "zeros"])
def test_coverage_holds_for_known_relations(kind):
    """24 checkpoints, 10 of them with 10 real trials, 24 repetitions: ~340 held-out and 240
    with-trials intervals per relation, each checked against its known real rate. The sim
    relation made non-linear (real = twin^3), biased (real = twin - 0.25) or with a third of the
    checkpoints never succeeding (a rate of exactly 0, inside only an interval from 0) still covers."""
    c = _coverage(kind, reps=24, m=10, k=10, seed={"linear": 1, "nonlinear": 2, "biased": 3, "zeros": 9}[kind])
    _not_below(c["held"], c["n_held"])
    _not_below(c["trials"], c["n_trials"])
    # the model is worth something: intervals on checkpoints with 10 trials are narrower
    # than the real-only 90 % Wilson interval at 10 trials (~0.43 at p = 0.3)
    w10 = np.mean([np.subtract(*wilson_interval(s, 10, z=norm.ppf(0.95))[::-1]) for s in range(1, 7)])
    assert c["w_trials"] < w10


def test_intervals_widen_when_sim_says_nothing():
    """Real success unrelated to sim: the intercept-only model wins, the held-out intervals
    are far wider than for the linear relation, and coverage still holds."""
    lin = _coverage("linear", reps=12, m=10, k=10, seed=4)
    unrel = _coverage("unrelated", reps=12, m=10, k=10, seed=4)
    assert unrel["w_held"] > lin["w_held"] + 0.15
    _not_below(unrel["held"], unrel["n_held"])


def test_many_trials_end_at_the_wilson_interval():
    rng = np.random.default_rng(5)
    df, p = _family("linear", rng)
    out = {df.checkpoint[i]: Outcome(int(rng.binomial(10, p[i])), 10) for i in range(1, 9)}
    out[df.checkpoint[0]] = Outcome(120, 400)  # 0.30 over 400 trials
    f = predict(df, out, PredictConfig(sim_episodes=SIM_EPISODES)).frame.set_index("checkpoint")
    lo, hi = wilson_interval(120, 400, z=norm.ppf(0.95))
    row = f.loc[df.checkpoint[0]]
    assert abs(row["lo"] - lo) < 0.02 and abs(row["hi"] - hi) < 0.02, (row["lo"], row["hi"], lo, hi)
    assert abs(row["predicted"] - 0.30) < 0.02
    assert row["share_real"] > 0.8


def test_no_real_outcomes_claims_nothing():
    df, _ = _family("linear", np.random.default_rng(6))
    res = predict(df, {})
    assert not res.claims_real
    assert res.frame[["predicted", "lo", "hi"]].isna().all().all()
    assert "no claim" in res.summary() or "no real outcomes" in res.summary()


def test_too_few_checkpoints_with_trials_get_wilson_only():
    df, _ = _family("linear", np.random.default_rng(7))
    res = predict(df, {"c00": Outcome(3, 10), "c01": Outcome(7, 10)})
    f = res.frame.set_index("checkpoint")
    lo, hi = wilson_interval(3, 10, z=norm.ppf(0.95))
    assert f.loc["c00", "lo"] == pytest.approx(lo) and f.loc["c00", "hi"] == pytest.approx(hi)
    assert np.isnan(f.loc["c05", "lo"])
    assert any("needs 3" in n for n in res.notes)


def test_bad_input_is_named():
    df, _ = _family("linear", np.random.default_rng(8))
    with pytest.raises(PredictionError, match="sim_nominal"):
        predict(df.drop(columns=["sim_perturbed"]).assign(sim_nominal=0.5), {"c00": Outcome(1, 2)})
    with pytest.raises(PredictionError, match="0..trials"):
        Outcome(5, 3)
    with pytest.raises(PredictionError, match="level"):
        predict(df, {}, PredictConfig(level=1.2))
    res = predict(df, {"nope": Outcome(1, 2), "c00": Outcome(1, 2)})
    assert any("nope" in n for n in res.notes)


def test_outcomes_csv_per_checkpoint_and_per_episode(tmp_path):
    a = tmp_path / "a.csv"
    a.write_text("checkpoint,successes,trials\nbc/step_1,3,10\nbc/step_1,1,2\nppo/step_2,0,4\n")
    assert outcomes_from_csv(a) == {"bc/step_1": Outcome(4, 12), "ppo/step_2": Outcome(0, 4)}
    b = tmp_path / "b.csv"
    b.write_text("checkpoint,success\nx,true\nx,0\nx,1\ny,False\n")
    assert outcomes_from_csv(b) == {"x": Outcome(2, 3), "y": Outcome(0, 1)}
    bad = tmp_path / "bad.csv"
    bad.write_text("checkpoint,success\nx,maybe\n")
    with pytest.raises(PredictionError, match="maybe"):
        outcomes_from_csv(bad)
    bad.write_text("name,wins\nx,1\n")
    with pytest.raises(PredictionError, match="checkpoint"):
        outcomes_from_csv(bad)
    with pytest.raises(PredictionError, match="does not exist"):
        outcomes_from_csv(tmp_path / "missing.csv")


def test_outcomes_from_bags_attribute_episodes_to_checkpoints(tmp_path):
    """Episodes tagged as the recorder tags them (checkpoint / checkpoint_id in the start
    event) or as the proxy-real domain does (source policy:<name>) are counted per checkpoint;
    episodes without an outcome or of an unknown checkpoint are skipped with a warning."""
    from selection.realdata import BagWriter

    bag = tmp_path / "real"
    names = [f"fr3_joint{i}" for i in range(1, 8)]
    tags = [
        ({"checkpoint": "bc/step_0000010"}, True),
        ({"checkpoint_id": "abcdef123456"}, False),
        ({"source": "policy:step_0000010"}, True),
        ({"checkpoint": "bc/step_0000010"}, None),
        ({"checkpoint": "unknown/step_9"}, True),
    ]
    with BagWriter(bag, "reach") as w:
        t = 0.0
        for extra, ok in tags:
            w.start_episode(t, **extra)
            w.write_joint_state(t + 0.01, names, np.zeros(7))
            w.end_episode(ok, t=t + 0.02)
            t += 1.0
    ranking = pd.DataFrame(
        {"checkpoint": ["bc/step_0000010", "ppo_bc/step_0002000"], "checkpoint_id": ["111111111111", "abcdef123456"]}
    )
    said: list[str] = []
    out = outcomes_from_bags([bag], ranking, warn=said.append)
    assert out == {"bc/step_0000010": Outcome(2, 2), "ppo_bc/step_0002000": Outcome(0, 1)}
    assert len(said) == 1 and "1 episode(s) without an outcome" in said[0] and "1 whose checkpoint" in said[0]
    assert episode_checkpoint({"source": "policy:x"}) == ("x", "")


def test_nightly_config_checks_the_outcomes_csv_and_level(tmp_path):
    from selection.nightly import NightlyConfig, NightlyConfigError

    bad = tmp_path / "outcomes.csv"
    bad.write_text("name,wins\nx,1\n")
    cfg = NightlyConfig(task="reach", directory=[str(tmp_path)], real_outcomes=str(bad))
    with pytest.raises(NightlyConfigError, match="real_outcomes: .*checkpoint"):
        cfg.validate()
    with pytest.raises(NightlyConfigError, match="prediction_level"):
        NightlyConfig(task="reach", directory=[str(tmp_path)], prediction_level=1.5).validate()
    rel = NightlyConfig.from_dict({"task": "reach", "directory": ["."], "real_outcomes": "o.csv"}, base_dir=tmp_path)
    assert rel.real_outcomes == str(tmp_path / "o.csv")
