"""OOD scores of checkpoints (selection/ood.py) on real TwinEnv rollouts, real torch policies and
real sklearn detectors (no mocks)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from policies import ActionSpec, ObsSpec, PolicySpec, make_policy, save_checkpoint
from selection.ood import (
    EPISODE_KEY,
    FEATURE_DETECTORS,
    OODConfig,
    OODError,
    build_reference,
    collect_reference_obs,
    ood_scores_for_checkpoint,
    score,
    stack_episodes,
)
from twin.env import TwinEnv
from twin.perturbations import FactorSpec, PerturbationSuite

torch.set_num_threads(1)

N_REF_EPISODES = 24  # x 25 steps = 600 reference observations


def _shifted(obs: dict[str, np.ndarray], shift: np.ndarray) -> dict[str, np.ndarray]:
    return {"state": obs["state"] + shift, EPISODE_KEY: obs[EPISODE_KEY]}


@pytest.fixture(scope="module")
def reach():
    """A discrete MLP policy on reach (normalizer fitted on its own rollouts, as a trained
    policy's would be), its reference rollouts, held-out rollouts and a fitted reference."""
    torch.manual_seed(0)
    env = TwinEnv("reach")
    assert env.cfg.actions.mode == "discrete"
    spec = PolicySpec.from_env(env, obs_keys=["state"])
    env.close()
    policy = make_policy("mlp", {}, spec)
    assert policy.spec.action.discrete
    policy.seed(0)
    ref_obs = collect_reference_obs(policy, "reach", range(N_REF_EPISODES), deterministic=False)
    policy.seed(1)
    held = collect_reference_obs(policy, "reach", range(1000, 1016), deterministic=False)
    policy.fit_normalizer(ref_obs)
    reference = build_reference(policy, ref_obs)
    return policy, ref_obs, held, reference


def test_collect_reference_obs(reach):
    policy, ref_obs, held, _ = reach
    assert set(ref_obs) == {"state", EPISODE_KEY}
    n = ref_obs["state"].shape[0]
    assert ref_obs["state"].shape == (n, 22) and n == N_REF_EPISODES * 25
    np.testing.assert_array_equal(np.unique(ref_obs[EPISODE_KEY]), np.arange(N_REF_EPISODES))
    assert np.isfinite(ref_obs["state"]).all()
    # held-out seeds are other episodes, not copies of the reference
    assert not np.isin(held["state"][:, 0], ref_obs["state"][:, 0]).all()


def test_in_distribution_low_and_shift_high_for_every_detector(reach):
    policy, ref_obs, held, reference = reach
    std = ref_obs["state"].std(axis=0)
    ind = score(policy, reference, held)
    far = score(policy, reference, _shifted(held, 3.0 * std))
    assert ind.n_ref == len(ref_obs["state"]) and ind.n_target == len(held["state"])
    assert set(FEATURE_DETECTORS) <= set(ind.summary) and "entropy" in ind.summary
    for det in FEATURE_DETECTORS:
        s_in, s_far = ind.summary[det], far.summary[det]
        assert 0.0 <= s_in["frac_ood"] <= 0.2, (det, s_in)  # ~0.05 expected (1 - quantile)
        assert s_far["frac_ood"] >= 0.9, (det, s_far)
        assert s_far["mean_norm"] > s_in["mean_norm"] + 1.0, det
        assert 0.25 <= s_in["mean_rank"] <= 0.65 and s_far["mean_rank"] > 0.9, det
        assert ind.per_observation is not None and ind.per_observation[det].shape == (len(held["state"]),)
    assert ind.combined <= 0.15 and far.combined >= 0.9
    assert ind.combined == pytest.approx(np.mean([ind.summary[d]["frac_ood"] for d in FEATURE_DETECTORS]))
    flat = far.flat()
    assert flat["combined"] == far.combined and flat["knn.frac_ood"] == far.summary["knn"]["frac_ood"]
    json.dumps(far.to_dict(include_per_observation=True))  # JSON-ready


def test_monotonic_in_shift_for_mahalanobis_and_knn(reach):
    policy, ref_obs, held, reference = reach
    std = ref_obs["state"].std(axis=0)
    sub = {k: v[:150] for k, v in held.items()}
    norms: dict[str, list[float]] = {"mahalanobis": [], "knn": []}
    combined = []
    for a in (0.0, 0.5, 1.0, 2.0, 4.0):
        s = score(policy, reference, _shifted(sub, a * std), per_observation=False)
        assert s.per_observation is None
        combined.append(s.combined)
        for det in norms:
            norms[det].append(s.summary[det]["mean_norm"])
    for det, v in norms.items():
        assert all(b > a for a, b in zip(v, v[1:])), (det, v)
    assert all(b >= a for a, b in zip(combined, combined[1:])), combined


def test_perturbation_suite_target_scores_higher(reach):
    """Target observations from the twin with the mug moved 20-25 cm beyond its randomization range."""
    policy, _, held, reference = reach
    suite = PerturbationSuite(
        name="far_mug",
        factors={
            "object_pose": FactorSpec(
                name="object_pose",
                kind="SA",
                distribution="offset",
                range=(0.2, 0.25),
                extra_ranges={"yaw_range": (0.0, 0.0)},
            )
        },
    )
    policy.seed(2)
    shifted = collect_reference_obs(policy, "reach", range(2000, 2006), deterministic=False, suite=suite)
    ind = score(policy, reference, {k: v[:150] for k, v in held.items()})
    far = score(policy, reference, shifted)
    assert far.combined >= 0.6 and far.combined > ind.combined + 0.4, far.summary
    for det in FEATURE_DETECTORS:
        assert far.summary[det]["frac_ood"] > ind.summary[det]["frac_ood"], det


def test_entropy_detector_on_discrete_policy(reach):
    policy, ref_obs, held, reference = reach
    assert reference.output_kind == "entropy"
    std = ref_obs["state"].std(axis=0)
    ind = score(policy, reference, held)
    far = score(policy, reference, _shifted(held, 3.0 * std))
    ent_in, ent_far = ind.per_observation["entropy"], far.per_observation["entropy"]
    assert np.isfinite(ent_in).all() and np.isfinite(ent_far).all()
    assert (ent_in > 0).all() and (ent_in <= np.log(14) + 1e-9).all()
    for s in (ind, far):
        e = s.summary["entropy"]
        assert all(np.isfinite(v) for v in e.values()) and 0 <= e["frac_ood"] <= 1
        assert e["ratio"] == pytest.approx(e["mean_score"] / e["ref_mean"])
    assert ind.summary["entropy"]["frac_ood"] <= 0.2
    # the shift moves the policy's confidence (for this untrained net: lower entropy)
    assert abs(far.summary["entropy"]["mean_rank"] - 0.5) > abs(ind.summary["entropy"]["mean_rank"] - 0.5)
    assert "entropy" in ind.methods["output"]


def test_cache_round_trip_and_invalidation(reach, tmp_path):
    policy, ref_obs, held, _ = reach
    cfg = OODConfig(iforest_estimators=30)
    r1 = build_reference(policy, ref_obs, cache_dir=tmp_path, config=cfg)
    assert not r1.from_cache
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) == 2 and files[0].endswith(".json") and files[1].endswith(".npz")
    with np.load(tmp_path / files[1], allow_pickle=False) as z:  # plain arrays, no pickle
        assert "embeddings" in z.files and z["embeddings"].shape[0] == len(ref_obs["state"])
    r2 = build_reference(policy, ref_obs, cache_dir=tmp_path, config=cfg)
    assert r2.from_cache and r2.cache_key == r1.cache_key
    target = _shifted({k: v[:100] for k, v in held.items()}, 0.7 * ref_obs["state"].std(axis=0))
    s1, s2 = score(policy, r1, target), score(policy, r2, target)
    assert s1.summary == s2.summary and s1.combined == s2.combined
    for det in s1.per_observation:
        np.testing.assert_array_equal(s1.per_observation[det], s2.per_observation[det])
    # a changed reference (one value), or another config, is another cache entry
    changed = {k: v.copy() for k, v in ref_obs.items()}
    changed["state"][0, 0] += 1e-3
    r3 = build_reference(policy, changed, cache_dir=tmp_path, config=cfg)
    assert not r3.from_cache and r3.cache_key != r1.cache_key
    r4 = build_reference(policy, ref_obs, cache_dir=tmp_path, config=OODConfig(iforest_estimators=31))
    assert not r4.from_cache and r4.cache_key != r1.cache_key
    assert len(list(tmp_path.glob("*.npz"))) == 3
    # a corrupt entry is rebuilt (with a warning), not trusted
    (tmp_path / files[1]).write_bytes(b"not an npz")
    with pytest.warns(UserWarning, match="unreadable OOD reference cache"):
        r5 = build_reference(policy, ref_obs, cache_dir=tmp_path, config=cfg)
    assert not r5.from_cache
    assert score(policy, r5, target).summary == s1.summary


