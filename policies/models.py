"""Built-in policies: CASHER's state MLP teacher and its point-cloud student.

* :class:`MLPPolicy` (``"mlp"``): observation vector(s) -> MLP -> categorical or Gaussian
  actions, with a separate critic MLP for PPO and running observation normalization whose
  statistics are buffers (saved in the checkpoint).
* :class:`PointCloudPolicy` (``"pointcloud"``): CASHER's student; a PointNet encoder of the
  coloured point cloud (128-d) concatenated with a 9-d robot state from ``proprio``, then an
  MLP (256, 256) -> 14-way categorical (or Gaussian).

Action distributions (:class:`ActionHead`):

* ``discrete``: categorical over ``spec.action.n`` logits. Deterministic = argmax;
  stochastic = Gumbel-max sample from the policy's own generator.
* ``gaussian``: mean from the network, state-independent learnable ``log_std`` (no tanh).
  With ``scale_actions`` and finite bounds the distribution lives in normalized units
  ``(a - centre) / half_range`` so one ``log_std`` works for radians, metres or the 0..512
  PushT workspace; ``evaluate_actions`` / ``act_with_info`` / ``compute_bc_loss`` take and
  return env units. ``act()`` clips to the spec bounds; ``act_with_info`` does not (PPO
  needs the log-prob of the sampled, unclipped action; clip before ``env.step``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from policies.interface import (
    ActionSpec,
    ConfigError,
    Policy,
    PolicySpec,
    SpecMismatchError,
    _check_choice,
    _check_sizes,
    register_policy,
)

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "mish": nn.Mish,
}

# proprio layout (twin/env.py): joints 0:7, gripper width 7, TCP position 8:11, TCP quat wxyz 11:15
PROPRIO_TCP_POS = slice(8, 11)
PROPRIO_TCP_QUAT = slice(11, 15)
ROBOT_STATE_DIM = 9


# ---------------------------------------------------------------------------------------------
# building blocks
# ---------------------------------------------------------------------------------------------


def mlp(in_dim: int, sizes: tuple[int, ...], activation: str, final_activation: bool = True) -> nn.Sequential:
    """Linear/activation stack; ends with an activation when ``final_activation``."""
    layers: list[nn.Module] = []
    d = in_dim
    for i, h in enumerate(sizes):
        layers.append(nn.Linear(d, h))
        if final_activation or i < len(sizes) - 1:
            layers.append(ACTIVATIONS[activation]())
        d = h
    return nn.Sequential(*layers)


def _orthogonal_init(module: nn.Module, gain: float) -> None:
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.orthogonal_(m.weight, gain)
            nn.init.zeros_(m.bias)


class RunningNorm(nn.Module):
    """Observation normalizer ``clip((x - mean) / sqrt(var + eps), -clip, clip)``.

    ``mean``/``var`` (float32) and ``count`` (float64) are buffers, so they are saved in
    checkpoints. Identity until updated (mean 0, var 1, count 0).

    Features that never varied in training (standard deviation below ``const_std`` = 1e-3:
    an object's height, a fixed orientation) are divided by ``floor_std`` = 0.01 (1 cm,
    0.01 rad) instead of their ~0 deviation, which would make a 1 cm change in the real cell
    saturate the input. Measured on a PPO+BC ``reach`` checkpoint: without the floor its
    success fell from 0.85 (nominal) to 0.05 under object rescaling. Features that did vary
    keep their own deviation: a floor on every feature (``sqrt(var + 1e-4)``) cost the
    distilled point-cloud student of tests/test_distill.py its resolution on small-variance
    features (success 0.5 with it, 0.7 with this rule, teacher 1.0).
    """

    def __init__(
        self, dim: int, clip: float = 10.0, eps: float = 1e-8, const_std: float = 1e-3, floor_std: float = 0.01
    ) -> None:
        super().__init__()
        self.clip = float(clip)
        self.eps = float(eps)
        self.const_std = float(const_std)
        self.floor_std = float(floor_std)
        self.register_buffer("mean", torch.zeros(dim, dtype=torch.float32))
        self.register_buffer("var", torch.ones(dim, dtype=torch.float32))
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))
        # the divisor, recomputed only when ``var`` changed (in place: its version counter;
        # moved or replaced: its storage), not on every batch of an evaluation
        self._std_cache: tuple[tuple[int, int], torch.Tensor] | None = None

    def std(self) -> torch.Tensor:
        key = (self.var.data_ptr(), self.var._version)
        if self._std_cache is None or self._std_cache[0] != key:
            std = torch.sqrt(self.var + self.eps)
            std = torch.where(std < self.const_std, torch.full_like(std, self.floor_std), std)
            self._std_cache = (key, std.detach())
        return self._std_cache[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = (x - self.mean) / self.std()
        return y.clamp(-self.clip, self.clip) if self.clip > 0 else y

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        """Merge the statistics of a batch ``(..., dim)`` (Chan et al. parallel update)."""
        x = x.reshape(-1, self.mean.shape[0]).to(torch.float64)
        n = x.shape[0]
        if n == 0:
            return
        b_mean = x.mean(0)
        b_var = x.var(0, unbiased=False)
        tot = self.count + n
        delta = b_mean - self.mean.to(torch.float64)
        new_mean = self.mean.to(torch.float64) + delta * n / tot
        m2 = self.var.to(torch.float64) * self.count + b_var * n + delta.pow(2) * self.count * n / tot
        self.mean.copy_(new_mean.to(torch.float32))
        self.var.copy_((m2 / tot).to(torch.float32))
        self.count.copy_(tot)

    @torch.no_grad()
    def set(self, mean: Any, var: Any, count: float = 1.0) -> None:
        self.mean.copy_(torch.as_tensor(np.asarray(mean), dtype=torch.float32))
        self.var.copy_(torch.as_tensor(np.asarray(var), dtype=torch.float32))
        self.count.fill_(float(count))

    @torch.no_grad()
    def fit(self, x: torch.Tensor) -> None:
        """Replace the statistics with those of ``x`` (a dataset)."""
        x = x.reshape(-1, self.mean.shape[0]).to(torch.float64)
        self.set(x.mean(0).cpu().numpy(), x.var(0, unbiased=False).cpu().numpy(), float(x.shape[0]))


def action_scale(spec: ActionSpec) -> tuple[np.ndarray, np.ndarray]:
    """Centre and half-range of a continuous action per dimension: the spec's bounds where
    they are finite and ordered, [-1, 1] elsewhere (``(a - centre) / half`` is in [-1, 1])."""
    lo, hi = (b.reshape(-1).astype(np.float64) for b in spec.bounds())
    finite = np.isfinite(lo) & np.isfinite(hi) & (hi > lo)
    lo, hi = np.where(finite, lo, -1.0), np.where(finite, hi, 1.0)
    return (lo + hi) / 2, (hi - lo) / 2


def sample_categorical(logits: torch.Tensor, deterministic: bool, policy: Policy) -> torch.Tensor:
    """The most likely index of the last axis, or a draw (Gumbel-max with the policy's generator)."""
    if deterministic:
        return logits.argmax(-1)
    u = policy._uniform(logits.shape).clamp_(1e-10, 1.0 - 1e-7)
    return (logits - torch.log(-torch.log(u))).argmax(-1)


class ActionHead(nn.Module):
    """Categorical or state-independent-std Gaussian action distribution."""

    def __init__(
        self, in_dim: int, spec: ActionSpec, kind: str, init_log_std: float, scale_actions: bool, gain: float = 0.01
    ) -> None:
        super().__init__()
        self.kind = kind
        self.action_shape = spec.shape
        if kind == "discrete":
            assert spec.n is not None
            self.linear = nn.Linear(in_dim, spec.n)
        else:
            dim = spec.dim
            self.linear = nn.Linear(in_dim, dim)
            self.log_std = nn.Parameter(torch.full((dim,), float(init_log_std)))
            centre, half = action_scale(spec) if scale_actions else (np.zeros(dim), np.ones(dim))
            # derived from the spec: not part of the checkpoint
            self.register_buffer("centre", torch.tensor(centre, dtype=torch.float32), persistent=False)
            self.register_buffer("half_range", torch.tensor(half, dtype=torch.float32), persistent=False)
        nn.init.orthogonal_(self.linear.weight, gain)
        nn.init.zeros_(self.linear.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """Logits (discrete) or the mean in normalized units (gaussian)."""
        return self.linear(h)

    # -- helpers -----------------------------------------------------------------------------
    def _norm(self, a: torch.Tensor) -> torch.Tensor:
        return (a.reshape(a.shape[0], -1).float() - self.centre) / self.half_range

    def _denorm(self, z: torch.Tensor) -> torch.Tensor:
        return (z * self.half_range + self.centre).reshape(z.shape[0], *self.action_shape)

    def sample(self, out: torch.Tensor, deterministic: bool, policy: Policy) -> torch.Tensor:
        """Actions in env units: int64 (B,) or float (B, *shape)."""
        if self.kind == "discrete":
            return sample_categorical(out, deterministic, policy)
        z = out if deterministic else out + self.log_std.exp() * policy._normal(out.shape)
        return self._denorm(z)

    def log_prob(self, out: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        if self.kind == "discrete":
            logp = F.log_softmax(out, dim=-1)
            return logp.gather(-1, actions.reshape(-1, 1).long()).squeeze(-1)
        z = self._norm(actions)
        std = self.log_std.exp()
        lp = -0.5 * ((z - out) / std).pow(2) - self.log_std - 0.5 * math.log(2 * math.pi)
        return lp.sum(-1)

    def entropy(self, out: torch.Tensor) -> torch.Tensor:
        if self.kind == "discrete":
            logp = F.log_softmax(out, dim=-1)
            return -(logp.exp() * logp).sum(-1)
        ent = 0.5 + 0.5 * math.log(2 * math.pi) + self.log_std
        return ent.sum().expand(out.shape[0])

    def bc_loss(self, out: torch.Tensor, actions: torch.Tensor, loss: str) -> torch.Tensor:
        if self.kind == "discrete":
            return F.cross_entropy(out, actions.reshape(-1).long())
        if loss == "mse":
            return F.mse_loss(out, self._norm(actions))
        return -self.log_prob(out, actions).mean()


def _resolve_action_type(cls_name: str, action_type: str, spec: ActionSpec) -> str:
    if action_type == "auto":
        return "discrete" if spec.discrete else "gaussian"
    if action_type == "discrete" and not spec.discrete:
        raise SpecMismatchError(f"{cls_name}: action_type 'discrete' but the spec's action is {spec.describe()}")
    if action_type == "gaussian" and spec.discrete:
        raise SpecMismatchError(f"{cls_name}: action_type 'gaussian' but the spec's action is {spec.describe()}")
    return action_type


class ActorCriticPolicy(Policy):
    """Shared act / PPO / BC logic over an actor trunk, an :class:`ActionHead` and an optional critic.

    Subclasses implement :meth:`_trunk` (actor features ``(B, F)`` and the critic's input).
    """

    head: ActionHead
    critic: nn.Module | None

    def _trunk(self, obs_t: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def _value(self, critic_in: torch.Tensor) -> torch.Tensor:
        if self.critic is None:
            raise NotImplementedError(f"{type(self).__name__} was built with value_head=False")
        return self.critic(critic_in).squeeze(-1)

    def features_tensors(self, obs_t: dict[str, torch.Tensor]) -> torch.Tensor:
        return self._trunk(obs_t)[0]

    def act_tensors(self, obs_t: dict[str, torch.Tensor], deterministic: bool = True) -> torch.Tensor:
        h, _ = self._trunk(obs_t)
        return self.head.sample(self.head(h), deterministic, self)

    def action_logits(self, obs_t: dict[str, torch.Tensor]) -> torch.Tensor:
        """Raw head output: logits (discrete) or normalized mean (gaussian); for distillation."""
        return self.head(self._trunk(self._as_tensor_batch(obs_t))[0])

    def evaluate_actions(
        self, obs_t: dict[str, torch.Tensor], actions_t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h, c = self._trunk(obs_t)
        out = self.head(h)
        return self.head.log_prob(out, actions_t), self.head.entropy(out), self._value(c)

    def act_with_info(
        self, obs_t: dict[str, torch.Tensor], deterministic: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h, c = self._trunk(obs_t)
        out = self.head(h)
        a = self.head.sample(out, deterministic, self)
        return a, self.head.log_prob(out, a), self._value(c)

    def get_value(self, obs_t: dict[str, torch.Tensor]) -> torch.Tensor:
        return self._value(self._trunk(obs_t)[1])

    def compute_bc_loss(self, obs_batch: dict[str, Any], action_batch: Any) -> torch.Tensor:
        obs_t = self._as_tensor_batch(obs_batch)
        a = action_batch if isinstance(action_batch, torch.Tensor) else torch.as_tensor(np.asarray(action_batch))
        h, _ = self._trunk(obs_t)
        return self.head.bc_loss(self.head(h), a.to(self.torch_device), self.config.bc_loss)


# ---------------------------------------------------------------------------------------------
# MLP policy (CASHER's state-based PPO teacher)
# ---------------------------------------------------------------------------------------------


@dataclass
class MLPConfig:
    """Config of :class:`MLPPolicy`.

    ``obs_keys``: observation entries concatenated (flattened) into the input vector.
    ``action_type``: ``"auto"`` (discrete for a Discrete spec, else gaussian),
    ``"discrete"`` or ``"gaussian"``. ``value_head``: add a separate critic MLP
    (``value_hidden_sizes``, default = ``hidden_sizes``) for PPO. ``normalize_obs``:
    running mean/std normalization clipped to +-``obs_clip``.
    """

    obs_keys: tuple[str, ...] = ("state",)
    hidden_sizes: tuple[int, ...] = (256, 256)
    activation: str = "tanh"
    action_type: str = "auto"
    value_head: bool = True
    value_hidden_sizes: tuple[int, ...] | None = None
    normalize_obs: bool = True
    obs_clip: float = 10.0
    init_log_std: float = -0.5
    scale_actions: bool = True
    bc_loss: str = "nll"
    orthogonal_init: bool = True

    def __post_init__(self) -> None:
        n = "MLPConfig"
        if not self.obs_keys or not all(isinstance(k, str) and k for k in self.obs_keys):
            raise ConfigError(f"{n}.obs_keys = {self.obs_keys!r}; expected a non-empty tuple of observation keys")
        _check_sizes(n, "hidden_sizes", self.hidden_sizes)
        if self.value_hidden_sizes is not None:
            _check_sizes(n, "value_hidden_sizes", self.value_hidden_sizes)
        _check_choice(n, "activation", self.activation, list(ACTIVATIONS))
        _check_choice(n, "action_type", self.action_type, ["auto", "discrete", "gaussian"])
        _check_choice(n, "bc_loss", self.bc_loss, ["nll", "mse"])
        if not isinstance(self.obs_clip, (int, float)) or self.obs_clip < 0:
            raise ConfigError(f"{n}.obs_clip = {self.obs_clip!r}; expected a number >= 0 (0 = no clipping)")


@register_policy("mlp")
class MLPPolicy(ActorCriticPolicy):
    """State -> action MLP (CASHER's teacher: (256, 256)) with an optional critic for PPO.

    ``features()`` is the last hidden layer of the actor.
    """

    config_class = MLPConfig
    config: MLPConfig

    def __init__(self, config: MLPConfig | dict | None = None, spec: PolicySpec | None = None) -> None:
        super().__init__(config, spec)
        cfg = self.config
        self.action_type = _resolve_action_type("MLPPolicy", cfg.action_type, self.spec.action)
        in_dim = sum(int(np.prod(self.spec.obs(k).shape)) for k in cfg.obs_keys)
        self.in_dim = in_dim
        self.obs_norm = RunningNorm(in_dim, clip=cfg.obs_clip) if cfg.normalize_obs else None
        self.actor = mlp(in_dim, cfg.hidden_sizes, cfg.activation)
        self.head = ActionHead(
            cfg.hidden_sizes[-1], self.spec.action, self.action_type, cfg.init_log_std, cfg.scale_actions
        )
        self.has_value_head = bool(cfg.value_head)
        if cfg.value_head:
            vs = cfg.value_hidden_sizes or cfg.hidden_sizes
            self.critic = nn.Sequential(mlp(in_dim, vs, cfg.activation), nn.Linear(vs[-1], 1))
        else:
            self.critic = None
        if cfg.orthogonal_init:
            _orthogonal_init(self.actor, math.sqrt(2))
            if self.critic is not None:
                _orthogonal_init(self.critic, math.sqrt(2))
                nn.init.orthogonal_(self.critic[-1].weight, 1.0)

    def required_obs_keys(self) -> list[str]:
        return list(self.config.obs_keys)

    def _flat(self, obs_t: dict[str, torch.Tensor]) -> torch.Tensor:
        parts = [obs_t[k].reshape(obs_t[k].shape[0], -1).float() for k in self.config.obs_keys]
        return torch.cat(parts, dim=-1) if len(parts) > 1 else parts[0]

    def _input(self, obs_t: dict[str, torch.Tensor]) -> torch.Tensor:
        x = self._flat(obs_t)
        return self.obs_norm(x) if self.obs_norm is not None else x

    def _trunk(self, obs_t: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        x = self._input(obs_t)
        return self.actor(x), x

    def update_normalizer(self, obs_batch: dict[str, Any]) -> None:
        if self.obs_norm is not None:
            self.obs_norm.update(self._flat(self._as_tensor_batch(obs_batch)))

    def fit_normalizer(self, obs_batch: dict[str, Any], action_batch: Any | None = None) -> None:
        if self.obs_norm is not None:
            self.obs_norm.fit(self._flat(self._as_tensor_batch(obs_batch)))


# ---------------------------------------------------------------------------------------------
# point-cloud policy (CASHER's student)
# ---------------------------------------------------------------------------------------------


def quat_to_rot6d(quat: torch.Tensor) -> torch.Tensor:
    """Continuous 6-d rotation (Zhou et al. 2019): the first two columns of the rotation
    matrix of a wxyz quaternion, ``[r00, r10, r20, r01, r11, r21]``. Sign-invariant
    (q and -q give the same matrix) and continuous, unlike the quaternion or Euler angles."""
    q = quat / quat.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    w, x, y, z = q.unbind(-1)
    c0 = torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y + w * z), 2 * (x * z - w * y)], dim=-1)
    c1 = torch.stack([2 * (x * y - w * z), 1 - 2 * (x * x + z * z), 2 * (y * z + w * x)], dim=-1)
    return torch.cat([c0, c1], dim=-1)


def robot_state_9d(proprio: torch.Tensor) -> torch.Tensor:
    """CASHER's 9-d robot state from ``proprio``: TCP position (m, 3) + 6-d rotation of the
    TCP quaternion (:func:`quat_to_rot6d`)."""
    return torch.cat([proprio[..., PROPRIO_TCP_POS], quat_to_rot6d(proprio[..., PROPRIO_TCP_QUAT])], dim=-1)


class PointNetEncoder(nn.Module):
    """Shared per-point MLP -> max-pool (+ mean-pool) -> linear -> LayerNorm embedding."""

    def __init__(
        self, in_dim: int, point_mlp: tuple[int, ...], embed_dim: int, pool: str, activation: str, layer_norm: bool
    ) -> None:
        super().__init__()
        self.pool = pool
        self.point_mlp = mlp(in_dim, point_mlp, activation)
        pooled = point_mlp[-1] * (2 if pool == "max+mean" else 1)
        self.proj = nn.Linear(pooled, embed_dim)
        self.norm = nn.LayerNorm(embed_dim) if layer_norm else nn.Identity()

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        f = self.point_mlp(points)  # (B, N, C)
        pooled = f.amax(dim=1)
        if self.pool == "max+mean":
            pooled = torch.cat([pooled, f.mean(dim=1)], dim=-1)
        return self.norm(self.proj(pooled))


@dataclass
class PointCloudConfig:
    """Config of :class:`PointCloudPolicy` (CASHER's student).

    ``point_key`` ``(N, 6)`` x, y, z (m) + r, g, b in [0, 1] (``use_rgb=False`` drops the
    colours); ``proprio_key`` gives the 9-d robot state. ``point_mlp``: widths of the shared
    per-point MLP; ``pool``: ``"max+mean"`` or ``"max"``; ``embed_dim``: the point-cloud
    embedding (128 in CASHER); ``hidden_sizes``: the MLP over [embedding, robot state].
    ``normalize``: running normalization of the point features and of the robot state
    (CASHER's "scaled pose"), fitted by :meth:`~policies.interface.Policy.fit_normalizer`.
    """

    point_key: str = "point_cloud"
    proprio_key: str = "proprio"
    use_rgb: bool = True
    point_mlp: tuple[int, ...] = (64, 128, 256)
    pool: str = "max+mean"
    embed_dim: int = 128
    layer_norm: bool = True
    hidden_sizes: tuple[int, ...] = (256, 256)
    activation: str = "relu"
    action_type: str = "auto"
    value_head: bool = False
    value_hidden_sizes: tuple[int, ...] | None = None
    normalize: bool = True
    init_log_std: float = -0.5
    scale_actions: bool = True
    bc_loss: str = "nll"

    def __post_init__(self) -> None:
        n = "PointCloudConfig"
        _check_sizes(n, "point_mlp", self.point_mlp)
        _check_sizes(n, "hidden_sizes", self.hidden_sizes)
        if self.value_hidden_sizes is not None:
            _check_sizes(n, "value_hidden_sizes", self.value_hidden_sizes)
        if not isinstance(self.embed_dim, int) or self.embed_dim < 1:
            raise ConfigError(f"{n}.embed_dim = {self.embed_dim!r}; expected a positive int")
        _check_choice(n, "pool", self.pool, ["max+mean", "max"])
        _check_choice(n, "activation", self.activation, list(ACTIVATIONS))
        _check_choice(n, "action_type", self.action_type, ["auto", "discrete", "gaussian"])
        _check_choice(n, "bc_loss", self.bc_loss, ["nll", "mse"])


@register_policy("pointcloud")
class PointCloudPolicy(ActorCriticPolicy):
    """CASHER's student: PointNet(point cloud) ++ 9-d robot state -> MLP -> actions.

    Robot state (9-d): TCP position (3, m) and the 6-d continuous rotation representation
    (first two rotation-matrix columns) of the TCP quaternion, both taken from ``proprio``
    (CASHER: "end-effector scaled pose, position and orientation"; the scaling is the
    running normalization). ``features()`` = last hidden layer of the MLP over
    [embedding (128), robot state (9)]; :meth:`encode` gives the two parts.
    """

    config_class = PointCloudConfig
    config: PointCloudConfig

    def __init__(self, config: PointCloudConfig | dict | None = None, spec: PolicySpec | None = None) -> None:
        super().__init__(config, spec)
        cfg = self.config
        pc = self.spec.obs(cfg.point_key)
        if len(pc.shape) != 2 or pc.shape[1] < (6 if cfg.use_rgb else 3):
            raise SpecMismatchError(
                f"PointCloudPolicy: observation {cfg.point_key!r} has shape {pc.shape}; "
                f"expected (N, 6) points (x, y, z, r, g, b)"
            )
        pr = self.spec.obs(cfg.proprio_key)
        if pr.shape != (15,):
            raise SpecMismatchError(
                f"PointCloudPolicy: observation {cfg.proprio_key!r} has shape {pr.shape}; "
                f"expected (15,) TwinEnv proprio"
            )
        self.action_type = _resolve_action_type("PointCloudPolicy", cfg.action_type, self.spec.action)
        self.point_dim = 6 if cfg.use_rgb else 3
        self.point_norm = RunningNorm(self.point_dim, clip=10.0) if cfg.normalize else None
        self.state_norm = RunningNorm(ROBOT_STATE_DIM, clip=10.0) if cfg.normalize else None
        self.encoder = PointNetEncoder(
            self.point_dim, cfg.point_mlp, cfg.embed_dim, cfg.pool, cfg.activation, cfg.layer_norm
        )
        in_dim = cfg.embed_dim + ROBOT_STATE_DIM
        self.trunk = mlp(in_dim, cfg.hidden_sizes, cfg.activation)
        self.head = ActionHead(
            cfg.hidden_sizes[-1], self.spec.action, self.action_type, cfg.init_log_std, cfg.scale_actions
        )
        self.has_value_head = bool(cfg.value_head)
        if cfg.value_head:
            vs = cfg.value_hidden_sizes or cfg.hidden_sizes
            self.critic = nn.Sequential(mlp(in_dim, vs, cfg.activation), nn.Linear(vs[-1], 1))
        else:
            self.critic = None

    def required_obs_keys(self) -> list[str]:
        return [self.config.point_key, self.config.proprio_key]

    def _points(self, obs_t: dict[str, torch.Tensor]) -> torch.Tensor:
        return obs_t[self.config.point_key][..., : self.point_dim].float()

    def _robot_state(self, obs_t: dict[str, torch.Tensor]) -> torch.Tensor:
        return robot_state_9d(obs_t[self.config.proprio_key].float())

    def encode(self, obs_t: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(point-cloud embedding ``(B, embed_dim)``, normalized robot state ``(B, 9)``)."""
        pts = self._points(obs_t)
        if self.point_norm is not None:
            pts = self.point_norm(pts)
        state = self._robot_state(obs_t)
        if self.state_norm is not None:
            state = self.state_norm(state)
        return self.encoder(pts), state

    def _trunk(self, obs_t: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        emb, state = self.encode(obs_t)
        x = torch.cat([emb, state], dim=-1)
        return self.trunk(x), x

    def update_normalizer(self, obs_batch: dict[str, Any]) -> None:
        if self.point_norm is not None and self.state_norm is not None:
            obs_t = self._as_tensor_batch(obs_batch)
            self.point_norm.update(self._points(obs_t))
            self.state_norm.update(self._robot_state(obs_t))

    def fit_normalizer(self, obs_batch: dict[str, Any], action_batch: Any | None = None) -> None:
        if self.point_norm is not None and self.state_norm is not None:
            obs_t = self._as_tensor_batch(obs_batch)
            self.point_norm.fit(self._points(obs_t))
            self.state_norm.fit(self._robot_state(obs_t))


__all__ = [
    "ACTIVATIONS",
    "ActionHead",
    "ActorCriticPolicy",
    "MLPConfig",
    "MLPPolicy",
    "PointCloudConfig",
    "PointCloudPolicy",
    "PointNetEncoder",
    "ROBOT_STATE_DIM",
    "RunningNorm",
    "mlp",
    "quat_to_rot6d",
    "robot_state_9d",
]
