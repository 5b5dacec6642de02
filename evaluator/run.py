"""``evaluate()``: every checkpoint, in parallel rollouts, under the spec's perturbations.

::

    from evaluator import EvalSpec, evaluate

    spec = EvalSpec(tasks=["reach"], episodes_per_condition=10)
    result = evaluate(["runs/a/step_0010000", "runs/b/step_0020000"], spec, "outputs/eval/campaign1")
    result.checkpoints[0].per_condition["nominal"]["success_rate"]
    result.eval_info_path, result.episodes_parquet, result.plot_path, result.videos

Steps: resolve and validate every checkpoint in this process (a corrupt or missing one is
marked ``failed`` with the loader's reason and the others go on); open the campaign's
results store (``episodes.jsonl``; what is already there is skipped); cut each checkpoint's
episode list into the spec's work units and run them on the executor, appending every
episode result as it arrives; then re-run the first success and first failure of each
checkpoint with a camera to write sample videos; finally write ``eval_info.json``,
``episodes.parquet`` / ``conditions.parquet`` and ``success_by_condition.png``.

The returned :class:`CampaignResult` carries everything a tracker needs to log (per
checkpoint summaries and metrics, file paths).
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evaluator.executors import Executor, make_executor
from evaluator.racing import Race, RaceResult, RacingCfg
from evaluator.results import (
    EVAL_INFO_FILE,
    CheckpointSummary,
    EpisodeResult,
    ResultStore,
    summarize_checkpoint,
    write_eval_info,
    write_parquet,
)
from evaluator.spec import EpisodeSpec, EvalSpec, EvalSpecError
from evaluator.worker import CheckpointRef, VideoRequest, WorkUnit
from policies.checkpoint import checkpoint_id

PLOT_FILE = "success_by_condition.png"
VIDEOS_DIR = "videos"
RECORDS_DIR = "records"
EPISODE_INDEX = "episode_index"


@dataclass(frozen=True)
class RecordRequest:
    """What a consumer of the campaign's rollouts needs recorded (e.g. OOD references): the
    observations each policy acted on, every step, in the first ``episodes`` seeds of each of
    ``conditions`` (those the spec has; when it has none of them, its first condition). Stored
    per episode in ``<out>/records/<checkpoint id>/<condition>/seed<seed>.npz``; a resumed
    campaign re-runs an episode whose record is missing (same result, by the paired design)."""

    conditions: tuple[str, ...] = ("nominal", "combined")
    episodes: int = 10

    def episodes_for(self, eps: Sequence[EpisodeSpec]) -> list[tuple[str, int]]:
        """The (condition, seed) pairs of ``eps`` (a task's episode list) to record, in list order."""
        present = list(dict.fromkeys(e.condition for e in eps))
        conds = [c for c in self.conditions if c in present] or present[:1]
        out: list[tuple[str, int]] = []
        for c in conds:
            out += [(e.condition, int(e.seed)) for e in eps if e.condition == c][: max(0, int(self.episodes))]
        return out


def record_path(out_dir: str | os.PathLike[str], checkpoint_id: str, condition: str, seed: int) -> Path:
    return Path(out_dir) / RECORDS_DIR / checkpoint_id / _safe(condition) / f"seed{int(seed)}.npz"


def load_records(
    out_dir: str | os.PathLike[str], checkpoint_id: str, episodes: Sequence[tuple[str, int]]
) -> dict[str, Any] | None:
    """The recorded observations of ``episodes`` for one checkpoint, stacked: ``{key: (N, *shape)}``
    plus ``episode_index`` ``(N,)`` (the position in ``episodes``); None when any is missing."""
    import numpy as np

    rows: dict[str, list[Any]] = {}
    index: list[Any] = []
    for k, (cond, seed) in enumerate(episodes):
        path = record_path(out_dir, checkpoint_id, cond, seed)
        if not path.is_file():
            return None
        with np.load(path) as z:
            n = 0
            for key in z.files:
                rows.setdefault(key, []).append(z[key])
                n = len(z[key])
        index.append(np.full(n, k, dtype=np.int64))
    if not index:
        return None
    out: dict[str, Any] = {key: np.concatenate(v) for key, v in rows.items()}
    out[EPISODE_INDEX] = np.concatenate(index)
    return out


def _write_record(path: Path, obs: dict[str, Any]) -> None:
    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}.npz")
    np.savez(tmp, **obs)
    os.replace(tmp, path)


class CheckpointResolveError(ValueError):
    """A checkpoint reference that this module cannot turn into a directory."""


