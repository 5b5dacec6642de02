"""A compact state-conditioned diffusion policy with action chunks (Chi et al., Diffusion Policy).

The default policy on PushT, made small enough to train on a CPU in minutes:

* observation: the last ``n_obs_steps`` (2) observations of ``obs[obs_key]`` (its first
  ``state_dims`` entries; 5 = gym-pusht's ``[agent_x, agent_y, block_x, block_y, angle]`` on
  ``push_t``), min/max-normalized to [-1, 1] and flattened: that vector is the global
  conditioning and :meth:`DiffusionPolicy.features`;
* action chunk: ``horizon`` (16) actions normalized to [-1, 1], noise-prediction network =
  a small 1-D conv UNet with FiLM conditioning (Diffusion Policy's ``ConditionalUnet1D``,
  ``network="unet"``) or a residual MLP (``network="mlp"``), both with a sinusoidal
  diffusion-step embedding;
* training: DDPM, ``num_train_timesteps`` (100) steps, squared-cosine betas, epsilon
  prediction, MSE (:meth:`DiffusionPolicy.compute_loss`);
* inference: DDIM (eta = 0) with ``num_inference_steps`` (10) steps. Deterministic mode
  starts from a fixed initial noise drawn from a generator seeded with ``config.seed`` (the
  same for every env), so the same observations give the same actions on any machine;
  stochastic mode draws the initial noise from the policy's generator;
* execution: actions ``[n_obs_steps - 1, n_obs_steps - 1 + n_action_steps)`` of the chunk
  (8 of 16) are played by a :class:`~policies.interface.ChunkExecutor`; an env re-plans
  only when its queue is empty.

Training windows (what a dataset must produce for sample index ``t`` of an episode):
``obs[obs_key]``: ``(B, n_obs_steps, D)`` for steps ``t - n_obs_steps + 1 .. t`` and
``action``: ``(B, horizon, A)`` for steps ``t - n_obs_steps + 1 .. t - n_obs_steps + horizon``,
padded at the episode edges by repeating the first / last step (Diffusion Policy's
``SequenceSampler``). :meth:`DiffusionPolicy.window` returns these offsets.
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
    ChunkedPolicy,
    ConfigError,
    PolicySpec,
    SpecMismatchError,
    _check_choice,
    _check_positive_ints,
    _check_sizes,
    register_policy,
)

# ---------------------------------------------------------------------------------------------
# noise schedule (DDPM training, DDIM sampling)
# ---------------------------------------------------------------------------------------------


#: upper bound of ``num_train_timesteps`` (the noise schedule is built in memory from it)
MAX_TRAIN_TIMESTEPS = 100_000


def make_betas(num_train_timesteps: int, schedule: str = "squaredcos_cap_v2") -> torch.Tensor:
    """Betas (float64). ``squaredcos_cap_v2``: Nichol & Dhariwal's cosine schedule, capped at 0.999."""
    if schedule == "squaredcos_cap_v2":

        def alpha_bar(t: float) -> float:
            return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

        n = num_train_timesteps
        return torch.tensor(
            [min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), 0.999) for i in range(n)], dtype=torch.float64
        )
    if schedule == "linear":
        return torch.linspace(1e-4, 0.02, num_train_timesteps, dtype=torch.float64)
    raise ConfigError(f"unknown beta schedule {schedule!r}; use 'squaredcos_cap_v2' or 'linear'")


def ddim_timesteps(num_train_timesteps: int, num_inference_steps: int) -> list[int]:
    """Descending DDIM timesteps with "leading" spacing, e.g. 100/10 -> [90, 80, ..., 0]."""
    ratio = num_train_timesteps // num_inference_steps
    return [i * ratio for i in range(num_inference_steps)][::-1]


# ---------------------------------------------------------------------------------------------
# noise-prediction networks
# ---------------------------------------------------------------------------------------------


