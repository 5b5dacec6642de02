"""Teacher-student distillation (CASHER Eq. 2) with DAgger and mixed point clouds.

CASHER distils its state-based RL teacher into a point-cloud student by maximising
``E[log pi_student(a_teacher | o)]`` (Eq. 2) on trajectories of the teacher. This module does
that the DAgger way (Ross et al. 2011):

* round ``i`` rolls out the mixture policy: at every step the teacher's action is executed
  with probability ``beta_i`` (1.0 in round 0, i.e. plain teacher demonstrations, then
  ``beta0 * beta_decay**i``), the student's own action otherwise;
* every visited observation is labelled with the TEACHER's action; the teacher acts on the
  privileged state (a state-based :class:`~policies.interface.Policy`, e.g. an ``mlp``
  trained by PPO/BC, reading ``obs["state"]``) or on the sim itself (the task's scripted
  demonstrator, :func:`policies.demos.demonstrator`, ``teacher="expert"``);
* as in CASHER, half of the episodes (``synthetic_fraction``) see synthetic, fully observed
  point clouds sampled from the scene's surfaces (:func:`twin.pointcloud.synthetic_point_cloud`:
  no occlusion, by default restricted to what faces the cameras inside their fields of view
  and lit like the renderer) instead of the clouds rendered from the two scene cameras; the
  student acts on whichever cloud the episode uses;
* the labelled data is aggregated over rounds ("we avoid catastrophic forgetting by
  retaining the data from previous batches") and the student is trained on all of it with
  :func:`policies.bc.train_bc` (``compute_bc_loss`` = NLL of the teacher's actions);
* after each round the student's success is measured on fixed seeds with RENDERED clouds,
  and ``agreement`` (fraction of the aggregate where the student's deterministic action
  equals the teacher's label) is reported.

``run_distillation`` is the ``algo: distill`` backend of :func:`policies.train.run_training`:
one checkpoint per round, registered in MLflow, plus the aggregated dataset as an episode
file (``<out>/distill_dataset.h5``; ``actions`` there are the teacher's labels).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from policies.bc import BCConfig, episodes_to_samples, train_bc
from policies.data import Episode, EpisodeWriter, data_digest
from policies.interface import ConfigError, Policy, PolicySpec, _check_positive_ints, config_from_dict, make_policy
from twin.env import TwinEnv
from twin.pointcloud import synthetic_point_cloud
from twin.tasks.base import ObservationCfg, get_task_class

# ---------------------------------------------------------------------------------------------
# config
# ---------------------------------------------------------------------------------------------


@dataclass
class DistillConfig:
    """DAgger distillation settings (``TrainConfig.distill`` as a dict).

    ``iterations``: DAgger rounds; ``episodes_per_iter``: rollouts per round, of which
    ``round(synthetic_fraction * episodes_per_iter)`` use synthetic clouds (CASHER: half).
    ``beta0`` / ``beta_decay`` / ``betas``: probability of executing the teacher's action in
    round ``i`` (``betas[i]`` when given, else ``beta0 * beta_decay**i``; round 0 = 1.0 is pure
    teacher data). The student is (re)trained after each round for ``epochs_per_iter``
    epochs on the aggregate (``retrain=True`` re-initialises it first). ``num_points`` /
    ``image_size`` / ``cameras``: the rendered clouds (small images keep rollouts cheap on a
    CPU). Synthetic clouds (:func:`twin.pointcloud.synthetic_point_cloud`) are sampled from
    every surface without occlusion; ``synthetic_viewpoints="cameras"`` (default) keeps the
    surfaces inside the scene cameras' fields of view that face a camera (the same region
    the rendered cloud covers, no table underside) and ``synthetic_shading`` lights their
    colours like the renderer does, which keeps the two kinds of clouds one domain for the
    student; ``None`` / ``False`` give the plain area-uniform, geom-coloured cloud.
    ``include_robot=False`` drops the arm from synthetic clouds. ``teacher``: ``"expert"``
    (the task's scripted demonstrator) or a checkpoint dir of a state-based policy;
    ``teacher_noise`` perturbs the expert's waypoints. ``eval_episodes`` seeds from
    ``eval_seed`` are evaluated every ``eval_every`` rounds (and after the last one; 0 = only
    then) with rendered clouds; ``-1`` = the TrainConfig's (``distill()`` alone: 10 seeds
    from 10000). ``student_deterministic``: how the student acts in rollouts; ``seed`` seeds
    the episode seeds, the beta coin flips, the synthetic clouds and the BC shuffling.
    """

    iterations: int = 4
    episodes_per_iter: int = 8
    synthetic_fraction: float = 0.5
    beta0: float = 1.0
    beta_decay: float = 0.5
    betas: tuple[float, ...] | None = None
    epochs_per_iter: int = 30
    batch_size: int = 32
    lr: float = 3e-3
    weight_decay: float = 1e-6
    max_grad_norm: float = 5.0
    retrain: bool = False
    num_points: int = 512
    image_size: tuple[int, int] = (96, 72)
    cameras: tuple[str, ...] = ()
    include_robot: bool = True
    synthetic_viewpoints: str | None = "cameras"
    synthetic_shading: bool = True
    teacher: str = "expert"
    teacher_noise: float = 0.0
    student_deterministic: bool = True
    eval_episodes: int = -1
    eval_seed: int = -1
    eval_every: int = 1
    eval_teacher: bool = True
    seed: int = 0
    save_dataset: bool = True

    def __post_init__(self) -> None:
        n = "DistillConfig"
        _check_positive_ints(
            n, self, ("iterations", "episodes_per_iter", "epochs_per_iter", "batch_size", "num_points")
        )
        if not 0.0 <= float(self.synthetic_fraction) <= 1.0:
            raise ConfigError(f"{n}.synthetic_fraction = {self.synthetic_fraction!r}; expected a value in [0, 1]")
        if not 0.0 <= float(self.beta0) <= 1.0 or not 0.0 <= float(self.beta_decay) <= 1.0:
            raise ConfigError(f"{n}: beta0 = {self.beta0!r} and beta_decay = {self.beta_decay!r} must be in [0, 1]")
        if self.betas is not None:
            self.betas = tuple(float(b) for b in self.betas)
            if not self.betas or any(not 0.0 <= b <= 1.0 for b in self.betas):
                raise ConfigError(f"{n}.betas = {self.betas!r}; expected probabilities in [0, 1]")
        self.image_size = tuple(int(x) for x in self.image_size)  # type: ignore[assignment]
        if len(self.image_size) != 2 or min(self.image_size) < 8:
            raise ConfigError(f"{n}.image_size = {self.image_size!r}; expected (width, height) >= 8 pixels")
        self.cameras = tuple(str(c) for c in self.cameras)
        if not isinstance(self.teacher, str) or not self.teacher:
            raise ConfigError(f"{n}.teacher = {self.teacher!r}; use 'expert' or a checkpoint directory")
        if self.synthetic_viewpoints not in (None, "cameras"):
            raise ConfigError(f"{n}.synthetic_viewpoints = {self.synthetic_viewpoints!r}; use 'cameras' or None")
        if self.lr <= 0 or self.eval_every < 0:
            raise ConfigError(f"{n}: lr must be > 0 and eval_every >= 0")

    def beta(self, i: int) -> float:
        """Probability of executing the teacher's action in round ``i`` (0-based)."""
        if self.betas is not None:
            return float(self.betas[min(i, len(self.betas) - 1)])
        return float(self.beta0 * self.beta_decay**i)

    def synthetic_episodes(self) -> int:
        """Episodes per round that use synthetic clouds."""
        return int(math.floor(self.synthetic_fraction * self.episodes_per_iter + 0.5))

    def observations(self) -> ObservationCfg:
        """Observation config of the rendered-cloud env (state + proprio + point cloud)."""
        return ObservationCfg(
            state=True,
            proprio=True,
            point_cloud=True,
            cameras=self.cameras,
            image_size=self.image_size,
            num_points=self.num_points,
        )

    def synthetic_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :func:`twin.pointcloud.synthetic_point_cloud` for the synthetic episodes."""
        return {
            "include_robot": self.include_robot,
            "viewpoints": self.synthetic_viewpoints,
            "shading": self.synthetic_shading,
        }

    def bc_config(self, round_idx: int) -> BCConfig:
        return BCConfig(
            epochs=self.epochs_per_iter,
            batch_size=self.batch_size,
            lr=self.lr,
            weight_decay=self.weight_decay,
            max_grad_norm=self.max_grad_norm,
            seed=self.seed * 1000 + round_idx,
        )

    @staticmethod
    def from_dict(d: dict[str, Any] | DistillConfig | None) -> DistillConfig:
        return config_from_dict(DistillConfig, d)


# ---------------------------------------------------------------------------------------------
# teachers
# ---------------------------------------------------------------------------------------------


class Teacher(Protocol):
    """Labels observations with actions; may read the privileged state or the sim."""

    name: str

    def reset(self, env: TwinEnv, seed: int) -> None: ...

    def act(self, env: TwinEnv, obs: dict[str, np.ndarray]) -> Any: ...


class ExpertTeacher:
    """The task's scripted demonstrator (:func:`policies.demos.demonstrator`): plans from the
    sim's privileged state, in the env's control mode (discrete via ``DiscreteTracker``)."""

    name = "expert"
    obs_keys: tuple[str, ...] = ()

    def __init__(self, noise: float = 0.0) -> None:
        self.noise = float(noise)
        self._demo: Any = None

    def reset(self, env: TwinEnv, seed: int) -> None:
        from policies.demos import demonstrator

        self._demo = demonstrator(env, noise=self.noise, rng=np.random.default_rng([int(seed), 11]))
        self._demo.reset(env.sim)

    def act(self, env: TwinEnv, obs: dict[str, np.ndarray]) -> Any:
        if self._demo is None:
            raise RuntimeError("ExpertTeacher.act before reset()")
        return self._demo.act(env.sim)


class PolicyTeacher:
    """A trained (state-based) policy as the teacher, e.g. CASHER's PPO+BC ``mlp`` on
    ``obs["state"]``; it acts deterministically."""

    def __init__(self, policy: Any, name: str = "") -> None:
        self.policy = policy
        self.name = name or f"policy:{getattr(policy, 'policy_name', type(policy).__name__)}"
        self.obs_keys = tuple(policy.spec.obs_keys)
        if "point_cloud" in self.obs_keys:
            raise ConfigError("the teacher must be a state-based policy; it reads 'point_cloud' (a student?)")

    def reset(self, env: TwinEnv, seed: int) -> None:
        self.policy.reset()

    def act(self, env: TwinEnv, obs: dict[str, np.ndarray]) -> Any:
        missing = [k for k in self.obs_keys if k not in obs]
        if missing:
            raise ConfigError(
                f"the teacher reads observations {missing} that the distillation env does not give "
                f"(it gives {sorted(obs)})"
            )
        a = self.policy.act({k: np.asarray(obs[k])[None] for k in self.obs_keys}, deterministic=True)[0]
        return int(a) if self.policy.spec.action.discrete else np.asarray(a, dtype=np.float32)


def make_teacher(
    teacher: Any, *, task: str | None = None, control_mode: str | None = None, noise: float = 0.0
) -> Teacher:
    """``"expert"`` -> :class:`ExpertTeacher`; a checkpoint directory -> :class:`PolicyTeacher`
    over the loaded policy; a policy object -> :class:`PolicyTeacher`; a Teacher as it is."""
    if isinstance(teacher, str) and teacher in ("expert", "scripted", "demonstrator"):
        return ExpertTeacher(noise=noise)
    if isinstance(teacher, (str, Path)):
        from policies.checkpoint import load_checkpoint

        path = Path(teacher)
        if not path.exists():
            raise ConfigError(f"teacher {str(teacher)!r}: use 'expert' or an existing checkpoint directory")
        policy = load_checkpoint(path, device="cpu")
        if task and policy.spec.task and policy.spec.task != task:
            raise ConfigError(f"teacher checkpoint {path} is for task {policy.spec.task!r}, not {task!r}")
        if control_mode and policy.spec.action.control_mode != control_mode:
            raise ConfigError(
                f"teacher checkpoint {path} acts in {policy.spec.action.control_mode!r}, "
                f"the student in {control_mode!r}"
            )
        return PolicyTeacher(policy, name=f"checkpoint:{path.name}")
    if (
        hasattr(teacher, "reset")
        and hasattr(teacher, "act")
        and hasattr(teacher, "name")
        and not hasattr(teacher, "spec")
    ):
        return teacher
    if hasattr(teacher, "spec") and hasattr(teacher, "act"):
        return PolicyTeacher(teacher)
    raise ConfigError(f"cannot use {teacher!r} as a teacher; give 'expert', a checkpoint dir or a policy")


# ---------------------------------------------------------------------------------------------
# rollouts
# ---------------------------------------------------------------------------------------------


@dataclass
class RolloutStats:
    steps: int = 0
    teacher_steps: int = 0
    student_steps: int = 0
    success: bool = False


def _student_action(student: Policy, obs: dict[str, np.ndarray], deterministic: bool) -> Any:
    a = student.act({k: np.asarray(obs[k])[None] for k in student.spec.obs_keys}, deterministic=deterministic)[0]
    return int(a) if student.spec.action.discrete else np.asarray(a, dtype=np.float32)


def rollout_episode(
    env: TwinEnv,
    teacher: Teacher,
    student: Policy | None,
    seed: int,
    beta: float,
    rng: np.random.Generator,
    *,
    synthetic: bool = False,
    num_points: int | None = None,
    synthetic_kwargs: dict[str, Any] | None = None,
    deterministic: bool = True,
    source: str = "distill",
) -> tuple[Episode, RolloutStats]:
    """One DAgger episode: execute the teacher's action with probability ``beta`` (else the
    student's), label every observation with the teacher's action.

    ``synthetic``: replace ``obs["point_cloud"]`` by a synthetic cloud of the sim
    (:func:`~twin.pointcloud.synthetic_point_cloud` with ``synthetic_kwargs``; the env then
    needs no point-cloud rendering). Returns the episode (``actions`` = teacher labels) and
    execution statistics.
    """
    syn_kw = dict(synthetic_kwargs or {})
    if num_points is None:
        num_points = int(env.cfg.observations.num_points)
    obs, info = env.reset(seed=int(seed))
    teacher.reset(env, int(seed))
    if student is not None:
        student.reset()
    cols: dict[str, list[np.ndarray]] = {}
    labels, rewards, priv, succ = [], [], [], []
    stats = RolloutStats()
    term = trunc = False
    while not (term or trunc):
        if synthetic:
            obs = dict(obs)
            obs["point_cloud"] = synthetic_point_cloud(env.sim, num_points, rng, **syn_kw)
        for k, v in obs.items():
            cols.setdefault(k, []).append(np.asarray(v))
        priv.append(env.state())
        label = teacher.act(env, obs)
        if student is None or rng.random() < beta:
            a = label
            stats.teacher_steps += 1
        else:
            a = _student_action(student, obs, deterministic)
            stats.student_steps += 1
        obs, r, term, trunc, info = env.step(a)
        labels.append(np.asarray(label))
        rewards.append(r)
        succ.append(bool(info.get("success", False)))
        stats.steps += 1
    stats.success = bool(succ[-1]) if succ else False
    dtype = np.int64 if env.cfg.actions.mode == "discrete" else np.float32
    ep = Episode(
        obs={k: np.stack(v) for k, v in cols.items()},
        actions=np.stack(labels).astype(dtype),
        rewards=np.asarray(rewards, np.float32),
        privileged=np.stack(priv).astype(np.float32),
        success_flags=np.asarray(succ, bool),
        seed=int(seed),
        condition=env.condition.to_dict(),
        source=source,
        failure_reason=str(info.get("failure_reason", "")),
    )
    return ep, stats


def evaluate_student(
    student: Policy,
    env: TwinEnv,
    seeds: Sequence[int],
    *,
    synthetic: bool = False,
    rng: np.random.Generator | None = None,
    synthetic_kwargs: dict[str, Any] | None = None,
    deterministic: bool = True,
) -> float:
    """Success rate of ``student`` acting alone on ``seeds`` (one episode each) in ``env``
    (rendered clouds; ``synthetic=True`` swaps in synthetic ones), through the rollout engine."""
    from policies.rollout import RolloutHooks, success_rate_in

    rng = rng if rng is not None else np.random.default_rng(0)
    student.eval()
    hooks = None
    if synthetic:
        n = int(student.spec.obs("point_cloud").shape[0])

        def swap_cloud(slot: int, e: TwinEnv, obs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            return {**obs, "point_cloud": synthetic_point_cloud(e.sim, n, rng, **(synthetic_kwargs or {}))}

        hooks = RolloutHooks(transform_obs=swap_cloud)
    return success_rate_in(student, [env], seeds, deterministic=deterministic, hooks=hooks)


class _TeacherActor:
    """A teacher acting in one env as the rollout engine's policy (a batch of one)."""

    def __init__(self, teacher: Teacher, env: TwinEnv) -> None:
        self.teacher = teacher
        self.env = env
        self.spec = PolicySpec.from_env(env, obs_keys=list(getattr(teacher, "obs_keys", ())))

    def act(self, obs: dict[str, np.ndarray], deterministic: bool = True) -> np.ndarray:
        return np.asarray([self.teacher.act(self.env, {k: v[0] for k, v in obs.items()})])


