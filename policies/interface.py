"""One protocol for every policy: specs, the ``Policy`` base class, chunk execution, registry.

The protocol (:class:`PolicyProtocol`) is what the evaluator and the trainers call; it needs
no torch: any object with

* ``spec``: a :class:`PolicySpec` (task, observation keys/shapes/units, action space and
  control mode),
* ``act(obs: dict[str, np.ndarray], deterministic: bool = True) -> np.ndarray``, batched
  over the leading axis of every observation array (discrete: int64 ``(B,)``, continuous:
  float32 ``(B, dim)``),
* ``reset(env_ids: Sequence[int] | None = None)``: forget per-env state (action queues,
  observation history) of those envs, or of all envs when None,
* ``device``: a string such as ``"cpu"`` or ``"cuda:0"``,

is a policy (see :mod:`policies.adapters` to wrap a ``torch.nn.Module`` or a numpy
function). :class:`Policy` is the torch base class of the built-in models; on top of the
protocol it offers ``to(device)``, ``features(obs)`` (penultimate embedding, for OOD
detection), ``compute_bc_loss`` for behaviour cloning and, for models with a value head,
``evaluate_actions`` / ``act_with_info`` / ``get_value`` for PPO. Chunked-action policies
(diffusion, ACT-style) derive from :class:`ChunkedPolicy`: they predict a chunk of actions
per env, a :class:`ChunkExecutor` plays it over the following steps and an
:class:`ObsHistory` keeps the last ``n_obs_steps`` observations per env.

Registered policy classes (``@register_policy("name")``) can be saved to and loaded from
checkpoints (:mod:`policies.checkpoint`).
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn

# ---------------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------------


class SpecMismatchError(ValueError):
    """An env, an observation or an action does not match a policy's declared spec."""


class ConfigError(ValueError):
    """A policy config that its class refuses (unknown field, bad value)."""


class DeviceError(RuntimeError):
    """A device that is not available on this machine."""