def test_reference_refuses_another_policy_and_bad_inputs(reach):
    policy, ref_obs, held, reference = reach
    other = make_policy("mlp", {}, policy.spec)
    with pytest.raises(OODError, match="different policy"):
        score(other, reference, held)
    with pytest.raises(OODError, match="at least 50 observations"):
        build_reference(policy, {k: v[:20] for k, v in ref_obs.items()})
    with pytest.raises(OODError, match="no 'state'"):
        score(policy, reference, {"proprio": held["state"]})
    bad = {"state": held["state"].copy()}
    bad["state"][3, 1] = np.nan
    with pytest.raises(OODError, match="non-finite values in 1 rows"):
        score(policy, reference, bad)
    with pytest.raises(OODError, match="identical observations"):
        build_reference(policy, {"state": np.repeat(ref_obs["state"][:1], 60, axis=0)})
    with pytest.raises(OODError, match="detectors"):
        OODConfig(detectors=("mahalanobis", "svm"))


def test_stack_episodes_and_single_episode_targets(reach):
    policy, _, held, reference = reach
    eps = [{"state": held["state"][held[EPISODE_KEY] == e]} for e in range(3)]
    stacked = stack_episodes(eps)
    np.testing.assert_array_equal(stacked["state"], np.concatenate([e["state"] for e in eps]))
    np.testing.assert_array_equal(stacked[EPISODE_KEY], np.repeat([0, 1, 2], [len(e["state"]) for e in eps]))
    # without an episode index the rows are one sequence; per-step policies do not care
    a = score(policy, reference, stacked).summary
    b = score(policy, reference, {"state": stacked["state"]}).summary
    assert a == b


