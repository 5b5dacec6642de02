"""Plug third-party policies into the policy protocol.

:class:`TorchModuleAdapter` wraps any ``torch.nn.Module`` that maps a float observation
tensor ``(B, *obs_shape)`` to action logits ``(B, n)`` (discrete) or actions ``(B, dim)``
(continuous)::

    import torch
    from torch import nn
    from twin.env import TwinEnv
    from policies import PolicySpec, TorchModuleAdapter

    env = TwinEnv("mug_to_sink", control_mode="discrete")
    spec = PolicySpec.from_env(env, obs_keys=["state"])
    net = nn.Sequential(nn.Linear(spec.obs("state").shape[0], 64), nn.ReLU(), nn.Linear(64, 14))
    policy = TorchModuleAdapter(net, spec, obs_key="state", discrete=True)

    obs, _ = env.reset(seed=0)
    action = policy.act({"state": obs["state"][None]})[0]   # int64 in 0..13
    env.step(action)

:class:`CallablePolicy` wraps a plain numpy function ``fn(obs) -> actions`` (or
``fn(obs, deterministic) -> actions``), no torch involved.

Adapters satisfy :class:`~policies.interface.PolicyProtocol`, so the evaluator can run
them; they are not registered policy classes, so they cannot be written as checkpoints
(subclass :class:`~policies.interface.Policy` with a config dataclass and
``@register_policy`` for that; see policies/README.md).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from policies.interface import Policy, PolicySpec, SpecMismatchError


class TorchModuleAdapter(Policy):
    """A ``torch.nn.Module`` as a policy.

    ``module(x)`` gets ``obs[obs_key]`` as a float32 tensor ``(B, *shape)`` on the policy's
    device (apply ``obs_scale`` to uint8 images yourself or pass ``obs_scale=1/255``).

    * ``discrete=True``: the output is logits ``(B, n)``; deterministic = argmax,
      stochastic = a categorical sample.
    * ``discrete=False``: the output is the action ``(B, dim)`` in env units; stochastic
      mode adds Gaussian noise of ``action_std`` (0 = same as deterministic). Actions are
      clipped to the spec bounds.

    ``features()`` is the input of the module's last layer for an ``nn.Sequential``, or
    ``features_fn(module, x)`` when given.
    """

    def __init__(
        self,
        module: nn.Module,
        spec: PolicySpec,
        obs_key: str = "state",
        discrete: bool = False,
        *,
        action_std: float = 0.0,
        obs_scale: float = 1.0,
        features_fn: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = None,
        device: str = "cpu",
    ) -> None:
        if not isinstance(module, nn.Module):
            raise TypeError(f"TorchModuleAdapter wraps a torch.nn.Module, got {type(module).__name__}")
        self._obs_key = obs_key
        super().__init__(None, spec)
        if discrete != self.spec.action.discrete:
            raise SpecMismatchError(
                f"TorchModuleAdapter(discrete={discrete}) but the spec's action is {self.spec.action.describe()}"
            )
        self.module = module
        self.discrete = discrete
        self.action_std = float(action_std)
        self.obs_scale = float(obs_scale)
        self.features_fn = features_fn
        self.eval()
        self.to(device)

    def required_obs_keys(self) -> list[str]:
        return [self._obs_key]

    def _x(self, obs_t: dict[str, torch.Tensor]) -> torch.Tensor:
        x = obs_t[self._obs_key].float()
        return x * self.obs_scale if self.obs_scale != 1.0 else x

    def _out(self, obs_t: dict[str, torch.Tensor]) -> torch.Tensor:
        out = self.module(self._x(obs_t))
        b = obs_t[self._obs_key].shape[0]
        want = (b, self.spec.action.n) if self.discrete else (b, *self.spec.action.shape)
        if tuple(out.shape) != want and out.numel() == int(np.prod(want)):
            out = out.reshape(want)
        if tuple(out.shape) != want:
            raise SpecMismatchError(f"the wrapped module returned shape {tuple(out.shape)}; the spec needs {want}")
        return out

    def act_tensors(self, obs_t: dict[str, torch.Tensor], deterministic: bool = True) -> torch.Tensor:
        out = self._out(obs_t)
        if self.discrete:
            if deterministic:
                return out.argmax(-1)
            u = self._uniform(out.shape).clamp_(1e-10, 1.0 - 1e-7)
            return (torch.log_softmax(out, -1) - torch.log(-torch.log(u))).argmax(-1)
        if deterministic or self.action_std == 0.0:
            return out
        return out + self.action_std * self._normal(out.shape)

    def features_tensors(self, obs_t: dict[str, torch.Tensor]) -> torch.Tensor:
        x = self._x(obs_t)
        if self.features_fn is not None:
            f = self.features_fn(self.module, x)
        elif isinstance(self.module, nn.Sequential) and len(self.module) > 1:
            f = self.module[:-1](x)
        else:
            raise NotImplementedError("features() needs an nn.Sequential or features_fn=(module, x) -> (B, F)")
        return f.reshape(f.shape[0], -1)


class CallablePolicy:
    """A numpy function as a policy (no torch).

    ``fn(obs) -> actions`` or ``fn(obs, deterministic) -> actions`` with ``obs`` the
    batched observation dict and ``actions`` ``(B,)`` ints / ``(B, dim)`` floats.
    ``reset_fn(env_ids)`` and ``features_fn(obs) -> (B, F)`` are optional.
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        spec: PolicySpec,
        *,
        reset_fn: Callable[[Sequence[int] | None], None] | None = None,
        features_fn: Callable[[dict[str, np.ndarray]], np.ndarray] | None = None,
    ) -> None:
        self.fn = fn
        self.spec = spec
        self.reset_fn = reset_fn
        self.features_fn = features_fn
        try:
            params = inspect.signature(fn).parameters
            self._takes_flag = (
                "deterministic" in params
                or len([p for p in params.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]) >= 2
            )
        except (TypeError, ValueError):
            self._takes_flag = False

    @property
    def device(self) -> str:
        return "cpu"

    def act(self, obs: dict[str, np.ndarray], deterministic: bool = True) -> np.ndarray:
        batch = self.spec.check_obs(obs)
        a = self.fn(obs, deterministic) if self._takes_flag else self.fn(obs)
        a = np.asarray(a)
        spec = self.spec.action
        if spec.discrete:
            if a.size != batch:
                raise SpecMismatchError(f"the policy function returned shape {a.shape}; expected ({batch},) ints")
            return a.reshape(batch).astype(np.int64)
        want = (batch, *spec.shape)
        if a.size != int(np.prod(want)):
            raise SpecMismatchError(f"the policy function returned shape {a.shape}; expected {want}")
        lo, hi = spec.bounds()
        return np.clip(a.reshape(want).astype(np.float32), lo, hi).astype(np.float32)

    def reset(self, env_ids: Sequence[int] | None = None) -> None:
        if self.reset_fn is not None:
            self.reset_fn(env_ids)

    def features(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        if self.features_fn is None:
            raise NotImplementedError("CallablePolicy(features_fn=...) was not given")
        return np.asarray(self.features_fn(obs), dtype=np.float32)


__all__ = ["CallablePolicy", "TorchModuleAdapter"]