class SinusoidalPosEmb(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        freq = torch.exp(torch.arange(half, device=t.device, dtype=torch.float32) * -(math.log(10000.0) / (half - 1)))
        arg = t.float()[:, None] * freq[None]
        return torch.cat([arg.sin(), arg.cos()], dim=-1)


def _step_encoder(dim: int) -> nn.Sequential:
    return nn.Sequential(SinusoidalPosEmb(dim), nn.Linear(dim, dim * 4), nn.Mish(), nn.Linear(dim * 4, dim))


class Conv1dBlock(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, kernel: int, groups: int) -> None:
        super().__init__(nn.Conv1d(c_in, c_out, kernel, padding=kernel // 2), nn.GroupNorm(groups, c_out), nn.Mish())


class CondResBlock1D(nn.Module):
    """Two conv blocks with FiLM (per-channel scale and bias) from the conditioning vector."""

    def __init__(self, c_in: int, c_out: int, cond_dim: int, kernel: int, groups: int) -> None:
        super().__init__()
        self.block0 = Conv1dBlock(c_in, c_out, kernel, groups)
        self.block1 = Conv1dBlock(c_out, c_out, kernel, groups)
        self.film = nn.Sequential(nn.Mish(), nn.Linear(cond_dim, 2 * c_out))
        self.residual = nn.Conv1d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        h = self.block0(x)
        scale, bias = self.film(cond).unsqueeze(-1).chunk(2, dim=1)
        h = self.block1(scale * h + bias)
        return h + self.residual(x)


class ConditionalUnet1D(nn.Module):
    """Diffusion Policy's 1-D temporal UNet (down/mid/up residual blocks, FiLM conditioning)."""

    def __init__(
        self,
        action_dim: int,
        global_cond_dim: int,
        step_embed_dim: int,
        down_dims: tuple[int, ...],
        kernel: int,
        groups: int,
    ) -> None:
        super().__init__()
        self.step_encoder = _step_encoder(step_embed_dim)
        cond = step_embed_dim + global_cond_dim
        dims = [action_dim, *down_dims]
        in_out = list(zip(dims[:-1], dims[1:]))
        self.down = nn.ModuleList()
        for i, (a, b) in enumerate(in_out):
            last = i == len(in_out) - 1
            self.down.append(
                nn.ModuleList(
                    [
                        CondResBlock1D(a, b, cond, kernel, groups),
                        CondResBlock1D(b, b, cond, kernel, groups),
                        nn.Conv1d(b, b, 3, 2, 1) if not last else nn.Identity(),
                    ]
                )
            )
        mid = down_dims[-1]
        self.mid = nn.ModuleList(
            [CondResBlock1D(mid, mid, cond, kernel, groups), CondResBlock1D(mid, mid, cond, kernel, groups)]
        )
        self.up = nn.ModuleList()
        for a, b in reversed(in_out[1:]):
            self.up.append(
                nn.ModuleList(
                    [
                        CondResBlock1D(b * 2, a, cond, kernel, groups),
                        CondResBlock1D(a, a, cond, kernel, groups),
                        nn.ConvTranspose1d(a, a, 4, 2, 1),
                    ]
                )
            )
        start = down_dims[0]
        self.final = nn.Sequential(Conv1dBlock(start, start, kernel, groups), nn.Conv1d(start, action_dim, 1))

    def forward(self, sample: torch.Tensor, t: torch.Tensor, global_cond: torch.Tensor) -> torch.Tensor:
        x = sample.transpose(1, 2)  # (B, A, T)
        cond = torch.cat([self.step_encoder(t), global_cond], dim=-1)
        skips = []
        for r0, r1, down in self.down:
            x = r1(r0(x, cond), cond)
            skips.append(x)
            x = down(x)
        for r in self.mid:
            x = r(x, cond)
        for r0, r1, up in self.up:
            x = torch.cat([x, skips.pop()], dim=1)
            x = up(r1(r0(x, cond), cond))
        return self.final(x).transpose(1, 2)


class ResidualMLPNoiseNet(nn.Module):
    """Flattened chunk -> residual MLP blocks with FiLM conditioning -> predicted noise."""

    def __init__(
        self, horizon: int, action_dim: int, global_cond_dim: int, step_embed_dim: int, hidden: int, n_blocks: int
    ) -> None:
        super().__init__()
        self.horizon, self.action_dim = horizon, action_dim
        self.step_encoder = _step_encoder(step_embed_dim)
        cond = step_embed_dim + global_cond_dim
        self.inp = nn.Linear(horizon * action_dim, hidden)
        self.blocks = nn.ModuleList()
        for _ in range(n_blocks):
            self.blocks.append(
                nn.ModuleDict(
                    {
                        "norm": nn.LayerNorm(hidden),
                        "fc0": nn.Linear(hidden, hidden),
                        "film": nn.Linear(cond, 2 * hidden),
                        "fc1": nn.Linear(hidden, hidden),
                    }
                )
            )
        self.out = nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, horizon * action_dim))

    def forward(self, sample: torch.Tensor, t: torch.Tensor, global_cond: torch.Tensor) -> torch.Tensor:
        cond = F.mish(torch.cat([self.step_encoder(t), global_cond], dim=-1))
        x = self.inp(sample.reshape(sample.shape[0], -1))
        for blk in self.blocks:
            scale, bias = blk["film"](cond).chunk(2, dim=-1)
            h = blk["fc0"](blk["norm"](x)) * (1 + scale) + bias
            x = x + blk["fc1"](F.mish(h))
        return self.out(x).reshape(sample.shape)


# ---------------------------------------------------------------------------------------------
# policy
# ---------------------------------------------------------------------------------------------


@dataclass
class DiffusionConfig:
    """Config of :class:`DiffusionPolicy` (defaults: Diffusion Policy on PushT, scaled down)."""

    obs_key: str = "state"
    #: use ``obs[obs_key][..., :state_dims]`` (None = all); 5 = gym-pusht's state on push_t
    state_dims: int | None = None
    n_obs_steps: int = 2
    horizon: int = 16
    n_action_steps: int = 8
    num_train_timesteps: int = 100
    num_inference_steps: int = 10
    beta_schedule: str = "squaredcos_cap_v2"
    clip_sample: bool = True
    network: str = "unet"
    down_dims: tuple[int, ...] = (32, 64, 128)
    kernel_size: int = 5
    n_groups: int = 8
    step_embed_dim: int = 64
    mlp_hidden: int = 512
    mlp_blocks: int = 3
    #: seed of the fixed initial noise used in deterministic mode
    seed: int = 0

    def __post_init__(self) -> None:
        n = "DiffusionConfig"
        _check_positive_ints(
            n,
            self,
            (
                "n_obs_steps",
                "horizon",
                "n_action_steps",
                "num_train_timesteps",
                "num_inference_steps",
                "kernel_size",
                "n_groups",
                "step_embed_dim",
                "mlp_hidden",
                "mlp_blocks",
            ),
        )
        if self.state_dims is not None and (not isinstance(self.state_dims, int) or self.state_dims < 1):
            raise ConfigError(f"{n}.state_dims = {self.state_dims!r}; expected a positive int or None")
        if self.n_action_steps > self.horizon - self.n_obs_steps + 1:
            raise ConfigError(
                f"{n}.n_action_steps = {self.n_action_steps} exceeds horizon - n_obs_steps + 1 = "
                f"{self.horizon - self.n_obs_steps + 1}"
            )
        if self.num_train_timesteps > MAX_TRAIN_TIMESTEPS:  # the schedule is built before any tensor check
            raise ConfigError(
                f"{n}.num_train_timesteps = {self.num_train_timesteps} exceeds {MAX_TRAIN_TIMESTEPS}; "
                f"diffusion policies use 50-1000"
            )
        if self.num_inference_steps > self.num_train_timesteps:
            raise ConfigError(
                f"{n}.num_inference_steps = {self.num_inference_steps} exceeds "
                f"num_train_timesteps = {self.num_train_timesteps}"
            )
        if self.step_embed_dim < 4 or self.step_embed_dim % 2:
            raise ConfigError(f"{n}.step_embed_dim = {self.step_embed_dim}; expected an even int >= 4")
        _check_choice(n, "beta_schedule", self.beta_schedule, ["squaredcos_cap_v2", "linear"])
        _check_choice(n, "network", self.network, ["unet", "mlp"])
        _check_sizes(n, "down_dims", self.down_dims)
        if self.network == "unet":
            if any(d % self.n_groups for d in self.down_dims):
                raise ConfigError(
                    f"{n}.down_dims = {self.down_dims}: every width must be divisible by n_groups = {self.n_groups}"
                )
            factor = 2 ** (len(self.down_dims) - 1)
            if self.horizon % factor:
                raise ConfigError(
                    f"{n}.horizon = {self.horizon} must be divisible by {factor} "
                    f"(2 ** (len(down_dims) - 1)) for the UNet"
                )


@register_policy("diffusion")
class DiffusionPolicy(ChunkedPolicy):
    """State-conditioned diffusion policy with action chunks (see the module docstring)."""

    config_class = DiffusionConfig
    config: DiffusionConfig

    def __init__(self, config: DiffusionConfig | dict | None = None, spec: PolicySpec | None = None) -> None:
        super().__init__(config, spec)
        cfg = self.config
        a = self.spec.action
        if a.discrete:
            raise SpecMismatchError(f"DiffusionPolicy needs a continuous action, the spec has {a.describe()}")
        o = self.spec.obs(cfg.obs_key)
        if len(o.shape) != 1:
            raise SpecMismatchError(
                f"DiffusionPolicy conditions on a vector observation; {cfg.obs_key!r} has shape {o.shape}"
            )
        if cfg.state_dims is not None and cfg.state_dims > o.shape[0]:
            raise SpecMismatchError(
                f"DiffusionConfig.state_dims = {cfg.state_dims} but {cfg.obs_key!r} has only {o.shape[0]} entries"
            )
        self.obs_dim = cfg.state_dims or o.shape[0]
        self.action_dim = a.dim
        lo, hi = (b.reshape(-1) for b in a.bounds())
        finite = np.isfinite(lo) & np.isfinite(hi) & (hi > lo)
        self.register_buffer("obs_min", torch.full((self.obs_dim,), -1.0))
        self.register_buffer("obs_max", torch.full((self.obs_dim,), 1.0))
        self.register_buffer("action_min", torch.tensor(np.where(finite, lo, -1.0), dtype=torch.float32))
        self.register_buffer("action_max", torch.tensor(np.where(finite, hi, 1.0), dtype=torch.float32))
        # derived from the config: not stored in checkpoints
        betas = make_betas(cfg.num_train_timesteps, cfg.beta_schedule)
        self.register_buffer("alphas_cumprod", torch.cumprod(1.0 - betas, 0).float(), persistent=False)
        gen = torch.Generator().manual_seed(int(cfg.seed))
        self.register_buffer(
            "fixed_noise", torch.randn((cfg.horizon, self.action_dim), generator=gen), persistent=False
        )
        cond_dim = cfg.n_obs_steps * self.obs_dim
        if cfg.network == "unet":
            self.net: nn.Module = ConditionalUnet1D(
                self.action_dim, cond_dim, cfg.step_embed_dim, cfg.down_dims, cfg.kernel_size, cfg.n_groups
            )
        else:
            self.net = ResidualMLPNoiseNet(
                cfg.horizon, self.action_dim, cond_dim, cfg.step_embed_dim, cfg.mlp_hidden, cfg.mlp_blocks
            )

    # -- declared needs ----------------------------------------------------------------------
    def required_obs_keys(self) -> list[str]:
        return [self.config.obs_key]

    @property
    def action_offset(self) -> int:
        return 1 - self.config.n_obs_steps

    def window(self) -> dict[str, int]:
        """Training-window layout relative to the current step ``t`` (see the module docstring)."""
        c = self.config
        return {
            "n_obs_steps": c.n_obs_steps,
            "obs_start": -(c.n_obs_steps - 1),
            "horizon": c.horizon,
            "action_start": -(c.n_obs_steps - 1),
            "n_action_steps": c.n_action_steps,
            "executed_start": c.n_obs_steps - 1,
        }

    # -- normalization -----------------------------------------------------------------------
    @staticmethod
    def _scale(lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
        rng = hi - lo
        return torch.where(rng > 1e-6, rng, torch.full_like(rng, 2.0))

    def normalize_obs(self, x: torch.Tensor) -> torch.Tensor:
        x = x[..., : self.obs_dim].float()
        return (x - self.obs_min) / self._scale(self.obs_min, self.obs_max) * 2 - 1

    def normalize_action(self, a: torch.Tensor) -> torch.Tensor:
        return (a.float() - self.action_min) / self._scale(self.action_min, self.action_max) * 2 - 1

    def unnormalize_action(self, z: torch.Tensor) -> torch.Tensor:
        return (z + 1) / 2 * self._scale(self.action_min, self.action_max) + self.action_min

    @torch.no_grad()
    def fit_normalizer(self, obs_batch: dict[str, Any], action_batch: Any | None = None) -> None:
        """Min/max normalization from a dataset: ``obs[obs_key]`` ``(N, [T,] D)``, actions ``(N, [H,] A)``."""
        x = obs_batch[self.config.obs_key]
        x = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x).float()
        x = x[..., : self.obs_dim].reshape(-1, self.obs_dim)
        self.obs_min.copy_(x.amin(0))
        self.obs_max.copy_(x.amax(0))
        if action_batch is not None:
            a = (
                torch.as_tensor(
                    np.asarray(action_batch) if not isinstance(action_batch, torch.Tensor) else action_batch
                )
                .float()
                .reshape(-1, self.action_dim)
            )
            self.action_min.copy_(a.amin(0))
            self.action_max.copy_(a.amax(0))

    # -- encoding ----------------------------------------------------------------------------
    def _history(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, D)`` or ``(B, n_obs_steps, D)`` -> ``(B, n_obs_steps, D)`` (a single step is repeated)."""
        if x.dim() == 2:
            return x[:, None].expand(x.shape[0], self.n_obs_steps, x.shape[1])
        if x.dim() != 3 or x.shape[1] != self.n_obs_steps:
            raise SpecMismatchError(
                f"observation {self.config.obs_key!r} has shape {tuple(x.shape)}; expected "
                f"(B, D) or (B, n_obs_steps={self.n_obs_steps}, D)"
            )
        return x

    def encode(self, obs_hist: torch.Tensor) -> torch.Tensor:
        """Global conditioning: normalized, flattened observation history ``(B, n_obs_steps * obs_dim)``."""
        h = self.normalize_obs(self._history(obs_hist))
        return h.reshape(h.shape[0], -1)

    def features_tensors(self, obs_t: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.encode(obs_t[self.config.obs_key])

    @torch.no_grad()
    def features(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """Observation encoding ``(B, n_obs_steps * obs_dim)``. ``obs[obs_key]`` may be ``(B, D)``
        (treated as the first step of an episode: repeated) or a history ``(B, n_obs_steps, D)``."""
        x = obs[self.config.obs_key]
        lead = 2 if np.ndim(x) == 3 else 1
        obs_t = self.obs_to_tensors({self.config.obs_key: x}, extra_leading=lead)
        return self.features_tensors(obs_t).cpu().numpy()

    # -- diffusion ---------------------------------------------------------------------------
    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        ab = self.alphas_cumprod[t].view(-1, *([1] * (x0.dim() - 1)))
        return ab.sqrt() * x0 + (1 - ab).sqrt() * noise

    def sample(self, cond: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """DDIM (eta = 0) from initial ``noise`` ``(B, horizon, A)``; returns normalized actions."""
        cfg = self.config
        x = noise
        ratio = cfg.num_train_timesteps // cfg.num_inference_steps
        for t in ddim_timesteps(cfg.num_train_timesteps, cfg.num_inference_steps):
            tt = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
            eps = self.net(x, tt, cond)
            ab_t = self.alphas_cumprod[t]
            prev = t - ratio
            ab_prev = self.alphas_cumprod[prev] if prev >= 0 else torch.ones((), device=x.device)
            x0 = (x - (1 - ab_t).sqrt() * eps) / ab_t.sqrt()
            if cfg.clip_sample:
                x0 = x0.clamp(-1.0, 1.0)
                eps = (x - ab_t.sqrt() * x0) / (1 - ab_t).sqrt()
            x = ab_prev.sqrt() * x0 + (1 - ab_prev).sqrt() * eps
        return x

    def predict_action_chunk(self, obs_hist: torch.Tensor, deterministic: bool = True) -> torch.Tensor:
        """The full predicted chunk ``(B, horizon, A)`` in env units for histories ``(B, n_obs_steps, D)``."""
        cond = self.encode(obs_hist)
        shape = (cond.shape[0], self.horizon, self.action_dim)
        noise = self.fixed_noise.expand(shape) if deterministic else self._normal(shape)
        return self.unnormalize_action(self.sample(cond, noise))

    def predict_chunk(self, obs_hist_t: dict[str, torch.Tensor], deterministic: bool = True) -> torch.Tensor:
        chunk = self.predict_action_chunk(obs_hist_t[self.config.obs_key], deterministic)
        start = self.n_obs_steps - 1
        out = chunk[:, start : start + self.n_action_steps]
        return out.reshape(out.shape[0], out.shape[1], *self.spec.action.shape)

    # -- training ----------------------------------------------------------------------------
    def compute_bc_loss(
        self, obs_batch: dict[str, Any], action_batch: Any, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Diffusion (epsilon-prediction MSE) loss. ``obs_batch[obs_key]``: ``(B, n_obs_steps, D)``
        (or ``(B, D)`` when ``n_obs_steps == 1``); ``action_batch``: ``(B, horizon, A)`` env units.
        Noise and timesteps come from ``generator`` (default: the global torch RNG)."""
        obs_t = self._as_tensor_batch(obs_batch)
        x = obs_t[self.config.obs_key]
        if x.dim() == 2 and self.n_obs_steps > 1:
            raise SpecMismatchError(
                f"observation {self.config.obs_key!r} has shape {tuple(x.shape)}; training "
                f"needs a history (B, {self.n_obs_steps}, D)"
            )
        a = action_batch if isinstance(action_batch, torch.Tensor) else torch.as_tensor(np.asarray(action_batch))
        a = a.to(self.torch_device).float()
        if a.dim() != 3 or a.shape[1:] != (self.horizon, self.action_dim):
            raise SpecMismatchError(
                f"action batch has shape {tuple(a.shape)}; expected (B, horizon={self.horizon}, {self.action_dim})"
            )
        cond = self.encode(x)
        x0 = self.normalize_action(a)
        b = x0.shape[0]
        if generator is None:
            noise = torch.randn(x0.shape, device=x0.device)
            t = torch.randint(0, self.config.num_train_timesteps, (b,), device=x0.device)
        else:
            noise = torch.randn(x0.shape, generator=generator).to(x0.device)
            t = torch.randint(0, self.config.num_train_timesteps, (b,), generator=generator).to(x0.device)
        pred = self.net(self.add_noise(x0, noise, t), t, cond)
        return F.mse_loss(pred, noise)

    def compute_loss(self, batch: dict[str, Any]) -> torch.Tensor:
        """``batch = {"obs": {obs_key: (B, n_obs_steps, D)}, "action": (B, horizon, A)}``."""
        return self.compute_bc_loss(batch["obs"], batch["action"])


__all__ = [
    "ConditionalUnet1D",
    "DiffusionConfig",
    "DiffusionPolicy",
    "ResidualMLPNoiseNet",
    "ddim_timesteps",
    "make_betas",
]