def test_gaussian_policy_action_spread_under_input_noise(reach, tmp_path):
    _, ref_obs, held, _ = reach
    torch.manual_seed(1)
    env = TwinEnv("reach", control_mode="ee_delta")
    spec = PolicySpec.from_env(env, obs_keys=["state"])
    env.close()
    policy = make_policy("mlp", {}, spec)
    policy.fit_normalizer(ref_obs)
    cfg = OODConfig(iforest_estimators=30, output_samples=8)
    ref = build_reference(policy, ref_obs, config=cfg)
    assert ref.output_kind == "action_spread" and ref.output_method.startswith("input_noise")
    std = ref_obs["state"].std(axis=0)
    ind = score(policy, ref, held)
    far = score(policy, ref, _shifted(held, 3.0 * std))
    spread = ind.per_observation["action_spread"]
    assert spread.shape == (len(held["state"]),) and np.isfinite(spread).all() and (spread > 0).all()
    assert ind.summary["action_spread"]["frac_ood"] <= 0.2
    assert far.summary["mahalanobis"]["frac_ood"] >= 0.9 and far.combined > ind.combined + 0.5
    # deterministic: the same call gives the same spread
    np.testing.assert_array_equal(score(policy, ref, held).per_observation["action_spread"], spread)
    # checkpoint convenience: same numbers through a saved checkpoint and its cache
    ckpt = save_checkpoint(policy, tmp_path / "ckpt", training_step=1)
    s1 = ood_scores_for_checkpoint(ckpt, ref_obs, held, cache_dir=tmp_path / "cache", config=cfg)
    s2 = ood_scores_for_checkpoint(ckpt, ref_obs, held, cache_dir=tmp_path / "cache", config=cfg)
    assert s1.checkpoint_key.startswith("sha256:") and s1.summary == s2.summary
    assert s1.summary == ind.summary
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 1


