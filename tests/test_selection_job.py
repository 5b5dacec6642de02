"""The ranking job end to end: a real BC checkpoint family on ``reach``, proxy-real logs written
through the rosbag2 schema, a real evaluator campaign, real OOD detectors, a real local MLflow
store with registry aliases."""

from __future__ import annotations

import json
import shutil

import mlflow
import numpy as np
import pandas as pd
import pytest

from evaluator.spec import EvalSpec, VideoCfg
from policies.bc import BCConfig
from policies.train import DemoCfg, TrainConfig, run_training
from selection.job import OODSettings, rank_checkpoints
from selection.proxy_real import DOMAIN, ProxyRealDomain, ground_truth, record_logs
from selection.ranking import Validation, choose_rule, rank

pytestmark = pytest.mark.slow


def _spec() -> EvalSpec:
    return EvalSpec(
        name="job-test",
        tasks=["reach"],
        conditions=["nominal", "object_pose", "combined"],
        seeds=list(range(100_000, 100_006)),
        batch_size=6,
        video=VideoCfg(enabled=False),
    )


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    """Three registered BC checkpoints of different quality, proxy-real logs, a tracking store."""
    root = tmp_path_factory.mktemp("job")
    uri = f"sqlite:///{root}/mlflow.db"
    cfg = TrainConfig(
        algo="bc",
        task="reach",
        demos=DemoCfg(episodes=8, seed=1000),
        bc=BCConfig(epochs=60, batch_size=512),
        checkpoint_every=20,
        eval_episodes=4,
        experiment="t",
        model_name="reach-job",
    )
    result = run_training(cfg, root / "run", tracking_uri=uri, cache_dir=root / "cache")
    bag = record_logs("reach", root / "proxy_real_bag", episodes=4)
    return {
        "root": root,
        "uri": uri,
        "ckpts": [str(r.path) for r in result.checkpoints],
        "bag": bag,
        "versions": {str(r.path): r.model_version for r in result.checkpoints},
    }


@pytest.fixture(scope="module")
def ranked(family):
    out = family["root"] / "rank"
    res = rank_checkpoints(
        family["ckpts"],
        _spec(),
        [family["bag"]],
        out,
        tracking_uri=family["uri"],
        workers=1,
        ood=OODSettings(reference_episodes=3),
    )
    return res


def test_ranking_keeps_both_ingredients_and_is_recomputable(ranked):
    df = pd.read_csv(ranked.csv_path)
    assert len(df) == 3 and list(df["rank"]) == list(df["score"].rank(method="min", ascending=False))
    assert np.isclose(df["p_best"].sum(), 1.0) and (df["mark"] == "leader").sum() == 1
    for col in (
        "sim_nominal",
        "sim_perturbed",
        "sim/nominal",
        "sim/object_pose",
        "sim/combined",
        "ood",
        "ood/mahalanobis",
        "ood/knn",
        "score",
        "rule",
    ):
        assert col in df.columns, col
    assert df["ood"].between(0, 1).all() and df["sim_perturbed"].between(0, 1).all()
    # any rule can be recomputed from the CSV alone
    again = rank(df.drop(columns=["score", "rank", "rule"]), ranked.rule)
    assert list(again["checkpoint"]) == list(df.sort_values("rank")["checkpoint"])
    info = json.loads(ranked.json_path.read_text())
    assert info["rule"] == ranked.rule and info["rule_reason"]
    for p in ranked.plots.values():
        assert p.is_file() and p.stat().st_size > 5000