# ---------------------------------------------------------------------------------------------
# checkpoints
# ---------------------------------------------------------------------------------------------


def resolve_checkpoint(ref: str | os.PathLike[str]) -> Path:
    """A checkpoint reference -> its directory. Plain paths (a checkpoint directory, or its
    ``manifest.json``/``model.safetensors``) only; the MLflow integration extends this for
    ``models:/name/version`` and ``runs:/`` URIs. Existence is not checked here (a missing
    checkpoint fails later with the loader's reason)."""
    s = os.fspath(ref)
    if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:/", s):
        raise CheckpointResolveError(
            f"{s!r}: URIs (models:/, runs:/ ...) are resolved by the MLflow integration; "
            f"pass a checkpoint directory here"
        )
    p = Path(s).expanduser()
    if p.name in ("manifest.json", "model.safetensors"):
        p = p.parent
    return p.resolve()


def policy_ref(policy: Any, name: str, checkpoint_id: str | None = None) -> CheckpointRef:
    """An in-memory policy (anything with ``spec``/``act``/``reset``) as a campaign entry.
    Its id defaults to a hash of ``name``: keep names unique and stable for resuming."""
    if not hasattr(policy, "spec") or not hasattr(policy, "act"):
        raise TypeError(f"{type(policy).__name__} is not a policy (needs .spec and .act)")
    cid = checkpoint_id or "mem-" + hashlib.sha256(name.encode()).hexdigest()[:8]
    return CheckpointRef(checkpoint_id=cid, label=name, policy=policy, task=getattr(policy.spec, "task", ""))


def unresolved_ref(text: str, reason: str) -> CheckpointRef:
    """A campaign entry for a reference that could not be resolved (e.g. a registered model
    that does not exist): it fails with ``reason`` and the others go on."""
    return CheckpointRef(
        checkpoint_id="unresolved-" + hashlib.sha256(text.encode()).hexdigest()[:8],
        label=text,
        path=text,
        info={"resolve_error": reason},
    )


def _as_ref(item: Any) -> CheckpointRef:
    if isinstance(item, CheckpointRef):
        return item
    if isinstance(item, (str, os.PathLike)):
        try:
            path = resolve_checkpoint(item)
        except CheckpointResolveError as exc:  # fails this checkpoint only
            return unresolved_ref(os.fspath(item), str(exc))
        return CheckpointRef(checkpoint_id=checkpoint_id(path), label=checkpoint_label(path), path=str(path))
    if hasattr(item, "spec") and hasattr(item, "act"):
        return policy_ref(item, type(item).__name__)
    raise TypeError(f"cannot evaluate {item!r}: give a checkpoint directory, a CheckpointRef or a policy")


def checkpoint_label(path: Path) -> str:
    """``step_0010000`` -> ``<run dir>/step_0010000`` for training outputs (``.../checkpoints/step_*``)."""
    if path.parent.name == "checkpoints" and path.parent.parent.name:
        return f"{path.parent.parent.name}/{path.name}"
    return path.name


def _validate_ref(ref: CheckpointRef) -> tuple[str, dict[str, Any]] | str:
    """(task, info) of a checkpoint, or the reason it cannot be evaluated."""
    from policies.checkpoint import CheckpointError, load_checkpoint

    if ref.info.get("resolve_error"):
        return str(ref.info["resolve_error"])
    if ref.path is None:
        spec = getattr(ref.policy, "spec", None)
        task = getattr(spec, "task", "") or ref.task
        return task, {"policy_class": type(ref.policy).__name__, "in_memory": True}
    try:
        policy = load_checkpoint(ref.path, device="cpu")
    except CheckpointError as exc:
        return str(exc)
    except Exception as exc:  # noqa: BLE001 - anything else the loader trips over
        return f"checkpoint {ref.path}: {type(exc).__name__}: {exc}"
    info = dict(policy.checkpoint_info)
    info.pop("path", None)
    return policy.spec.task, info


# ---------------------------------------------------------------------------------------------
# results
# ---------------------------------------------------------------------------------------------


@dataclass
class ProgressEvent:
    """Passed to ``evaluate(progress=...)``. ``kind``: ``start`` (``total`` episodes to run,
    ``skipped`` already done), ``episode`` (``episode`` set), ``checkpoint_failed``,
    ``worker_lost``, ``videos`` (``total`` videos to record), ``video`` (one written),
    ``eliminated`` and ``race_done`` (adaptive mode: ``message`` says why), ``round``
    (adaptive mode: the new ``total`` after a round), ``finished``."""

    kind: str
    done: int = 0
    total: int = 0
    skipped: int = 0
    checkpoint_id: str = ""
    label: str = ""
    episode: EpisodeResult | None = None
    message: str = ""
    worker_pid: int | None = None


