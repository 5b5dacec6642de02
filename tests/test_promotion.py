"""The promotion rule (selection/promotion.py) on a real local MLflow registry: never on noise,
P(best) and P(beats champion) in the reason, ties never promote the first in input order."""

from types import SimpleNamespace as NS

import mlflow
import numpy as np
import pandas as pd
import pytest

from evaluator.decision import paired_posterior
from policies import tracking
from selection.promotion import CHALLENGER, CHAMPION, THRESHOLD_TAG, promote
from selection.ranking import rank, score_draws

MODEL = "reach-promo"


@pytest.fixture()
def registry(tmp_path):
    """A local store with four registered versions (1..4) of MODEL."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = tracking.setup(uri)
    exp = tracking.ensure_experiment(client, "t")
    run = client.create_run(exp)
    (tmp_path / "w.txt").write_text("x")
    for i in range(1, 5):
        client.log_artifact(run.info.run_id, str(tmp_path / "w.txt"), artifact_path=f"checkpoints/v{i}")
        tracking.register_checkpoint(client, MODEL, run.info.run_id, f"checkpoints/v{i}")
    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)


def _ranking(success: dict[str, list[bool]]) -> tuple[pd.DataFrame, np.ndarray, int]:
    """A sim-only ranking of checkpoints c1..cK (versions 1..K) from paired episode outcomes
    (all under the combined condition), with its posterior score draws."""
    ids = list(success)
    episodes = [
        NS(checkpoint_id=ck, condition="combined", seed=j, success=bool(y))
        for ck, ys in success.items()
        for j, y in enumerate(ys)
    ]
    post = paired_posterior(episodes, ids)
    rows = []
    for k, ck in enumerate(ids):
        ys = np.asarray(success[ck], dtype=float)
        rows.append(
            {
                "checkpoint": ck,
                "checkpoint_id": ck,
                "path": "",
                "model_version": f"{MODEL}/{k + 1}",
                "sim_nominal": ys.mean(),
                "sim_perturbed": ys.mean(),
                "ood": np.nan,
            }
        )
    ranking = rank(pd.DataFrame(rows), "sim_perturbed")
    return ranking, score_draws(ranking, "sim_perturbed", post), post.n


def test_identical_checkpoints_never_promote_and_show_p_best_one_in_k(registry):
    rng = np.random.default_rng(0)
    ys = list(rng.random(24) < 0.5)
    ranking, draws, n = _ranking({f"c{k}": ys for k in range(1, 5)})
    assert sorted(ranking["rank"]) == [1, 1, 1, 1]  # one shared rank, not input order
    res = promote(ranking, registry, rule="sim_perturbed", run_id="r1", score_draws=draws, n_episodes=n)
    assert np.allclose(list(res.p_best.values()), 0.25, atol=0.04)
    assert res.promotions == [] or all(p.alias != CHAMPION for p in res.promotions)
    assert "no champion yet" in res.decision and "< threshold 0.95" in res.decision
    with pytest.raises(mlflow.exceptions.MlflowException):
        registry.get_model_version_by_alias(MODEL, CHAMPION)


def test_a_clearly_better_checkpoint_is_promoted_with_its_probabilities(registry):
    rng = np.random.default_rng(1)
    good = list(rng.random(48) < 0.9)
    bad = [list(rng.random(48) < 0.2) for _ in range(3)]
    ranking, draws, n = _ranking({"c1": bad[0], "c2": good, "c3": bad[1], "c4": bad[2]})
    res = promote(ranking, registry, rule="sim_perturbed", run_id="rank-run-1", score_draws=draws, n_episodes=n)
    champ = registry.get_model_version_by_alias(MODEL, CHAMPION)
    assert str(champ.version) == "2"
    reason = champ.tags["promotion_reason"]
    assert "first champion c2" in reason and "P(best) 1.000 >= threshold 0.95" in reason
    assert f"n = {n} paired episodes" in reason and "ranking run rank-run-1" in reason
    assert registry.get_registered_model(MODEL).tags["champion_reason"] == reason
    assert float(champ.tags["promotion_p_best"]) > 0.99
    assert {p.alias for p in res.promotions} == {CHAMPION}  # the three bad ones tie for challenger
    assert any("challenger unchanged" in w and "tie" in w for w in res.warnings)


def test_a_challenger_replaces_the_champion_only_when_probably_better(registry):
    rng = np.random.default_rng(2)
    base = rng.random(48) < 0.5
    slightly = base.copy()
    slightly[np.flatnonzero(~base)[:2]] = True  # 2 more successes: P(beats) well below 0.95
    registry.set_registered_model_alias(MODEL, CHAMPION, "1")
    ranking, draws, n = _ranking({"c1": list(base), "c2": list(slightly)})
    res = promote(ranking, registry, rule="sim_perturbed", run_id="r2", score_draws=draws, n_episodes=n)
    assert str(registry.get_model_version_by_alias(MODEL, CHAMPION).version) == "1"
    assert "does not replace champion reach-promo/1" in res.decision and "< threshold 0.95" in res.decision
    assert str(registry.get_model_version_by_alias(MODEL, CHALLENGER).version) == "2"
    much = base.copy()
    much[np.flatnonzero(~base)[:12]] = True  # 12 more, none fewer: decided
    ranking, draws, n = _ranking({"c1": list(base), "c2": list(much)})
    res = promote(ranking, registry, rule="sim_perturbed", run_id="r3", score_draws=draws, n_episodes=n)
    assert str(registry.get_model_version_by_alias(MODEL, CHAMPION).version) == "2"
    assert "replaces champion reach-promo/1" in res.decision and ">= threshold 0.95" in res.decision


def test_threshold_per_registered_model_and_force(registry):
    rng = np.random.default_rng(3)
    a = rng.random(24) < 0.6
    b = a.copy()
    b[np.flatnonzero(~a)[:2]] = True
    ranking, draws, n = _ranking({"c1": list(a), "c2": list(b)})
    res = promote(ranking, registry, rule="sim_perturbed", score_draws=draws, n_episodes=n, dry_run=True)
    p = res.p_best["c2"]
    assert 0.6 < p < 0.95 and "no champion yet" in res.decision
    registry.set_registered_model_tag(MODEL, THRESHOLD_TAG, f"{p - 0.05:.3f}")
    res = promote(ranking, registry, rule="sim_perturbed", score_draws=draws, n_episodes=n, dry_run=True)
    assert "first champion c2" in res.decision
    registry.set_registered_model_tag(MODEL, THRESHOLD_TAG, "0.99")
    res = promote(ranking, registry, rule="sim_perturbed", score_draws=draws, n_episodes=n, force=True)
    assert "FORCED (--force)" in registry.get_model_version_by_alias(MODEL, CHAMPION).tags["promotion_reason"]
