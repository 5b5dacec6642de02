"""Batched stepping: N envs of one task in one process with stacked observations.

Used by the evaluator (many seeds/conditions per worker) and by RL. Each sub-env keeps its
own compiled world (conditions may change geometry), so a batch can mix conditions and
scenes (``cfg`` may be one TaskCfg per env: multi-scene batches).
Observations are stacked per key into arrays with a leading batch axis; ``infos`` is a
dict of arrays (``success``, ``failure_reason``, ...). With ``autoreset=True`` an env that
finishes is reset in the same ``step`` (Stable-Baselines3 style) with the next seed of its
seed stream: the returned observation is the new episode's first one, and the finished
episode's last observation/info are in ``infos["final_obs"][i]`` / ``infos["final_info"][i]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from twin.env import TwinEnv
from twin.perturbations import Condition, PerturbationSuite
from twin.tasks.base import ObservationCfg, TaskCfg


class BatchedTwinEnv:
    def __init__(
        self,
        task: str,
        num_envs: int,
        *,
        cfg: TaskCfg | Sequence[TaskCfg] | None = None,
        control_mode: str | None = None,
        observations: ObservationCfg | None = None,
        suite: PerturbationSuite | str | None = None,
        max_steps: int | None = None,
        autoreset: bool = False,
    ) -> None:
        if num_envs < 1:
            raise ValueError(f"num_envs = {num_envs}: need at least one env")
        cfgs = list(cfg) if isinstance(cfg, (list, tuple)) else [cfg] * num_envs
        if len(cfgs) != num_envs:
            raise ValueError(f"got {len(cfgs)} task configs for {num_envs} envs; give one per env or a single one")
        self.envs = [
            TwinEnv(
                task,
                cfg=cfgs[i],
                control_mode=control_mode,
                observations=observations,
                suite=suite,
                max_steps=max_steps,
            )
            for i in range(num_envs)
        ]
        self.num_envs = num_envs
        self.autoreset = autoreset
        self.single_action_space = self.envs[0].action_space
        self.single_observation_space = self.envs[0].observation_space
        self._done = np.zeros(num_envs, dtype=bool)
        self._next_seed = np.arange(num_envs, dtype=np.int64)

    # ---- reset -------------------------------------------------------------------------------
    def reset(
        self, seeds: Sequence[int] | int | None = None, conditions: Sequence[Condition | None] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Reset all envs. ``seeds``: one per env, or a base seed (env i gets base + i)."""
        if seeds is None:
            seeds = list(range(self.num_envs))
        elif isinstance(seeds, (int, np.integer)):
            seeds = [int(seeds) + i for i in range(self.num_envs)]
        if len(seeds) != self.num_envs:
            raise ValueError(f"got {len(seeds)} seeds for {self.num_envs} envs; give one seed per env")
        conditions = conditions or [None] * self.num_envs
        results = [
            self.envs[i].reset(seed=int(seeds[i]), options={"condition": conditions[i]}) for i in range(self.num_envs)
        ]
        self._done[:] = False
        self._next_seed = np.asarray(seeds, dtype=np.int64) + self.num_envs
        return self._stack([r[0] for r in results]), self._stack_infos([r[1] for r in results])

    def reset_envs(
        self, env_ids: Sequence[int], seeds: Sequence[int], conditions: Sequence[Condition | None] | None = None
    ) -> dict[str, np.ndarray]:
        """Reset a subset; returns the full stacked observation."""
        conditions = conditions or [None] * len(env_ids)
        for i, s, c in zip(env_ids, seeds, conditions):
            self.envs[i].reset(seed=int(s), options={"condition": c})
            self._done[i] = False
        return self.observe()

    def observe(self) -> dict[str, np.ndarray]:
        return self._stack([e._obs() for e in self.envs])

    # ---- step --------------------------------------------------------------------------------
    def step(self, actions: np.ndarray | Sequence[Any]):
        if len(actions) != self.num_envs:
            raise ValueError(f"got {len(actions)} actions for {self.num_envs} envs")
        obs_list, rewards, terms, truncs, infos = [], [], [], [], []
        final_obs: dict[int, dict[str, np.ndarray]] = {}
        final_info: dict[int, dict[str, Any]] = {}
        for i, env in enumerate(self.envs):
            if self._done[i]:
                # A finished env without autoreset stays frozen until reset_envs().
                obs_list.append(env._safe_obs() if env._failed_reason else env._obs())
                rewards.append(0.0)
                terms.append(True)
                truncs.append(False)
                infos.append(env._info(success=False))
                continue
            obs, r, term, trunc, info = env.step(actions[i])
            if term or trunc:
                final_obs[i] = obs
                final_info[i] = info
                if self.autoreset:
                    obs, _ = env.reset(seed=int(self._next_seed[i]))
                    self._next_seed[i] += self.num_envs
                else:
                    self._done[i] = True
            obs_list.append(obs)
            rewards.append(r)
            terms.append(term)
            truncs.append(trunc)
            infos.append(info)
        info_out = self._stack_infos(infos)
        if final_obs:
            info_out["final_obs"] = final_obs
            info_out["final_info"] = final_info
        return (
            self._stack(obs_list),
            np.asarray(rewards, dtype=np.float32),
            np.asarray(terms),
            np.asarray(truncs),
            info_out,
        )

    @property
    def done(self) -> np.ndarray:
        return self._done.copy()

    def close(self) -> None:
        for e in self.envs:
            e.close()

    # ---- helpers -----------------------------------------------------------------------------
    @staticmethod
    def _stack(obs_list: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        return {k: np.stack([o[k] for o in obs_list]) for k in obs_list[0]}

    @staticmethod
    def _stack_infos(infos: list[dict[str, Any]]) -> dict[str, Any]:
        keys = set().union(*[i.keys() for i in infos])
        out: dict[str, Any] = {}
        for k in sorted(keys):
            vals = [i.get(k) for i in infos]
            try:
                out[k] = np.asarray(vals)
            except ValueError:
                out[k] = vals
        return out
