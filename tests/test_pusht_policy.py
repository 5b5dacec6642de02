"""The push_t state policy (policies/pusht_state.py) and the data it trains on: the agent state
it tracks is the env's, its chunks put the agent exactly where it predicts, takeover episodes
train only on the expert's steps, parallel demo collection gives the serial result, and a
checkpoint acts as the policy it was saved from. All on the real twin (MuJoCo)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from policies import PolicySpec, load_checkpoint, make_policy, save_checkpoint
from policies.data import iter_episodes
from policies.demos import collect_demos, collect_takeovers, demonstrator, expert_steps_start, record_episode
from policies.pusht_state import FEATURE_DIM, PushTStatePolicy, pusht_features, replay_agent
from twin.env import TwinEnv
from twin.tasks.push_t import GOAL_POSE, tee_keypoints


@pytest.fixture(scope="module")
def env():
    e = TwinEnv("push_t", control_mode="pusht_xy")
    yield e
    e.close()


@pytest.fixture(scope="module")
def expert_episode(env):
    demo = demonstrator(env, noise=0.017, rng=np.random.default_rng(1))
    return record_episode(env, lambda sim, obs: demo.act(sim), 3, reset_hook=demo.reset)


def _policy(env, **config) -> PushTStatePolicy:
    torch.manual_seed(0)
    spec = PolicySpec.from_env(env, obs_keys=["state"], task="push_t")
    return make_policy("pusht_state", config, spec)


def test_replayed_agent_is_the_envs_agent(env, expert_episode):
    """The PD agent replayed from the first observed TCP position under the logged (noisy)
    targets ends exactly where the env's agent is: features and labels describe the state the
    env really had."""
    ep = expert_episode
    assert ep.length > 50
    pos, vel = replay_agent(ep.obs["state"][0, :2], ep.actions)
    st = env.task.agent_state(env.sim)
    # the env's agent starts at the sampled point, the observed TCP within IK precision of it
    assert np.abs(pos[-1] - st.pos).max() < 0.05
    assert np.abs(vel[-1] - st.vel).max() < 0.05
    assert np.abs(vel).max() > 10  # it moved


def test_chunks_put_the_agent_on_the_predicted_positions(env):
    """Every planned step of a chunk is a target that moves gym-pusht's agent exactly to the
    predicted desired position (the env's own PD law), across plans."""
    pol = _policy(env, horizon=8, n_action_steps=8, head="mse")
    with torch.no_grad():  # a policy that steps by visible amounts
        pol.net[-1].bias.copy_(torch.tensor([0.4, -0.2] * 8))
    obs, _ = env.reset(seed=7)
    pol.reset()
    errs = []
    for _plan in range(3):
        st = env.task.agent_state(env.sim)
        state = obs["state"].astype(np.float64)
        pos, vel = (state[:2].copy(), np.zeros(2)) if _plan == 0 else (st.pos.copy(), st.vel.copy())
        feats = torch.from_numpy(pusht_features(pos, vel, state[None, 2:5]))
        with torch.no_grad():
            desired = pos + pol._net_out(feats).numpy()[0] * pol.config.step_scale
        for t in range(8):
            obs, *_ = env.step(pol.act_single(obs))
            errs.append(np.abs(env.task.agent_state(env.sim).pos - desired[t]).max())
    moved = np.linalg.norm(env.task.agent_state(env.sim).pos - env.reset(seed=7)[0]["state"][:2])
    assert moved > 20
    # first plan: the observed TCP stands in for the agent's start (IK precision, < 0.05 units)
    assert max(errs) < 0.05, errs


def test_features_and_takeover_samples(env, expert_episode):
    ep = expert_episode
    f = pusht_features(np.array([[256.0, 256.0]]), np.zeros((1, 2)), GOAL_POSE[None])
    assert f.shape == (1, FEATURE_DIM)
    kp = tee_keypoints(GOAL_POSE)
    assert np.allclose(f[0, 8 + 2 * len(kp) :], 0.0)  # at the goal: keypoints relative to the goal are 0
    pol = _policy(env)
    obs, y = pol.training_samples([ep])
    assert obs["features"].shape == (ep.length, FEATURE_DIM) and y.shape == (ep.length, 8, 2)
    # the label is the agent's next positions relative to its position now
    pos, _ = replay_agent(ep.obs["state"][0, :2], ep.actions)
    t = 10
    assert np.allclose(y[t] * pol.config.step_scale, pos[t + 1 : t + 9] - pos[t], atol=1e-3)
    # a takeover episode trains on the expert's steps only
    take = ep.__class__(**{**ep.__dict__, "source": "takeover(switch=40)"})
    assert expert_steps_start(take) == 40 and expert_steps_start(ep) == 0
    obs_t, y_t = pol.training_samples([take])
    assert len(y_t) == ep.length - 40
    assert np.allclose(y_t[0], y[40]) and np.allclose(obs_t["features"][0], obs["features"][40])


def test_parallel_collection_is_the_serial_one_and_takeovers_record_the_switch(env, tmp_path):
    serial = collect_demos("push_t", tmp_path / "s.h5", 3, control_mode="pusht_xy", noise=0.017, seed=20, workers=1)
    parallel = collect_demos("push_t", tmp_path / "p.h5", 3, control_mode="pusht_xy", noise=0.017, seed=20, workers=2)
    a, b = list(iter_episodes(serial)), list(iter_episodes(parallel))
    assert [e.seed for e in a] == [e.seed for e in b] == [20, 21, 22]
    for x, y in zip(a, b, strict=True):
        assert np.array_equal(x.actions, y.actions)
    # a barely trained policy drives, then the expert finishes from where it left the scene
    pol = _policy(env)
    pol.fit_normalizer(pol.training_samples(a)[0])
    ckpt = save_checkpoint(pol, tmp_path / "ckpt", training_step=1)
    tk = collect_takeovers("push_t", ckpt, tmp_path / "t.h5", 3, control_mode="pusht_xy", seed=50, max_switch=30)
    eps = list(iter_episodes(tk))
    assert eps, "every takeover ended before its switch"
    for e in eps:
        switch = expert_steps_start(e)
        assert 1 <= switch <= 30 < e.length
    assert sum(e.success for e in eps) >= 1  # the expert recovers what the policy started


def test_checkpoint_round_trip_acts_the_same(env, expert_episode, tmp_path):
    pol = _policy(env)
    pol.fit_normalizer(pol.training_samples([expert_episode])[0])
    path = save_checkpoint(pol, tmp_path / "ckpt", training_step=1)
    loaded = load_checkpoint(path)
    assert isinstance(loaded, PushTStatePolicy)
    for p in (pol, loaded):
        p.reset()
    obs, _ = env.reset(seed=11)
    for _ in range(12):
        a1, a2 = pol.act_single(obs), loaded.act_single(obs)
        assert np.array_equal(a1, a2)
        obs, *_ = env.step(a1)


def test_refuses_other_control_modes():
    from policies import SpecMismatchError

    e = TwinEnv("push_t", control_mode="ee_pose")
    spec = PolicySpec.from_env(e, obs_keys=["state"], task="push_t")
    e.close()
    with pytest.raises(SpecMismatchError, match="pusht_xy"):
        make_policy("pusht_state", {}, spec)


def test_default_push_t_training_runs_takeover_rounds(tmp_path):
    """The default push_t BC config end to end, scaled down: demos, a first pass, a takeover
    round driven by the first pass's last checkpoint, a second pass on everything; checkpoints
    numbered by the total epoch, each registered with the data it was trained on."""
    import mlflow

    from policies.train import default_config, run_training, with_overrides

    cfg = default_config("bc", "push_t")
    assert cfg.policy == "pusht_state" and cfg.control_mode == "pusht_xy" and cfg.demos.takeover_rounds >= 1
    cfg = with_overrides(
        cfg,
        **{
            "demos.episodes": 3,
            "demos.noise": 0.0,
            "demos.takeover_rounds": 1,
            "demos.takeover_episodes": 2,
            "demos.takeover_max_switch": 20,
            "demos.workers": 1,
            "bc.epochs": 2,
            "checkpoint_every": 1,
            "eval_episodes": 1,
        },
    )
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    res = run_training(cfg, tmp_path / "run", tracking_uri=uri, cache_dir=tmp_path / "cache")
    assert [r.step for r in res.checkpoints] == [1, 2, 3, 4]
    client = mlflow.MlflowClient(tracking_uri=uri)
    taken = client.get_metric_history(res.run_id, "demos/takeover_episodes")
    assert len(taken) == 1 and 1 <= taken[0].value <= 2
    sizes = [m.value for m in client.get_metric_history(res.run_id, "demos/transitions")]
    assert len(sizes) == 2 and sizes[1] > sizes[0]  # the second pass trains on the takeovers too
    digests = {load_checkpoint(r.path).checkpoint_info.get("data_digest") for r in res.checkpoints}
    assert len(digests) == 2
    assert (tmp_path / "run" / "takeovers_round1.h5").exists()


def test_gmm_head_keeps_the_experts_alternatives_apart(env):
    """Known answer: the label chunk is +1 or -1 everywhere with equal odds, whatever the
    input. Squared error learns their average (0: the stall measured near push_t's goal);
    the mixture head's deterministic output is one of the two, and its samples take both
    about equally often."""
    rng = np.random.default_rng(0)
    n = 3000
    feats = np.zeros((n, FEATURE_DIM), np.float32)  # one input: nothing to tell the two apart
    sign = rng.choice([-1.0, 1.0], size=n).astype(np.float32)
    labels = np.broadcast_to(sign[:, None, None], (n, 8, 2)).copy()
    from policies.bc import BCConfig, train_bc

    out = {}
    for head in ("mse", "gmm"):
        pol = _policy(env, head=head)
        train_bc(pol, {"features": feats}, labels, BCConfig(epochs=25, batch_size=256, lr=1e-3))
        test = torch.zeros((400, FEATURE_DIM))
        with torch.no_grad():
            out[head] = pol._net_out(test, deterministic=True).numpy()
            if head == "gmm":
                pol.seed(1)
                samples = pol._net_out(test, deterministic=False).numpy()
    assert np.abs(out["mse"]).mean() < 0.3, np.abs(out["mse"]).mean()
    assert np.abs(np.abs(out["gmm"]) - 1.0).mean() < 0.2, np.abs(out["gmm"]).mean()
    share = (samples.mean(axis=(1, 2)) > 0).mean()
    assert 0.35 < share < 0.65, share