def test_champion_and_challenger_aliases_with_reason(ranked, family):
    """18 paired episodes per checkpoint do not make anyone probably best at 0.95: no champion,
    the most probable best is the challenger, and the decision says why with the numbers."""
    client = mlflow.MlflowClient(tracking_uri=family["uri"])
    df = ranked.ranking
    lead = df.loc[df["p_best"].idxmax()]
    assert lead["p_best"] < 0.95
    decision = ranked.promotion.decision
    assert "no champion yet" in decision and f"P(best) {lead['p_best']:.3f} < threshold 0.95" in decision
    assert "n = 18 paired episodes" in decision and ranked.run_id in decision
    with pytest.raises(mlflow.exceptions.MlflowException):
        client.get_model_version_by_alias("reach-job", "champion")
    chall = client.get_model_version_by_alias("reach-job", "challenger")
    assert str(chall.version) == str(family["versions"][lead["path"]])
    assert "challenger by rule" in chall.tags["promotion_reason"] and chall.tags["promotion_rule"] == ranked.rule
    run = client.get_run(ranked.run_id)
    assert run.data.params["rule"] == ranked.rule and run.data.tags["twinrank.promotion_decision"] == decision
    assert any(k.startswith("p_best/") for k in run.data.metrics)
    arts = {a.path for a in client.list_artifacts(ranked.run_id, "plots")}
    assert {"plots/sim_vs_ood.png", "plots/condition_heatmap.png", "plots/rank_chart.png"} <= arts


def test_rerun_reuses_the_evaluation_and_gives_the_same_ranking(ranked, family):
    res = rank_checkpoints(
        family["ckpts"],
        _spec(),
        [family["bag"]],
        family["root"] / "rank",
        tracking_uri=family["uri"],
        workers=1,
        ood=OODSettings(reference_episodes=3),
        promote=False,
    )
    assert res.campaign.executed == 0 and res.campaign.skipped > 0
    cols = ["checkpoint", "score", "rank", "ood", "sim_perturbed"]
    pd.testing.assert_frame_equal(res.ranking[cols], ranked.ranking[cols])


def test_bad_inputs_fail_their_row_not_the_ranking(family, tmp_path):
    broken = tmp_path / "broken_ckpt"
    shutil.copytree(family["ckpts"][0], broken)
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    empty_bag = tmp_path / "empty_bag"
    empty_bag.mkdir()
    res = rank_checkpoints(
        [*family["ckpts"][:2], str(broken)],
        _spec(),
        [empty_bag, family["bag"]],
        tmp_path / "rank",
        tracking_uri=family["uri"],
        workers=1,
        ood=OODSettings(reference_episodes=3),
        promote=False,
    )
    df = res.ranking
    bad = df[df["checkpoint"] == "broken_ckpt"]
    assert len(bad) == 1 and np.isnan(bad["rank"].iloc[0]) and "evaluation failed" in bad["note"].iloc[0]
    # the two good checkpoints are ranked (1 and 2, or both 1 when their scores tie)
    good = df[df["checkpoint"] != "broken_ckpt"]
    assert len(good) == 2 and good["rank"].notna().all() and good["rank"].min() == 1 and good["rank"].max() <= 2
    assert any("empty_bag" in w for w in res.warnings), res.warnings
    assert any("broken_ckpt" in w for w in res.warnings), res.warnings


def test_proxy_real_truth_is_separate_and_named(family, tmp_path):
    df = ground_truth(family["ckpts"][:2], "reach", tmp_path, episodes=4, workers=1)
    assert list(df.columns[:2]) == ["checkpoint", "real_success"] and (df["domain"] == DOMAIN).all()
    assert (tmp_path / "proxy_real_outcomes.csv").is_file()
    dom = ProxyRealDomain.load()
    assert dom.name == "proxy-real" and dom.eval_spec("reach", 4).seeds == [900_000 + k for k in range(4)]


def test_rule_choice_by_leave_one_out_prefers_the_rule_that_tracks_real_outcomes():
    # 6 checkpoints: real success follows sim success discounted by OOD; a sim-only ranking
    # would put c0 (high sim, very OOD) first.
    sim = [0.9, 0.8, 0.7, 0.6, 0.5, 0.3]
    ood = [0.9, 0.1, 0.2, 0.1, 0.6, 0.1]
    real = {f"c{i}": s * (1 - o) for i, (s, o) in enumerate(zip(sim, ood))}
    ing = pd.DataFrame({"checkpoint": list(real), "sim_nominal": sim, "sim_perturbed": sim, "ood": ood})
    choice = choose_rule([Validation(ing, real, "v1", "proxy-real")])
    assert choice.rule == "vsdr", choice.per_rule
    assert "leave-one-checkpoint-out" in choice.reason
    two = choose_rule([Validation(ing, real, "v1"), Validation(ing.iloc[:4], {k: real[k] for k in list(real)[:4]})])
    assert "leave-one-validation-out" in two.reason and np.isfinite(two.loo_mmrv)