def test_gaussian_policy_with_dropout_uses_mc_dropout(reach):
    _, ref_obs, held, _ = reach
    torch.manual_seed(2)
    spec = PolicySpec(
        task="reach",
        observations=[ObsSpec("state", (22,))],
        action=ActionSpec("ee_delta", (7,), low=(-1.0,) * 7, high=(1.0,) * 7),
    )
    policy = make_policy("mlp", {"hidden_sizes": (64, 64)}, spec)
    policy.fit_normalizer(ref_obs)
    policy.actor.insert(2, torch.nn.Dropout(0.2))  # a model with dropout layers
    cfg = OODConfig(detectors=("mahalanobis",), output_samples=8)
    ref = build_reference(policy, ref_obs, config=cfg)
    assert ref.output_method.startswith("mc_dropout")
    assert policy.training and policy.actor[2].training  # a fresh module trains; its mode is left as it was
    policy.eval()
    s = score(policy, ref, held)
    assert np.isfinite(s.per_observation["action_spread"]).all() and (s.per_observation["action_spread"] > 0).all()
    assert not policy.training and not policy.actor[2].training  # modes restored
    np.testing.assert_array_equal(
        score(policy, ref, held).per_observation["action_spread"], s.per_observation["action_spread"]
    )  # seeded dropout masks


def _trajectories(rng: np.random.Generator, n_eps: int, length: int, offset: float) -> dict[str, np.ndarray]:
    """Smooth push_t-like state trajectories (agent and block xy in 0..512, angle)."""
    eps = []
    for _ in range(n_eps):
        start = rng.uniform(150, 350, size=5)
        start[4] = rng.uniform(-1, 1)
        vel = rng.normal(0, 4, size=5)
        vel[4] = rng.normal(0, 0.02)
        t = np.arange(length)[:, None]
        eps.append({"state": (start + offset + vel * t + rng.normal(0, 1, size=(length, 5))).astype(np.float32)})
    return stack_episodes(eps)


def test_chunk_self_consistency_on_diffusion_policy():
    torch.manual_seed(0)
    spec = PolicySpec(
        task="push_t",
        observations=[ObsSpec("state", (5,))],
        action=ActionSpec("pusht_xy", (2,), low=(0, 0), high=(512, 512)),
    )
    policy = make_policy(
        "diffusion",
        dict(
            network="mlp",
            mlp_hidden=64,
            mlp_blocks=2,
            horizon=8,
            n_action_steps=4,
            n_obs_steps=2,
            num_inference_steps=3,
        ),
        spec,
    )
    rng = np.random.default_rng(0)
    ref_obs = _trajectories(rng, 8, 10, 0.0)
    held = _trajectories(rng, 4, 10, 0.0)
    far = _trajectories(rng, 4, 10, 400.0)
    policy.fit_normalizer(ref_obs, np.tile([[0.0, 0.0], [512.0, 512.0]], (40, 1)))
    policy.eval()
    cfg = OODConfig(iforest_estimators=30, min_reference=50)
    ref = build_reference(policy, ref_obs, config=cfg)
    assert ref.output_kind == "chunk_consistency"
    assert len(ref.ref_scores["chunk_consistency"]) == 8 * 9  # steps with a successor in the episode
    s_in, s_far = score(policy, ref, held), score(policy, ref, far)
    d = s_in.per_observation["chunk_consistency"]
    assert d.shape == (4 * 9,) and np.isfinite(d).all() and (d >= 0).all()
    assert all(np.isfinite(v) for v in s_in.summary["chunk_consistency"].values())
    assert s_far.combined > s_in.combined + 0.5
    # by hand for the first pair: chunk at t = 0 (history [o0, o0]) vs t = 1 (history [o0, o1])
    o = torch.as_tensor(held["state"][:2])
    with torch.no_grad():
        c0 = policy.normalize_action(policy.predict_action_chunk(torch.stack([o[0], o[0]])[None]))[0]
        c1 = policy.normalize_action(policy.predict_action_chunk(torch.stack([o[0], o[1]])[None]))[0]
    # chunk index j is time t - 1 + j: times t+1.. are j >= 2 at t and j >= 1 at t+1
    manual = torch.linalg.norm(c0[2:] - c1[1:7], dim=-1).mean().item()
    assert d[0] == pytest.approx(manual, rel=1e-5)
    # histories feed the embedding: a shuffled order of the same rows changes the features
    shuffled = {"state": held["state"][::-1].copy(), EPISODE_KEY: held[EPISODE_KEY]}
    assert score(policy, ref, shuffled).summary["mahalanobis"] != s_in.summary["mahalanobis"]