class PolicyRegistryError(KeyError):
    """Unknown or duplicate policy class name."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


# ---------------------------------------------------------------------------------------------
# specs
# ---------------------------------------------------------------------------------------------

#: units of the TwinEnv observation groups (see twin/env.py and twin/tasks/base.py)
OBS_UNITS: dict[str, str] = {
    "state": "privileged task state (task-specific: see the task's state_description) + robot state",
    "proprio": "joints rad (7), gripper width m (1), TCP position m (3), TCP quaternion wxyz (4)",
    "point_cloud": "x, y, z in m (world frame) + r, g, b in [0, 1]",
    "rgb": "RGB uint8 0-255, (height, width, 3)",
    "depth": "depth in m, (height, width)",
}

#: units of the TwinEnv control modes (TwinEnv.action_description)
ACTION_UNITS: dict[str, str] = {
    "joint_pos": "7 joint targets in rad + gripper in [0, 1]",
    "ee_delta": "[dx, dy, dz, drx, dry, drz, gripper] in [-1, 1]",
    "ee_pose": "[x, y, z, qw, qx, qy, qz, gripper]",
    "discrete": "one integer in 0..13 (CASHER's 14 actions)",
    "pusht_xy": "[x, y] in 0..512 workspace units",
}


def _units_for_key(key: str) -> str:
    return OBS_UNITS.get(key) or OBS_UNITS.get(key.split("/", 1)[0], "")


def _float_to_json(x: float) -> float | str:
    x = float(x)
    if math.isnan(x):
        raise ValueError("NaN in an action bound")
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return x


def _float_from_json(x: Any) -> float:
    if isinstance(x, str):
        if x in ("inf", "-inf"):
            return float(x)
        raise ValueError(f"bad bound {x!r}")
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise ValueError(f"bad bound {x!r}")
    return float(x)


def _shape(value: Any, what: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(s) for s in value)
    except TypeError as exc:
        raise ValueError(f"{what}: shape must be a list of ints, got {value!r}") from exc
    if any(s < 0 for s in shape) or any(isinstance(s, bool) for s in value):
        raise ValueError(f"{what}: shape must be non-negative ints, got {value!r}")
    return shape


@dataclass(frozen=True)
class ObsSpec:
    """One observation entry a policy reads: ``obs[key]`` of shape ``(B, *shape)``."""

    key: str
    shape: tuple[int, ...]
    dtype: str = "float32"
    units: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", _shape(self.shape, f"observation {self.key!r}"))
        np.dtype(self.dtype)  # raises TypeError for an unknown dtype name

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "shape": list(self.shape), "dtype": self.dtype, "units": self.units}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ObsSpec:
        _check_keys(d, {"key", "shape"}, {"dtype", "units"}, "observation spec")
        return cls(
            key=str(d["key"]),
            shape=tuple(d["shape"]),
            dtype=str(d.get("dtype", "float32")),
            units=str(d.get("units", "")),
        )


@dataclass(frozen=True)
class ActionSpec:
    """The action a policy emits.

    ``control_mode`` is a TwinEnv control mode (``joint_pos``, ``ee_delta``, ``ee_pose``,
    ``discrete``, ``pusht_xy``) or a free name for other envs. Discrete actions set ``n``
    (and ``shape == ()``); continuous ones set ``shape`` and per-dimension ``low`` / ``high``
    (actions are clipped to them by ``act``).
    """

    control_mode: str
    shape: tuple[int, ...] = ()
    low: tuple[float, ...] | None = None
    high: tuple[float, ...] | None = None
    n: int | None = None
    units: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", _shape(self.shape, "action"))
        if self.n is not None:
            if int(self.n) < 1:
                raise ValueError(f"action: discrete n = {self.n} must be >= 1")
            object.__setattr__(self, "n", int(self.n))
            if self.shape != ():
                raise ValueError(f"action: a discrete action has shape (), got {self.shape}")
        elif self.shape == ():
            raise ValueError("action: a continuous action needs a shape such as (7,); a discrete one needs n")
        dim = int(np.prod(self.shape)) if self.shape else 1
        for name in ("low", "high"):
            v = getattr(self, name)
            if v is not None:
                v = tuple(float(x) for x in np.broadcast_to(np.asarray(v, dtype=np.float64), (dim,)))
                object.__setattr__(self, name, v)
        if self.low is not None and self.high is not None and any(lo > hi for lo, hi in zip(self.low, self.high)):
            raise ValueError(f"action: low {self.low} above high {self.high}")

    @property
    def discrete(self) -> bool:
        return self.n is not None

    @property
    def dim(self) -> int:
        """Number of action components (1 for discrete)."""
        return 1 if self.discrete else int(np.prod(self.shape)) if self.shape else 1

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """(low, high) as float32 arrays of ``shape``; +-inf where unbounded."""
        lo = np.full(self.dim, -np.inf) if self.low is None else np.asarray(self.low)
        hi = np.full(self.dim, np.inf) if self.high is None else np.asarray(self.high)
        return lo.astype(np.float32).reshape(self.shape), hi.astype(np.float32).reshape(self.shape)

    def describe(self) -> str:
        if self.discrete:
            return f"{self.control_mode!r} (Discrete({self.n}))"
        return f"{self.control_mode!r} (Box{self.shape})"

    def to_dict(self) -> dict[str, Any]:
        return {
            "control_mode": self.control_mode,
            "shape": list(self.shape),
            "low": None if self.low is None else [_float_to_json(x) for x in self.low],
            "high": None if self.high is None else [_float_to_json(x) for x in self.high],
            "n": self.n,
            "units": self.units,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ActionSpec:
        _check_keys(d, {"control_mode"}, {"shape", "low", "high", "n", "units"}, "action spec")
        low = d.get("low")
        high = d.get("high")
        return cls(
            control_mode=str(d["control_mode"]),
            shape=tuple(d.get("shape", ())),
            low=None if low is None else tuple(_float_from_json(x) for x in low),
            high=None if high is None else tuple(_float_from_json(x) for x in high),
            n=d.get("n"),
            units=str(d.get("units", "")),
        )

    @classmethod
    def from_space(cls, space: Any, control_mode: str, units: str = "") -> ActionSpec:
        from gymnasium import spaces

        units = units or ACTION_UNITS.get(control_mode, "")
        if isinstance(space, spaces.Discrete):
            return cls(control_mode=control_mode, shape=(), n=int(space.n), units=units)
        if isinstance(space, spaces.Box):
            return cls(
                control_mode=control_mode,
                shape=tuple(space.shape),
                low=tuple(np.asarray(space.low, dtype=np.float64).reshape(-1)),
                high=tuple(np.asarray(space.high, dtype=np.float64).reshape(-1)),
                units=units,
            )
        raise SpecMismatchError(f"action space {space} is not supported (use Discrete or Box)")


def _check_keys(d: Any, required: set[str], optional: set[str], what: str) -> None:
    if not isinstance(d, dict):
        raise ValueError(f"{what} must be a JSON object, got {type(d).__name__}")
    missing = required - set(d)
    if missing:
        raise ValueError(f"{what} is missing {sorted(missing)}")
    unknown = set(d) - required - optional
    if unknown:
        raise ValueError(f"{what} has unknown fields {sorted(unknown)}")


def _env_parts(env: Any) -> tuple[str, dict[str, Any], Any, str | None]:
    """(task name, observation spaces by key, action space, control mode) of an env.

    Works for TwinEnv, BatchedTwinEnv, gymnasium wrappers around them and any env with a
    ``Dict`` observation space.
    """
    from gymnasium import spaces

    base = env
    if hasattr(env, "envs") and hasattr(env, "single_observation_space"):  # BatchedTwinEnv / vector env
        obs_space, act_space = env.single_observation_space, env.single_action_space
        base = env.envs[0] if getattr(env, "envs", None) else env
    else:
        obs_space, act_space = env.observation_space, env.action_space
    base = getattr(base, "unwrapped", base)
    task_obj = getattr(base, "task", None)
    task = getattr(task_obj, "name", "") if task_obj is not None else ""
    cfg = getattr(base, "cfg", None)
    mode = getattr(getattr(cfg, "actions", None), "mode", None)
    if isinstance(obs_space, spaces.Dict):
        obs = dict(obs_space.spaces)
    else:
        obs = {"state": obs_space}
    return str(task or ""), obs, act_space, mode


@dataclass
class PolicySpec:
    """What a policy reads and emits: task, observation entries, action."""

    task: str
    observations: list[ObsSpec]
    action: ActionSpec

    def __post_init__(self) -> None:
        self.observations = [o if isinstance(o, ObsSpec) else ObsSpec.from_dict(o) for o in self.observations]
        if not isinstance(self.action, ActionSpec):
            self.action = ActionSpec.from_dict(self.action)
        keys = [o.key for o in self.observations]
        dup = sorted({k for k in keys if keys.count(k) > 1})
        if dup:
            raise ValueError(f"observation keys {dup} are declared twice")

    # -- access ------------------------------------------------------------------------------
    @property
    def obs_keys(self) -> list[str]:
        return [o.key for o in self.observations]

    def obs(self, key: str) -> ObsSpec:
        for o in self.observations:
            if o.key == key:
                return o
        raise SpecMismatchError(f"observation {key!r} is not in the policy spec (it has {self.obs_keys})")

    def has(self, key: str) -> bool:
        return key in self.obs_keys

    def select(self, keys: Sequence[str]) -> PolicySpec:
        """The same spec restricted to ``keys`` (in that order)."""
        return PolicySpec(task=self.task, observations=[self.obs(k) for k in keys], action=self.action)

    # -- (de)serialization -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "observations": [o.to_dict() for o in self.observations],
            "action": self.action.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PolicySpec:
        _check_keys(d, {"task", "observations", "action"}, set(), "policy spec")
        if not isinstance(d["observations"], list):
            raise ValueError("policy spec 'observations' must be a list")
        return cls(
            task=str(d["task"]),
            observations=[ObsSpec.from_dict(o) for o in d["observations"]],
            action=ActionSpec.from_dict(d["action"]),
        )

    @classmethod
    def from_env(cls, env: Any, obs_keys: Sequence[str] | None = None, task: str | None = None) -> PolicySpec:
        """The spec of an env (TwinEnv, BatchedTwinEnv, or a gymnasium env with Dict observations).

        ``obs_keys`` selects the observation entries the policy reads (default: all).
        """
        env_task, obs_spaces, act_space, mode = _env_parts(env)
        keys = list(obs_keys) if obs_keys is not None else list(obs_spaces)
        missing = [k for k in keys if k not in obs_spaces]
        if missing:
            raise SpecMismatchError(
                f"observation keys {missing} are not in the env's observation space (it has {sorted(obs_spaces)})"
            )
        base = getattr(env, "envs", [env])[0] if hasattr(env, "envs") else env
        described = getattr(getattr(base, "unwrapped", base), "observation_description", None)

        def units(k: str) -> str:  # the env's own words (task-specific), else the generic ones
            return (described(k) if callable(described) else "") or _units_for_key(k)

        obs = [ObsSpec(k, tuple(obs_spaces[k].shape), str(np.dtype(obs_spaces[k].dtype)), units(k)) for k in keys]
        if mode is None:
            from gymnasium import spaces

            mode = "discrete" if isinstance(act_space, spaces.Discrete) else "continuous"
        describe = getattr(getattr(base, "unwrapped", base), "action_description", None)
        units = describe() if callable(describe) else ""
        return cls(
            task=task if task is not None else env_task,
            observations=obs,
            action=ActionSpec.from_space(act_space, mode, units),
        )

    # -- checks ------------------------------------------------------------------------------
    def mismatches(self, env: Any) -> list[str]:
        """Human-readable differences between this spec and an env (empty when it fits)."""
        from gymnasium import spaces

        env_task, obs_spaces, act_space, mode = _env_parts(env)
        problems: list[str] = []
        if self.task and env_task and self.task != env_task:
            problems.append(f"task: the policy is for task {self.task!r} but the env runs {env_task!r}")
        for o in self.observations:
            sp = obs_spaces.get(o.key)
            if sp is None:
                hint = ""
                if o.key == "point_cloud":
                    hint = "; enable it with ObservationCfg(point_cloud=True)"
                elif o.key.startswith(("rgb/", "depth/")):
                    hint = "; enable it with ObservationCfg(rgb=True / depth=True) and that camera"
                problems.append(
                    f"observation {o.key!r}: required by the policy but not in the env's observation "
                    f"space (env has {sorted(obs_spaces)}){hint}"
                )
                continue
            if tuple(sp.shape) != o.shape:
                problems.append(
                    f"observation {o.key!r}: the policy expects shape {o.shape} but the env gives {tuple(sp.shape)}"
                )
            if sp.dtype is not None and np.dtype(sp.dtype) != np.dtype(o.dtype):
                problems.append(
                    f"observation {o.key!r}: the policy expects dtype {o.dtype} but the env gives {np.dtype(sp.dtype)}"
                )
        a = self.action
        env_desc = (
            f"Discrete({act_space.n})"
            if isinstance(act_space, spaces.Discrete)
            else f"Box{tuple(getattr(act_space, 'shape', ()))}"
        )
        if mode is not None and a.control_mode != mode:
            problems.append(
                f"action control_mode: the policy acts in {a.describe()} but the env uses {mode!r} ({env_desc})"
            )
        elif a.discrete:
            if not isinstance(act_space, spaces.Discrete) or int(act_space.n) != a.n:
                problems.append(f"action space: the policy emits Discrete({a.n}) but the env expects {env_desc}")
        else:
            if not isinstance(act_space, spaces.Box) or tuple(act_space.shape) != a.shape:
                problems.append(f"action shape: the policy emits Box{a.shape} but the env expects {env_desc}")
            else:
                lo, hi = a.bounds()
                for name, mine, theirs in (("low", lo, act_space.low), ("high", hi, act_space.high)):
                    theirs = np.asarray(theirs, dtype=np.float32).reshape(a.shape)
                    if not np.allclose(mine, theirs, rtol=1e-6, atol=1e-6, equal_nan=False):
                        problems.append(
                            f"action {name}: the policy's bounds {mine.tolist()} differ from the "
                            f"env's {theirs.tolist()}"
                        )
        return problems

    def check_env(self, env: Any) -> None:
        """Raise :class:`SpecMismatchError` naming every key/shape/mode that does not fit ``env``."""
        problems = self.mismatches(env)
        if problems:
            raise SpecMismatchError("policy spec does not match the env:\n  - " + "\n  - ".join(problems))

    def check_obs(self, obs: dict[str, Any], keys: Sequence[str] | None = None, extra_leading: int = 1) -> int:
        """Check a batched observation dict; returns the batch size.

        Every key in ``keys`` (default: all declared) must be present with shape
        ``(B, *shape)`` (``extra_leading`` leading axes; 2 for ``(B, T, ...)``).
        """
        if not isinstance(obs, dict):
            raise SpecMismatchError(
                f"observations must be a dict of arrays keyed by {self.obs_keys}, got {type(obs).__name__}"
            )
        batch: int | None = None
        for key in keys if keys is not None else self.obs_keys:
            o = self.obs(key)
            if key not in obs:
                raise SpecMismatchError(
                    f"observation {key!r} is missing (the policy reads {self.obs_keys}; got {sorted(obs)})"
                )
            shp = tuple(obs[key].shape)
            if len(shp) != len(o.shape) + extra_leading or shp[extra_leading:] != o.shape:
                want = ("B",) * (extra_leading == 1) + ("B", "T") * (extra_leading == 2)
                raise SpecMismatchError(
                    f"observation {key!r} has shape {shp}; the policy expects {(*want, *o.shape)} "
                    f"(batched over the leading axis; add one with obs[{key!r}][None] for a single env)"
                )
            if batch is None:
                batch = shp[0]
            elif shp[0] != batch:
                raise SpecMismatchError(f"observation {key!r} has batch size {shp[0]}, others have {batch}")
        if batch is None:
            raise SpecMismatchError("the policy declares no observation keys to check")
        return batch


# ---------------------------------------------------------------------------------------------
# configs
# ---------------------------------------------------------------------------------------------


def config_to_dict(config: Any) -> dict[str, Any]:
    """JSON-ready dict of a config dataclass (tuples become lists)."""
    if config is None:
        return {}
    if not dataclasses.is_dataclass(config):
        raise ConfigError(f"a policy config must be a dataclass, got {type(config).__name__}")

    def conv(v: Any) -> Any:
        if isinstance(v, (tuple, list)):
            return [conv(x) for x in v]
        if isinstance(v, dict):
            return {str(k): conv(x) for k, x in v.items()}
        if isinstance(v, (np.integer,)):
            return int(v)
        if isinstance(v, (np.floating,)):
            return float(v)
        return v

    return {f.name: conv(getattr(config, f.name)) for f in dataclasses.fields(config)}


def config_from_dict(cls: type, d: Any) -> Any:
    """Build config dataclass ``cls`` from a dict; unknown fields and bad values raise ConfigError."""
    if d is None:
        d = {}
    if isinstance(d, cls):
        return d
    if not isinstance(d, dict):
        raise ConfigError(f"{cls.__name__}: config must be a JSON object, got {type(d).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - set(fields))
    if unknown:
        raise ConfigError(f"{cls.__name__}: unknown config field(s) {unknown}; accepted: {sorted(fields)}")
    hints = typing.get_type_hints(cls)

    def conv(v: Any, hint: Any) -> Any:
        if isinstance(v, list) and "tuple" in str(hint):
            return tuple(conv(x, "tuple" if "tuple[tuple" in str(hint) else "") for x in v)
        return v

    kwargs = {k: conv(v, hints.get(k, "")) for k, v in d.items()}
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{cls.__name__}: {exc}") from exc


def _check_choice(cls_name: str, name: str, value: Any, choices: Sequence[Any]) -> None:
    if value not in choices:
        raise ConfigError(f"{cls_name}.{name} = {value!r}; choose one of {list(choices)}")


def _check_positive_ints(cls_name: str, config: Any, names: Sequence[str]) -> None:
    """Each of ``config``'s fields ``names`` is an int >= 1 (not a bool), else a ConfigError."""
    for name in names:
        v = getattr(config, name)
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ConfigError(f"{cls_name}.{name} = {v!r}; expected a positive int")