def test_rank_rolls_out_only_what_the_spec_asks_and_scores_ood_on_the_recorded_episodes(family, tmp_path, monkeypatch):
    """One rollout engine: the ranking's OOD references are the observations its evaluation
    campaign recorded (the first reference_episodes seeds of nominal and combined), so the
    twin resets exactly once per (checkpoint, condition, seed) of the spec."""
    from twin.env import TwinEnv

    resets = []
    real_reset = TwinEnv.reset

    def counted(self, *args, **kwargs):
        resets.append(kwargs.get("seed"))
        return real_reset(self, *args, **kwargs)

    monkeypatch.setattr(TwinEnv, "reset", counted)  # counts the real resets; nothing else changes
    spec = _spec()
    res = rank_checkpoints(
        family["ckpts"],
        spec,
        [family["bag"]],
        tmp_path / "rank",
        tracking_uri=family["uri"],
        executor="inline",
        promote=False,
        ood=OODSettings(reference_episodes=3),
    )
    assert len(resets) == len(family["ckpts"]) * len(spec.episodes("reach"))  # 3 x 18, nothing more
    campaign = res.campaign
    assert campaign.record_episodes["reach"] == [("nominal", s) for s in spec.seed_list()[:3]] + [
        ("combined", s) for s in spec.seed_list()[:3]
    ]
    df = pd.read_csv(res.csv_path)
    for s in campaign.checkpoints:
        ref = campaign.recorded_obs(s.checkpoint_id)
        lengths = [
            r.length
            for r in campaign.episodes_of(s.checkpoint_id)
            if (r.condition, r.seed) in set(campaign.record_episodes["reach"])
        ]
        assert len(ref["state"]) == sum(lengths) and sorted(set(ref["episode_index"])) == list(range(6))
        row = df[df["checkpoint_id"] == s.checkpoint_id].iloc[0]
        assert row["ood_n_ref"] == sum(lengths) and np.isfinite(row["ood"])