ProgressFn = Callable[[ProgressEvent], None]


def _physics_share(physics_s: float, unit_s: float) -> float | None:
    """The part of the workers' unit time spent in physics stepping (None before any unit ran)."""
    return physics_s / unit_s if unit_s > 0 else None


@dataclass
class CampaignResult:
    """What :func:`evaluate` produced (all paths are inside ``out_dir``)."""

    out_dir: Path
    spec: EvalSpec
    spec_digest: str
    checkpoints: list[CheckpointSummary]
    episodes: list[EpisodeResult]
    eval_info_path: Path
    episodes_parquet: Path
    conditions_parquet: Path
    plot_path: Path | None
    videos: list[Path] = field(default_factory=list)
    executed: int = 0
    skipped: int = 0
    worker_restarts: int = 0
    elapsed_s: float = 0.0
    executor: str = ""
    #: workers' wall time running this campaign's units, and the part of it spent in physics
    #: stepping (their ratio: how much of the evaluator's time is simulation)
    worker_unit_s: float = 0.0
    physics_s: float = 0.0
    #: wall-clock span of the campaign (epoch seconds): its first work unit's start (an earlier
    #: invocation's, when resumed) to the end of this call
    started_at: float | None = None
    finished_at: float | None = None
    #: task -> the (condition, seed) episodes whose observations were recorded (``record=``)
    record_episodes: dict[str, list[tuple[str, int]]] = field(default_factory=dict)
    #: task -> its race, when the campaign ran in adaptive mode
    races: dict[str, RaceResult] = field(default_factory=dict)

    @property
    def physics_share(self) -> float | None:
        return _physics_share(self.physics_s, self.worker_unit_s)

    @property
    def racing(self) -> dict[str, dict[str, Any]]:
        """task -> its race as written to ``eval_info.json`` (empty for a fixed campaign)."""
        return {t: r.to_dict() for t, r in self.races.items()}

    def summary(self, key: str) -> CheckpointSummary:
        """A checkpoint's summary by id, label or path."""
        for s in self.checkpoints:
            if key in (s.checkpoint_id, s.label, s.path):
                return s
        raise KeyError(f"no checkpoint {key!r} in this campaign")

    def recorded_obs(self, checkpoint_id: str) -> dict[str, Any] | None:
        """The observations a checkpoint's policy acted on in the recorded episodes
        (:func:`load_records`), or None when it has none (not recorded, or failed)."""
        s = self.summary(checkpoint_id)
        return load_records(self.out_dir, checkpoint_id, self.record_episodes.get(s.task, []))

    def episodes_of(self, checkpoint_id: str) -> list[EpisodeResult]:
        return [r for r in self.episodes if r.checkpoint_id == checkpoint_id]

    @property
    def failed(self) -> list[CheckpointSummary]:
        return [s for s in self.checkpoints if s.status == "failed"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "out_dir": str(self.out_dir),
            "spec_digest": self.spec_digest,
            "checkpoints": [s.to_dict() for s in self.checkpoints],
            "eval_info": str(self.eval_info_path),
            "episodes_parquet": str(self.episodes_parquet),
            "conditions_parquet": str(self.conditions_parquet),
            "plot": str(self.plot_path) if self.plot_path else None,
            "videos": [str(v) for v in self.videos],
            "executed": self.executed,
            "skipped": self.skipped,
            "worker_restarts": self.worker_restarts,
            "elapsed_s": self.elapsed_s,
            "executor": self.executor,
            "worker_unit_s": self.worker_unit_s,
            "physics_s": self.physics_s,
            "physics_share": self.physics_share,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
        }


# ---------------------------------------------------------------------------------------------
# evaluate
# ---------------------------------------------------------------------------------------------


