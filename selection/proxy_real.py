"""The proxy-real domain: a stand-in for the real cell for development and validation.

Real robot logs are not available everywhere, so the proxy-real domain plays the real cell:
the twin under a fixed, separately stored set of shifted conditions
(``selection/proxy_real/default.yaml``: light moved, cameras shifted ~5 cm and rotated ~5 deg,
focal length x1.15, objects shifted up to 5 cm / 15 deg and rescaled 0.9-1.1, other friction
and mass, actuation latency; DexScale's deliberate gaps). Condition k is the domain's suite
sampled at ``seed_start + k``.

It does two things, kept apart on purpose:

* :func:`record_logs` writes "real" logs through the same rosbag2 schema a real recorder
  writes (selection/realdata.py): episodes of an operator (the task's scripted demonstrator,
  like teleoperated demonstrations; or any checkpoint) in the proxy domain, with observations,
  joint states, actions and outcomes. Selection reads only these logs.
* :func:`ground_truth` runs checkpoints in the proxy domain through the evaluator and writes
  their success rates (``proxy_real_outcomes.csv``: ``checkpoint,real_success,...``), the
  analogue of a real-robot evaluation. Only validation (``twinrank validate``, the selection
  benchmark) reads them; the ranking never does.

Two engines can play the cell (``engine`` in the domain file, ``--engine`` on the command
line): ``mujoco``, the twin's own engine under the shifted conditions, and ``pybullet``
(:mod:`twin.bullet`): a second engine built from the same scene description, with its own
robot model, joint motors, IK, contact model and renderer, under the same shifted conditions
(the real cell differs from the twin in ways the twin does not model; shifts inside the
perturbation suite's ranges alone flatter it).

Outputs always say ``proxy-real`` (``proxy-real (pybullet)``); nothing here is called real.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

DOMAIN = "proxy-real"
DEFAULT_PATH = Path(__file__).with_name("proxy_real") / "default.yaml"


class ProxyRealError(ValueError):
    """A proxy-real domain file that cannot be used; the message names the field."""


@dataclass
class ProxyRealDomain:
    """A fixed set of shifted conditions: ``suite`` sampled at ``seed_start .. + episodes - 1``."""

    name: str = DOMAIN
    seed_start: int = 900_000
    episodes: int = 20
    suite: dict[str, Any] = field(default_factory=dict)
    source: str = ""
    #: the physics engine that plays the cell: "mujoco" (the twin's own engine, shifted) or
    #: "pybullet" (a second engine: its own robot model, motors, IK, contacts and renderer;
    #: twin.bullet), under the same shifted conditions
    engine: str = "mujoco"

    @property
    def label(self) -> str:
        """What outputs call this domain: ``proxy-real`` or ``proxy-real (pybullet)``."""
        return DOMAIN if self.engine == "mujoco" else f"{DOMAIN} ({self.engine})"

    def with_engine(self, engine: str | None) -> ProxyRealDomain:
        """This domain played by ``engine`` (None: unchanged)."""
        from dataclasses import replace

        from twin.env import ENGINES

        if engine is None:
            return self
        if engine not in ENGINES:
            raise ProxyRealError(f"engine {engine!r}: use one of {', '.join(ENGINES)}")
        return replace(self, engine=engine)

    @staticmethod
    def load(path: str | os.PathLike[str] | None = None) -> ProxyRealDomain:
        p = Path(path) if path is not None else DEFAULT_PATH
        if not p.is_file():
            raise ProxyRealError(f"proxy-real domain file {p} not found; omit it to use the built-in {DEFAULT_PATH}")
        data = yaml.safe_load(p.read_text()) or {}
        unknown = set(data) - {"name", "seed_start", "episodes", "suite", "engine"}
        if unknown:
            raise ProxyRealError(
                f"{p}: unknown field(s) {sorted(unknown)}; fields: name, seed_start, episodes, suite, engine"
            )
        if not isinstance(data.get("suite"), dict):
            raise ProxyRealError(f"{p}: 'suite' must be a perturbation suite mapping (see twin/suites/default.yaml)")
        dom = ProxyRealDomain(
            name=str(data.get("name", DOMAIN)),
            seed_start=int(data.get("seed_start", 900_000)),
            episodes=int(data.get("episodes", 20)),
            suite=data["suite"],
            source=str(p),
        )
        if dom.episodes < 1:
            raise ProxyRealError(f"{p}: episodes = {dom.episodes}; give at least 1")
        try:
            dom = dom.with_engine(str(data.get("engine", "mujoco")))
        except ProxyRealError as exc:
            raise ProxyRealError(f"{p}: {exc}") from exc
        dom.load_suite()  # validate the factors now
        return dom

    def seeds(self, n: int | None = None) -> list[int]:
        return [self.seed_start + k for k in range(n if n is not None else self.episodes)]

    def load_suite(self, task: str = "") -> Any:
        import copy

        from twin.perturbations import PerturbationError, PerturbationSuite

        try:
            return PerturbationSuite.from_dict(copy.deepcopy(self.suite), task=task, source=self.source or DOMAIN)
        except PerturbationError as exc:
            raise ProxyRealError(f"{self.source or DOMAIN}: {exc}") from exc

    def eval_spec(self, task: str, episodes: int | None = None) -> Any:
        """The evaluator spec of a proxy-real "real-robot evaluation" of ``task``."""
        from evaluator.spec import EvalSpec, VideoCfg

        return EvalSpec(
            name=DOMAIN,
            tasks=[task],
            suite=dict(self.suite),
            conditions=["combined"],
            seeds=self.seeds(episodes),
            video=VideoCfg(enabled=False),
            engine=self.engine,
        )


def record_logs(
    task: str,
    out: str | os.PathLike[str],
    *,
    domain: ProxyRealDomain | None = None,
    episodes: int | None = None,
    control_mode: str | None = None,
    operator: str = "expert",
    noise: float = 0.0,
    fmt: str = "mcap",
    images: tuple[int, int] | None = None,
) -> Path:
    """Write proxy-real logs of ``task`` to the rosbag2 bag ``out`` (the real-data schema).

    ``operator``: ``"expert"`` (the task's scripted demonstrator, like teleoperated real
    demonstrations, in ``control_mode`` or else its own mode; ``noise`` perturbs its
    waypoints) or a checkpoint directory whose policy is run. Episodes keep their outcome (an operator would mark it), but selection's OOD
    scores use only the observations. ``images`` (width, height): the expert's episodes also log
    every camera's colour and depth frames at that size (what ``twinrank calibrate`` fits the
    cameras and lights to).
    """
    from policies.data import iter_episodes
    from selection.realdata import write_episodes_to_bag

    dom = domain or ProxyRealDomain.load()
    n = episodes if episodes is not None else dom.episodes
    suite = dom.load_suite(task)
    if images is not None and operator != "expert":
        raise ProxyRealError(
            "images: camera frames are recorded for the expert operator; a checkpoint's own image "
            "observations are logged as it sees them"
        )
    with tempfile.TemporaryDirectory() as tmp:
        h5 = Path(tmp) / "episodes.h5"
        if operator == "expert":
            from policies.demos import collect_demos
            from twin.tasks import get_task_class

            # an operator drives the cell the way the demonstrator does (ee_pose: teleoperation)
            control_mode = control_mode or get_task_class(task).expert_mode
            observations = _logged_observations(task, images)

            collect_demos(
                task,
                h5,
                n,
                control_mode=control_mode,
                observations=observations,
                suite=suite,
                noise=noise,
                seed=dom.seed_start,
                engine=dom.engine,
            )
        else:
            _run_checkpoint(operator, task, h5, dom.seeds(n), suite, dom.engine)
        eps = list(iter_episodes(h5))
    meta = {"engine": dom.engine, "domain_label": dom.label}
    return Path(write_episodes_to_bag(eps, out, task=task, domain=DOMAIN, fmt=fmt, meta=meta))


def _logged_observations(task: str, images: tuple[int, int] | None = None) -> Any:
    """What a recorder logs: the task's observations plus the arm's joint torques (a Franka's
    /joint_states carries them) and, with ``images``, every camera's colour and depth frames."""
    import dataclasses

    from twin.tasks import make_task

    base = make_task(task).cfg.observations
    out = dataclasses.replace(base, effort=True)
    if images is not None:
        out = dataclasses.replace(out, rgb=True, depth=True, image_size=(int(images[0]), int(images[1])))
    return out