def evaluate_teacher(teacher: Teacher, env: TwinEnv, seeds: Sequence[int]) -> float:
    """Success rate of the teacher acting alone on ``seeds``, through the rollout engine."""
    from policies.rollout import RolloutHooks, success_rate_in

    actor = _TeacherActor(teacher, env)
    hooks = RolloutHooks(on_reset=lambda slot, e, seed: teacher.reset(e, seed))
    return success_rate_in(actor, [env], seeds, hooks=hooks)


@torch.no_grad()
def action_agreement(
    student: Policy, obs: dict[str, np.ndarray], labels: np.ndarray, batch_size: int = 256, tol: float = 0.05
) -> float:
    """Fraction of samples where the student's deterministic action equals the teacher's label
    (continuous actions: every component within ``tol`` of the action range, or of 1)."""
    student.eval()
    n = len(labels)
    if n == 0:
        return float("nan")
    keys = student.spec.obs_keys
    hits = 0
    spec = student.spec.action
    if not spec.discrete:
        lo, hi = spec.bounds()
        span = np.where(np.isfinite(hi - lo), hi - lo, 1.0)
    for start in range(0, n, batch_size):
        sl = slice(start, start + batch_size)
        obs_t = student.as_tensor_batch({k: obs[k][sl] for k in keys})
        a = student.finalize_actions(student.act_tensors(obs_t, deterministic=True))
        lab = np.asarray(labels[sl])
        if spec.discrete:
            hits += int((a.reshape(-1) == lab.reshape(-1)).sum())
        else:
            a = a.reshape(len(lab), -1)
            lab = lab.reshape(len(lab), -1)
            hits += int(np.all(np.abs(a - lab) <= tol * span.reshape(1, -1), axis=1).sum())
    return hits / n


