"""Behaviour cloning for any policy with ``compute_bc_loss`` (MLP, point-cloud, diffusion).

Chunked policies (``policy.chunked``) train on windows: ``n_obs_steps`` observations
ending at t (the first observation repeated before an episode's start) and the
``horizon`` actions starting at ``t + policy.action_offset`` (clamped to the episode), as
in Diffusion Policy.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from policies.data import Episode
from policies.demos import expert_steps_start
from policies.interface import Policy


@dataclass
class BCConfig:
    epochs: int = 30
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-6
    max_grad_norm: float = 5.0
    #: "constant" or "cosine" (the rate decays to 0 over ``epochs``)
    lr_schedule: str = "constant"
    seed: int = 0


def episodes_to_samples(
    episodes: list[Episode], keys: list[str], n_obs_steps: int = 1, horizon: int = 1, action_offset: int = 0
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Training samples from episodes: plain (obs, action) pairs, or windows for chunked policies.

    The action window of sample t starts at ``t + action_offset`` (Diffusion Policy: the
    chunk starts at the first observation of the history, offset ``-(n_obs_steps - 1)``).
    """
    obs_cols: dict[str, list[np.ndarray]] = {k: [] for k in keys}
    acts: list[np.ndarray] = []
    for ep in episodes:
        T = ep.length
        first = expert_steps_start(ep)
        if n_obs_steps == 1 and horizon == 1:
            for k in keys:
                obs_cols[k].append(ep.obs[k][first:])
            acts.append(ep.actions[first:])
            continue
        t = np.arange(max(0, first - action_offset), T)
        obs_idx = np.clip(t[:, None] + np.arange(-n_obs_steps + 1, 1)[None], 0, T - 1)  # (T, n_obs)
        act_idx = np.clip(t[:, None] + action_offset + np.arange(horizon)[None], 0, T - 1)  # (T, H)
        for k in keys:
            obs_cols[k].append(ep.obs[k][obs_idx])
        acts.append(ep.actions[act_idx])
    if not acts:
        raise ValueError("no episodes to train on")
    return {k: np.concatenate(v) for k, v in obs_cols.items()}, np.concatenate(acts)


def policy_samples(policy: Policy, episodes: list[Episode]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The policy's training samples: its own ``training_samples(episodes)`` when it has one
    (:class:`policies.pusht_state.PushTStatePolicy`), else :func:`episodes_to_samples` with its
    window."""
    own = getattr(policy, "training_samples", None)
    if own is not None:
        return own(episodes)
    return episodes_to_samples(
        episodes, policy.spec.obs_keys, policy.n_obs_steps, policy.horizon, getattr(policy, "action_offset", 0)
    )


def train_bc(
    policy: Policy,
    obs: dict[str, np.ndarray],
    actions: np.ndarray,
    cfg: BCConfig,
    callback: Callable[[int, float], bool | None] | None = None,
) -> list[float]:
    """Minimise ``policy.compute_bc_loss`` over the dataset; returns the per-epoch mean loss.

    ``callback(epoch, loss)`` runs after each epoch; returning True stops training.
    The policy's normalization is fitted to this dataset first.
    """
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    policy.fit_normalizer(obs, actions)
    if cfg.lr_schedule not in ("constant", "cosine"):
        raise ValueError(f"BCConfig.lr_schedule = {cfg.lr_schedule!r}; use constant or cosine")
    opt = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    n = len(actions)
    history: list[float] = []
    for epoch in range(1, cfg.epochs + 1):
        policy.train()
        perm = rng.permutation(n)
        total, batches = 0.0, 0
        for start in range(0, n, cfg.batch_size):
            idx = perm[start : start + cfg.batch_size]
            loss = policy.compute_bc_loss({k: v[idx] for k, v in obs.items()}, actions[idx])
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.max_grad_norm)
            opt.step()
            total += float(loss.detach())
            batches += 1
        history.append(total / max(batches, 1))
        if cfg.lr_schedule == "cosine":
            for g in opt.param_groups:
                g["lr"] = cfg.lr * 0.5 * (1.0 + np.cos(np.pi * epoch / cfg.epochs))
        if callback is not None and callback(epoch, history[-1]):
            break
    policy.eval()
    return history