def evaluate(
    checkpoints: Sequence[Any],
    spec: EvalSpec | str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    executor: str | Executor = "local",
    workers: int | None = None,
    address: str | None = None,
    progress: ProgressFn | None = None,
    videos: bool | None = None,
    plots: bool = True,
    device: str = "cpu",
    record: RecordRequest | None = None,
    adaptive: RacingCfg | None = None,
    round_episodes: int | None = None,
) -> CampaignResult:
    """Evaluate ``checkpoints`` (directories, :class:`CheckpointRef` or in-memory policies)
    on ``spec`` (an :class:`EvalSpec`, a spec YAML path or a built-in spec name); results in
    ``out_dir``. ``executor``: ``"local"`` (``workers`` processes, default one per core),
    ``"inline"``, ``"ray"`` (``address``) or an :class:`Executor` object, which is then left
    open for reuse. ``videos``: override ``spec.video.enabled``. ``device``: where workers
    run policy inference (``"cpu"``, ``"cuda:0"``...; results are reproducible per device).

    ``adaptive``: race the checkpoints of each task (:mod:`evaluator.racing`) instead of running
    every episode: rounds of ``round_episodes`` episodes per surviving checkpoint (default: one
    work unit) over the spec's episode list in a shuffled order that every checkpoint shares,
    eliminating the ones confidently worse than another and stopping once the best is identified
    within ``adaptive.epsilon``; ``result.races`` says who left when and why.

    Interrupting (Ctrl-C, an exception from ``progress``, a killed process) loses nothing
    that finished: a later call with the same spec and ``out_dir`` runs only the rest (an
    adaptive campaign replays its rounds from the stored episodes and goes on).
    """
    from evaluator.spec import load_spec

    t0 = time.perf_counter()
    if not isinstance(spec, EvalSpec):
        spec = load_spec(spec)
    spec.validate()
    if adaptive is not None:
        adaptive.validate()
        round_episodes = int(round_episodes or spec.batch_size)
        if round_episodes < 1:
            raise ValueError(f"round_episodes = {round_episodes}: need at least one episode per round")
    out = Path(out_dir)
    emit = progress or (lambda ev: None)
    refs: list[CheckpointRef] = []
    seen: set[str] = set()
    for item in checkpoints:
        ref = _as_ref(item)
        if ref.checkpoint_id in seen:
            continue  # the same checkpoint twice: evaluate once
        seen.add(ref.checkpoint_id)
        refs.append(ref)
    if not refs:
        raise ValueError("no checkpoints to evaluate")

    own_executor = not isinstance(executor, Executor)
    ex = make_executor(executor, workers=workers, address=address)
    store = ResultStore(out, spec)
    summaries: dict[str, CheckpointSummary] = {}
    try:
        store.open()
        # ---- checkpoints --------------------------------------------------------------------
        units: list[WorkUnit] = []
        racers: dict[str, list[CheckpointRef]] = {}  # adaptive: task -> its checkpoints
        episode_lists: dict[str, list[EpisodeSpec]] = {}
        record_lists: dict[str, list[tuple[str, int]]] = {}  # task -> recorded (condition, seed)
        skipped = 0
        for ref in refs:
            s = CheckpointSummary(
                checkpoint_id=ref.checkpoint_id, label=ref.label, path=ref.path or "", task="", status="ok"
            )
            summaries[ref.checkpoint_id] = s
            checked = _validate_ref(ref)
            if isinstance(checked, str):
                _fail(s, checked, emit)
                continue
            task, info = checked
            if not task and len(spec.tasks) == 1:
                task = spec.tasks[0]  # an in-memory policy whose spec names no task
            s.task, s.info = task, info
            ref.task, ref.info = task, info
            if not spec.covers_task(task):
                _fail(s, f"the checkpoint is for task {task!r}; spec {spec.name!r} evaluates {spec.tasks}", emit)
                continue
            if ex.remote and ref.policy is not None:
                try:
                    pickle.dumps(ref.policy)
                except Exception as exc:  # noqa: BLE001
                    _fail(
                        s,
                        f"in-memory policy cannot be sent to worker processes ({type(exc).__name__}: {exc}); "
                        f"use executor='inline'",
                        emit,
                    )
                    continue
            if task not in episode_lists:
                try:
                    episode_lists[task] = spec.episodes(task)
                except EvalSpecError as exc:
                    _fail(s, str(exc), emit)
                    continue
                if record is not None:  # the spec's order: the first seeds of each condition
                    record_lists[task] = record.episodes_for(episode_lists[task])
                if adaptive is not None:
                    episode_lists[task] = race_order(episode_lists[task], spec, task)
            eps = episode_lists[task]
            s.episodes_expected = len(eps)
            if adaptive is not None:
                racers.setdefault(task, []).append(ref)
                continue
            new, n_skipped = _units_for(ref, task, eps, 0, spec, store, out, set(record_lists.get(task, ())), device)
            units += new
            skipped += n_skipped

        # ---- episodes -----------------------------------------------------------------------
        total = sum(len(u.pending_slots()) for u in units)
        if adaptive is not None:
            total = sum(len(episode_lists[t]) * len(rs) for t, rs in racers.items())
        state: dict[str, Any] = {"done": 0, "restarts": 0, "unit_s": 0.0, "physics_s": 0.0, "total": total}
        emit(ProgressEvent("start", total=total, skipped=skipped))

        def skip(unit: WorkUnit) -> bool:
            return summaries[unit.checkpoint.checkpoint_id].status == "failed"

        def handle(kind: str, unit: WorkUnit, payload: dict[str, Any]) -> None:
            s = summaries[unit.checkpoint.checkpoint_id]
            if kind == "episode":
                r = EpisodeResult.from_dict(payload)
                store.add([r])  # an episode re-run for its record is already stored: kept once
                state["done"] += 1
                emit(
                    ProgressEvent(
                        "episode",
                        done=state["done"],
                        total=state["total"],
                        checkpoint_id=s.checkpoint_id,
                        label=s.label,
                        episode=r,
                    )
                )
            elif kind == "record":
                _write_record(record_path(out, s.checkpoint_id, payload["condition"], payload["seed"]), payload["obs"])
            elif kind == "done":
                unit_s = float(payload.get("elapsed_s", 0.0))
                state["unit_s"] += unit_s
                state["physics_s"] += float(payload.get("physics_s", 0.0))
                now = time.time()
                s.started_at = min(s.started_at or now, now - unit_s)
                s.finished_at = max(s.finished_at or now, now)
            elif kind == "error":
                prefix = "" if payload.get("kind") == "checkpoint" else "evaluation error: "
                _fail(s, prefix + str(payload.get("message", "")), emit)
            elif kind == "failed":
                _fail(s, str(payload.get("message", "")), emit)
            elif kind == "lost":
                state["restarts"] += 1
                emit(
                    ProgressEvent(
                        "worker_lost",
                        done=state["done"],
                        total=state["total"],
                        checkpoint_id=s.checkpoint_id,
                        label=s.label,
                        worker_pid=payload.get("pid"),
                        message=f"worker {payload.get('pid')} died (exit code {payload.get('exitcode')}) "
                        f"running {unit.unit_id}; "
                        f"{'re-running' if payload.get('will_retry') else 'giving up on'} "
                        f"{len(payload.get('remaining', []))} episode(s)"
                        + (f" ({payload['message']})" if payload.get("message") else ""),
                    )
                )

        if units:
            ex.run(units, handle, skip)
        races: dict[str, RaceResult] = {}
        if adaptive is not None and racers:
            races, skipped = _run_races(
                racers,
                episode_lists,
                adaptive,
                int(round_episodes or 1),
                summaries,
                spec,
                store,
                out,
                record_lists,
                device,
                ex,
                handle,
                skip,
                state,
                emit,
            )

        # ---- summaries ----------------------------------------------------------------------
        all_results: list[EpisodeResult] = []
        for ref in refs:
            s = summaries[ref.checkpoint_id]
            mine = _ordered(store.for_checkpoint(ref.checkpoint_id, s.task), episode_lists.get(s.task, []))
            if s.task:
                summarize_checkpoint(s, mine, spec)
            all_results.extend(mine)

        from evaluator.decision import decide_campaign

        decide_campaign([summaries[r.checkpoint_id] for r in refs], all_results, races=races)

        # ---- videos -------------------------------------------------------------------------
        video_paths: list[Path] = []
        do_videos = spec.video.enabled if videos is None else bool(videos)
        if do_videos:
            video_paths = _record_videos(ex, refs, summaries, store, spec, episode_lists, out, emit, device)

        # ---- reports ------------------------------------------------------------------------
        _carry_times(out / EVAL_INFO_FILE, summaries)
        summary_list = [summaries[r.checkpoint_id] for r in refs]
        elapsed = time.perf_counter() - t0
        finished_at = time.time()
        starts = [s.started_at for s in summary_list if s.started_at is not None]
        started_at = min(starts + [finished_at - elapsed])
        extra = {
            "campaign": {
                "started_at": started_at,
                "finished_at": finished_at,
                "executor": ex.name,
                "executed": state["done"],
                "skipped": skipped,
                "worker_restarts": state["restarts"],
                "elapsed_s": elapsed,
                "worker_unit_s": state["unit_s"],
                "physics_s": state["physics_s"],
                "physics_share": _physics_share(state["physics_s"], state["unit_s"]),
            }
        }
        if races:
            extra["racing"] = {t: r.to_dict() for t, r in races.items()}
        info_path = write_eval_info(out / EVAL_INFO_FILE, spec, summary_list, all_results, extra)
        p_eps, p_conds = write_parquet(out, summary_list, all_results)
        plot_path = None
        if plots:
            from evaluator.plots import plot_campaign

            plot_path = plot_campaign(summary_list, out / PLOT_FILE, title=f"{spec.name} ({spec.digest()[:8]})")
        emit(ProgressEvent("finished", done=state["done"], total=state["total"], skipped=skipped))
        return CampaignResult(
            out_dir=out,
            spec=spec,
            spec_digest=spec.digest(),
            checkpoints=summary_list,
            episodes=all_results,
            eval_info_path=info_path,
            episodes_parquet=p_eps,
            conditions_parquet=p_conds,
            plot_path=plot_path,
            videos=video_paths,
            executed=state["done"],
            skipped=skipped,
            worker_restarts=state["restarts"],
            elapsed_s=elapsed,
            executor=ex.name,
            worker_unit_s=state["unit_s"],
            physics_s=state["physics_s"],
            started_at=started_at,
            finished_at=finished_at,
            record_episodes=record_lists,
            races=races,
        )
    finally:
        store.close()
        if own_executor:
            ex.close()