# ---------------------------------------------------------------------------------------------
# DAgger
# ---------------------------------------------------------------------------------------------


@dataclass
class DistillState:
    """What a distillation run has gathered so far (the aggregate D of DAgger)."""

    episodes: list[Episode] = field(default_factory=list)
    rounds: list[int] = field(default_factory=list)  # round of each episode
    synthetic: list[bool] = field(default_factory=list)  # cloud kind of each episode
    teacher_success: float = float("nan")

    @property
    def transitions(self) -> int:
        return int(sum(ep.length for ep in self.episodes))


def _reinit(policy: Policy) -> None:
    for m in policy.modules():
        if m is not policy and hasattr(m, "reset_parameters"):
            m.reset_parameters()


def distill(
    student: Policy,
    teacher: Any,
    task: str,
    cfg: DistillConfig | dict | None = None,
    *,
    control_mode: str | None = None,
    suite: Any = None,
    callback: Callable[[int, dict[str, float]], Any] | None = None,
    dataset_path: str | Path | None = None,
    state: DistillState | None = None,
    progress: Callable[[str, float, float], None] | None = None,
) -> list[dict[str, float]]:
    """Distil ``teacher`` into ``student`` by DAgger on ``task``; returns the per-round metrics.

    ``teacher``: ``"expert"``, a checkpoint dir, a state-based policy or a :class:`Teacher`.
    ``callback(round, metrics)`` runs after each round (round is 0-based) with the student
    trained and evaluated. ``dataset_path``: append every labelled episode to this episode
    file (policies.data). ``state``: a :class:`DistillState` to fill (for inspection).
    Metrics per round: ``round``, ``beta``, ``episodes`` / ``synthetic_episodes`` (this
    round), ``rollout/success_rate`` (of the executed mixture), ``rollout/student_step_fraction``,
    ``dataset/episodes``, ``dataset/transitions`` (the aggregate trained on), ``loss/bc``
    (last epoch), ``distill/agreement``, ``eval/success_rate`` (rendered clouds; NaN in
    rounds not evaluated), ``distill/teacher_success`` (same seeds), ``time/round_s``,
    ``time/rollout_s``, ``time/train_s``.
    """
    cfg = DistillConfig.from_dict(cfg)
    mode = control_mode or student.spec.action.control_mode
    if "point_cloud" not in student.spec.obs_keys:
        raise ConfigError(f"the student reads {student.spec.obs_keys}; a distillation student reads 'point_cloud'")
    n_pts = student.spec.obs("point_cloud").shape[0]
    if n_pts != cfg.num_points:
        cfg = dataclasses.replace(cfg, num_points=int(n_pts))
    teacher_obj = make_teacher(teacher, task=task, control_mode=mode, noise=cfg.teacher_noise)
    state = state if state is not None else DistillState()
    eval_n = cfg.eval_episodes if cfg.eval_episodes >= 0 else 10
    eval_seed0 = cfg.eval_seed if cfg.eval_seed >= 0 else 10_000
    eval_seeds = [eval_seed0 + i for i in range(eval_n)]
    rendered_env = TwinEnv(task, control_mode=mode, observations=cfg.observations(), suite=suite)
    synth_obs = dataclasses.replace(cfg.observations(), point_cloud=False)
    synth_env = TwinEnv(task, control_mode=mode, observations=synth_obs, suite=suite)
    student.spec.check_env(rendered_env)
    writer = EpisodeWriter(dataset_path, task, mode) if dataset_path is not None else None
    rng = np.random.default_rng([cfg.seed, 7])
    keys = student.spec.obs_keys
    history: list[dict[str, float]] = []
    try:
        if cfg.eval_teacher and eval_seeds:
            state.teacher_success = evaluate_teacher(teacher_obj, synth_env, eval_seeds)
        for i in range(cfg.iterations):
            t0 = time.perf_counter()
            beta = cfg.beta(i)
            n_syn = cfg.synthetic_episodes()
            kinds = np.zeros(cfg.episodes_per_iter, dtype=bool)
            kinds[rng.permutation(cfg.episodes_per_iter)[:n_syn]] = True
            wins = stud = steps = 0
            for j in range(cfg.episodes_per_iter):
                seed = 100_000 + 1_000 * cfg.seed + i * cfg.episodes_per_iter + j
                synthetic = bool(kinds[j])
                env = synth_env if synthetic else rendered_env
                ep, st = rollout_episode(
                    env,
                    teacher_obj,
                    student if beta < 1.0 else None,
                    seed,
                    beta,
                    rng,
                    synthetic=synthetic,
                    num_points=cfg.num_points,
                    synthetic_kwargs=cfg.synthetic_kwargs(),
                    deterministic=cfg.student_deterministic,
                    source=f"distill(round={i},beta={beta:.3f},cloud={'synthetic' if synthetic else 'rendered'},"
                    f"teacher={teacher_obj.name})",
                )
                state.episodes.append(ep)
                state.rounds.append(i)
                state.synthetic.append(synthetic)
                if writer is not None:
                    writer.add(ep)
                wins += int(st.success)
                stud += st.student_steps
                steps += st.steps
                if progress is not None:
                    progress(
                        f"distill round {i + 1}/{cfg.iterations}: rollout {j + 1}/{cfg.episodes_per_iter}",
                        i * cfg.episodes_per_iter + j + 1,
                        cfg.iterations * cfg.episodes_per_iter,
                    )
            t_roll = time.perf_counter() - t0
            obs, acts = episodes_to_samples(
                state.episodes, keys, student.n_obs_steps, student.horizon, getattr(student, "action_offset", 0)
            )
            if cfg.retrain:
                _reinit(student)
            losses = train_bc(student, obs, acts, cfg.bc_config(i))
            agreement = action_agreement(student, obs, acts) if not student.chunked else float("nan")
            t_train = time.perf_counter() - t0 - t_roll
            last = i == cfg.iterations - 1
            evaluate = bool(eval_seeds) and (last or (cfg.eval_every > 0 and (i + 1) % cfg.eval_every == 0))
            succ = evaluate_student(student, rendered_env, eval_seeds) if evaluate else float("nan")
            metrics = {
                "round": float(i),
                "beta": beta,
                "episodes": float(cfg.episodes_per_iter),
                "synthetic_episodes": float(n_syn),
                "rollout/success_rate": wins / cfg.episodes_per_iter,
                "rollout/student_step_fraction": stud / max(steps, 1),
                "dataset/episodes": float(len(state.episodes)),
                "dataset/transitions": float(len(acts)),
                "loss/bc": float(losses[-1]) if losses else float("nan"),
                "distill/agreement": float(agreement),
                "eval/success_rate": float(succ),
                "distill/teacher_success": float(state.teacher_success),
                "time/round_s": time.perf_counter() - t0,
                "time/rollout_s": t_roll,
                "time/train_s": t_train,
            }
            history.append(metrics)
            if callback is not None:
                callback(i, metrics)
    finally:
        rendered_env.close()
        synth_env.close()
    return history


