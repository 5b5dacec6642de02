"""Episode datasets: sim demonstrations and rollouts in one HDF5 format.

Layout of a file (h5py)::

    /                      attrs: format="twinrank-episodes", version=1, task, control_mode
    /episodes/000000/      attrs: seed, condition (JSON), success, length, return,
                                  failure_reason, source ("expert", "policy:<id>", ...)
        obs/<key>          (T, ...) observation before each action (keys as in TwinEnv:
                           "state", "proprio", "point_cloud", "rgb/cam_left" -> "rgb__cam_left")
        actions            (T, ...) action taken (int64 for discrete, float32 otherwise)
        rewards            (T,) float32 dense reward after the action
        privileged         (T, S) float32 privileged state (always stored, for teachers/OOD)
        success            (T,) bool, success flag after the action

Episodes are appended as they finish, so an interrupted collection keeps what it has.
``data_digest`` is a content hash recorded in checkpoint manifests.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

FORMAT = "twinrank-episodes"
VERSION = 1


class DatasetError(ValueError):
    """A dataset file is missing, of another format, or inconsistent."""


@dataclass
class Episode:
    obs: dict[str, np.ndarray]
    actions: np.ndarray
    rewards: np.ndarray
    privileged: np.ndarray
    success_flags: np.ndarray
    seed: int = 0
    condition: dict[str, Any] = field(default_factory=dict)
    source: str = "expert"
    failure_reason: str = ""

    @property
    def length(self) -> int:
        return int(len(self.actions))

    @property
    def success(self) -> bool:
        return bool(self.success_flags[-1]) if len(self.success_flags) else False

    @property
    def ret(self) -> float:
        return float(self.rewards.sum())


def _h5key(key: str) -> str:
    return key.replace("/", "__")


def _obskey(key: str) -> str:
    return key.replace("__", "/")


class EpisodeWriter:
    """Appends episodes to an HDF5 file (created if missing; task/mode must match)."""

    def __init__(self, path: str | Path, task: str, control_mode: str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with h5py.File(self.path, "a") as f:
            if "format" not in f.attrs:
                f.attrs.update({"format": FORMAT, "version": VERSION, "task": task, "control_mode": control_mode})
                f.create_group("episodes")
            else:
                _check_header(f, self.path)
                if f.attrs["task"] != task or f.attrs["control_mode"] != control_mode:
                    raise DatasetError(
                        f"{self.path}: holds task {f.attrs['task']!r} / mode {f.attrs['control_mode']!r}, "
                        f"not {task!r} / {control_mode!r}; write to another file"
                    )

    def add(self, ep: Episode) -> int:
        with h5py.File(self.path, "a") as f:
            eps = f["episodes"]
            idx = len(eps)
            g = eps.create_group(f"{idx:06d}")
            og = g.create_group("obs")
            for k, v in ep.obs.items():
                og.create_dataset(_h5key(k), data=v, compression="gzip" if v.ndim >= 3 else None)
            g.create_dataset("actions", data=ep.actions)
            g.create_dataset("rewards", data=ep.rewards.astype(np.float32))
            g.create_dataset("privileged", data=ep.privileged.astype(np.float32))
            g.create_dataset("success", data=ep.success_flags.astype(bool))
            g.attrs.update(
                {
                    "seed": ep.seed,
                    "condition": json.dumps(ep.condition),
                    "success": ep.success,
                    "length": ep.length,
                    "return": ep.ret,
                    "failure_reason": ep.failure_reason,
                    "source": ep.source,
                }
            )
            return idx


def _check_header(f: h5py.File, path: Path) -> None:
    if f.attrs.get("format") != FORMAT:
        raise DatasetError(f"{path}: not a twinrank episode file (format attribute is {f.attrs.get('format')!r})")
    if int(f.attrs.get("version", -1)) != VERSION:
        raise DatasetError(f"{path}: episode format version {f.attrs.get('version')} is not supported ({VERSION})")


def dataset_info(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"dataset {path} not found")
    with h5py.File(path, "r") as f:
        _check_header(f, path)
        eps = f["episodes"]
        succ = [bool(eps[k].attrs["success"]) for k in eps]
        return {
            "task": str(f.attrs["task"]),
            "control_mode": str(f.attrs["control_mode"]),
            "episodes": len(succ),
            "success_rate": float(np.mean(succ)) if succ else 0.0,
            "transitions": int(sum(int(eps[k].attrs["length"]) for k in eps)),
        }


def iter_episodes(path: str | Path, keys: list[str] | None = None) -> Iterator[Episode]:
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"dataset {path} not found; collect one with `twinrank train` or policies.demos")
    with h5py.File(path, "r") as f:
        _check_header(f, path)
        for name in f["episodes"]:
            g = f["episodes"][name]
            obs_keys = [_obskey(k) for k in g["obs"]]
            want = obs_keys if keys is None else keys
            missing = [k for k in want if k not in obs_keys]
            if missing:
                raise DatasetError(f"{path}: episode {name} has no observation {missing} (has {obs_keys})")
            yield Episode(
                obs={k: g["obs"][_h5key(k)][()] for k in want},
                actions=g["actions"][()],
                rewards=g["rewards"][()],
                privileged=g["privileged"][()],
                success_flags=g["success"][()],
                seed=int(g.attrs["seed"]),
                condition=json.loads(g.attrs["condition"]),
                source=str(g.attrs["source"]),
                failure_reason=str(g.attrs["failure_reason"]),
            )


def load_transitions(path: str | Path, keys: list[str], only_success: bool = False) -> dict[str, np.ndarray]:
    """All (obs, action) pairs concatenated: {"obs/<key>": ..., "actions": ..., "episode": ...}."""
    cols: dict[str, list[np.ndarray]] = {f"obs/{k}": [] for k in keys}
    cols["actions"] = []
    cols["episode"] = []
    for i, ep in enumerate(iter_episodes(path, keys)):
        if only_success and not ep.success:
            continue
        for k in keys:
            cols[f"obs/{k}"].append(ep.obs[k])
        cols["actions"].append(ep.actions)
        cols["episode"].append(np.full(ep.length, i))
    if not cols["actions"]:
        raise DatasetError(f"{path}: no {'successful ' if only_success else ''}episodes to train on")
    return {k: np.concatenate(v) for k, v in cols.items()}


def data_digest(path: str | Path) -> str:
    """sha256 of the file's bytes (first 16 hex digits), recorded in checkpoint manifests."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]
