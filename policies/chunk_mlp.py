"""A state MLP that predicts chunks of actions (registered as ``chunk_mlp``).

Why: a memoryless one-step policy cannot clone an expert that waits. The mission tasks'
waypoint experts close the gripper and hold for a few steps before they lift, and settle
before they release; during a hold the state barely changes, so the same state is labelled
"close" four times and "lift" once. Measured on ``mug_to_sink`` (discrete actions, 100 expert
episodes plus two takeover rounds, MLP 256x256): the one-step policy repeats "close" until the
episode ends, 1 success in 20 episodes at its best checkpoint. Predicting the next ``horizon``
actions from one state and playing ``n_action_steps`` of them before planning again (ACT's
action chunking) carries the plan through the hold.

Discrete actions: ``horizon`` categorical distributions (cross-entropy per step; the
deterministic action is each step's most likely one). Continuous actions: the chunk in units
scaled to [-1, 1] by the spec's bounds, squared error. Inputs: the flattened ``obs_keys``,
standardized by the training set (:class:`policies.models.RunningNorm`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from policies.interface import (
    ChunkedPolicy,
    ConfigError,
    PolicySpec,
    _check_positive_ints,
    _check_sizes,
    register_policy,
)
from policies.models import ACTIVATIONS, RunningNorm, action_scale, mlp, sample_categorical


@dataclass
class ChunkMLPConfig:
    """Config of :class:`ChunkMLPPolicy`."""

    obs_keys: tuple[str, ...] = ("state",)
    hidden_sizes: tuple[int, ...] = (256, 256, 256)
    activation: str = "gelu"
    #: actions predicted per plan
    horizon: int = 8
    #: of which played before the next plan
    n_action_steps: int = 8
    obs_clip: float = 10.0

    def __post_init__(self) -> None:
        n = "ChunkMLPConfig"
        if not self.obs_keys or not all(isinstance(k, str) and k for k in self.obs_keys):
            raise ConfigError(f"{n}.obs_keys = {self.obs_keys!r}; expected a non-empty tuple of observation keys")
        _check_sizes(n, "hidden_sizes", self.hidden_sizes)
        _check_positive_ints(n, self, ("horizon", "n_action_steps"))
        if self.n_action_steps > self.horizon:
            raise ConfigError(f"{n}.n_action_steps = {self.n_action_steps} exceeds horizon = {self.horizon}")
        if self.activation not in ACTIVATIONS:
            raise ConfigError(f"{n}.activation = {self.activation!r}; use one of {sorted(ACTIVATIONS)}")


@register_policy("chunk_mlp")
class ChunkMLPPolicy(ChunkedPolicy):
    """State -> chunk of ``horizon`` actions (see the module docstring)."""

    config_class = ChunkMLPConfig
    config: ChunkMLPConfig

    def __init__(self, config: ChunkMLPConfig | dict | None = None, spec: PolicySpec | None = None) -> None:
        super().__init__(config, spec)
        cfg = self.config
        act = self.spec.action
        self.in_dim = sum(int(np.prod(self.spec.obs(k).shape)) for k in cfg.obs_keys)
        self.obs_norm = RunningNorm(self.in_dim, clip=cfg.obs_clip)
        #: per step: logits (discrete) or the action scaled to [-1, 1]
        self._per_step = int(act.n) if act.discrete else act.dim
        self.net = torch.nn.Sequential(
            mlp(self.in_dim, cfg.hidden_sizes, cfg.activation),
            torch.nn.Linear(cfg.hidden_sizes[-1], cfg.horizon * self._per_step),
        )
        if not act.discrete:  # derived from the spec: not part of the checkpoint
            centre, half = action_scale(act)
            self.register_buffer("centre", torch.tensor(centre, dtype=torch.float32), persistent=False)
            self.register_buffer("half_range", torch.tensor(half, dtype=torch.float32), persistent=False)

    def required_obs_keys(self) -> list[str]:
        return list(self.config.obs_keys)

    # -- network -----------------------------------------------------------------------------
    def _flat(self, obs_t: dict[str, torch.Tensor]) -> torch.Tensor:
        """``(B, in_dim)`` from ``{key: (B, 1, *shape)}`` (a one-step history) or ``(B, *shape)``."""
        parts = []
        for k in self.config.obs_keys:
            x = obs_t[k].float()
            if x.dim() == len(self.spec.obs(k).shape) + 2:  # (B, n_obs_steps = 1, *shape)
                x = x[:, -1]
            parts.append(x.reshape(x.shape[0], -1))
        return torch.cat(parts, dim=-1)

    def _input(self, obs_t: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.obs_norm(self._flat(obs_t).to(self.torch_device))

    def _out(self, obs_t: dict[str, torch.Tensor]) -> torch.Tensor:
        """``(B, horizon, per_step)``: logits or scaled actions."""
        return self.net(self._input(obs_t)).reshape(-1, self.config.horizon, self._per_step)

    def features_tensors(self, obs_t: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.net[0](self._input(obs_t))

    def predict_chunk(self, obs_hist_t: dict[str, torch.Tensor], deterministic: bool = True) -> torch.Tensor:
        out = self._out(obs_hist_t)[:, : self.n_action_steps]
        if self.spec.action.discrete:
            return sample_categorical(out, deterministic, self)
        return (out * self.half_range + self.centre).reshape(*out.shape[:2], *self.spec.action.shape)

    # -- training ----------------------------------------------------------------------------
    @torch.no_grad()
    def fit_normalizer(self, obs_batch: dict[str, Any], action_batch: Any | None = None) -> None:
        self.obs_norm.fit(self._flat(self._as_tensor_batch(obs_batch)))

    def compute_bc_loss(self, obs_batch: dict[str, Any], action_batch: Any) -> torch.Tensor:
        """Cross-entropy per chunk step (discrete) or squared error of the scaled chunk;
        ``action_batch`` ``(B, horizon)`` / ``(B, horizon, *shape)`` in env units."""
        out = self._out(self._as_tensor_batch(obs_batch))
        a = torch.as_tensor(np.asarray(action_batch)).to(self.torch_device)
        if self.spec.action.discrete:
            return F.cross_entropy(out.reshape(-1, self._per_step), a.reshape(-1).long())
        z = (a.reshape(len(a), self.config.horizon, -1).float() - self.centre) / self.half_range
        return F.mse_loss(out, z)


__all__ = ["ChunkMLPConfig", "ChunkMLPPolicy"]