# ---------------------------------------------------------------------------------------------
# training-run backend (algo: distill)
# ---------------------------------------------------------------------------------------------


def _finite_or_none(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def _student_obs_keys(cfg: Any) -> list[str]:
    keys = list(cfg.obs_keys)
    if cfg.policy == "pointcloud" and "point_cloud" not in keys:
        keys = ["point_cloud", "proprio"]
    return keys


def run_distillation(
    cfg: Any,
    out: str | Path,
    client: Any,
    run_id: str,
    progress: Callable[[str, float, float], None] | None = None,
    cache_dir: str | Path | None = None,
) -> tuple[list[Any], list[dict[str, float]]]:
    """``algo: distill`` of :func:`policies.train.run_training`.

    Builds the student from ``cfg.policy`` / ``cfg.policy_config`` / ``cfg.obs_keys``
    (default: the ``pointcloud`` student over ``point_cloud`` + ``proprio``), the teacher from
    ``cfg.distill["teacher"]`` (``"expert"`` or a checkpoint dir) and runs :func:`distill`
    with ``DistillConfig(**cfg.distill)`` (eval episodes/seed and seed default to the
    TrainConfig's). After round ``i`` it saves and registers checkpoint ``step = i + 1``
    (rounds completed) and logs ``eval/success_rate``, ``loss/bc``,
    ``distill/teacher_success``, ``distill/agreement`` and the dataset size to MLflow.
    Returns ``(records, history)``.
    """
    from policies.mlflow_model import save_and_register
    from policies.train_config import TrainConfigError

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        dcfg = DistillConfig.from_dict(dict(cfg.distill or {}))
    except ConfigError as exc:
        raise TrainConfigError(f"distill: {exc}") from exc
    changes: dict[str, Any] = {}
    if dcfg.eval_episodes < 0:
        changes["eval_episodes"] = int(cfg.eval_episodes)
    if dcfg.eval_seed < 0:
        changes["eval_seed"] = int(cfg.eval_seed)
    if "seed" not in (cfg.distill or {}):
        changes["seed"] = int(cfg.seed)
    changes["eval_every"] = 1  # every registered checkpoint carries its measured success
    dcfg = dataclasses.replace(dcfg, **changes)
    if dcfg.eval_episodes < 1:
        raise TrainConfigError("distill: eval_episodes must be >= 1 (each round's checkpoint is evaluated)")
    mode = cfg.control_mode or get_task_class(cfg.task).default_cfg().actions.mode
    torch.manual_seed(int(dcfg.seed))
    env = TwinEnv(cfg.task, control_mode=mode, observations=dcfg.observations(), suite=cfg.suite)
    try:
        spec = PolicySpec.from_env(env, obs_keys=_student_obs_keys(cfg), task=cfg.task)
    finally:
        env.close()
    student = make_policy(cfg.policy, cfg.policy_config, spec)
    dataset = out / "distill_dataset.h5"
    if dataset.exists():
        dataset.unlink()
    for k, v in {"distill.resolved_teacher": dcfg.teacher, "distill.resolved_num_points": dcfg.num_points}.items():
        try:
            client.log_param(run_id, k, str(v))
        except Exception:  # noqa: BLE001 - a param logged twice is not worth failing a run for
            pass
    records: list[Any] = []
    history: list[dict[str, float]] = []

    def on_round(i: int, m: dict[str, float]) -> None:
        step = i + 1
        for k, v in m.items():
            if k != "round" and np.isfinite(v):
                client.log_metric(run_id, k, float(v), step=step)
        history.append({"round": step, **{k: v for k, v in m.items() if k != "round"}})
        digest = data_digest(dataset) if dataset.exists() else ""
        succ = m["eval/success_rate"]
        records.append(
            save_and_register(
                student,
                cfg,
                out,
                client,
                run_id,
                step,
                digest,
                succ,
                extra={
                    "distill_round": step,
                    "teacher": dcfg.teacher,
                    "teacher_success": _finite_or_none(m["distill/teacher_success"]),
                    "agreement": _finite_or_none(m["distill/agreement"]),
                    "dataset_transitions": int(m["dataset/transitions"]),
                    "synthetic_fraction": dcfg.synthetic_fraction,
                    "num_points": dcfg.num_points,
                    "image_size": list(dcfg.image_size),
                    "cameras": list(dcfg.cameras),
                },
            )
        )
        student.train()

    t0 = time.perf_counter()
    distill(
        student,
        dcfg.teacher,
        cfg.task,
        dcfg,
        control_mode=mode,
        suite=cfg.suite,
        callback=on_round,
        dataset_path=dataset if dcfg.save_dataset else None,
        progress=progress,
    )
    client.log_metric(run_id, "train/wall_time_s", time.perf_counter() - t0)
    if dcfg.save_dataset and dataset.exists():
        client.log_metric(run_id, "dataset/bytes", float(dataset.stat().st_size))
    return records, history


__all__ = [
    "DistillConfig",
    "DistillState",
    "ExpertTeacher",
    "PolicyTeacher",
    "RolloutStats",
    "Teacher",
    "action_agreement",
    "distill",
    "evaluate_student",
    "evaluate_teacher",
    "make_teacher",
    "rollout_episode",
    "run_distillation",
]
