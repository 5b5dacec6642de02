"""Policy interface and models on real torch and real TwinEnv observations (no mocks)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from policies import (
    ActionSpec,
    CallablePolicy,
    ChunkExecutor,
    ConfigError,
    DeviceError,
    DiffusionPolicy,
    MLPPolicy,
    ObsHistory,
    ObsSpec,
    PointCloudPolicy,
    Policy,
    PolicyProtocol,
    PolicyRegistryError,
    PolicySpec,
    SpecMismatchError,
    TorchModuleAdapter,
    list_policies,
    make_policy,
    register_policy,
    resolve_device,
)
from policies.diffusion import DiffusionConfig, ddim_timesteps, make_betas
from policies.models import RunningNorm, quat_to_rot6d, robot_state_9d
from twin.batched import BatchedTwinEnv
from twin.env import TwinEnv
from twin.robot import quat_to_mat
from twin.tasks import ObservationCfg

torch.set_num_threads(1)

PC_OBS = ObservationCfg(point_cloud=True, image_size=(96, 72), num_points=512)
SMALL_DIFFUSION = dict(
    network="mlp", mlp_hidden=64, mlp_blocks=2, horizon=8, n_action_steps=4, n_obs_steps=2, num_inference_steps=5
)


@pytest.fixture(scope="module")
def disc_env():
    """Two mug_to_sink envs, discrete actions, state + proprio + 512-point cloud."""
    env = BatchedTwinEnv("mug_to_sink", 2, control_mode="discrete", observations=PC_OBS)
    obs, _ = env.reset(seeds=0)
    yield env, obs
    env.close()


@pytest.fixture(scope="module")
def cont_env():
    """Three mug_to_sink envs in the default ee_delta mode (state + proprio)."""
    env = BatchedTwinEnv("mug_to_sink", 3)
    obs, _ = env.reset(seeds=10)
    yield env, obs
    env.close()


# ---------------------------------------------------------------------------------------------
# specs
# ---------------------------------------------------------------------------------------------


def test_spec_from_env_round_trips_through_strict_json(disc_env, cont_env):
    for env, _ in (disc_env, cont_env):
        spec = PolicySpec.from_env(env)
        text = json.dumps(spec.to_dict(), allow_nan=False)
        again = PolicySpec.from_dict(json.loads(text))
        assert again == spec
        spec.check_env(env)
    spec = PolicySpec.from_env(disc_env[0])
    assert spec.task == "mug_to_sink"
    assert spec.action.discrete and spec.action.n == 14 and spec.action.control_mode == "discrete"
    assert spec.obs("point_cloud").shape == (512, 6)
    assert "m" in spec.obs("point_cloud").units and "rad" in spec.obs("proprio").units
    c = PolicySpec.from_env(cont_env[0]).action
    assert c.shape == (7,) and c.low == (-1.0,) * 7 and c.high == (1.0,) * 7 and "[-1, 1]" in c.units


def test_check_env_names_mode_key_and_shape(disc_env, cont_env):
    disc_spec = PolicySpec.from_env(disc_env[0], obs_keys=["state"])
    with pytest.raises(SpecMismatchError, match=r"control_mode.*'discrete'.*'ee_delta'"):
        disc_spec.check_env(cont_env[0])
    pc_spec = PolicySpec.from_env(disc_env[0], obs_keys=["point_cloud", "proprio"])
    single = TwinEnv("mug_to_sink", control_mode="discrete")
    with pytest.raises(SpecMismatchError, match=r"observation 'point_cloud'.*not in the env.*point_cloud=True"):
        pc_spec.check_env(single)
    big = PolicySpec(task="mug_to_sink", observations=[ObsSpec("point_cloud", (1024, 6))], action=pc_spec.action)
    with pytest.raises(SpecMismatchError, match=r"'point_cloud'.*\(1024, 6\).*\(512, 6\)"):
        big.check_env(disc_env[0])
    other = PolicySpec(task="box_to_shelf", observations=[], action=pc_spec.action)
    with pytest.raises(SpecMismatchError, match="task 'box_to_shelf'.*'mug_to_sink'"):
        other.check_env(single)
    bounds = PolicySpec(
        task="mug_to_sink", observations=[], action=ActionSpec("ee_delta", (7,), low=(-2.0,) * 7, high=(2.0,) * 7)
    )
    with pytest.raises(SpecMismatchError, match="action low"):
        bounds.check_env(cont_env[0])
    single.close()


def test_act_refuses_bad_observations(disc_env):
    env, obs = disc_env
    policy = make_policy("mlp", {"hidden_sizes": (32,)}, PolicySpec.from_env(env))
    with pytest.raises(SpecMismatchError, match="'state' is missing"):
        policy.act({"proprio": obs["proprio"]})
    with pytest.raises(SpecMismatchError, match=r"'state' has shape \(25,\).*\[None\]"):
        policy.act({"state": obs["state"][0]})
    assert isinstance(policy.act_single({"state": obs["state"][0]}), int)


# ---------------------------------------------------------------------------------------------
# registry, configs, devices
# ---------------------------------------------------------------------------------------------


def test_registry_and_config_validation(disc_env):
    assert {"mlp", "pointcloud", "diffusion"} <= set(list_policies())
    spec = PolicySpec.from_env(disc_env[0])
    with pytest.raises(PolicyRegistryError, match="unknown policy class 'nope'; registered: .*mlp"):
        make_policy("nope", None, spec)
    with pytest.raises(ConfigError, match=r"unknown config field\(s\) \['hiden_sizes'\]"):
        make_policy("mlp", {"hiden_sizes": [8]}, spec)
    with pytest.raises(ConfigError, match="activation"):
        make_policy("mlp", {"activation": "sigmoidish"}, spec)
    with pytest.raises(ConfigError, match="n_action_steps"):
        DiffusionConfig(horizon=8, n_obs_steps=2, n_action_steps=8)
    with pytest.raises(SpecMismatchError, match="gaussian"):
        make_policy("mlp", {"action_type": "gaussian"}, spec)
    with pytest.raises(SpecMismatchError, match="continuous action"):
        make_policy("diffusion", None, spec)
    # lists from JSON become tuples; the config round-trips
    p = make_policy("mlp", {"hidden_sizes": [16, 8]}, spec)
    assert p.config.hidden_sizes == (16, 8)
    with pytest.raises(PolicyRegistryError, match="already registered"):

        @register_policy("mlp")
        class Other(MLPPolicy):  # noqa: F811
            pass


def test_device_is_remembered_and_forgotten_when_tensors_move(disc_env):
    """The parameters' device is cached (act() asks for it every call) and re-read after
    anything that moves or replaces tensors."""
    p = make_policy("mlp", {"hidden_sizes": (8,)}, PolicySpec.from_env(disc_env[0]))
    assert p.torch_device == torch.device("cpu")
    p._apply(lambda t: t.to("meta"))  # what .to()/.cuda()/.cpu() run underneath
    assert p.device == "meta" == str(next(p.parameters()).device)
    fresh = make_policy("mlp", {"hidden_sizes": (8,)}, PolicySpec.from_env(disc_env[0]))
    assert fresh.device == "cpu"
    p.load_state_dict(fresh.state_dict(), assign=True)  # replaces the meta tensors
    assert p.device == "cpu" == str(next(p.parameters()).device)
    obs = {k: v for k, v in disc_env[1].items() if k in p.spec.obs_keys}
    assert p.act(obs).shape == (2,)


def test_device_selection(disc_env):
    p = make_policy("mlp", {"hidden_sizes": (8,)}, PolicySpec.from_env(disc_env[0]))
    assert p.device == "cpu"
    assert p.to("cpu") is p and p.device == "cpu"
    assert resolve_device("auto").type in ("cpu", "cuda")
    if torch.cuda.is_available():  # pragma: no cover - CPU CI
        assert p.to("cuda").device.startswith("cuda")
        p.to("cpu")
    else:
        with pytest.raises(DeviceError, match="'cuda' requested but CUDA is not available"):
            p.to("cuda")
        assert p.device == "cpu"
    with pytest.raises(DeviceError, match="unknown device"):
        resolve_device("tpu9")


# ---------------------------------------------------------------------------------------------
# MLP policy
# ---------------------------------------------------------------------------------------------


def _stochastic_varies(policy, obs, calls: int = 8) -> bool:
    outs = [policy.act(obs, deterministic=False) for _ in range(calls)]
    return any(not np.array_equal(outs[0], o) for o in outs[1:])


def test_mlp_discrete_act_features_and_ppo_api(disc_env):
    env, obs = disc_env
    p = make_policy("mlp", None, PolicySpec.from_env(env))
    assert isinstance(p, MLPPolicy) and isinstance(p, PolicyProtocol)
    assert p.spec.obs_keys == ["state"] and p.config.hidden_sizes == (256, 256)
    a = p.act(obs)
    assert a.dtype == np.int64 and a.shape == (2,) and ((0 <= a) & (a < 14)).all()
    np.testing.assert_array_equal(a, p.act(obs))
    assert _stochastic_varies(p, obs)
    p.seed(5)
    s1 = p.act(obs, deterministic=False)
    p.seed(5)
    np.testing.assert_array_equal(s1, p.act(obs, deterministic=False))
    f = p.features(obs)
    assert f.shape == (2, 256) and f.dtype == np.float32
    # PPO API on tensors
    obs_t = p.as_tensor_batch(obs)
    actions, logp, value = p.act_with_info(obs_t)
    assert actions.shape == (2,) and logp.shape == (2,) and value.shape == (2,)
    logp2, ent, value2 = p.evaluate_actions(obs_t, actions)
    torch.testing.assert_close(logp, logp2)
    torch.testing.assert_close(value, value2)
    assert ent.shape == (2,) and torch.allclose(ent, torch.full((2,), math.log(14)), atol=1e-2)
    (-(logp2.mean()) + value2.pow(2).mean()).backward()
    assert p.head.linear.weight.grad is not None and p.critic[-1].weight.grad is not None
    # the actions step the env
    env.step(p.act(obs))


def test_mlp_gaussian_bounds_scaling_and_logprob(cont_env):
    env, obs = cont_env
    p = make_policy("mlp", {"hidden_sizes": (64, 64), "obs_keys": ("state", "proprio")}, PolicySpec.from_env(env))
    assert p.spec.obs_keys == ["state", "proprio"]
    assert p.in_dim == 25 + 15 and p.action_type == "gaussian"
    a = p.act(obs)
    assert a.dtype == np.float32 and a.shape == (3, 7) and (np.abs(a) <= 1).all()
    np.testing.assert_array_equal(a, p.act(obs))
    assert _stochastic_varies(p, obs)
    obs_t = p.as_tensor_batch(obs)
    raw, logp, _ = p.act_with_info(obs_t)
    logp2, ent, _ = p.evaluate_actions(obs_t, raw)
    torch.testing.assert_close(logp, logp2)
    assert torch.allclose(ent, ent[0].expand(3))
    # bounds [0, 512]: actions live around the centre of the box and are clipped to it
    spec = PolicySpec(
        task="push_t",
        observations=[ObsSpec("state", (20,))],
        action=ActionSpec("pusht_xy", (2,), low=(0, 0), high=(512, 512)),
    )
    q = make_policy("mlp", {"hidden_sizes": (16,)}, spec)
    x = {"state": np.random.default_rng(0).normal(size=(64, 20)).astype(np.float32)}
    det = q.act(x)
    assert np.abs(det - 256).max() < 30
    sto = q.act(x, deterministic=False)
    assert sto.min() >= 0 and sto.max() <= 512 and sto.std() > 50


def test_running_norm_matches_dataset_statistics(cont_env):
    rng = np.random.default_rng(1)
    a, b = rng.normal(3, 2, size=(50, 4)), rng.normal(-1, 0.5, size=(70, 4))
    rn = RunningNorm(4)
    rn.update(torch.tensor(a))
    rn.update(torch.tensor(b))
    both = np.concatenate([a, b])
    np.testing.assert_allclose(rn.mean.numpy(), both.mean(0), rtol=1e-5)
    np.testing.assert_allclose(rn.var.numpy(), both.var(0), rtol=1e-5)
    assert float(rn.count) == 120
    env, obs = cont_env
    p = make_policy("mlp", {"hidden_sizes": (8,)}, PolicySpec.from_env(env))
    before = p.features(obs)
    p.update_normalizer(obs)
    assert float(p.obs_norm.count) == 3 and not np.allclose(before, p.features(obs))
    p.fit_normalizer({"state": np.repeat(obs["state"], 2, axis=0)})
    assert float(p.obs_norm.count) == 6


def test_running_norm_floors_only_features_constant_in_training():
    """A feature that never varied is divided by 0.01 (a 1 cm shift -> 1, not saturated);
    features that varied, even slightly, keep their own deviation."""
    x = torch.zeros(100, 3, dtype=torch.float64)
    x[:, 1] = torch.linspace(-1, 1, 100) * 0.005  # small but real variation
    x[:, 2] = torch.linspace(-1, 1, 100)
    rn = RunningNorm(3)
    rn.fit(x)
    y = rn(torch.tensor([[0.01, 0.0, 0.0]], dtype=torch.float32))
    assert float(y[0, 0]) == pytest.approx(1.0, rel=1e-4)  # constant in training: floor 0.01
    std1 = float(torch.sqrt(rn.var[1]))
    assert 1e-3 < std1 < 0.01
    z = rn(torch.tensor([[0.0, std1, 0.0]], dtype=torch.float32))
    assert float(z[0, 1]) == pytest.approx(1.0, rel=1e-3)  # varied: its own deviation


def test_mlp_bc_loss_decreases(disc_env):
    env, obs = disc_env
    torch.manual_seed(0)
    p = make_policy("mlp", {"hidden_sizes": (64, 64)}, PolicySpec.from_env(env))
    rng = np.random.default_rng(0)
    x = {"state": (obs["state"][rng.integers(0, 2, 64)] + rng.normal(0, 0.05, (64, 25))).astype(np.float32)}
    y = (x["state"][:, 0] > x["state"][:, 0].mean()).astype(np.int64) * 5
    p.fit_normalizer(x)
    opt = torch.optim.Adam(p.parameters(), lr=3e-3)
    first = None
    for _ in range(60):
        loss = p.compute_bc_loss(x, y)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.3 * first
    assert (p.act(x) == y).mean() > 0.9


# ---------------------------------------------------------------------------------------------
# point-cloud policy (CASHER student)
# ---------------------------------------------------------------------------------------------


def test_pointcloud_policy_act_embedding_and_robot_state(disc_env):
    env, obs = disc_env
    p = make_policy("pointcloud", None, PolicySpec.from_env(env))
    assert isinstance(p, PointCloudPolicy)
    assert p.spec.obs_keys == ["point_cloud", "proprio"]
    assert obs["point_cloud"].shape == (2, 512, 6)
    a = p.act(obs)
    assert a.dtype == np.int64 and a.shape == (2,) and ((0 <= a) & (a < 14)).all()
    np.testing.assert_array_equal(a, p.act(obs))
    assert _stochastic_varies(p, obs)
    emb, state = p.encode(p.as_tensor_batch(obs))
    assert emb.shape == (2, 128) and state.shape == (2, 9)
    assert p.features(obs).shape == (2, 256)
    # the 9-d robot state: TCP position + first two columns of the TCP rotation matrix
    raw = robot_state_9d(torch.from_numpy(obs["proprio"]))
    np.testing.assert_allclose(raw[:, :3].numpy(), obs["proprio"][:, 8:11])
    for i in range(2):
        mat = quat_to_mat(obs["proprio"][i, 11:15].astype(np.float64))
        np.testing.assert_allclose(raw[i, 3:].numpy(), np.concatenate([mat[:, 0], mat[:, 1]]), atol=1e-5)
    q = torch.tensor([[0.3, -0.5, 0.1, 0.8]])
    torch.testing.assert_close(quat_to_rot6d(q), quat_to_rot6d(-q))
    # normalization from data, BC loss and its gradient reach the encoder
    p.fit_normalizer(obs)
    assert float(p.state_norm.count) == 2 and float(p.point_norm.count) == 2 * 512
    loss = p.compute_bc_loss(obs, np.array([3, 12]))
    loss.backward()
    assert torch.isfinite(loss) and p.encoder.point_mlp[0].weight.grad.abs().sum() > 0
    assert not p.has_value_head
    with pytest.raises(NotImplementedError, match="value_head"):
        p.get_value(p.as_tensor_batch(obs))
    v = make_policy(
        "pointcloud", {"value_head": True, "point_mlp": (32, 64), "hidden_sizes": (64,)}, PolicySpec.from_env(env)
    )
    lp, ent, val = v.evaluate_actions(v.as_tensor_batch(obs), torch.tensor([0, 13]))
    assert lp.shape == ent.shape == val.shape == (2,)
    env.step(a)


# ---------------------------------------------------------------------------------------------
# chunk execution
# ---------------------------------------------------------------------------------------------


def test_chunk_executor_replans_only_empty_queues():
    ex = ChunkExecutor(n_action_steps=3)
    ids = ex.needs_plan(2)
    np.testing.assert_array_equal(ids, [0, 1])
    ex.push(ids, np.arange(2 * 5).reshape(2, 5, 1).astype(np.float32))  # horizon 5, execute 3
    np.testing.assert_array_equal(ex.queue_lengths(), [3, 3])
    seen = []
    for _ in range(3):
        assert len(ex.needs_plan(2)) == 0
        seen.append(ex.pop()[:, 0])
    np.testing.assert_array_equal(np.stack(seen), [[0, 5], [1, 6], [2, 7]])
    np.testing.assert_array_equal(ex.needs_plan(2), [0, 1])
    ex.push([0, 1], np.zeros((2, 5, 1)))
    ex.pop()
    ex.reset([1])
    np.testing.assert_array_equal(ex.queue_lengths(), [2, 0])
    np.testing.assert_array_equal(ex.needs_plan(2), [1])
    with pytest.raises(SpecMismatchError, match="batch size changed"):
        ex.needs_plan(3)
    ex.reset()
    assert ex.needs_plan(3).tolist() == [0, 1, 2]


def test_obs_history_pads_with_first_obs_and_resets_per_env():
    h = ObsHistory(3)
    out = h.push({"s": torch.tensor([[1.0], [10.0]])})
    torch.testing.assert_close(out["s"][:, :, 0], torch.tensor([[1.0, 1, 1], [10, 10, 10]]))
    out = h.push({"s": torch.tensor([[2.0], [20.0]])})
    torch.testing.assert_close(out["s"][:, :, 0], torch.tensor([[1.0, 1, 2], [10, 10, 20]]))
    h.reset([0])
    out = h.push({"s": torch.tensor([[3.0], [30.0]])})
    torch.testing.assert_close(out["s"][:, :, 0], torch.tensor([[3.0, 3, 3], [10, 20, 30]]))


# ---------------------------------------------------------------------------------------------
# diffusion policy
# ---------------------------------------------------------------------------------------------


def test_noise_schedule():
    betas = make_betas(100)
    ac = torch.cumprod(1 - betas, 0)
    assert betas.shape == (100,) and (betas > 0).all() and (betas <= 0.999).all()
    assert (ac[1:] < ac[:-1]).all() and ac[0] > 0.99 and ac[-1] < 1e-3
    assert ddim_timesteps(100, 10) == [90, 80, 70, 60, 50, 40, 30, 20, 10, 0]


@pytest.mark.parametrize("network", ["mlp", "unet"])
def test_diffusion_policy_chunks_through_executor(cont_env, network):
    env, obs = cont_env
    cfg = dict(SMALL_DIFFUSION, network=network, down_dims=(16, 32))
    p = make_policy("diffusion", cfg, PolicySpec.from_env(env, obs_keys=["state"]))
    assert isinstance(p, DiffusionPolicy) and p.chunked and p.n_obs_steps == 2 and p.horizon == 8
    assert p.action_offset == -1 and p.window()["executed_start"] == 1
    a = p.act(obs)
    assert a.dtype == np.float32 and a.shape == (3, 7) and (np.abs(a) <= 1).all()
    np.testing.assert_array_equal(p.executor.plan_counts, [1, 1, 1])
    np.testing.assert_array_equal(p.executor.queue_lengths(), [3, 3, 3])
    for _ in range(3):
        p.act(obs)
    np.testing.assert_array_equal(p.executor.plan_counts, [1, 1, 1])  # 4 = n_action_steps played
    p.act(obs)
    np.testing.assert_array_equal(p.executor.plan_counts, [2, 2, 2])
    p.reset([1])
    p.act(obs)
    np.testing.assert_array_equal(p.executor.plan_counts, [2, 3, 2])
    np.testing.assert_array_equal(p.executor.queue_lengths(), [2, 3, 2])
    # deterministic: the same first observation gives the same actions after a reset
    p.reset()
    np.testing.assert_array_equal(p.act(obs), a)
    p.reset()
    s1 = p.act(obs, deterministic=False)
    p.reset()
    s2 = p.act(obs, deterministic=False)
    assert not np.array_equal(s1, s2)
    assert p.features(obs).shape == (3, 2 * 25)
    hist = np.stack([obs["state"], obs["state"]], axis=1)
    np.testing.assert_array_equal(p.features({"state": hist}), p.features(obs))
    loss = p.compute_bc_loss({"state": hist}, np.zeros((3, 8, 7), np.float32))
    loss.backward()
    assert torch.isfinite(loss)
    env.step(a)


def test_diffusion_learns_an_observation_conditioned_chunk():
    """Train the compact model on two obs-conditioned trajectories; DDIM must reproduce them."""
    torch.manual_seed(0)
    spec = PolicySpec(
        task="push_t",
        observations=[ObsSpec("state", (20,))],
        action=ActionSpec("pusht_xy", (2,), low=(0, 0), high=(512, 512)),
    )
    p = make_policy("diffusion", dict(SMALL_DIFFUSION, state_dims=5, mlp_hidden=128, num_inference_steps=10), spec)
    b = 64
    up = (torch.arange(b) % 2).bool()
    obs = torch.zeros(b, 2, 20)
    obs[:, :, 0] = torch.where(up, 300.0, 100.0)[:, None]
    obs[:, :, 10] = torch.randn(b, 2)  # beyond state_dims: ignored
    xs = torch.linspace(100, 400, 8)
    act = torch.stack([xs, torch.full_like(xs, 256.0)], -1).repeat(b, 1, 1)
    act[~up, :, 0] = act[~up, :, 0].flip(1)
    p.fit_normalizer({"state": obs}, act)
    opt = torch.optim.AdamW(p.parameters(), lr=1e-3)
    for _ in range(250):
        loss = p.compute_bc_loss({"state": obs}, act)
        opt.zero_grad()
        loss.backward()
        opt.step()
    p.eval()
    with torch.no_grad():
        pred = p.predict_action_chunk(obs[:4])
    assert (pred - act[:4]).abs().max() < 15.0  # workspace units (mm), out of a 300 range
    # act() plays actions 1..4 of the chunk (n_obs_steps - 1 onward)
    first = p.act({"state": obs[:2, -1].numpy()})
    np.testing.assert_allclose(first, pred[:2, 1].numpy(), atol=1e-3)


# ---------------------------------------------------------------------------------------------
# adapters
# ---------------------------------------------------------------------------------------------


def test_torch_module_adapter_acts_in_env():
    env = TwinEnv("mug_to_sink", control_mode="discrete")
    spec = PolicySpec.from_env(env, obs_keys=["state"])
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(spec.obs("state").shape[0], 32), nn.ReLU(), nn.Linear(32, 14))
    policy = TorchModuleAdapter(net, spec, obs_key="state", discrete=True)
    assert isinstance(policy, PolicyProtocol) and isinstance(policy, Policy)
    obs, _ = env.reset(seed=0)
    for _ in range(3):
        a = policy.act({"state": obs["state"][None]})
        assert a.dtype == np.int64 and a.shape == (1,)
        obs, _, _, _, info = env.step(a[0])
        assert not info.get("action_invalid", False)
    assert policy.features({"state": obs["state"][None]}).shape == (1, 32)
    with pytest.raises(SpecMismatchError, match="discrete=False"):
        TorchModuleAdapter(net, spec, discrete=False)
    env.close()


def test_adapters_continuous_and_callable(cont_env):
    env, obs = cont_env
    spec = PolicySpec.from_env(env, obs_keys=["proprio"])
    lin = nn.Linear(15, 7)
    with torch.no_grad():
        lin.weight.zero_()
        lin.bias.fill_(3.0)  # out of bounds: clipped to 1
    pol = TorchModuleAdapter(lin, spec, obs_key="proprio", action_std=0.1)
    a = pol.act(obs)
    assert a.shape == (3, 7) and a.dtype == np.float32 and (a == 1.0).all()
    bad = TorchModuleAdapter(nn.Linear(15, 5), spec, obs_key="proprio")
    with pytest.raises(SpecMismatchError, match=r"returned shape \(3, 5\)"):
        bad.act(obs)

    def fn(o, deterministic):
        return np.tile(np.array([0.5, 0, 0, 0, 0, 0, 2.0]), (o["proprio"].shape[0], 1))

    cp = CallablePolicy(fn, spec)
    assert isinstance(cp, PolicyProtocol) and cp.device == "cpu"
    out = cp.act(obs)
    assert out.dtype == np.float32 and out.shape == (3, 7) and out[0, -1] == 1.0
    env.step(out)
    cp.reset([0])


def test_running_norm_divisor_follows_updates_loads_and_moves():
    """The divisor is cached between batches; an update, a loaded state and new buffers
    must each be seen by the next forward."""
    rn = RunningNorm(2)
    x = torch.tensor([[1.0, 1.0]])
    assert torch.allclose(rn(x), x)  # identity before any update
    rn.fit(torch.tensor([[0.0, 0.0], [2.0, 4.0]], dtype=torch.float64))  # std 1, 2
    assert torch.allclose(rn(torch.tensor([[2.0, 4.0]])), torch.tensor([[1.0, 1.0]]), atol=1e-5)
    rn.update(torch.tensor([[10.0, 10.0]] * 2, dtype=torch.float64))
    ref = (torch.tensor([[2.0, 4.0]]) - rn.mean) / torch.sqrt(rn.var + rn.eps)
    assert torch.allclose(rn(torch.tensor([[2.0, 4.0]])), ref.clamp(-rn.clip, rn.clip), atol=1e-5)
    other = RunningNorm(2)
    other.load_state_dict(rn.state_dict())
    other(x)
    fresh = RunningNorm(2)
    other.load_state_dict(fresh.state_dict())  # back to identity: in-place copy of var
    assert torch.allclose(other(x), x)
    rn.var = torch.full((2,), 4.0)  # replaced buffer
    assert torch.allclose(rn(rn.mean[None] + 2.0), torch.ones(1, 2), atol=1e-5)


@pytest.mark.parametrize("task", ["reach", "mug_to_sink", "box_to_shelf", "open_cabinet", "push_t"])
def test_state_units_are_the_tasks_own_and_count_every_value(task):
    """The spec's units for ``state`` are the task's (push_t: gym-pusht's workspace units and
    radians, not "positions m, quaternions wxyz"), and the counts they state add up to the
    observation's size."""
    import re

    from twin.env import TwinEnv

    env = TwinEnv(task)
    obs, _ = env.reset(seed=0)
    units = PolicySpec.from_env(env, obs_keys=["state"]).observations[0].units
    env.close()
    assert sum(int(n) for n in re.findall(r"\((\d+)\)", units)) == obs["state"].shape[0], units
    task_part = units.split("; then robot state")[0]
    if task == "push_t":
        assert "workspace units" in task_part and "quaternion" not in task_part and " m (" not in task_part
    else:
        assert " m (3)" in task_part