def race_order(eps: list[EpisodeSpec], spec: EvalSpec, task: str) -> list[EpisodeSpec]:
    """The adaptive campaign's episode order for ``task``: the spec's list shuffled with a seed
    from the spec's digest and the task (so a resumed race replays the same rounds); every
    checkpoint of the task runs it in this order. The shuffle is what the racing guarantee
    rests on (:mod:`evaluator.racing`)."""
    import numpy as np

    key = hashlib.sha256(f"{spec.digest()}/{task}/race-order".encode()).digest()
    perm = np.random.default_rng(int.from_bytes(key[:8], "little")).permutation(len(eps))
    return [eps[int(i)] for i in perm]


def _units_for(
    ref: CheckpointRef,
    task: str,
    eps: list[EpisodeSpec],
    offset: int,
    spec: EvalSpec,
    store: ResultStore,
    out: Path,
    wanted: set[tuple[str, int]],
    device: str,
) -> tuple[list[WorkUnit], int]:
    """Work units for the episodes of ``eps`` (starting at position ``offset`` of the task's
    list) that ``ref`` has not run yet, or whose observations are to be recorded and are not
    (``wanted``); and how many were skipped as already done."""
    units: list[WorkUnit] = []
    skipped = 0
    b = int(spec.batch_size)
    for j, chunk in enumerate(_chunks(eps, b)):
        rec = [
            (e.condition, int(e.seed)) in wanted
            and not record_path(out, ref.checkpoint_id, e.condition, e.seed).is_file()
            for e in chunk
        ]
        run = [not store.has((ref.checkpoint_id, task, e.condition, e.seed)) or r for e, r in zip(chunk, rec)]
        skipped += sum(1 for r in run if not r)
        if any(run):
            unit = _unit(ref, task, offset // b + j, chunk, run, spec, device=device)
            unit.record = tuple(i for i, r in enumerate(rec) if r)
            units.append(unit)
    return units, skipped


def _run_races(
    racers: dict[str, list[CheckpointRef]],
    episode_lists: dict[str, list[EpisodeSpec]],
    cfg: RacingCfg,
    round_episodes: int,
    summaries: dict[str, CheckpointSummary],
    spec: EvalSpec,
    store: ResultStore,
    out: Path,
    record_lists: dict[str, list[tuple[str, int]]],
    device: str,
    ex: Executor,
    handle: Callable[[str, WorkUnit, dict[str, Any]], None],
    skip: Callable[[WorkUnit], bool],
    state: dict[str, Any],
    emit: ProgressFn,
) -> tuple[dict[str, RaceResult], int]:
    """Adaptive mode: race each task's checkpoints in rounds (all tasks' rounds run together
    on the executor). Every round's outcomes come from the results store, so a resumed
    campaign replays its earlier rounds without running them and takes the same decisions."""
    races = {t: Race([r.checkpoint_id for r in refs], cfg, len(episode_lists[t])) for t, refs in racers.items()}
    pos = {t: 0 for t in racers}
    skipped = 0
    while True:
        units: list[WorkUnit] = []
        slices: dict[str, list[EpisodeSpec]] = {}
        for t, race in races.items():
            if race.done:
                continue
            sl = episode_lists[t][pos[t] : pos[t] + race.next_episodes(round_episodes)]
            slices[t] = sl
            for i, ref in enumerate(racers[t]):
                if race.alive[i] and summaries[ref.checkpoint_id].status != "failed":
                    new, n = _units_for(ref, t, sl, pos[t], spec, store, out, set(record_lists.get(t, ())), device)
                    units += new
                    skipped += n
        if not slices:
            break
        if units:
            ex.run(units, handle, skip)
        for t, sl in slices.items():
            race = races[t]
            for i, ref in enumerate(racers[t]):
                s = summaries[ref.checkpoint_id]
                if not race.alive[i]:
                    continue
                missing = [e for e in sl if not store.has((ref.checkpoint_id, t, e.condition, e.seed))]
                if missing and s.status != "failed":
                    _fail(s, f"{len(missing)} episode(s) of racing round {race.round + 1} did not run", emit)
                if s.status == "failed":
                    race.withdraw(i, s.error or "failed")
            for e in sl:
                race.observe(
                    [
                        float(store.results[(ref.checkpoint_id, t, e.condition, e.seed)].success)
                        if race.alive[i]
                        else float("nan")
                        for i, ref in enumerate(racers[t])
                    ]
                )
            pos[t] += len(sl)
            before = len(race.eliminations)
            race.settle()
            for el in race.eliminations[before:]:
                s = summaries[el.checkpoint_id]
                labels = {r.checkpoint_id: r.label for r in racers[t]}
                emit(
                    ProgressEvent(
                        "eliminated", checkpoint_id=s.checkpoint_id, label=s.label, message=el.describe(labels)
                    )
                )
            if race.done:
                res = race.result()
                winner = summaries[res.winner].label if res.winner else "none (tie)"
                emit(ProgressEvent("race_done", message=f"{t}: {res.describe_stop()}; winner {winner}"))
        left = sum(int(races[t].alive.sum()) * (len(episode_lists[t]) - pos[t]) for t in races if not races[t].done)
        state["total"] = state["done"] + left
        emit(ProgressEvent("round", done=state["done"], total=state["total"]))
    for t, race in races.items():
        for i, ref in enumerate(racers[t]):
            summaries[ref.checkpoint_id].episodes_expected = int(race.n[i])
    return {t: r.result() for t, r in races.items()}, skipped


def _carry_times(eval_info: Path, summaries: dict[str, CheckpointSummary]) -> None:
    """Checkpoints that ran nothing in this call keep the time span an earlier call recorded."""
    if not eval_info.is_file():
        return
    try:
        before = {c["checkpoint_id"]: c for c in json.loads(eval_info.read_text()).get("checkpoints", [])}
    except (ValueError, KeyError, TypeError, AttributeError):
        return
    for cid, s in summaries.items():
        old = before.get(cid, {})
        if s.started_at is None and old.get("started_at") is not None:
            s.started_at, s.finished_at = old["started_at"], old.get("finished_at")


def _fail(s: CheckpointSummary, reason: str, emit: ProgressFn) -> None:
    if s.status == "failed":
        return
    s.status, s.error = "failed", reason
    emit(ProgressEvent("checkpoint_failed", checkpoint_id=s.checkpoint_id, label=s.label, message=reason))


def _chunks(eps: list[EpisodeSpec], b: int) -> list[list[EpisodeSpec]]:
    return [eps[i : i + b] for i in range(0, len(eps), b)]


def _unit(
    ref: CheckpointRef,
    task: str,
    k: int,
    chunk: list[EpisodeSpec],
    run: list[bool],
    spec: EvalSpec,
    video: VideoRequest | None = None,
    device: str = "cpu",
) -> WorkUnit:
    return WorkUnit(
        unit_id=f"{ref.checkpoint_id}/{task}/{k}",
        checkpoint=ref,
        task=task,
        episodes=[(e.condition, int(e.seed), e.perturbation.to_dict()) for e in chunk],
        run=run,
        batch_size=spec.batch_size,
        max_steps=spec.max_steps,
        deterministic=spec.deterministic,
        video=video,
        device=device,
        engine=spec.engine,
    )


def _ordered(results: list[EpisodeResult], eps: list[EpisodeSpec]) -> list[EpisodeResult]:
    order = {(e.condition, e.seed): i for i, e in enumerate(eps)}
    return sorted(results, key=lambda r: (order.get((r.condition, r.seed), len(order)), r.condition, r.seed))


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:60] or "checkpoint"