def _run_checkpoint(path: str, task: str, h5: Path, seeds: Sequence[int], suite: Any, engine: str = "mujoco") -> None:
    from evaluator.run import checkpoint_label
    from policies.checkpoint import load_checkpoint
    from policies.data import EpisodeWriter
    from policies.demos import record_episode
    from twin.env import TwinEnv

    policy = load_checkpoint(path)
    policy.eval()
    env = TwinEnv(
        task,
        control_mode=policy.spec.action.control_mode,
        observations=_logged_observations(task),
        suite=suite,
        engine=engine,
    )
    writer = EpisodeWriter(h5, task, env.cfg.actions.mode)
    keys = policy.spec.obs_keys
    try:
        for s in seeds:

            def act(sim: Any, obs: dict[str, Any]) -> Any:
                import numpy as np

                return np.asarray(policy.act({k: obs[k][None] for k in keys}, deterministic=True))[0]

            policy.reset()
            # the episode names its checkpoint as rankings do (run/step), so its outcome can be
            # attributed to it (selection.prediction.outcomes_from_bags)
            writer.add(record_episode(env, act, int(s), source=f"policy:{checkpoint_label(Path(path))}"))
    finally:
        env.close()


def ground_truth(
    checkpoints: Sequence[str | os.PathLike[str]],
    task: str,
    out_dir: str | os.PathLike[str],
    *,
    domain: ProxyRealDomain | None = None,
    episodes: int | None = None,
    executor: str = "local",
    workers: int | None = None,
    progress: Any = None,
) -> pd.DataFrame:
    """Proxy-real success of each checkpoint (for validation only); writes
    ``out_dir/proxy_real_outcomes.csv`` with
    ``checkpoint,real_success,checkpoint_id,episodes,domain,engine``."""
    from evaluator.run import evaluate

    dom = domain or ProxyRealDomain.load()
    out = Path(out_dir)
    res = evaluate(
        list(checkpoints),
        dom.eval_spec(task, episodes),
        out / "campaign",
        executor=executor,
        workers=workers,
        plots=False,
        videos=False,
        progress=progress,
    )
    rows = []
    for s in res.checkpoints:
        if s.status != "ok":
            continue
        rows.append(
            {
                "checkpoint": s.label,
                "real_success": float(s.overall.get("success_rate", float("nan"))),
                "checkpoint_id": s.checkpoint_id,
                "episodes": int(s.episodes_done),
                "domain": dom.label,
                "engine": dom.engine,
            }
        )
    df = pd.DataFrame(rows, columns=["checkpoint", "real_success", "checkpoint_id", "episodes", "domain", "engine"])
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "proxy_real_outcomes.csv", index=False)
    return df


__all__ = ["DOMAIN", "ProxyRealDomain", "ProxyRealError", "record_logs", "ground_truth"]
