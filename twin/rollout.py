"""Run a task's scripted controller for an episode, optionally recording camera frames."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from twin.env import TwinEnv
from twin.perturbations import Condition


@dataclass
class EpisodeResult:
    task: str
    seed: int
    condition: str
    success: bool
    steps: int
    ret: float
    failure_reason: str
    frames: dict[str, list[np.ndarray]] = field(default_factory=dict)


def expert_env(task: str, **kwargs) -> TwinEnv:
    """A TwinEnv in the control mode the task's scripted expert acts in."""
    from twin.tasks import get_task_class

    return TwinEnv(task, control_mode=get_task_class(task).expert_mode, **kwargs)


def run_expert_episode(
    env: TwinEnv,
    seed: int,
    condition: Condition | None = None,
    *,
    noise: float = 0.0,
    enabled: bool = True,
    record: tuple[str, ...] = (),
    frame_size: tuple[int, int] = (240, 180),
    record_every: int = 0,
) -> EpisodeResult:
    """One episode of the task's expert (or a hold-still controller when ``enabled`` is False).

    ``record`` names cameras whose frames are kept: the first and last frame, plus every
    ``record_every`` steps when that is > 0.
    """
    from twin.scripted import HoldController

    obs, info = env.reset(seed=seed, options={"condition": condition})
    ctrl = env.task.expert(noise=noise, rng=np.random.default_rng([seed, 7])) if enabled else HoldController()
    if not enabled and env.cfg.actions.mode == "pusht_xy":
        hold = env.task.current_pusht_target(env.sim)  # type: ignore[attr-defined]
        ctrl = _ConstantController(hold)
    ctrl.reset(env.sim)
    frames: dict[str, list[np.ndarray]] = {c: [] for c in record}

    def grab() -> None:
        for cam in record:
            frames[cam].append(env.render_camera(cam, *frame_size))

    grab()
    total = 0.0
    steps = 0
    term = trunc = False
    while not (term or trunc):
        obs, r, term, trunc, info = env.step(ctrl.act(env.sim))
        total += r
        steps += 1
        if record_every and steps % record_every == 0:
            grab()
    if record and not record_every:
        grab()
    return EpisodeResult(
        task=env.task.name,
        seed=seed,
        condition=env.condition.name,
        success=bool(info["success"]),
        steps=steps,
        ret=total,
        failure_reason=info.get("failure_reason", ""),
        frames=frames,
    )


class _ConstantController:
    def __init__(self, action: np.ndarray) -> None:
        self.action = np.asarray(action, dtype=np.float32)

    def reset(self, sim) -> None:  # noqa: ANN001
        return None

    def act(self, sim) -> np.ndarray:  # noqa: ANN001
        return self.action
