"""A state policy for ``push_t`` that learns on a CPU: keypoint features, the agent's own PD
state, and chunks of desired agent positions (registered as ``pusht_state``).

Why not a plain MLP or Diffusion Policy on gym-pusht's 5-d state: measured on the twin, 36
checkpoints of both (up to 600 epochs) succeeded in 0 of 2,304 episodes. Three things were
missing, each measured:

* **The agent's velocity.** Actions are targets of gym-pusht's PD agent (kp 100, kv 20), so
  the same target moves the agent differently at different velocities, and the velocity is
  not in the observation. The policy tracks the agent's state itself: the agent starts at
  rest where the TCP is, and every target it sends moves it by the known PD law
  (:func:`twin.tasks.push_t.agent_pd_step`, with the env's clipping), so its position and
  velocity are known exactly (the env runs the same law).
* **Features a network can use.** The block angle wraps at 2 pi, and the pose that matters is
  the T's shape relative to the agent and to the goal. The input is (all in workspace units
  scaled to about 1) the agent's position and velocity, the block's position, sin and cos of
  its angle, the 8 T keypoints (:func:`twin.tasks.push_t.tee_keypoints`) relative to the agent
  and relative to the goal's keypoints: 40 values, standardized by the training set's
  mean and standard deviation.
* **Smooth targets.** PD targets are jumpy (a target is about 3.4x the step it causes); the
  network predicts the next ``horizon`` desired agent *positions* relative to the current one
  (a chunk, Diffusion Policy / ACT style), and the targets that put the agent exactly there
  are computed with :func:`twin.tasks.push_t.pd_target_for`. All ``n_action_steps`` of the
  chunk are played before the policy plans again (measured: 8 of 8 beat 4 of 8 and 2 of 8).

Training samples (:meth:`PushTStatePolicy.training_samples`) replay each logged episode's
targets through the same PD law from the first observed agent position, so features and
labels come from the agent state the env really had. Episodes whose ``source`` starts with
``takeover(`` (:func:`policies.demos.collect_takeovers`: the policy drives until a random
step, then the expert finishes) contribute only the expert's steps.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from policies.data import Episode
from policies.demos import expert_steps_start
from policies.interface import (
    ChunkedPolicy,
    ConfigError,
    PolicySpec,
    SpecMismatchError,
    _check_choice,
    _check_positive_ints,
    _check_sizes,
    register_policy,
)
from twin.tasks.push_t import GOAL_POSE, WORKSPACE_SIZE, agent_pd_step, pd_target_for, tee_keypoints

#: workspace-unit scales of the features (so that they are about 1 before standardization)
_POS_SCALE = 256.0
_VEL_SCALE = 100.0
_KP_SCALE = 100.0
_GOAL_KP = tee_keypoints(GOAL_POSE)
FEATURE_DIM = 8 + 4 * len(_GOAL_KP)


@dataclass
class PushTStateConfig:
    """Config of :class:`PushTStatePolicy` (defaults measured on the twin, see the module)."""

    hidden_sizes: tuple[int, ...] = (256, 256, 256)
    #: desired agent positions predicted per plan
    horizon: int = 8
    #: of which played before the next plan
    n_action_steps: int = 8
    #: scale of the predicted position steps (workspace units)
    step_scale: float = 25.0
    #: "mse" (one chunk, squared error) or "gmm" (a mixture of ``modes`` Gaussians over
    #: whole chunks, robomimic's GMM head: the expert's alternatives are not averaged; the
    #: deterministic action is the most likely mode's mean, the stochastic one a sample)
    head: str = "gmm"
    modes: int = 5

    def __post_init__(self) -> None:
        n = "PushTStateConfig"
        _check_sizes(n, "hidden_sizes", self.hidden_sizes)
        _check_positive_ints(n, self, ("horizon", "n_action_steps", "modes"))
        if self.n_action_steps > self.horizon:
            raise ConfigError(f"{n}.n_action_steps = {self.n_action_steps} exceeds horizon = {self.horizon}")
        if not self.step_scale > 0:
            raise ConfigError(f"{n}.step_scale = {self.step_scale!r}; expected > 0")
        _check_choice(n, "head", self.head, ["mse", "gmm"])


def pusht_features(agent_pos: np.ndarray, agent_vel: np.ndarray, block: np.ndarray) -> np.ndarray:
    """The 40 features of the module docstring for ``(N, 2)``, ``(N, 2)``, ``(N, 3)`` arrays."""
    agent_pos, agent_vel, block = (
        np.atleast_2d(np.asarray(x, dtype=np.float64)) for x in (agent_pos, agent_vel, block)
    )
    kp = np.stack([tee_keypoints(b) for b in block])  # (N, K, 2)
    return np.concatenate(
        [
            agent_pos / _POS_SCALE - 1.0,
            agent_vel / _VEL_SCALE,
            block[:, :2] / _POS_SCALE - 1.0,
            np.sin(block[:, 2:3]),
            np.cos(block[:, 2:3]),
            ((kp - agent_pos[:, None]) / _KP_SCALE).reshape(len(block), -1),
            ((kp - _GOAL_KP[None]) / _KP_SCALE).reshape(len(block), -1),
        ],
        axis=1,
    ).astype(np.float32)


def _pd_step_env(pos: np.ndarray, vel: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One env step of the agent as ``PushT.apply_pusht_action`` does it: target clipped to the
    workspace, PD step, position clipped. Returns (pos, vel)."""
    p, v = agent_pd_step(pos, vel, np.clip(target, 0.0, WORKSPACE_SIZE))
    return np.clip(p, 0.0, WORKSPACE_SIZE), v


