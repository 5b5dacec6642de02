"""Perturbation suites and conditions (interface; factors are filled in by the suite module).

A :class:`Condition` is a pure function of (suite, seed): the concrete values of every
factor for one episode. The env applies it in two places: ``apply_to_scene`` (returns a
modified copy of the SceneCfg before compiling) and ``apply_after_reset`` (after the task
placed its objects), and reads ``latency_s`` and ``obs_noise_std``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from twin.scene import SceneCfg

if TYPE_CHECKING:
    from twin.sim import TwinSim
    from twin.tasks.base import Task


@dataclass
class Condition:
    name: str = "nominal"
    seed: int = 0
    values: dict[str, Any] = field(default_factory=dict)

    @property
    def latency_s(self) -> float:
        return float(self.values.get("actuation_latency", 0.0))

    @property
    def obs_noise_std(self) -> float:
        return float(self.values.get("observation_noise", 0.0))

    def apply_to_scene(self, scene: SceneCfg, task: "Task") -> SceneCfg:
        return scene

    def apply_after_reset(self, sim: "TwinSim", task: "Task") -> None:
        return None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "seed": self.seed, "values": dict(self.values)}

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "Condition":
        return Condition(name=d.get("name", "custom"), seed=int(d.get("seed", 0)), values=dict(d.get("values", {})))


def nominal_condition() -> Condition:
    return Condition()


class PerturbationSuite:
    def sample(self, seed: int) -> Condition:
        return nominal_condition()


def load_suite(name_or_path: str, task: str = "") -> PerturbationSuite:
    return PerturbationSuite()