def _check_sizes(cls_name: str, name: str, value: Any, allow_empty: bool = False) -> None:
    if (
        not isinstance(value, tuple)
        or (not value and not allow_empty)
        or not all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in value)
    ):
        raise ConfigError(f"{cls_name}.{name} = {value!r}; expected a tuple of positive ints")


# ---------------------------------------------------------------------------------------------
# devices
# ---------------------------------------------------------------------------------------------


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``"cpu"`` (default), ``"cuda"``/``"cuda:N"`` (error when not available), ``"auto"``."""
    if device is None:
        return torch.device("cpu")
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise DeviceError(f"unknown device {device!r}; use 'cpu', 'cuda', 'cuda:N' or 'auto'") from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(
                f"device {str(device)!r} requested but CUDA is not available here (torch "
                f"{torch.__version__}, CUDA build: {torch.version.cuda or 'none'}); "
                f"use device='cpu' or 'auto'"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DeviceError(
                f"device {str(device)!r} requested but only {torch.cuda.device_count()} CUDA device(s) are visible"
            )
    elif dev.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise DeviceError(f"device {str(device)!r} requested but MPS is not available; use 'cpu'")
    elif dev.type != "cpu":
        raise DeviceError(f"device {str(device)!r} is not supported; use 'cpu', 'cuda' or 'auto'")
    return dev


# ---------------------------------------------------------------------------------------------
# protocol and base class
# ---------------------------------------------------------------------------------------------


@runtime_checkable
class PolicyProtocol(Protocol):
    """What the evaluator needs from a policy; no torch required."""

    spec: PolicySpec

    def act(self, obs: dict[str, np.ndarray], deterministic: bool = True) -> np.ndarray: ...

    def reset(self, env_ids: Sequence[int] | None = None) -> None: ...

    @property
    def device(self) -> str: ...


class Policy(nn.Module):
    """Torch base class of the built-in policies.

    Subclasses set ``config_class`` (a dataclass; its JSON goes into checkpoints), call
    ``super().__init__(config, spec)`` and implement :meth:`act_tensors` (or, for chunked
    policies, :meth:`ChunkedPolicy.predict_chunk`), :meth:`features_tensors` and
    :meth:`compute_bc_loss`. Models with a value head also implement
    :meth:`evaluate_actions`, :meth:`act_with_info` and :meth:`get_value`.

    Sampling in stochastic mode draws from the policy's own CPU ``torch.Generator``
    (:meth:`seed`), so rollouts are reproducible and independent of the global torch RNG
    and of the device.
    """

    #: registry name (set by :func:`register_policy`)
    policy_name: ClassVar[str] = ""
    #: config dataclass of the class (its JSON is the checkpoint's ``config``)
    config_class: ClassVar[type | None] = None
    #: True for policies that plan action chunks (see :class:`ChunkedPolicy`)
    chunked: ClassVar[bool] = False
    #: True when evaluate_actions / act_with_info / get_value are available (PPO)
    has_value_head: bool = False

    def __init__(self, config: Any, spec: PolicySpec | None) -> None:
        super().__init__()
        if spec is None:
            raise ValueError(f"{type(self).__name__} needs a PolicySpec (e.g. PolicySpec.from_env(env))")
        if self.config_class is not None:
            config = config_from_dict(self.config_class, config)
        if not isinstance(spec, PolicySpec):
            if isinstance(spec, dict):
                spec = PolicySpec.from_dict(spec)
            else:
                raise TypeError(f"spec must be a PolicySpec, got {type(spec).__name__}")
        self.config = config
        keys = self.required_obs_keys()
        if keys is not None:
            missing = [k for k in keys if not spec.has(k)]
            if missing:
                raise SpecMismatchError(
                    f"{type(self).__name__} reads observations {missing} that the spec does "
                    f"not declare (spec has {spec.obs_keys})"
                )
            spec = spec.select(keys)
        self.spec: PolicySpec = spec
        self._generator = torch.Generator(device="cpu")
        self._generator.manual_seed(0)
        self._device = torch.device("cpu")
        #: checkpoint metadata after load_checkpoint (training step, run id, ...)
        self.checkpoint_info: dict[str, Any] = {}

    def check_env(self, env: Any) -> None:
        """``self.spec.check_env(env)``: SpecMismatchError when the env does not fit."""
        self.spec.check_env(env)

    # -- declared needs ----------------------------------------------------------------------
    def required_obs_keys(self) -> list[str] | None:
        """Observation keys the model reads (the spec is trimmed to them); None keeps all."""
        return None

    @property
    def n_obs_steps(self) -> int:
        """Observations per sample: 1, or the history length of chunked policies."""
        return 1

    @property
    def horizon(self) -> int:
        """Actions per training target: 1, or the chunk length of chunked policies."""
        return 1

    @property
    def action_offset(self) -> int:
        """First action of a training target relative to the current step ``t``.

        A sample at step ``t`` pairs observations ``t - n_obs_steps + 1 .. t`` with actions
        ``t + action_offset .. t + action_offset + horizon - 1`` (0 for per-step policies;
        ``1 - n_obs_steps`` for DiffusionPolicy, as in Diffusion Policy / LeRobot).
        """
        return 0

    # -- device / randomness -----------------------------------------------------------------
    @property
    def device(self) -> str:
        return str(self.torch_device)

    @property
    def torch_device(self) -> torch.device:
        """Where the parameters live; remembered (walking the module tree costs more than a
        small policy's forward pass) and forgotten whenever tensors move or are replaced
        (``_apply`` behind ``to``/``cuda``/``cpu``, ``load_state_dict``)."""
        dev = self.__dict__.get("_param_device")
        if dev is None:
            dev = self._device
            for t in self.parameters():
                dev = t.device
                break
            else:
                for t in self.buffers():
                    dev = t.device
                    break
            self.__dict__["_param_device"] = dev
        return dev

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, (nn.Module, torch.Tensor)):
            self.__dict__["_param_device"] = None
        super().__setattr__(name, value)

    def _apply(self, *args: Any, **kwargs: Any) -> Policy:
        self.__dict__["_param_device"] = None
        out = super()._apply(*args, **kwargs)
        self.__dict__["_param_device"] = None
        return out

    def load_state_dict(self, *args: Any, **kwargs: Any) -> Any:
        self.__dict__["_param_device"] = None
        out = super().load_state_dict(*args, **kwargs)
        self.__dict__["_param_device"] = None
        return out

    def to(self, *args: Any, **kwargs: Any) -> Policy:  # type: ignore[override]
        """``policy.to("cpu" | "cuda" | "cuda:N" | "auto")``; a clear DeviceError when unavailable."""
        if len(args) == 1 and not kwargs and isinstance(args[0], (str, torch.device)):
            dev = resolve_device(args[0])
            super().to(dev)
            self._device = dev
            return self
        if "device" in kwargs:
            kwargs["device"] = resolve_device(kwargs["device"])
        return super().to(*args, **kwargs)

    def seed(self, seed: int) -> None:
        """Seed the sampling generator used in stochastic mode."""
        self._generator.manual_seed(int(seed))

    def _uniform(self, shape: Sequence[int]) -> torch.Tensor:
        return torch.rand(tuple(shape), generator=self._generator).to(self.torch_device)

    def _normal(self, shape: Sequence[int]) -> torch.Tensor:
        return torch.randn(tuple(shape), generator=self._generator).to(self.torch_device)

    # -- observations ------------------------------------------------------------------------
    def obs_to_tensors(self, obs: dict[str, Any], extra_leading: int = 1) -> dict[str, torch.Tensor]:
        """Check ``obs`` against the spec and convert the declared keys to tensors on the device.

        Floating arrays become float32; integer arrays (e.g. uint8 images) keep their dtype.
        """
        self.spec.check_obs(obs, extra_leading=extra_leading)
        dev = self.torch_device
        out: dict[str, torch.Tensor] = {}
        for o in self.spec.observations:
            v = obs[o.key]
            t = v if isinstance(v, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(np.asarray(v)))
            if t.is_floating_point() or t.dtype == torch.float64:
                t = t.to(dtype=torch.float32)
            out[o.key] = t.to(dev)
        return out

    def as_tensor_batch(self, obs: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Observations for the training API (any leading axes): the declared keys as tensors on
        the device; floating arrays become float32, tensors are used as they are."""
        return self._as_tensor_batch(obs)

    def _as_tensor_batch(self, obs: dict[str, Any]) -> dict[str, torch.Tensor]:
        dev = self.torch_device
        out = {}
        for o in self.spec.observations:
            if o.key not in obs:
                raise SpecMismatchError(f"observation {o.key!r} is missing from the batch (got {sorted(obs)})")
            v = obs[o.key]
            t = v if isinstance(v, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(np.asarray(v)))
            if t.is_floating_point():
                t = t.to(dtype=torch.float32)
            out[o.key] = t.to(dev)
        return out

    # -- actions -----------------------------------------------------------------------------
    def finalize_actions(self, actions: torch.Tensor | np.ndarray) -> np.ndarray:
        """Env-ready numpy actions: int64 ``(B,)`` for discrete, float32 ``(B, *shape)`` clipped."""
        a = actions.detach().cpu().numpy() if isinstance(actions, torch.Tensor) else np.asarray(actions)
        spec = self.spec.action
        if spec.discrete:
            return a.reshape(a.shape[0]).astype(np.int64)
        a = a.reshape((a.shape[0], *spec.shape)).astype(np.float32)
        lo, hi = spec.bounds()
        return np.clip(a, lo, hi).astype(np.float32)

    @torch.no_grad()
    def act(self, obs: dict[str, np.ndarray], deterministic: bool = True) -> np.ndarray:
        """Batched actions for batched observations (leading axis = env)."""
        obs_t = self.obs_to_tensors(obs)
        return self.finalize_actions(self.act_tensors(obs_t, deterministic=deterministic))

    def act_single(self, obs: dict[str, np.ndarray], deterministic: bool = True) -> np.ndarray | int:
        """Action for one unbatched observation (a single TwinEnv); uses env slot 0."""
        batched = {k: np.asarray(obs[k])[None] for k in self.spec.obs_keys}
        a = self.act(batched, deterministic=deterministic)[0]
        return int(a) if self.spec.action.discrete else a

    def act_tensors(self, obs_t: dict[str, torch.Tensor], deterministic: bool = True) -> torch.Tensor:
        """Actions in env units as a tensor (before clipping). Implemented by subclasses."""
        raise NotImplementedError

    def reset(self, env_ids: Sequence[int] | None = None) -> None:
        """Forget per-env state of ``env_ids`` (all when None). Stateless policies: no-op."""
        return None

    # -- embeddings --------------------------------------------------------------------------
    @torch.no_grad()
    def features(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """Penultimate-layer embedding ``(B, F)`` float32 (for OOD detection)."""
        obs_t = self.obs_to_tensors(obs)
        return self.features_tensors(obs_t).float().cpu().numpy()

    def features_tensors(self, obs_t: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    # -- training API ------------------------------------------------------------------------
    def compute_bc_loss(self, obs_batch: dict[str, Any], action_batch: Any) -> torch.Tensor:
        """Scalar behaviour-cloning loss (NLL / MSE / diffusion loss) for a batch.

        ``obs_batch[key]`` is ``(B, *shape)`` (``(B, n_obs_steps, *shape)`` for chunked
        policies); ``action_batch`` is ``(B,)`` int for discrete, ``(B, dim)`` float for
        continuous (``(B, horizon, dim)`` for chunked policies), in env units.
        """
        raise NotImplementedError

    def fit_normalizer(self, obs_batch: dict[str, Any], action_batch: Any | None = None) -> None:
        """Set observation/action normalization from a dataset (no-op for models without one)."""
        return None

    def update_normalizer(self, obs_batch: dict[str, Any]) -> None:
        """Update running observation statistics with a batch (PPO rollouts); no-op by default."""
        return None

    def evaluate_actions(
        self, obs_t: dict[str, torch.Tensor], actions_t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(log_prob (B,), entropy (B,), value (B,)) of given actions; models with a value head."""
        raise NotImplementedError(f"{type(self).__name__} has no value head (has_value_head = False)")

    def act_with_info(
        self, obs_t: dict[str, torch.Tensor], deterministic: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(actions, log_prob (B,), value (B,)) for PPO rollouts; actions are NOT clipped."""
        raise NotImplementedError(f"{type(self).__name__} has no value head (has_value_head = False)")

    def get_value(self, obs_t: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} has no value head (has_value_head = False)")

    def extra_repr(self) -> str:
        return (
            f"policy={self.policy_name or type(self).__name__!r}, task={self.spec.task!r}, "
            f"action={self.spec.action.describe()}"
        )


# ---------------------------------------------------------------------------------------------
# chunked policies
# ---------------------------------------------------------------------------------------------


class ChunkExecutor:
    """Per-env queues of planned actions (Diffusion Policy / ACT receding horizon).

    The policy plans a chunk for an env only when that env's queue is empty, pushes the
    ``n_action_steps`` actions to execute, and every ``pop`` takes one action per env.
    ``reset(env_ids)`` empties just those queues (they re-plan at their next step).
    """

    def __init__(self, n_action_steps: int) -> None:
        if n_action_steps < 1:
            raise ValueError(f"n_action_steps = {n_action_steps} must be >= 1")
        self.n_action_steps = int(n_action_steps)
        self._queues: list[deque[np.ndarray]] | None = None
        #: number of plans made per env since the batch started (for diagnostics/tests)
        self.plan_counts: np.ndarray = np.zeros(0, dtype=np.int64)

    @property
    def num_envs(self) -> int | None:
        return None if self._queues is None else len(self._queues)

    def _ensure(self, batch_size: int) -> None:
        if self._queues is None:
            self._queues = [deque() for _ in range(batch_size)]
            self.plan_counts = np.zeros(batch_size, dtype=np.int64)
        elif len(self._queues) != batch_size:
            raise SpecMismatchError(
                f"batch size changed from {len(self._queues)} to {batch_size} envs without reset(); "
                f"call policy.reset() before acting on a different batch"
            )

    def needs_plan(self, batch_size: int) -> np.ndarray:
        """Env ids whose queue is empty."""
        self._ensure(batch_size)
        assert self._queues is not None
        return np.array([i for i, q in enumerate(self._queues) if not q], dtype=np.int64)

    def push(self, env_ids: Sequence[int], chunks: np.ndarray | torch.Tensor) -> None:
        """Queue ``chunks[j, :n_action_steps]`` for env ``env_ids[j]`` (replacing what was left)."""
        if self._queues is None:
            raise RuntimeError("push() before needs_plan(): the batch size is unknown")
        c = chunks.detach().cpu().numpy() if isinstance(chunks, torch.Tensor) else np.asarray(chunks)
        if c.shape[0] != len(env_ids) or c.ndim < 2:
            raise ValueError(f"chunks of shape {c.shape} for {len(env_ids)} envs; expected (k, T, ...)")
        for j, i in enumerate(env_ids):
            q = self._queues[int(i)]
            q.clear()
            q.extend(c[j, : self.n_action_steps])
            self.plan_counts[int(i)] += 1

    def pop(self) -> np.ndarray:
        """One action per env, stacked ``(B, ...)``."""
        if self._queues is None:
            raise RuntimeError("pop() on an empty executor")
        empty = [i for i, q in enumerate(self._queues) if not q]
        if empty:
            raise RuntimeError(f"envs {empty} have no planned actions; plan them first")
        return np.stack([q.popleft() for q in self._queues])

    def queue_lengths(self) -> np.ndarray:
        return np.array([len(q) for q in self._queues or []], dtype=np.int64)

    def reset(self, env_ids: Sequence[int] | None = None) -> None:
        if env_ids is None or self._queues is None:
            self._queues = None
            self.plan_counts = np.zeros(0, dtype=np.int64)
            return
        for i in env_ids:
            self._queues[int(i)].clear()


class ObsHistory:
    """Per-env history of the last ``n_steps`` observations (tensors on the policy's device).

    An env that is new or was reset gets its history filled with copies of its first
    observation (Diffusion Policy pads the start of an episode the same way).
    """

    def __init__(self, n_steps: int) -> None:
        if n_steps < 1:
            raise ValueError(f"n_obs_steps = {n_steps} must be >= 1")
        self.n_steps = int(n_steps)
        self._buf: dict[str, torch.Tensor] | None = None
        self._fresh: np.ndarray = np.zeros(0, dtype=bool)

    def push(self, obs_t: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Append one step; returns ``{key: (B, n_steps, *shape)}``."""
        batch = next(iter(obs_t.values())).shape[0]
        if self._buf is None or next(iter(self._buf.values())).shape[0] != batch:
            if self._buf is not None and not self._fresh.all():
                raise SpecMismatchError(
                    f"batch size changed from {next(iter(self._buf.values())).shape[0]} to {batch} envs without "
                    f"reset(); call policy.reset() before acting on a different batch"
                )
            self._buf = {k: v[:, None].repeat_interleave(self.n_steps, dim=1).clone() for k, v in obs_t.items()}
            self._fresh = np.zeros(batch, dtype=bool)
            return dict(self._buf)
        fresh = torch.from_numpy(self._fresh)
        for k, v in obs_t.items():
            b = self._buf[k]
            rolled = torch.cat([b[:, 1:], v[:, None]], dim=1)
            if fresh.any():
                f = fresh.to(v.device)
                rolled[f] = v[f][:, None].expand_as(rolled[f]).clone()
            self._buf[k] = rolled
        self._fresh[:] = False
        return dict(self._buf)

    def reset(self, env_ids: Sequence[int] | None = None) -> None:
        if env_ids is None or self._buf is None:
            self._buf = None
            self._fresh = np.zeros(0, dtype=bool)
            return
        for i in env_ids:
            self._fresh[int(i)] = True


class ChunkedPolicy(Policy):
    """Base of chunked-action policies: ``act`` keeps an observation history per env and
    plays each env's planned chunk before re-planning that env.

    Subclasses implement :meth:`predict_chunk`; their config gives ``horizon`` (actions
    predicted per plan), ``n_action_steps`` (executed per plan) and optionally
    ``n_obs_steps`` (history length, default 1).
    """

    chunked: ClassVar[bool] = True

    def __init__(self, config: Any, spec: PolicySpec | None) -> None:
        super().__init__(config, spec)
        self.executor = ChunkExecutor(self.n_action_steps)
        self.history = ObsHistory(self.n_obs_steps)

    @property
    def n_obs_steps(self) -> int:
        return int(getattr(self.config, "n_obs_steps", 1))

    @property
    def horizon(self) -> int:
        return int(self.config.horizon)

    @property
    def n_action_steps(self) -> int:
        return int(self.config.n_action_steps)

    def predict_chunk(self, obs_hist_t: dict[str, torch.Tensor], deterministic: bool = True) -> torch.Tensor:
        """Actions to execute, ``(k, n_action_steps, *action_shape)`` in env units, for ``k`` envs
        given their histories ``{key: (k, n_obs_steps, *shape)}``."""
        raise NotImplementedError

    @torch.no_grad()
    def act(self, obs: dict[str, np.ndarray], deterministic: bool = True) -> np.ndarray:
        obs_t = self.obs_to_tensors(obs)
        batch = next(iter(obs_t.values())).shape[0]
        ids = self.executor.needs_plan(batch)
        hist = self.history.push(obs_t)
        if len(ids):
            idx = torch.from_numpy(ids).to(self.torch_device)
            chunk = self.predict_chunk({k: v.index_select(0, idx) for k, v in hist.items()}, deterministic)
            self.executor.push(ids, self._finalize_chunk(chunk))
        return self.executor.pop()

    def _finalize_chunk(self, chunk: torch.Tensor) -> np.ndarray:
        k, t = chunk.shape[:2]
        flat = self.finalize_actions(chunk.reshape(k * t, *chunk.shape[2:]))
        return flat.reshape(k, t, *flat.shape[1:])

    def reset(self, env_ids: Sequence[int] | None = None) -> None:
        self.executor.reset(env_ids)
        self.history.reset(env_ids)


# ---------------------------------------------------------------------------------------------
# registry
# ---------------------------------------------------------------------------------------------

_REGISTRY: dict[str, type[Policy]] = {}


def register_policy(name: str) -> Callable[[type[Policy]], type[Policy]]:
    """Class decorator: register a :class:`Policy` subclass (with a ``config_class``) by name."""

    def deco(cls: type[Policy]) -> type[Policy]:
        if not (isinstance(cls, type) and issubclass(cls, Policy)):
            raise TypeError(f"@register_policy({name!r}) needs a Policy subclass, got {cls!r}")
        if cls.config_class is None or not dataclasses.is_dataclass(cls.config_class):
            raise TypeError(f"@register_policy({name!r}): {cls.__name__}.config_class must be a dataclass")
        old = _REGISTRY.get(name)
        if old is not None and old is not cls and old.__qualname__ != cls.__qualname__:
            raise PolicyRegistryError(f"policy name {name!r} is already registered by {old.__qualname__}")
        cls.policy_name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def get_policy_class(name: str) -> type[Policy]:
    """A registered class. The built-in ones (``policies.models``, ``policies.diffusion``)
    register when the ``policies`` package is imported, which any import of this module does."""
    if name not in _REGISTRY:
        raise PolicyRegistryError(f"unknown policy class {name!r}; registered: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def list_policies() -> list[str]:
    return sorted(_REGISTRY)


def make_policy(name: str, config: Any = None, spec: PolicySpec | dict | None = None) -> Policy:
    """Instantiate registered policy ``name`` with ``config`` (dataclass, dict or None = defaults)."""
    cls = get_policy_class(name)
    if spec is None:
        raise ValueError(f"make_policy({name!r}): a PolicySpec is required (e.g. PolicySpec.from_env(env))")
    return cls(config, spec)


__all__ = [
    "ACTION_UNITS",
    "OBS_UNITS",
    "ActionSpec",
    "ChunkExecutor",
    "ChunkedPolicy",
    "ConfigError",
    "DeviceError",
    "ObsHistory",
    "ObsSpec",
    "Policy",
    "PolicyProtocol",
    "PolicyRegistryError",
    "PolicySpec",
    "SpecMismatchError",
    "config_from_dict",
    "config_to_dict",
    "get_policy_class",
    "list_policies",
    "make_policy",
    "register_policy",
    "resolve_device",
]
