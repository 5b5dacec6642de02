"""The chunked state MLP (``chunk_mlp``): a known-answer test of why it exists (an expert
that holds), continuous chunks, takeover labels, checkpoints, and ``twinrank``-style
training on a mission task in real MuJoCo."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from policies import PolicySpec, load_checkpoint, make_policy, save_checkpoint
from policies.bc import BCConfig, episodes_to_samples, policy_samples, train_bc
from policies.data import Episode
from policies.demos import CLOSE
from twin.env import TwinEnv

torch.set_num_threads(1)
UP = 4  # +z


def _episode(states: np.ndarray, actions: np.ndarray, source: str = "expert") -> Episode:
    T = len(actions)
    return Episode(
        obs={"state": states.astype(np.float32)},
        actions=actions,
        rewards=np.zeros(T),
        privileged=np.zeros((T, 1)),
        success_flags=np.zeros(T, bool),
        source=source,
    )


@pytest.fixture(scope="module")
def specs():
    with TwinEnv("mug_to_sink", control_mode="discrete") as d, TwinEnv("mug_to_sink") as c:
        return PolicySpec.from_env(d, obs_keys=["state"]), PolicySpec.from_env(c, obs_keys=["state"])


def _hold_episodes(dim: int, n: int, rng: np.random.Generator) -> list[Episode]:
    """An expert that approaches (8 distinct states, action 0), then closes the gripper and
    holds at one state (4 x CLOSE) and lifts (UP, 8 distinct states): at the hold state the
    one-step labels are CLOSE 4 times and UP once."""
    eps = []
    for _ in range(n):
        base = rng.normal(size=dim)
        approach = base + np.linspace(-1, 0, 8, endpoint=False)[:, None]
        hold = np.repeat(base[None], 5, axis=0)
        lift = base + np.linspace(0.2, 1.6, 8)[:, None]
        states = np.concatenate([approach, hold, lift])
        actions = np.array([0] * 8 + [CLOSE] * 4 + [UP] * 9, dtype=np.int64)
        eps.append(_episode(states, actions))
    return eps


def _rollout_actions(policy, state: np.ndarray, steps: int) -> list[int]:
    policy.reset()
    return [int(policy.act_single({"state": state.astype(np.float32)})) for _ in range(steps)]


def test_chunks_carry_the_plan_through_a_hold_where_one_step_cloning_repeats(specs):
    """Known answer: at the hold state a one-step policy can only give the majority label
    (CLOSE, 4 of 5), forever. The 5 samples there have the chunks CLOSE x(4 - j) then UP
    (j = 0..4), so each chunk step's most likely label is CLOSE for steps 0 and 1 (4 and 3 of
    5) and UP from step 2 (2 of 5 CLOSE): the chunk policy lifts."""
    disc, _ = specs
    dim = disc.obs("state").shape[0]
    episodes = _hold_episodes(dim, 32, np.random.default_rng(0))
    test_state = episodes[0].obs["state"][8]
    cfg = BCConfig(epochs=150, batch_size=64, lr=1e-3, seed=0)
    one = make_policy("mlp", {"hidden_sizes": (64, 64), "value_head": False}, disc)
    train_bc(one, *policy_samples(one, episodes), cfg)
    assert _rollout_actions(one, test_state, 8) == [CLOSE] * 8
    chunk = make_policy("chunk_mlp", {"hidden_sizes": (64, 64), "horizon": 8, "n_action_steps": 8}, disc)
    obs, acts = policy_samples(chunk, episodes)
    assert obs["state"].shape == (32 * 21, 1, dim) and acts.shape == (32 * 21, 8)
    train_bc(chunk, obs, acts, cfg)
    assert _rollout_actions(chunk, test_state, 8) == [CLOSE] * 2 + [UP] * 6


def test_continuous_chunks_in_env_units(specs, tmp_path):
    """ee_delta chunks: labels in env units come back in env units (scaled by the bounds
    inside); the checkpoint round trip keeps the plan."""
    _, cont = specs
    dim, adim = cont.obs("state").shape[0], cont.action.dim
    rng = np.random.default_rng(1)
    eps = []
    for _ in range(24):
        states = np.arange(12)[:, None] / 12.0 + 0.01 * rng.normal(size=(12, dim))  # the time is visible
        # the action is a fixed linear function of time: the chunk from step t is known
        actions = np.clip(np.linspace(-0.9, 0.9, 12)[:, None] * np.ones((1, adim)), -1, 1).astype(np.float32)
        eps.append(_episode(states, actions))
    p = make_policy("chunk_mlp", {"hidden_sizes": (64, 64), "horizon": 4, "n_action_steps": 4}, cont)
    train_bc(p, *policy_samples(p, eps), BCConfig(epochs=200, batch_size=64, seed=0))
    p.reset()
    got = np.stack([p.act_single({"state": eps[0].obs["state"][0]}) for _ in range(4)])
    np.testing.assert_allclose(got, eps[0].actions[:4], atol=0.08)
    save_checkpoint(p, tmp_path / "ck", training_step=200)
    q = load_checkpoint(tmp_path / "ck")
    q.reset()
    again = np.stack([q.act_single({"state": eps[0].obs["state"][0]}) for _ in range(4)])
    np.testing.assert_array_equal(again, got)


def test_takeover_episodes_are_labelled_from_the_expert_steps_only():
    """A takeover episode's first ``switch`` actions are the checkpoint's: no sample's label
    (its first action) comes from them, one-step or chunked."""
    states = np.arange(10, dtype=np.float32)[:, None]
    actions = np.arange(10, dtype=np.int64)
    tk = _episode(states, actions, source="takeover(switch=6)")
    obs, acts = episodes_to_samples([tk], ["state"])
    assert acts.tolist() == [6, 7, 8, 9] and obs["state"][:, 0].tolist() == [6, 7, 8, 9]
    obs, acts = episodes_to_samples([tk], ["state"], n_obs_steps=2, horizon=3)
    assert acts[:, 0].tolist() == [6, 7, 8, 9] and acts[0].tolist() == [6, 7, 8]
    assert obs["state"][0, :, 0].tolist() == [5, 6]  # the history reaches back into the policy's steps
    # diffusion's window starts at the first observation of the history (offset -1)
    obs, acts = episodes_to_samples([tk], ["state"], n_obs_steps=2, horizon=3, action_offset=-1)
    assert acts[:, 0].tolist() == [6, 7, 8]