def test_fidelity_gate_blocks_promotion_when_the_twin_disagrees_with_the_logs(ranked, family, tmp_path):
    """The gate replays the real logs in the twin: the twin as is reproduces them within a bound
    that a twin made to disagree (an 80 ms actuation latency the logs do not have) exceeds; the
    disagreeing twin blocks the promotion, says why and what to do, and moves no alias."""
    from selection.calibration import FidelityGate, twin_fidelity
    from selection.realdata import read_bag
    from selection.report import render_markdown, report_from_rank

    wrong = tmp_path / "wrong_suite.yaml"
    wrong.write_text(
        "name: wrong\nfactors:\n  actuation_latency: {kind: SA, distribution: value, range: [0.08, 0.08]}\n"
    )
    eps = read_bag(family["bag"], images=False)
    as_is = twin_fidelity(eps, "reach", FidelityGate(max_residual_mm=1e9))
    off = twin_fidelity(eps, "reach", FidelityGate(max_residual_mm=1e9, suite=str(wrong)))
    print(f"\nreplay residual: twin {as_is.residual_mm:.2f} mm, twin with 80 ms latency {off.residual_mm:.2f} mm")
    assert as_is.episodes == 4 and off.residual_mm > 1.5 * as_is.residual_mm
    bound = (as_is.residual_mm + off.residual_mm) / 2
    client = mlflow.MlflowClient(tracking_uri=family["uri"])
    before = client.get_model_version_by_alias("reach-job", "challenger").version
    common = dict(
        tracking_uri=family["uri"],
        workers=1,
        ood=OODSettings(reference_episodes=3),
        campaign_dir=family["root"] / "rank" / "campaign",
    )
    blocked = rank_checkpoints(
        family["ckpts"],
        _spec(),
        [family["bag"]],
        tmp_path / "blocked",
        fidelity_gate=FidelityGate(max_residual_mm=bound, suite=str(wrong)),
        **common,
    )
    assert blocked.fidelity is not None and not blocked.fidelity.passed and blocked.promotion is None
    msg = next(w for w in blocked.warnings if "twin fidelity below the gate" in w)
    assert f"more than {bound:g} mm" in msg and "twinrank calibrate reach" in msg and "champion is kept" in msg
    assert client.get_model_version_by_alias("reach-job", "challenger").version == before
    run = client.get_run(blocked.run_id)
    assert run.data.metrics["fidelity/replay_residual_mm"] == pytest.approx(off.residual_mm)
    passed = rank_checkpoints(
        family["ckpts"],
        _spec(),
        [family["bag"]],
        tmp_path / "passed",
        fidelity_gate=FidelityGate(max_residual_mm=bound),
        **common,
    )
    assert passed.fidelity.passed and passed.promotion is not None  # the rule decides, as without a gate
    # the fidelity report: one number and its parts, in MLflow and in the report
    parts = passed.fidelity.parts
    assert parts["tcp_mm"] > 0 and parts["torque_nm"] > 0  # the recorder logged the arm's torques
    assert 0.0 <= parts["obs_ood_frac"] <= 0.2  # the twin itself observes what these logs hold
    assert "cameras: no frames in the logs" in passed.fidelity.summary()
    metrics = client.get_run(passed.run_id).data.metrics
    assert metrics["fidelity/tcp_mm"] == pytest.approx(parts["tcp_mm"])
    report = render_markdown(report_from_rank(passed))
    assert "## Twin fidelity" in report and f"replay residual {passed.fidelity.residual_mm:.2f} mm" in report


