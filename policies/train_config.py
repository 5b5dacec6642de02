"""Training configs: what a training run is asked to do (YAML or dataclass), and what it returns.

Config (YAML or dataclass)::

    algo: ppo_bc            # ppo_bc | ppo | bc | diffusion_bc | distill
    task: reach
    control_mode: discrete
    policy: mlp             # registry name (policies.list_policies())
    policy_config: {hidden_sizes: [256, 256]}
    obs_keys: [state]
    demos: {episodes: 10, noise: 0.0, epsilon: 0.0, seed: 1000}
    total_env_steps: 20000  # PPO
    ppo: {num_envs: 8, n_steps: 25, bc_coef: 0.1}
    bc: {epochs: 30}
    checkpoint_every: 5
    eval_episodes: 10

The runners (:mod:`policies.train`, :mod:`policies.distill`) import this module; it imports
neither.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from policies.bc import BCConfig
from policies.ppo import PPOConfig
from twin.scene import dataclass_from_dict

Algo = Literal["ppo_bc", "ppo", "bc", "diffusion_bc", "distill"]


class TrainConfigError(ValueError):
    """A training config names an unknown algorithm, task, field or value."""


@dataclass
class DemoCfg:
    episodes: int = 10
    noise: float = 0.0
    epsilon: float = 0.0
    seed: int = 1000
    only_success: bool = True
    path: str = ""  # an existing dataset to use instead of collecting
    #: processes collecting demonstrations (0 = one per core); the data does not depend on it
    workers: int = 0
    #: BC only: DAgger-style rounds after the first training pass; each collects
    #: ``takeover_episodes`` episodes where the latest checkpoint drives for a random number of
    #: steps (up to ``takeover_max_switch``) and the expert finishes, then trains on everything
    takeover_rounds: int = 0
    takeover_episodes: int = 100
    takeover_max_switch: int = 200


@dataclass
class TrainConfig:
    algo: Algo = "ppo_bc"
    task: str = "reach"
    control_mode: str | None = "discrete"
    policy: str = "mlp"
    policy_config: dict[str, Any] = field(default_factory=dict)
    obs_keys: list[str] = field(default_factory=lambda: ["state"])
    suite: str | None = None
    demos: DemoCfg = field(default_factory=DemoCfg)
    total_env_steps: int = 20000
    ppo: PPOConfig = field(default_factory=PPOConfig)
    bc: BCConfig = field(default_factory=BCConfig)
    distill: dict[str, Any] = field(default_factory=dict)
    checkpoint_every: int = 5
    eval_episodes: int = 10
    eval_seed: int = 10_000
    seed: int = 0
    experiment: str = "twinrank-train"
    model_name: str = ""  # registered model; default "<task>-<algo>"
    run_name: str = ""

    @property
    def registered_model(self) -> str:
        return self.model_name or f"{self.task}-{self.algo}"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> TrainConfig:
        try:
            cfg = dataclass_from_dict(TrainConfig, d, strict=True)
        except (TypeError, ValueError) as exc:
            raise TrainConfigError(f"invalid training config: {exc}") from exc
        cfg.validate()
        return cfg

    @staticmethod
    def from_yaml(path: str | Path) -> TrainConfig:
        p = Path(path)
        if not p.is_file():
            raise TrainConfigError(f"training config {p} not found")
        data = yaml.safe_load(p.read_text()) or {}
        if not isinstance(data, dict):
            raise TrainConfigError(f"{p}: a training config is a YAML mapping of fields")
        return TrainConfig.from_dict(data)

    def validate(self) -> None:
        from twin.tasks import TaskError, get_task_class

        if self.algo not in ("ppo_bc", "ppo", "bc", "diffusion_bc", "distill"):
            raise TrainConfigError(f"algo = {self.algo!r}: use ppo_bc, ppo, bc, diffusion_bc or distill")
        try:
            get_task_class(self.task)
        except TaskError as exc:
            raise TrainConfigError(str(exc)) from exc
        if self.algo in ("ppo_bc", "ppo") and self.total_env_steps <= 0:
            raise TrainConfigError("total_env_steps must be positive for PPO")
        if self.checkpoint_every <= 0:
            raise TrainConfigError("checkpoint_every must be >= 1")
        if self.demos.workers < 0:
            raise TrainConfigError(f"demos.workers = {self.demos.workers}: use 0 (one per core) or a positive count")
        if self.demos.takeover_rounds < 0 or self.demos.takeover_episodes < 1 or self.demos.takeover_max_switch < 1:
            raise TrainConfigError("demos.takeover_rounds must be >= 0, takeover_episodes and takeover_max_switch >= 1")
        if self.demos.takeover_rounds and self.algo != "bc":
            raise TrainConfigError(f"demos.takeover_rounds is for algo bc, not {self.algo}; set it to 0")
        if self.bc.lr_schedule not in ("constant", "cosine"):
            raise TrainConfigError(f"bc.lr_schedule = {self.bc.lr_schedule!r}: use constant or cosine")

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True, default=str).encode()).hexdigest()[:12]


@dataclass
class CheckpointRecord:
    step: int
    path: Path
    success_rate: float
    model_version: str = ""


@dataclass
class TrainResult:
    run_id: str
    checkpoints: list[CheckpointRecord]
    history: list[dict[str, float]]


ProgressFn = Callable[[str, float, float], None]  # (description, completed, total)


#: push_t's default demonstrations: episodes and target noise (m; 17 mm on the PD target is
#: about 5 mm on the agent's next position)
PUSHT_DEMOS = 300
PUSHT_DEMO_NOISE = 0.017


#: tasks whose default BC config is the chunked state policy (``chunk_mlp``) with takeover
#: rounds: their experts hold while the gripper closes. Measured on the twin, 30 episodes per
#: checkpoint (2026-12-06): mug_to_sink one-step BC <= 0.05, chunked 0.67-0.87 after the
#: second takeover round; box_to_shelf chunked 0.77-1.00 from epoch 100 (4.6 min on 2 cores)
CHUNKED_BC_TASKS = ("mug_to_sink", "box_to_shelf")
#: actions of each predicted chunk of 8 played before the policy plans again (measured on
#: mug_to_sink, 30 episodes per checkpoint: 4 gave 0.67-0.87 after the second takeover round,
#: 8 gave 0.53-0.77)
CHUNKED_BC_ACTION_STEPS = 4


def default_control_mode(task: str) -> str:
    """The control mode a default config trains ``task`` in: CASHER's discrete actions where the
    task's demonstrator can drive them (waypoint experts in ``ee_pose``), else the
    demonstrator's own mode (``push_t``: ``pusht_xy``)."""
    from twin.tasks import TaskError, get_task_class

    try:
        mode = get_task_class(task).expert_mode
    except TaskError as exc:
        raise TrainConfigError(str(exc)) from exc
    return "discrete" if mode == "ee_pose" else mode