def _record_videos(
    ex: Executor,
    refs: list[CheckpointRef],
    summaries: dict[str, CheckpointSummary],
    store: ResultStore,
    spec: EvalSpec,
    episode_lists: dict[str, list[EpisodeSpec]],
    out: Path,
    emit: ProgressFn,
    device: str = "cpu",
) -> list[Path]:
    """Re-run the first success and the first failure of every checkpoint with a camera, and
    its first failure under its worst condition (``CheckpointSummary.worst_condition``) when that is
    another episode; the worker labels every frame with condition, seed and outcome."""
    from evaluator.worker import video_backend

    fmt = spec.video.format if spec.video.format != "auto" else video_backend()
    units: list[WorkUnit] = []
    wanted: dict[tuple[str, int], tuple[Path, EpisodeResult, str]] = {}  # (unit_id, slot) -> target
    paths: list[Path] = []
    for ref in refs:
        s = summaries[ref.checkpoint_id]
        if s.status == "failed" or not s.task:
            continue
        eps = episode_lists[s.task]
        picks: dict[str, int] = {}
        for i, e in enumerate(eps):
            r = store.results.get((ref.checkpoint_id, s.task, e.condition, e.seed))
            if r is None:
                continue
            tag = "success" if r.success else "failure"
            picks.setdefault(tag, i)
            if len(picks) == 2:
                break
        worst = s.worst_condition()
        for i, e in enumerate(eps):  # the first failure under the worst condition, if not picked already
            r = store.results.get((ref.checkpoint_id, s.task, e.condition, e.seed))
            if e.condition == worst and r is not None and not r.success:
                if i != picks.get("failure"):
                    picks["worst_failure"] = i
                break
        vdir = out / VIDEOS_DIR / f"{_safe(ref.label)}-{ref.checkpoint_id}"
        by_unit: dict[int, dict[int, str]] = {}
        for tag, i in sorted(picks.items(), key=lambda kv: kv[1]):
            e = eps[i]
            r = store.results[(ref.checkpoint_id, s.task, e.condition, e.seed)]
            path = vdir / f"{tag}_{s.task}_{_safe(e.condition)}_seed{e.seed}.{fmt}"
            entry = {
                "tag": tag,
                "path": str(path),
                "condition": e.condition,
                "seed": int(e.seed),
                "format": fmt,
                "success": r.success,
                "failure_reason": r.failure_reason,
                "worst_condition": e.condition == worst,
            }
            s.videos.append(entry)
            if path.is_file():
                paths.append(path)
                entry["consistent"] = True
                continue
            k, slot = divmod(i, spec.batch_size)
            by_unit.setdefault(k, {})[slot] = tag
            wanted[(f"{ref.checkpoint_id}/{s.task}/{k}", slot)] = (path, r, tag)
        for k, slots in by_unit.items():
            chunk = _chunks(eps, spec.batch_size)[k]
            v = spec.video
            req = VideoRequest(slots=slots, camera=v.camera, width=v.width, height=v.height, fps=v.fps, format=fmt)
            units.append(
                _unit(ref, s.task, k, chunk, [i in slots for i in range(len(chunk))], spec, video=req, device=device)
            )
    if not units:
        return paths
    emit(ProgressEvent("videos", total=len(wanted)))

    def handle(kind: str, unit: WorkUnit, payload: dict[str, Any]) -> None:
        s = summaries[unit.checkpoint.checkpoint_id]
        if kind == "video":
            target = wanted.get((unit.unit_id, int(payload["slot"])))
            if target is None:
                return
            path, stored, tag = target
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_bytes(payload["data"])
            os.replace(tmp, path)
            paths.append(path)
            rerun = EpisodeResult.from_dict(payload["result"])
            for entry in s.videos:
                if entry["path"] == str(path):
                    entry["consistent"] = rerun.outcome() == stored.outcome()
                    entry["camera"] = payload.get("camera")
            emit(ProgressEvent("video", checkpoint_id=s.checkpoint_id, label=s.label, message=str(path)))
        elif kind in ("error", "failed"):
            for entry in s.videos:
                if "consistent" not in entry:
                    entry["error"] = str(payload.get("message", ""))

    ex.run(units, handle)
    for s in summaries.values():  # entries whose video never came (errors): drop the path
        s.videos = [e for e in s.videos if Path(e["path"]).is_file() or "error" in e]
    return paths


__all__ = [
    "race_order",
    "RecordRequest",
    "load_records",
    "record_path",
    "CampaignResult",
    "CheckpointResolveError",
    "ProgressEvent",
    "checkpoint_id",
    "evaluate",
    "policy_ref",
    "resolve_checkpoint",
    "unresolved_ref",
]