def test_real_outcomes_in_the_logs_give_predicted_real_success_everywhere(ranked, family, tmp_path):
    """Each checkpoint run 4 times in the proxy-real cell (its episodes name it, as the recorder's
    do when it follows a plan): the ranking, its MLflow run and its report carry every
    checkpoint's real trials and predicted real success with its interval; `twinrank predict`
    and `twinrank plan-real` work on the ranking.csv and the bags; the plan reads back."""
    from typer.testing import CliRunner

    from selection.realdata import read_bag
    from selection.report import render_markdown, report_from_rank
    from twin.live.plan import read_plan
    from twinrank.cli import app

    bags = [record_logs("reach", tmp_path / f"real{i}", episodes=4, operator=c) for i, c in enumerate(family["ckpts"])]
    wins = {}
    for c, b in zip(family["ckpts"], bags):
        eps = read_bag(b)
        assert {e.meta["source"] for e in eps} == {f"policy:run/{c.rsplit('/', 1)[-1]}"}
        wins[c] = sum(bool(e.success) for e in eps)
    res = rank_checkpoints(
        family["ckpts"],
        _spec(),
        [family["bag"], *bags],
        tmp_path / "rank",
        campaign_dir=family["root"] / "rank" / "campaign",
        tracking_uri=family["uri"],
        workers=1,
        ood=OODSettings(reference_episodes=3),
        promote=False,
    )
    df = res.ranking.set_index("path")
    for c in family["ckpts"]:
        r = df.loc[c]
        assert r["real_trials"] == 4 and r["real_successes"] == wins[c]
        assert 0 <= r["real_lo"] <= r["real_pred"] <= r["real_hi"] <= 1 and r["real_method"] == "model + real trials"
    assert res.prediction.claims_real and (tmp_path / "rank" / "predictions.csv").is_file()
    metrics = mlflow.MlflowClient(tracking_uri=family["uri"]).get_run(res.run_id).data.metrics
    assert {f"real_pred/{k}" for k in res.ranking["checkpoint"]} <= set(metrics)
    md = render_markdown(report_from_rank(res))
    assert "## Predicted real success" in md and "real predicted [interval]" in md
    top = res.ranking.sort_values("rank").iloc[0]
    assert f"{top['real_pred']:.2f} [{top['real_lo']:.2f}, {top['real_hi']:.2f}]" in md

    runner = CliRunner()
    args = ["--ranking", str(res.csv_path), *sum((["--real-logs", str(b)] for b in bags), [])]
    out = runner.invoke(app, ["predict", *args, "--tracking-uri", family["uri"], "--out", str(tmp_path / "pred")])
    assert out.exit_code == 0, out.output
    assert "Predicted real success (90% intervals; 12 real trial(s) on 3 checkpoint(s))" in out.output
    pred = pd.read_csv(tmp_path / "pred" / "predictions.csv").set_index("checkpoint")
    assert np.allclose(pred.loc[list(res.ranking["checkpoint"]), "predicted"], res.ranking["real_pred"], atol=1e-6)
    plan_out = tmp_path / "plan"
    out = runner.invoke(app, ["plan-real", *args, "--budget", "6", "--no-mlflow", "--out", str(plan_out)])
    assert out.exit_code == 0, out.output
    assert "Real-trial plan" in out.output and "forecast" in out.output
    if (plan_out / "plan.csv").is_file():  # a decided family needs no more trials and writes no plan
        plan = read_plan(plan_out / "plan.csv")
        assert 1 <= len(plan) <= 6 and set(plan.checkpoints()) <= set(res.ranking["checkpoint"])
        assert plan.meta["task"] == "reach" and plan.meta["budget"] == 6
        assert all(t.checkpoint_id for t in plan.trials)
    else:
        assert "no plan written" in out.output
    # nothing claimed without real outcomes
    out = runner.invoke(
        app, ["predict", "--ranking", str(ranked.csv_path), "--no-mlflow", "--out", str(tmp_path / "p0")]
    )
    assert out.exit_code == 0 and "nothing claimed about real success" in out.output
    # ... and plan-real's first batch spreads over the sim ranking to relate sim to real
    first = tmp_path / "first"
    out = runner.invoke(
        app, ["plan-real", "--ranking", str(ranked.csv_path), "--budget", "4", "--no-mlflow", "--out", str(first)]
    )
    assert out.exit_code == 0 and "first batch: 4 trials on 2 checkpoints" in out.output, out.output
    plan = read_plan(first / "plan.csv")
    top, bottom = ranked.ranking.sort_values("rank")["checkpoint"].iloc[[0, -1]]
    assert [t.checkpoint for t in plan.trials] == [top, bottom, top, bottom]


def test_predict_reads_checkpoint_logs_of_the_second_engine(ranked, family, tmp_path):
    """The PyBullet reality's checkpoint logs name their checkpoints as the twin's do:
    `twinrank predict` attributes them and predicts every checkpoint's real success."""
    from typer.testing import CliRunner

    from selection.real_trials import gather_outcomes, load_ranking
    from twinrank.cli import app

    dom = ProxyRealDomain.load().with_engine("pybullet")
    bags = [
        record_logs("reach", tmp_path / f"pb{i}", domain=dom, episodes=3, operator=c)
        for i, c in enumerate(family["ckpts"])
    ]
    ranking = ranked.csv_path
    found = gather_outcomes(load_ranking(ranking), bags, None, lambda m: None)
    assert sorted(o.trials for o in found.values()) == [3, 3, 3]
    args = ["predict", "--ranking", str(ranking), "--no-mlflow", "--out", str(tmp_path / "pred")]
    out = CliRunner().invoke(app, [*args, *sum((["--real-logs", str(b)] for b in bags), [])])
    assert out.exit_code == 0, out.output
    assert "9 real trial(s) on 3 checkpoint(s)" in out.output
    pred = pd.read_csv(tmp_path / "pred" / "predictions.csv")
    assert pred["predicted"].notna().all() and (pred["lo"] <= pred["hi"]).all()
