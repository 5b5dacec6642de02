"""Evaluation specs: which (task, condition, seed) episodes every checkpoint runs.

An :class:`EvalSpec` fixes the episode list of a campaign. It is a *paired design*: every
checkpoint of a task runs exactly the same ``(condition, seed)`` list, and the perturbation
applied for ``(condition, seed)`` is a pure function of the spec (``suite.only(f).sample(seed)``
for a factor ``f``, ``suite.sample(seed)`` for ``"combined"``, the nominal condition for
``"nominal"``). The env is reset with the same ``seed`` under every condition, so the task's
own randomization (object placement) is shared too: differences between checkpoints and
between conditions are paired comparisons, seed by seed.

YAML format (``evaluator/specs/default.yaml``; every field optional)::

    name: default
    tasks: [reach]            # [] = evaluate each checkpoint on its own task
    suite: default            # built-in suite name, a YAML path, or an inline mapping
    conditions: all           # or a list of: nominal, <factor name>, combined
    episodes_per_condition: 10  # default len(seeds), or 10
    seeds: null               # explicit seed list
    seed_start: 100000        # default seeds: seed_start .. seed_start + episodes_per_condition - 1
    max_steps: null           # the task's own episode limit when null
    batch_size: 8             # envs stepped together per work unit (fixed: part of the design)
    deterministic: true       # policy.act(..., deterministic=...)
    video: {enabled: true, camera: null, width: 160, height: 120, fps: 10, format: auto}

Work units: the episode list of a task is cut into consecutive chunks of ``batch_size``
(:meth:`EvalSpec.units`). A unit always runs as a batch of exactly ``batch_size`` policy
rows at fixed positions (finished or skipped episodes are padded), so an episode's result
does not depend on which other episodes of its unit were already done: a resumed or
re-run unit reproduces the uninterrupted run bit for bit.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import yaml

from twin.perturbations import (
    SUITES_DIR,
    Condition,
    PerturbationError,
    PerturbationSuite,
    load_suite,
    nominal_condition,
)

_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when built in

#: Bump when the meaning of an episode result changes (part of every spec digest).
EVAL_FORMAT_VERSION = 1
SPECS_DIR = Path(__file__).resolve().parent / "specs"
NOMINAL = "nominal"
COMBINED = "combined"
VIDEO_FORMATS = ("auto", "mp4", "gif")
VIDEO_MIN = (128, 96)
VIDEO_MAX = (1280, 720)
DEFAULT_EPISODES = 10


class EvalSpecError(ValueError):
    """An evaluation spec that cannot be used; the message names the field."""


class EpisodeSpec(NamedTuple):
    """One episode of the design: condition name, seed and the perturbation to apply."""

    condition: str
    seed: int
    perturbation: Condition


@dataclass
class VideoCfg:
    """Sample rollout videos: the first success and the first failure of every checkpoint
    (in episode order), and its first failure under its worst condition (lowest success
    rate, i.e. largest paired drop), are re-run with frames from ``camera`` (the env's first
    camera when None), each frame labelled with condition, seed and outcome. ``format``:
    ``auto`` = MP4 when an ffmpeg backend (imageio-ffmpeg or PyAV) is installed, GIF
    otherwise. Sizes from 128x96 (labels stay readable) to 1280x720 (frames are kept in
    memory until the episode ends)."""

    enabled: bool = True
    camera: str | None = None
    width: int = 320
    height: int = 240
    fps: int = 10
    format: str = "auto"

    def validate(self) -> None:
        for name in ("width", "height", "fps"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise EvalSpecError(f"video.{name} = {v!r}: give a positive integer")
        if self.width % 2 or self.height % 2:
            raise EvalSpecError(f"video size {self.width}x{self.height}: width and height must be even (H.264)")
        if self.width < VIDEO_MIN[0] or self.height < VIDEO_MIN[1]:
            raise EvalSpecError(
                f"video size {self.width}x{self.height} is too small for its labels: give at least "
                f"{VIDEO_MIN[0]}x{VIDEO_MIN[1]} (default 320x240)"
            )
        if self.width * self.height > VIDEO_MAX[0] * VIDEO_MAX[1]:
            raise EvalSpecError(
                f"video size {self.width}x{self.height} is larger than {VIDEO_MAX[0]}x{VIDEO_MAX[1]} "
                f"(frames are kept in memory until the episode ends): give a smaller size"
            )
        if self.format not in VIDEO_FORMATS:
            raise EvalSpecError(f"video.format = {self.format!r}: use one of {', '.join(VIDEO_FORMATS)}")
        if self.camera is not None and (not isinstance(self.camera, str) or not self.camera):
            raise EvalSpecError(f"video.camera = {self.camera!r}: give a camera name or null")


@dataclass
class EvalSpec:
    """What a campaign runs. See the module docstring for the fields and the YAML format."""

    name: str = "default"
    tasks: list[str] = field(default_factory=list)
    suite: str | dict[str, Any] = "default"
    conditions: list[str] | str = "all"
    episodes_per_condition: int | None = None  # default: len(seeds), or 10
    seeds: list[int] | None = None
    seed_start: int = 100_000
    max_steps: int | None = None
    batch_size: int = 8
    deterministic: bool = True
    video: VideoCfg = field(default_factory=VideoCfg)
    #: physics engine the episodes run on: "mujoco" (the twin) or "pybullet" (the second
    #: engine that plays the real cell, twin.bullet; proxy-real validation only)
    engine: str = "mujoco"

    def __post_init__(self) -> None:
        if isinstance(self.tasks, str):
            self.tasks = [self.tasks]
        if isinstance(self.video, dict):
            self.video = _video_from_dict(self.video)
        self._suites: dict[str, PerturbationSuite] = {}

    # ---- suites and conditions ---------------------------------------------------------------
    def load_suite(self, task: str = "") -> PerturbationSuite:
        """The perturbation suite (with ``task``'s overrides applied)."""
        if task not in self._suites:
            try:
                if isinstance(self.suite, dict):
                    s = PerturbationSuite.from_dict(copy.deepcopy(self.suite), task=task, source="spec suite")
                else:
                    s = load_suite(self.suite, task=task)
            except PerturbationError as exc:
                raise EvalSpecError(f"suite: {exc}") from exc
            self._suites[task] = s
        return self._suites[task]

    def condition_names(self, task: str = "") -> list[str]:
        """The conditions in order: ``all`` = nominal, each enabled factor alone, combined."""
        suite = self.load_suite(task)
        if self.conditions == "all":
            names = [NOMINAL, *suite.factor_names()]
            if len(suite.factor_names()) > 1:
                names.append(COMBINED)
            return names
        return list(self.conditions)

    def factor_conditions(self, task: str = "") -> list[str]:
        """The conditions that are compared with nominal (everything but nominal)."""
        return [c for c in self.condition_names(task) if c != NOMINAL]

    def seed_list(self) -> list[int]:
        """The seeds every condition runs (paired across conditions and checkpoints)."""
        if self.seeds is not None:
            return [int(s) for s in self.seeds]
        n = DEFAULT_EPISODES if self.episodes_per_condition is None else int(self.episodes_per_condition)
        return list(range(int(self.seed_start), int(self.seed_start) + n))

    def condition_suite(self, condition: str, task: str = "") -> PerturbationSuite | None:
        """The suite whose samples are ``condition`` (None for nominal)."""
        suite = self.load_suite(task)
        if condition == NOMINAL:
            return None
        if condition == COMBINED:
            return suite
        return suite.only(condition)

    def perturbation(self, condition: str, seed: int, task: str = "") -> Condition:
        """The perturbation of ``(condition, seed)``: identical for every checkpoint."""
        s = self.condition_suite(condition, task)
        if s is None:
            c = nominal_condition()
            c.seed = int(seed)
            return c
        return s.sample(int(seed))

    def episodes(self, task: str | None = None) -> list[EpisodeSpec]:
        """The ordered episode list of ``task``: conditions outer, seeds inner."""
        task = self._task_arg(task)
        self.validate()
        self._validate_conditions(self.load_suite(task), task)
        return [
            EpisodeSpec(c, s, self.perturbation(c, s, task))
            for c in self.condition_names(task)
            for s in self.seed_list()
        ]

    def units(self, task: str | None = None) -> list[list[EpisodeSpec]]:
        """The episode list cut into work units of ``batch_size`` consecutive episodes."""
        eps = self.episodes(task)
        b = int(self.batch_size)
        return [eps[i : i + b] for i in range(0, len(eps), b)]

    def covers_task(self, task: str) -> bool:
        return not self.tasks or task in self.tasks

    def _task_arg(self, task: str | None) -> str:
        if task is None:
            if len(self.tasks) != 1:
                raise EvalSpecError(f"spec {self.name!r} has tasks {self.tasks}; name the task")
            return self.tasks[0]
        return task

    # ---- validation --------------------------------------------------------------------------
    def validate(self) -> EvalSpec:
        from twin.tasks import TaskError, get_task_class

        if not isinstance(self.name, str) or not self.name:
            raise EvalSpecError(f"name = {self.name!r}: give a non-empty string")
        if not isinstance(self.tasks, list) or not all(isinstance(t, str) and t for t in self.tasks):
            raise EvalSpecError(f"tasks = {self.tasks!r}: give a list of task names ([] = each checkpoint's own)")
        for t in self.tasks:
            try:
                get_task_class(t)
            except TaskError as exc:
                raise EvalSpecError(f"tasks: {exc}") from exc
        if len(set(self.tasks)) != len(self.tasks):
            raise EvalSpecError(f"tasks = {self.tasks}: a task is listed twice")
        if not isinstance(self.suite, (str, dict)) or not self.suite:
            raise EvalSpecError(f"suite = {self.suite!r}: give a built-in suite name, a YAML path or a mapping")
        for task in self.tasks or [""]:
            suite = self.load_suite(task)
            self._validate_conditions(suite, task)
        for name, lowest in (("episodes_per_condition", 1), ("batch_size", 1), ("seed_start", 0)):
            v = getattr(self, name)
            if v is None and name == "episodes_per_condition":
                continue
            if isinstance(v, bool) or not isinstance(v, int) or v < lowest:
                raise EvalSpecError(f"{name} = {v!r}: give an integer >= {lowest}")
        if self.seeds is not None:
            if (
                not isinstance(self.seeds, list)
                or not self.seeds
                or not all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s < 2**63 for s in self.seeds)
            ):
                raise EvalSpecError(f"seeds = {self.seeds!r}: give a non-empty list of non-negative integers")
            if len(set(self.seeds)) != len(self.seeds):
                dup = sorted({s for s in self.seeds if self.seeds.count(s) > 1})
                raise EvalSpecError(f"seeds: {dup} appear more than once; each (condition, seed) runs once")
            if self.episodes_per_condition is not None and self.episodes_per_condition != len(self.seeds):
                raise EvalSpecError(
                    f"episodes_per_condition = {self.episodes_per_condition} but {len(self.seeds)} "
                    f"seeds are listed; give one or make them agree"
                )
        if self.max_steps is not None and (
            isinstance(self.max_steps, bool) or not isinstance(self.max_steps, int) or self.max_steps < 1
        ):
            raise EvalSpecError(f"max_steps = {self.max_steps!r}: give a positive integer or null (task default)")
        if not isinstance(self.deterministic, bool):
            raise EvalSpecError(f"deterministic = {self.deterministic!r}: give true or false")
        from twin.env import ENGINES

        if self.engine not in ENGINES:
            raise EvalSpecError(f"engine = {self.engine!r}: give one of {', '.join(ENGINES)}")
        for t in self.tasks:
            engines = get_task_class(t).engines
            if self.engine not in engines:
                raise EvalSpecError(f"engine = {self.engine!r}: task {t!r} runs on {', '.join(engines)} only")
        self.video.validate()
        return self

    def _validate_conditions(self, suite: PerturbationSuite, task: str) -> None:
        where = f" (task {task!r})" if task else ""
        if self.conditions == "all":
            return
        if (
            not isinstance(self.conditions, list)
            or not self.conditions
            or not all(isinstance(c, str) for c in self.conditions)
        ):
            raise EvalSpecError(f"conditions = {self.conditions!r}: give 'all' or a non-empty list of names")
        valid = [NOMINAL, *suite.factor_names(enabled_only=False), COMBINED]
        for c in self.conditions:
            if c not in valid:
                raise EvalSpecError(f"conditions: unknown condition {c!r}{where}; valid: {', '.join(valid)}")
        if len(set(self.conditions)) != len(self.conditions):
            raise EvalSpecError(f"conditions = {self.conditions}: a condition is listed twice")
        if COMBINED in self.conditions and not suite.factor_names():
            raise EvalSpecError(
                f"conditions: 'combined' needs at least one enabled factor in suite {suite.name!r}{where}"
            )

    # ---- (de)serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "tasks": list(self.tasks),
            "suite": copy.deepcopy(self.suite),
            "conditions": self.conditions if isinstance(self.conditions, str) else list(self.conditions),
            "episodes_per_condition": len(self.seed_list()),
            "seeds": None if self.seeds is None else [int(s) for s in self.seeds],
            "seed_start": int(self.seed_start),
            "max_steps": self.max_steps,
            "batch_size": int(self.batch_size),
            "deterministic": bool(self.deterministic),
            "video": dataclasses.asdict(self.video),
            "engine": self.engine,
        }

    @classmethod
    def from_dict(cls, data: Any, source: str = "spec") -> EvalSpec:
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise EvalSpecError(f"{source}: expected a mapping of spec fields, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        d = dict(data)
        if "task" in d:  # shorthand for one task
            if "tasks" in d:
                raise EvalSpecError(f"{source}: give 'task' or 'tasks', not both")
            d["tasks"] = [d.pop("task")]
        unknown = sorted(set(d) - names)
        if unknown:
            raise EvalSpecError(f"{source}: unknown field(s) {unknown}; valid: {', '.join(sorted(names))}")
        if isinstance(d.get("tasks"), str):
            d["tasks"] = [d["tasks"]]
        if d.get("tasks") is None:
            d["tasks"] = []
        if "video" in d:
            d["video"] = _video_from_dict(d["video"], source)
        spec = cls(**d)
        return spec.validate()

    def to_yaml(self, path: str | Path | None = None) -> str:
        text = yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None, width=100)
        if path is not None:
            Path(path).write_text(text)
        return text

    @classmethod
    def from_yaml(cls, path_or_text: str | Path) -> EvalSpec:
        """Load from a YAML file or YAML text."""
        s = str(path_or_text)
        if isinstance(path_or_text, Path) or ("\n" not in s and (s.endswith((".yaml", ".yml")) or Path(s).is_file())):
            p = Path(s)
            if not p.is_file():
                raise EvalSpecError(f"spec file {s!r} not found; built-in specs: {', '.join(available_specs())}")
            text, source = p.read_text(), str(p)
        else:
            text, source = s, "spec YAML"
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise EvalSpecError(f"{source}: not valid YAML ({exc})") from exc
        if data is None:
            raise EvalSpecError(
                f"{source} is empty; write at least 'name:' and 'tasks:' (see evaluator/specs/"
                f"default.yaml), or give a built-in spec: {', '.join(available_specs())}"
            )
        return cls.from_dict(data, source=source)

    def replace(self, **changes: Any) -> EvalSpec:
        d = self.to_dict()
        for k, v in changes.items():
            if k == "video" and isinstance(v, VideoCfg):
                v = dataclasses.asdict(v)
            d[k] = v
        if "seeds" in changes and "episodes_per_condition" not in changes:
            d["episodes_per_condition"] = None
        return EvalSpec.from_dict(d)

    # ---- identity ----------------------------------------------------------------------------
    def suite_data(self) -> Any:
        """The suite as written (inline mapping or the parsed YAML file, task overrides included)."""
        if isinstance(self.suite, dict):
            return copy.deepcopy(self.suite)
        s = str(self.suite)
        path = Path(s) if ("/" in s or s.endswith((".yaml", ".yml")) or Path(s).is_file()) else SUITES_DIR / f"{s}.yaml"
        try:
            return yaml.load(path.read_text(), Loader=_YAML_LOADER)
        except (OSError, yaml.YAMLError):
            return s

    def digest(self) -> str:
        """A hash of everything that decides per-episode results (not the video settings)."""
        d = self.to_dict()
        d.pop("video")
        d.pop("name")
        d["suite"] = self.suite_data()
        d["seeds"] = self.seed_list()
        d.pop("seed_start")
        d.pop("episodes_per_condition")
        d["conditions"] = {t: self.condition_names(t) for t in (self.tasks or [""])}
        d["eval_format_version"] = EVAL_FORMAT_VERSION
        if d["engine"] == "mujoco":
            d.pop("engine")  # digests of twin campaigns stay what they were
        blob = json.dumps(d, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def _video_from_dict(data: Any, source: str = "spec") -> VideoCfg:
    if isinstance(data, VideoCfg):
        return data
    if data is None or data is False:
        return VideoCfg(enabled=False)
    if data is True:
        return VideoCfg()
    if not isinstance(data, dict):
        raise EvalSpecError(f"{source}, field 'video': expected a mapping, got {type(data).__name__}")
    names = {f.name for f in dataclasses.fields(VideoCfg)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise EvalSpecError(f"{source}, field 'video': unknown field(s) {unknown}; valid: {', '.join(sorted(names))}")
    v = VideoCfg(**data)
    v.validate()
    return v


def available_specs() -> list[str]:
    return sorted(p.stem for p in SPECS_DIR.glob("*.yaml"))


def load_spec(name_or_path: str | Path) -> EvalSpec:
    """A built-in spec by name (``evaluator/specs/<name>.yaml``) or a YAML file path."""
    s = str(name_or_path)
    if isinstance(name_or_path, Path) or "/" in s or s.endswith((".yaml", ".yml")):
        return EvalSpec.from_yaml(Path(s))
    path = SPECS_DIR / f"{s}.yaml"
    if not path.is_file():
        raise EvalSpecError(
            f"unknown evaluation spec {s!r}; built-in specs: {', '.join(available_specs())} "
            f"(or give a path to a YAML file)"
        )
    return EvalSpec.from_yaml(path)


__all__ = [
    "COMBINED",
    "NOMINAL",
    "EpisodeSpec",
    "EvalSpec",
    "EvalSpecError",
    "VideoCfg",
    "available_specs",
    "load_spec",
]