def default_config(algo: str, task: str) -> TrainConfig:
    """Sensible starting configs per algorithm (small enough for a laptop CPU), in the task's
    default control mode (:func:`default_control_mode`)."""
    if algo == "diffusion_bc":
        # push_t: condition on gym-pusht's 5-d state (agent xy, block xy, block angle), as the
        # field's Diffusion Policy does.
        return TrainConfig(
            algo="diffusion_bc",
            task=task,
            control_mode=None,
            policy="diffusion",
            policy_config={"state_dims": 5} if task == "push_t" else {},
            obs_keys=["state"],
            demos=DemoCfg(episodes=30),
            bc=BCConfig(epochs=60, batch_size=256),
            checkpoint_every=10,
            eval_episodes=10,
        )
    mode = default_control_mode(task)
    if algo == "bc" and task == "push_t":
        # measured on the twin (README, bench_training): the push_t state policy with noisy
        # expert demonstrations and DAgger-style takeover rounds
        return TrainConfig(
            algo="bc",
            task=task,
            control_mode=mode,
            policy="pusht_state",
            obs_keys=["state"],
            demos=DemoCfg(episodes=PUSHT_DEMOS, noise=PUSHT_DEMO_NOISE, takeover_rounds=2, takeover_episodes=150),
            bc=BCConfig(epochs=100, batch_size=512, lr=1e-3, weight_decay=1e-5, lr_schedule="cosine"),
            checkpoint_every=10,
            eval_episodes=20,
        )
    if algo == "bc" and task in CHUNKED_BC_TASKS:
        # measured on the twin (README, bench_training): a chunked state policy, because the
        # expert holds while the gripper closes, with DAgger-style takeover rounds
        return TrainConfig(
            algo="bc",
            task=task,
            control_mode=mode,
            policy="chunk_mlp",
            policy_config={"n_action_steps": CHUNKED_BC_ACTION_STEPS},
            obs_keys=["state"],
            demos=DemoCfg(episodes=200, takeover_rounds=4, takeover_episodes=100, takeover_max_switch=100),
            bc=BCConfig(epochs=40, lr_schedule="cosine"),
            checkpoint_every=10,
            eval_episodes=30,
        )
    if algo == "bc":
        return TrainConfig(
            algo="bc",
            task=task,
            control_mode=mode,
            demos=DemoCfg(episodes=20),
            bc=BCConfig(epochs=40),
            checkpoint_every=5,
        )
    if algo == "distill":
        return TrainConfig(
            algo="distill", task=task, control_mode=mode, policy="pointcloud", obs_keys=["point_cloud", "proprio"]
        )
    return TrainConfig(algo=algo, task=task, control_mode=mode)  # type: ignore[arg-type]


def with_overrides(cfg: TrainConfig, **overrides: Any) -> TrainConfig:
    data = cfg.to_dict()
    for k, v in overrides.items():
        if v is None:
            continue
        node = data
        parts = k.split(".")
        for p in parts[:-1]:
            node = node[p]
        node[parts[-1]] = v
    return TrainConfig.from_dict(data)


__all__ = [
    "Algo",
    "CheckpointRecord",
    "DemoCfg",
    "ProgressFn",
    "TrainConfig",
    "TrainConfigError",
    "TrainResult",
    "default_config",
    "with_overrides",
]