def replay_agent(start: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Agent positions and velocities ``(T + 1, 2)`` from rest at ``start`` under ``targets`` ``(T, 2)``."""
    pos, vel = np.asarray(start, dtype=np.float64).copy(), np.zeros(2)
    ps, vs = [pos], [vel]
    for a in np.asarray(targets, dtype=np.float64):
        pos, vel = _pd_step_env(pos, vel, a)
        ps.append(pos)
        vs.append(vel)
    return np.stack(ps), np.stack(vs)


@register_policy("pusht_state")
class PushTStatePolicy(ChunkedPolicy):
    """push_t state policy (see the module docstring). Needs ``obs["state"]`` whose first five
    entries are gym-pusht's ``[agent_x, agent_y, block_x, block_y, block_angle]`` and the
    ``pusht_xy`` action."""

    config_class = PushTStateConfig
    config: PushTStateConfig

    def __init__(self, config: PushTStateConfig | dict | None = None, spec: PolicySpec | None = None) -> None:
        super().__init__(config, spec)
        if self.spec.action.control_mode != "pusht_xy" or self.spec.action.dim != 2:
            raise SpecMismatchError(
                f"PushTStatePolicy drives gym-pusht's agent (control mode pusht_xy), the spec has "
                f"{self.spec.action.describe()}; train push_t with control_mode pusht_xy"
            )
        o = self.spec.obs("state")
        if len(o.shape) != 1 or o.shape[0] < 5:
            raise SpecMismatchError(
                f"PushTStatePolicy reads gym-pusht's 5-d state at the start of obs['state']; it has shape {o.shape}"
            )
        cfg = self.config
        layers: list[nn.Module] = []
        d = FEATURE_DIM
        for h in cfg.hidden_sizes:
            layers += [nn.Linear(d, h), nn.GELU()]
            d = h
        self._out = 2 * cfg.horizon
        # gmm: per mode a chunk mean and a (softplus) std, plus the mode's logit
        layers.append(nn.Linear(d, 2 * self._out * cfg.modes + cfg.modes if cfg.head == "gmm" else self._out))
        self.net = nn.Sequential(*layers)
        self.register_buffer("feat_mean", torch.zeros(FEATURE_DIM))
        self.register_buffer("feat_std", torch.ones(FEATURE_DIM))
        #: per env: tracked agent (position, velocity) in workspace units
        self._agents: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    # -- declared needs ----------------------------------------------------------------------
    def required_obs_keys(self) -> list[str]:
        return ["state"]

    # -- features ----------------------------------------------------------------------------
    @torch.no_grad()
    def fit_normalizer(self, obs_batch: dict[str, Any], action_batch: Any | None = None) -> None:
        """Standardize the features from a training set (``obs_batch["features"]``, see
        :meth:`training_samples`)."""
        f = torch.as_tensor(np.asarray(obs_batch["features"]), dtype=torch.float32)
        self.feat_mean.copy_(f.mean(0))
        self.feat_std.copy_(f.std(0).clamp_min(1e-3))

    def _raw(self, feats: torch.Tensor) -> torch.Tensor:
        return self.net((feats.to(self.torch_device).float() - self.feat_mean) / self.feat_std)

    def _mixture(self, raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """GMM head: means ``(B, M, 2H)``, stds ``(B, M, 2H)``, log mode weights ``(B, M)``."""
        m, o = self.config.modes, self._out
        mean = raw[:, : m * o].reshape(-1, m, o)
        std = F.softplus(raw[:, m * o : 2 * m * o].reshape(-1, m, o)) + 1e-3
        return mean, std, torch.log_softmax(raw[:, 2 * m * o :], dim=-1)

    def _net_out(self, feats: torch.Tensor, deterministic: bool = True) -> torch.Tensor:
        """Predicted position steps ``(B, horizon, 2)`` in units of ``step_scale``."""
        raw = self._raw(feats)
        if self.config.head == "mse":
            return raw.reshape(-1, self.config.horizon, 2)
        mean, std, logw = self._mixture(raw)
        rows = torch.arange(len(raw), device=raw.device)
        if deterministic:
            k = logw.argmax(-1)
            out = mean[rows, k]
        else:
            k = torch.multinomial(logw.exp().cpu(), 1, generator=self._generator).squeeze(-1).to(raw.device)
            out = mean[rows, k] + std[rows, k] * self._normal(mean[rows, k].shape)
        return out.reshape(-1, self.config.horizon, 2)

    def features_tensors(self, obs_t: dict[str, torch.Tensor]) -> torch.Tensor:
        """Standardized features, the agent taken at the observed TCP and at rest (what a logged
        observation alone tells; the policy's own plans use its tracked agent state)."""
        s = obs_t["state"].cpu().numpy().reshape(-1, obs_t["state"].shape[-1])
        f = torch.from_numpy(pusht_features(s[:, :2], np.zeros((len(s), 2)), s[:, 2:5]))
        return (f.to(self.torch_device) - self.feat_mean) / self.feat_std

    # -- acting ------------------------------------------------------------------------------
    @torch.no_grad()
    def act(self, obs: dict[str, np.ndarray], deterministic: bool = True) -> np.ndarray:
        obs_t = self.obs_to_tensors(obs)
        state = obs_t["state"].cpu().numpy().astype(np.float64)
        ids = self.executor.needs_plan(len(state))
        if len(ids):
            agents = []
            for i in ids:
                if int(i) not in self._agents:  # a new episode: the agent is at rest at the TCP
                    self._agents[int(i)] = (state[i, :2].copy(), np.zeros(2))
                agents.append(self._agents[int(i)])
            pos = np.stack([a[0] for a in agents])
            vel = np.stack([a[1] for a in agents])
            feats = torch.from_numpy(pusht_features(pos, vel, state[ids, 2:5]))
            steps = self._net_out(feats, deterministic).cpu().numpy()
            desired = pos[:, None] + steps * self.config.step_scale
            chunks = np.zeros((len(ids), self.n_action_steps, 2), np.float32)
            for j, i in enumerate(ids):
                p, v = pos[j], vel[j]
                for t in range(self.n_action_steps):
                    # the env gets the float32 target: track the agent under exactly that
                    chunks[j, t] = np.clip(pd_target_for(p, v, desired[j, t]), 0.0, WORKSPACE_SIZE)
                    p, v = _pd_step_env(p, v, chunks[j, t].astype(np.float64))
                self._agents[int(i)] = (p, v)
            self.executor.push(ids, chunks)
        return self.executor.pop()

    def reset(self, env_ids: Sequence[int] | None = None) -> None:
        super().reset(env_ids)
        if env_ids is None:
            self._agents.clear()
        else:
            for i in env_ids:
                self._agents.pop(int(i), None)

    # -- training ----------------------------------------------------------------------------
    def training_samples(self, episodes: list[Episode]) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """``({"features": (N, 40)}, steps (N, horizon, 2))`` from logged episodes: the agent
        replayed from rest at the first observed TCP position under the logged targets; the
        label of step t is the agent's next ``horizon`` positions minus its position at t
        (the last one repeated past the episode's end), in units of ``step_scale``."""
        feats, labels = [], []
        k = self.config.horizon
        for ep in episodes:
            state = np.asarray(ep.obs["state"], dtype=np.float64)
            T = ep.length
            first = expert_steps_start(ep)
            if T == 0 or first >= T:
                continue
            pos, vel = replay_agent(state[0, :2], ep.actions.reshape(T, 2))
            t = np.arange(first, T)
            feats.append(pusht_features(pos[t], vel[t], state[t, 2:5]))
            nxt = np.minimum(t[:, None] + 1 + np.arange(k)[None], T)  # pos has T + 1 rows
            labels.append(((pos[nxt] - pos[t][:, None]) / self.config.step_scale).astype(np.float32))
        if not feats:
            raise ValueError("no episodes to train on")
        return {"features": np.concatenate(feats)}, np.concatenate(labels)

    def compute_bc_loss(self, obs_batch: dict[str, Any], action_batch: Any) -> torch.Tensor:
        """MSE of the predicted position steps (``head="mse"``) or the mixture's negative log
        likelihood per number (``"gmm"``); ``obs_batch["features"]`` ``(B, 40)`` and
        ``action_batch`` ``(B, horizon, 2)`` from :meth:`training_samples`."""
        if "features" not in obs_batch:
            raise SpecMismatchError("PushTStatePolicy trains on training_samples() output (a 'features' batch)")
        f = torch.as_tensor(np.asarray(obs_batch["features"]), dtype=torch.float32)
        y = torch.as_tensor(np.asarray(action_batch), dtype=torch.float32).to(self.torch_device)
        if self.config.head == "mse":
            return F.mse_loss(self._net_out(f), y)
        mean, std, logw = self._mixture(self._raw(f))
        comp = torch.distributions.Normal(mean, std).log_prob(y.reshape(len(y), 1, -1)).sum(-1)  # (B, M)
        return -torch.logsumexp(logw + comp, dim=-1).mean() / self._out


__all__ = ["FEATURE_DIM", "PushTStateConfig", "PushTStatePolicy", "pusht_features", "replay_agent"]
