"""The nightly selection job: find checkpoints, evaluate what is new, rank, promote, report.

One run (``run_nightly(cfg)``, ``twinrank nightly nightly.yaml``; a user's cron calls it, or
``twinrank serve`` runs it on an in-process APScheduler cron trigger):

1. **Lock** ``<state_dir>/nightly.lock`` (an OS ``flock`` held while the run lasts; the file
   names the holder's pid). A second run while one is active stops with
   :class:`NightlyLockedError` naming the lock and the pid. The kernel drops the lock of a
   process that died, so the lock of a dead pid is taken over (said in the log).
2. **Discover** checkpoints from the configured sources: every version of a registered model
   (its ``checkpoint_dir`` tag when that folder still exists, else the version's artifacts
   downloaded into ``<state_dir>/downloads``), the ``checkpoints/step_*`` artifacts of every
   run of an MLflow experiment (the training run's local folder when a registered version
   points to it, else downloaded), and checkpoint folders (``manifest.json``) under
   directories, recursively. Checkpoints of another task are skipped; the same checkpoint
   found twice (same content) counts once; a source that fails (a version whose artifacts
   cannot be downloaded) is reported as failed and the rest goes on.
3. **New** checkpoints are those not yet evaluated under this spec (``nightly_state.json``).
4. **Rank** all discovered checkpoints with :func:`selection.job.rank_checkpoints`, the
   campaign folder in ``<state_dir>/campaigns/<spec>-<digest>``: the evaluator resumes, so
   earlier checkpoints (and episodes an interrupted night already finished) are not redone;
   OOD references are cached in ``<state_dir>/ood_cache``. A corrupt checkpoint fails its own
   row (in the report), not the night.
5. **Promote**: ``champion``/``challenger`` move only when the ranking picks other model
   versions than the ones holding them; otherwise nothing is written and the night records
   "no change".
6. **Report** ``<state_dir>/nights/<date>/report.md`` and ``report.html`` (selection/report.py),
   also logged as artifacts of the ranking's MLflow run.
7. **State** ``<state_dir>/nightly_state.json`` (written atomically): every checkpoint seen
   (first/last seen, evaluated under which spec, failures) and every run (date, status, new
   checkpoints, episodes run/reused, promotion). Checkpoints are marked evaluated only once
   their evaluation is complete; a run that was interrupted is marked so by the next one.

A re-run the same night evaluates nothing (the campaign has every episode) and, the ranking
being a pure function of the results, promotes nothing.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import fcntl
import json
import logging
import os
import re
import shutil
import socket
import tempfile
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from selection.calibration import FidelityGate
from selection.job import OODSettings, RankResult, rank_checkpoints
from selection.prediction import PredictConfig, outcomes_from_csv

logger = logging.getLogger("twinrank.nightly")

STATE_FILE = "nightly_state.json"
LOCK_FILE = "nightly.lock"
STATE_FORMAT = "twinrank-nightly-state"
STATE_VERSION = 1
NIGHTLY_JOB_ID = "twinrank-nightly"


class NightlyConfigError(ValueError):
    """A nightly configuration that cannot be used; the message names the field and the fix."""


class NightlyError(RuntimeError):
    """A nightly run that cannot go on (e.g. no checkpoint found); the message says why."""


class NightlyLockedError(NightlyError):
    """Another nightly run holds the state directory's lock."""


# ---- configuration -------------------------------------------------------------------------------------
def _as_list(value: Any, name: str) -> list[str]:
    if value is None or value == "":
        return []
    if isinstance(value, (str, os.PathLike)):
        return [os.fspath(value)]
    if isinstance(value, (list, tuple)) and all(isinstance(v, (str, os.PathLike)) for v in value):
        return [os.fspath(v) for v in value]
    raise NightlyConfigError(f"{name} = {value!r}: give a string or a list of strings")


@dataclass
class NightlyConfig:
    """What the nightly job ranks and where it keeps its state (YAML: the same field names).

    Relative paths in a YAML file are relative to the file's folder.
    """

    #: Task whose checkpoints are ranked (e.g. ``reach``); checkpoints of other tasks are skipped.
    task: str = ""
    #: Evaluation spec: a built-in name (``evaluator/specs/<name>.yaml``) or a YAML path. A spec
    #: without tasks is restricted to ``task``.
    spec: str = "default"
    #: Registered model name(s): every version is a candidate.
    registered_model: list[str] = field(default_factory=list)
    #: MLflow experiment name(s): the ``checkpoints/step_*`` artifacts of every run are candidates.
    experiment: list[str] = field(default_factory=list)
    #: Folder(s) searched recursively for checkpoint folders (holding ``manifest.json``).
    directory: list[str] = field(default_factory=list)
    #: Real-data logs: rosbag2 bags (folders or .mcap/.db3 files) or folders holding bags.
    #: Empty = rank by sim success alone (said in the report's warnings).
    real_logs: list[str] = field(default_factory=list)
    #: Persistent folder: campaigns, OOD cache, downloads, one report folder per night, the
    #: state file and the lock. Keep it between nights.
    state_dir: str = "outputs/nightly"
    #: MLflow tracking URI (default: ``MLFLOW_TRACKING_URI`` or ./mlflow.db).
    tracking_uri: str | None = None
    #: Ranking rule (selection/ranking.py RULES); None = chosen from ``validations_dir``.
    rule: str | None = None
    #: Folder of past validations (JSON) from which the rule is chosen by leave-one-out.
    validations_dir: str | None = None
    #: Evaluator worker processes (None = one per core).
    workers: int | None = None
    #: Evaluator executor: ``local`` (worker processes), ``inline`` or ``ray``.
    executor: str = "local"
    #: MLflow experiment of the ranking runs.
    ranking_experiment: str = "twinrank-selection"
    #: Set the champion/challenger aliases (False: rank and report only).
    promote: bool = True
    #: Rows of the ranking table in the report.
    top_n: int = 10
    #: Sim episodes per condition (nominal and the spec's suite) of each checkpoint's OOD reference.
    ood_reference_episodes: int = 10
    #: promotion gate: the twin must replay the real logs within this RMS residual (mm); None = no gate
    fidelity_max_residual_mm: float | None = None
    #: calibrated suite the gate replays under (twinrank calibrate's calibrated_suite.yaml)
    fidelity_suite: str | None = None
    #: real outcomes per checkpoint (CSV: checkpoint,successes,trials or checkpoint,success), added
    #: to the real episodes in ``real_logs`` that name their checkpoint; with any, every checkpoint
    #: gets a predicted real success with its interval (selection/prediction.py)
    real_outcomes: str | None = None
    #: level of the predicted-real-success intervals
    prediction_level: float = 0.9

    def __post_init__(self) -> None:
        for name in ("registered_model", "experiment", "directory", "real_logs"):
            setattr(self, name, _as_list(getattr(self, name), name))

    # ---- loading ------------------------------------------------------------------------------------
    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(
        cls, data: dict[str, Any], base_dir: str | os.PathLike[str] | None = None, source: str = "config"
    ) -> NightlyConfig:
        """A config from a mapping; relative paths are taken relative to ``base_dir``."""
        if not isinstance(data, dict):
            raise NightlyConfigError(f"{source}: expected a mapping of fields ({', '.join(cls.field_names())})")
        unknown = sorted(set(data) - set(cls.field_names()))
        if unknown:
            raise NightlyConfigError(f"{source}: unknown field(s) {unknown}; fields: {', '.join(cls.field_names())}")
        cfg = cls(**data)
        if base_dir is not None:
            cfg = cfg.relative_to(base_dir)
        return cfg

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str]) -> NightlyConfig:
        p = Path(path)
        if not p.is_file():
            raise NightlyConfigError(
                f"nightly config {p} not found; give a YAML file with the fields {', '.join(cls.field_names())}"
            )
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            raise NightlyConfigError(f"{p} is not valid YAML: {exc}") from exc
        return cls.from_dict(data, base_dir=p.resolve().parent, source=str(p))

    def relative_to(self, base: str | os.PathLike[str]) -> NightlyConfig:
        """Relative paths made absolute under ``base`` (the spec only when it is a path)."""
        b = Path(base)

        def fix(p: str | None) -> str | None:
            return None if p is None else str(p) if Path(p).is_absolute() else str(b / p)

        spec = self.spec
        if _spec_is_path(spec):
            spec = fix(spec) or spec
        return dataclasses.replace(
            self,
            spec=spec,
            directory=[fix(p) or p for p in self.directory],
            real_logs=[fix(p) or p for p in self.real_logs],
            state_dir=fix(self.state_dir) or self.state_dir,
            validations_dir=fix(self.validations_dir),
            fidelity_suite=fix(self.fidelity_suite),
            real_outcomes=fix(self.real_outcomes),
        )

    def with_overrides(self, **changes: Any) -> NightlyConfig:
        """A copy with the non-None ``changes`` applied (list fields accept a string)."""
        kept = {k: v for k, v in changes.items() if v is not None and v != [] and v != ()}
        unknown = sorted(set(kept) - set(self.field_names()))
        if unknown:
            raise NightlyConfigError(f"unknown field(s) {unknown}; fields: {', '.join(self.field_names())}")
        return dataclasses.replace(self, **kept)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    # ---- checks ----------------------------------------------------------------------------------------
    def validate(self) -> NightlyConfig:
        """Check every field that can be checked without running anything."""
        from selection.ranking import RULES

        if not self.task:
            raise NightlyConfigError("task is empty: name the task whose checkpoints are ranked (e.g. task: reach)")
        if not (self.registered_model or self.experiment or self.directory):
            raise NightlyConfigError(
                "no checkpoint source: set at least one of registered_model, experiment, directory"
            )
        for d in self.directory:
            if not Path(d).is_dir():
                raise NightlyConfigError(
                    f"directory {d} does not exist (or is not a folder); fix the path in 'directory'"
                )
        if self.rule is not None and self.rule not in RULES:
            raise NightlyConfigError(f"rule {self.rule!r} is unknown; rules: {', '.join(RULES)} (or leave it unset)")
        if self.validations_dir is not None and not Path(self.validations_dir).is_dir():
            raise NightlyConfigError(f"validations_dir {self.validations_dir} does not exist; create it or unset it")
        if self.workers is not None and self.workers < 1:
            raise NightlyConfigError(f"workers = {self.workers}: give at least 1 (or leave it unset)")
        if self.executor not in ("local", "inline", "ray"):
            raise NightlyConfigError(f"executor {self.executor!r}: use local, inline or ray")
        if self.top_n < 1 or self.ood_reference_episodes < 1:
            raise NightlyConfigError("top_n and ood_reference_episodes must be at least 1")
        if self.fidelity_max_residual_mm is not None and not self.fidelity_max_residual_mm > 0:
            raise NightlyConfigError(
                f"fidelity_max_residual_mm = {self.fidelity_max_residual_mm}: give a positive bound in mm (or unset it)"
            )
        if self.fidelity_suite is not None and not Path(self.fidelity_suite).is_file():
            raise NightlyConfigError(
                f"fidelity_suite {self.fidelity_suite} not found; give twinrank calibrate's calibrated_suite.yaml"
            )
        if not 0.5 <= self.prediction_level < 1:
            raise NightlyConfigError(f"prediction_level = {self.prediction_level}: give a level in [0.5, 1), e.g. 0.9")
        if self.real_outcomes is not None:
            from selection.prediction import PredictionError, outcomes_from_csv

            try:
                outcomes_from_csv(self.real_outcomes)
            except PredictionError as exc:
                raise NightlyConfigError(f"real_outcomes: {exc}") from None
        resolve_real_logs(self.real_logs)
        self.load_spec()
        return self

    def load_spec(self) -> Any:
        """The evaluation spec, restricted to ``task`` when it names no task."""
        from evaluator.spec import EvalSpecError, load_spec

        try:
            spec = load_spec(self.spec)
            if not spec.tasks:
                spec = spec.replace(tasks=[self.task])
            spec.validate()
        except (EvalSpecError, OSError, ValueError) as exc:
            raise NightlyConfigError(f"spec {self.spec!r}: {exc}") from exc
        if self.task not in spec.tasks:
            raise NightlyConfigError(
                f"spec {spec.name!r} evaluates tasks {spec.tasks}, not task {self.task!r}; "
                f"use a spec for {self.task!r} (or one without tasks)"
            )
        return spec


def _spec_is_path(spec: str) -> bool:
    return "/" in spec or spec.endswith((".yaml", ".yml"))


def _is_bag(p: Path) -> bool:
    if p.is_file():
        return p.suffix in (".mcap", ".db3")
    return p.is_dir() and ((p / "metadata.yaml").is_file() or any(p.glob("*.mcap")) or any(p.glob("*.db3")))


def resolve_real_logs(paths: list[str], warn: Callable[[str], None] | None = None) -> list[Path]:
    """Bag paths from bags and folders of bags. A path that does not exist is an error; a folder
    with no bag in it gives no bag, and ``warn`` is told so (the ranking then scores no OOD)."""
    bags: list[Path] = []
    for s in paths:
        p = Path(s)
        if not p.exists():
            raise NightlyConfigError(
                f"real-data log {p} does not exist; give rosbag2 bags (folders or .mcap/.db3 files) or a folder of bags"
            )
        if _is_bag(p):
            bags.append(p)
        elif p.is_dir():
            inside = sorted(c for c in p.iterdir() if _is_bag(c))
            if not inside and warn is not None:
                warn(
                    f"real-data folder {p} holds no rosbag2 bags (folders with metadata.yaml, or .mcap/.db3 files); "
                    f"record some with the live recorder or `twinrank proxy-real record`"
                )
            bags.extend(inside)
        else:
            raise NightlyConfigError(
                f"real-data log {p} is not a rosbag2 bag (folder with metadata.yaml, or a "
                f".mcap/.db3 file) nor a folder of bags"
            )
    return bags


# ---- discovery -----------------------------------------------------------------------------------------
@dataclass
class FoundCheckpoint:
    """A checkpoint folder found by a source."""

    path: Path
    label: str
    checkpoint_id: str
    source: str  # "directory:<dir>", "registered_model:<name>/<version>", "experiment:<name>/<run id>"
    model_version: str = ""  # "name/version" when known
    task: str = ""

    def ref(self) -> Any:
        """The evaluator's :class:`CheckpointRef` (this label, content id)."""
        from evaluator.worker import CheckpointRef

        return CheckpointRef(checkpoint_id=self.checkpoint_id, label=self.label, path=str(self.path))


@dataclass
class Discovery:
    checkpoints: list[FoundCheckpoint] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (what, reason)
    skipped_other_task: list[str] = field(default_factory=list)


def default_label(path: Path) -> str:
    """The evaluator's label: ``<run dir>/step_X`` for training outputs, else the folder name."""
    if path.parent.name == "checkpoints" and path.parent.parent.name:
        return f"{path.parent.parent.name}/{path.name}"
    return path.name


def _manifest_task(path: Path) -> str | None:
    try:
        return str(json.loads((path / "manifest.json").read_text()).get("task") or "")
    except (OSError, ValueError, AttributeError):
        return None  # unreadable: kept, the evaluator fails it with the loader's reason


def found_checkpoint(path: str | os.PathLike[str], source: str, model_version: str = "") -> FoundCheckpoint:
    from evaluator.run import checkpoint_id

    p = Path(path).resolve()
    return FoundCheckpoint(
        path=p,
        label=default_label(p),
        checkpoint_id=checkpoint_id(p),
        source=source,
        model_version=model_version,
        task=_manifest_task(p) or "",
    )


def unique_labels(found: list[FoundCheckpoint]) -> None:
    """Make labels unique (a ranking needs it): a repeated label gets ``@<content id>``."""
    counts: dict[str, int] = {}
    for f in found:
        counts[f.label] = counts.get(f.label, 0) + 1
    for f in found:
        if counts[f.label] > 1:
            f.label = f"{f.label}@{f.checkpoint_id[:8]}"


def _download(dest: Path, fetch: Callable[[Path], None]) -> Path:
    """Download into ``dest`` through a temporary folder, so that an interrupted download leaves nothing."""
    if (dest / "manifest.json").is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
    try:
        fetch(tmp)
        inner = sorted(m.parent for m in tmp.rglob("manifest.json"))
        if not inner:
            raise NightlyError("the downloaded artifacts hold no manifest.json")
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(inner[0], dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _local_dir(tag: str | None) -> Path | None:
    if tag and (Path(tag) / "manifest.json").is_file():
        return Path(tag)
    return None


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:80] or "x"


def discover(cfg: NightlyConfig, state_dir: Path, say: Callable[[str], None] = lambda m: None) -> Discovery:
    """All checkpoints of ``cfg``'s sources (see the module docstring)."""
    import mlflow

    from policies import tracking
    from selection.promotion import find_model_version

    out = Discovery()
    client = mlflow.MlflowClient(tracking_uri=tracking.resolve_tracking_uri(cfg.tracking_uri))
    downloads = (state_dir / "downloads").resolve()
    for d in cfg.directory:
        root = Path(d)
        dirs = sorted({m.parent for m in root.rglob("manifest.json")})
        say(f"directory {root}: {len(dirs)} checkpoint(s)")
        for p in dirs:
            try:
                out.checkpoints.append(found_checkpoint(p, f"directory:{root}"))
            except OSError as exc:  # unreadable files: this checkpoint fails, the night goes on
                out.failed.append((str(p), f"cannot read the checkpoint ({exc})"))
    for name in cfg.registered_model:
        out.checkpoints.extend(_from_registered_model(client, name, downloads, out, say))
    for name in cfg.experiment:
        out.checkpoints.extend(_from_experiment(client, name, downloads, out, say))
    # one entry per content: a local folder over a downloaded copy; keep any known model version
    by_id: dict[str, FoundCheckpoint] = {}
    for f in out.checkpoints:
        have = by_id.get(f.checkpoint_id)
        if have is None:
            by_id[f.checkpoint_id] = f
            continue
        if have.path.is_relative_to(downloads) and not f.path.is_relative_to(downloads):
            f.model_version = f.model_version or have.model_version
            by_id[f.checkpoint_id] = f
        elif not have.model_version and f.model_version:
            have.model_version = f.model_version
    kept = []
    for f in by_id.values():
        if f.task and f.task != cfg.task:
            out.skipped_other_task.append(f"{f.path} (task {f.task})")
            continue
        if not f.model_version:  # a training output registered with its checkpoint_dir tag
            try:
                f.model_version = find_model_version(client, f.path) or ""
            except Exception:  # noqa: BLE001 - no registry: promotion says so later
                pass
        kept.append(f)
    unique_labels(kept)
    out.checkpoints = kept
    return out


def _from_registered_model(
    client: Any, name: str, downloads: Path, out: Discovery, say: Callable[[str], None]
) -> list[FoundCheckpoint]:
    try:
        versions = client.search_model_versions(f"name = '{name}'")
    except Exception as exc:  # noqa: BLE001 - MLflow raises several types
        out.failed.append((f"registered model {name}", f"cannot list its versions: {exc}"))
        return []
    if not versions:
        out.failed.append((f"registered model {name}", "no such registered model, or it has no version"))
        return []
    say(f"registered model {name}: {len(versions)} version(s)")
    found = []
    for mv in sorted(versions, key=lambda v: int(v.version)):
        mvs = f"{mv.name}/{mv.version}"
        try:
            local = _local_dir(mv.tags.get("checkpoint_dir"))
            if local is None:
                from mlflow.artifacts import download_artifacts

                say(f"downloading {mvs} from {mv.source}")
                local = _download(
                    downloads
                    / f"{_safe(mv.name)}-v{mv.version}"
                    / "checkpoints"
                    / f"step_{mv.tags.get('training_step', 'x')}",
                    lambda tmp, mv=mv: download_artifacts(
                        artifact_uri=mv.source, dst_path=str(tmp), tracking_uri=client.tracking_uri
                    ),
                )
            found.append(found_checkpoint(local, f"registered_model:{mvs}", mvs))
        except Exception as exc:  # noqa: BLE001 - one version failing never stops the night
            out.failed.append((f"models:/{mvs}", f"cannot get the checkpoint ({type(exc).__name__}: {exc})"))
    return found


def _from_experiment(
    client: Any, name: str, downloads: Path, out: Discovery, say: Callable[[str], None]
) -> list[FoundCheckpoint]:
    exp = client.get_experiment_by_name(name)
    if exp is None:
        out.failed.append((f"experiment {name}", "no such MLflow experiment"))
        return []
    runs = client.search_runs([exp.experiment_id], max_results=10_000)
    found = []
    for run in runs:
        rid = run.info.run_id
        try:
            arts = [a.path for a in client.list_artifacts(rid, "checkpoints") if a.is_dir]
        except Exception as exc:  # noqa: BLE001
            out.failed.append((f"experiment {name} run {rid}", f"cannot list its artifacts: {exc}"))
            continue
        if not arts:
            continue
        say(f"experiment {name} run {rid[:8]}: {len(arts)} checkpoint artifact(s)")
        registered: dict[str, Any] = {}
        try:
            for mv in client.search_model_versions(f"run_id = '{rid}'"):
                registered[str(mv.source).rstrip("/").rsplit("/", 1)[-1]] = mv
        except Exception:  # noqa: BLE001 - a store without this filter: no shortcut
            pass
        for art in sorted(arts):
            step = art.rstrip("/").rsplit("/", 1)[-1]
            mv = registered.get(step)
            try:
                local = _local_dir(mv.tags.get("checkpoint_dir")) if mv is not None else None
                if local is None:
                    from mlflow.artifacts import download_artifacts

                    say(f"downloading {art} of run {rid[:8]}")
                    local = _download(
                        downloads / f"run-{rid[:12]}" / "checkpoints" / step,
                        lambda tmp, art=art, rid=rid: download_artifacts(
                            run_id=rid, artifact_path=art, dst_path=str(tmp), tracking_uri=client.tracking_uri
                        ),
                    )
                found.append(
                    found_checkpoint(
                        local, f"experiment:{name}/{rid}", f"{mv.name}/{mv.version}" if mv is not None else ""
                    )
                )
            except Exception as exc:  # noqa: BLE001
                out.failed.append((f"runs:/{rid}/{art}", f"cannot get the checkpoint ({type(exc).__name__}: {exc})"))
    return found


# ---- lock ------------------------------------------------------------------------------------------------
class NightlyLock:
    """An exclusive ``flock`` on ``path`` for the duration of a run; the file names the holder.

    The kernel releases the lock when its process dies, so a lock file left by a dead process
    is simply taken over. The file itself stays (emptied on release): removing it would let
    two runs lock two different files.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._fd: int | None = None
        self.took_over: str = ""

    def _holder(self) -> dict[str, Any]:
        try:
            return json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            return {}

    def acquire(self) -> NightlyLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            h = self._holder()
            raise NightlyLockedError(
                f"another nightly run holds the lock {self.path} (pid {h.get('pid', '?')} on "
                f"{h.get('host', '?')}, started {h.get('started', '?')}); wait for it to finish, or stop that "
                f"process if it hangs"
            ) from None
        old = self._holder()
        if old.get("pid"):
            self.took_over = (
                f"took over the lock {self.path} left by pid {old['pid']} (started "
                f"{old.get('started', '?')}), which is no longer running"
            )
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        os.fsync(fd)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, 0)
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> NightlyLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


# ---- state -------------------------------------------------------------------------------------------------
def _now_iso() -> str:
    return _dt.datetime.now().astimezone().isoformat(timespec="seconds")


def empty_state() -> dict[str, Any]:
    return {"format": STATE_FORMAT, "version": STATE_VERSION, "checkpoints": {}, "runs": []}


def load_state(path: str | os.PathLike[str], say: Callable[[str], None] = lambda m: None) -> dict[str, Any]:
    """The state file, or an empty state. An unreadable one is set aside (``.corrupt-<time>``) with
    a message: nothing is lost, since the campaign folder keeps every evaluated episode."""
    p = Path(path)
    if not p.is_file():
        return empty_state()
    try:
        data = json.loads(p.read_text())
        if data.get("format") != STATE_FORMAT or not isinstance(data.get("checkpoints"), dict):
            raise ValueError(f"not a {STATE_FORMAT} file")
    except (OSError, ValueError) as exc:
        aside = p.with_name(f"{p.name}.corrupt-{_dt.datetime.now():%Y%m%d-%H%M%S}")
        os.replace(p, aside)
        say(
            f"warning: state file {p} is unreadable ({exc}); moved to {aside} and starting a fresh state "
            f"(evaluated episodes are kept in the campaign folder and not redone)"
        )
        return empty_state()
    data.setdefault("runs", [])
    return data


def write_state(path: str | os.PathLike[str], state: dict[str, Any]) -> None:
    """Write the state atomically (temporary file, fsync, rename)."""
    p = Path(path)
    tmp = p.with_name(f".{p.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(json.dumps(state, indent=1, default=str) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, p)


def state_counts(state: dict[str, Any], spec_digest: str | None = None) -> dict[str, int]:
    """Checkpoints seen, evaluated (under ``spec_digest`` when given) and failing, in a state."""
    cks = state.get("checkpoints", {}).values()
    evaluated = [
        c
        for c in cks
        if c.get("status") == "evaluated" and (spec_digest is None or c.get("spec_digest") == spec_digest)
    ]
    return {"seen": len(cks), "evaluated": len(evaluated), "failed": sum(1 for c in cks if c.get("status") == "failed")}


# ---- the run -----------------------------------------------------------------------------------------------
@dataclass
class NightlyResult:
    """What one nightly run did."""

    date: str
    state_dir: Path
    out_dir: Path  # <state_dir>/nights/<date>
    state_path: Path
    checkpoints: list[FoundCheckpoint]
    new: list[str]  # labels not evaluated before this run
    failed: list[tuple[str, str]]  # (checkpoint or source, reason)
    rank: RankResult
    promotion_status: str  # "promoted", "no change", "not promoted: ...", "promotion off"
    promotion: Any  # selection.promotion.PromotionResult or None
    report_md: Path
    report_html: Path
    executed: int
    skipped: int
    warnings: list[str] = field(default_factory=list)

    @property
    def champion(self) -> str:
        p = self.promotion.by_alias("champion") if self.promotion else None
        return f"{p.name}/{p.version}" if p else ""


def _decide_promotion(rank: RankResult, cfg: NightlyConfig, warn: Callable[[str], None]) -> tuple[str, Any]:
    """Promote only when the rule moves an alias (selection/promotion.py); returns (status, PromotionResult
    or None): "promoted" (the champion moved), "challenger moved", "no change", "not promoted: <why>" or
    "promotion off"; the PromotionResult's ``decision`` says why, with the probabilities."""
    from policies import tracking
    from selection.promotion import PromotionError, promote

    if not cfg.promote:
        return "promotion off", None
    if rank.fidelity is not None and not rank.fidelity.passed:
        return f"not promoted: {rank.fidelity.reason()}", None
    if not rank.run_id:
        return "not promoted: the ranking could not be logged to MLflow", None
    client = tracking.setup(cfg.tracking_uri)
    kwargs = dict(
        rule=rank.rule,
        rule_reason=rank.rule_reason,
        run_id=rank.run_id,
        score_draws=rank.score_draws,
        n_episodes=rank.n_episodes,
    )
    try:
        plan = promote(rank.ranking, client, dry_run=True, **kwargs)
    except PromotionError as exc:
        warn(str(exc))
        return f"not promoted: {exc}", None
    for w in plan.warnings:
        warn(w)
    if all(plan.previous.get(p.alias) == f"{p.name}/{p.version}" for p in plan.promotions):
        return "no change", plan
    done = promote(rank.ranking, client, **kwargs)
    moved = done.previous.get("champion") != next(
        (f"{p.name}/{p.version}" for p in done.promotions if p.alias == "champion"), done.previous.get("champion")
    )
    return ("promoted" if moved else "challenger moved"), done


def _log(msg: str) -> None:
    if msg.startswith("warning: "):
        logger.warning(msg[len("warning: ") :])
    else:
        logger.info(msg)


def run_nightly(
    cfg: NightlyConfig,
    *,
    now: _dt.datetime | None = None,
    progress: Any = None,
    log: Callable[[str], None] | None = None,
) -> NightlyResult:
    """One nightly run (see the module docstring). ``now`` fixes the night's date (default: now);
    ``progress`` receives the evaluator's events; ``log`` every step's message (default: logging)."""
    say = log or _log
    cfg.validate()
    spec = cfg.load_spec()
    state_dir = Path(cfg.state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    night = (now or _dt.datetime.now().astimezone()).date().isoformat()
    with NightlyLock(state_dir / LOCK_FILE) as lock:
        if lock.took_over:
            say(lock.took_over)
        return _run_locked(cfg, spec, state_dir, night, progress, say)


def _run_locked(
    cfg: NightlyConfig, spec: Any, state_dir: Path, night: str, progress: Any, say: Callable[[str], None]
) -> NightlyResult:
    from policies import tracking
    from selection.report import log_report, report_from_rank, write_report

    state_path = state_dir / STATE_FILE
    state = load_state(state_path, say)
    for r in state["runs"]:
        if r.get("status") == "running":
            r["status"] = "interrupted"
            say(f"the run started {r.get('started')} did not finish; its finished episodes are reused")
    digest = spec.digest()
    notes: list[str] = []

    def warn(msg: str) -> None:
        notes.append(msg)
        say(f"warning: {msg}")

    bags = resolve_real_logs(cfg.real_logs, warn)
    say(f"night {night}: discovering checkpoints of task {cfg.task!r}")
    found = discover(cfg, state_dir, say)
    for what, why in found.failed:
        warn(f"{what}: {why}")
    if found.skipped_other_task:
        say(f"skipped {len(found.skipped_other_task)} checkpoint(s) of other tasks")
    entry: dict[str, Any] = {
        "date": night,
        "started": _now_iso(),
        "status": "running",
        "spec": spec.name,
        "spec_digest": digest,
        "pid": os.getpid(),
    }
    state["runs"].append(entry)
    if not found.checkpoints:
        entry.update(status="no checkpoints", finished=_now_iso(), failed=[list(f) for f in found.failed])
        write_state(state_path, state)
        sources = {"registered_model": cfg.registered_model, "experiment": cfg.experiment, "directory": cfg.directory}
        raise NightlyError(
            f"no checkpoint of task {cfg.task!r} found in { ({k: v for k, v in sources.items() if v}) }"
            + (f"; failures: {found.failed}" if found.failed else "")
            + "; check the sources in the nightly config"
        )
    cks = state["checkpoints"]
    new: list[str] = []
    for f in found.checkpoints:
        c = cks.setdefault(f.checkpoint_id, {"first_seen": night})
        if not (c.get("status") in ("evaluated", "failed") and c.get("spec_digest") == digest):
            new.append(f.label)
        c.update(label=f.label, path=str(f.path), source=f.source, model_version=f.model_version, last_seen=night)
        c.setdefault("status", "pending")
    entry["new"] = new
    entry["checkpoints"] = len(found.checkpoints)
    write_state(state_path, state)
    say(f"{len(found.checkpoints)} checkpoint(s), {len(new)} new: {', '.join(new) or 'none'}")

    out_dir = state_dir / "nights" / night
    campaign_dir = state_dir / "campaigns" / f"{_safe(spec.name)}-{digest[:12]}"
    extra = {f.label: {"model_version": f.model_version} for f in found.checkpoints if f.model_version}
    try:
        rank = rank_checkpoints(
            [f.ref() for f in found.checkpoints],
            spec,
            bags,
            out_dir,
            rule=cfg.rule,
            validations_dir=cfg.validations_dir,
            tracking_uri=cfg.tracking_uri,
            experiment=cfg.ranking_experiment,
            promote=False,
            executor=cfg.executor,
            workers=cfg.workers,
            progress=progress,
            campaign_dir=campaign_dir,
            log=say,
            ood=OODSettings(reference_episodes=cfg.ood_reference_episodes, cache_dir=str(state_dir / "ood_cache")),
            extra_columns=extra,
            # the twin's fidelity to the real logs is measured every night there are logs (report,
            # MLflow); it blocks promotion only with fidelity_max_residual_mm set
            fidelity_gate=FidelityGate(cfg.fidelity_max_residual_mm, cfg.fidelity_suite) if bags else None,
            real_outcomes=outcomes_from_csv(cfg.real_outcomes) if cfg.real_outcomes else None,
            prediction=PredictConfig(level=cfg.prediction_level),
        )
        status, promotion = _decide_promotion(rank, cfg, warn)
        rank.promotion = promotion
        rank.warnings.extend(notes)
        _patch_ranking_json(rank, status)
        say(f"promotion: {status}")
        # what the evaluation completed (a checkpoint is evaluated only once all its episodes are in)
        by_id = {s.checkpoint_id: s for s in rank.campaign.checkpoints}
        for f in found.checkpoints:
            s = by_id.get(f.checkpoint_id)
            c = cks[f.checkpoint_id]
            if s is not None and s.status == "ok" and s.episodes_done >= s.episodes_expected > 0:
                if not (c.get("status") == "evaluated" and c.get("spec_digest") == digest):
                    c["evaluated_at"] = night
                c.update(status="evaluated", spec_digest=digest, error="")
            elif s is not None and s.status == "failed":
                c.update(status="failed", spec_digest=digest, error=s.error, failed_at=night)
            else:  # incomplete: evaluated on a later night
                c.update(status="pending", error=s.error if s is not None else "not evaluated")
        counts = state_counts(state, digest)
        report = report_from_rank(
            rank,
            title=f"Nightly ranking of {cfg.task} checkpoints — {night}",
            promotion_status=status,
            new_checkpoints=new,
            failed=found.failed,
            top_n=cfg.top_n,
            spec=f"{spec.name} ({digest[:12]})",
            real_logs=[str(b) for b in bags],
            ui_command=tracking.ui_command(cfg.tracking_uri),
            counts={
                "discovered this night": len(found.checkpoints),
                "new this night": len(new),
                "skipped (other task)": len(found.skipped_other_task),
                "seen over all nights": counts["seen"],
                "evaluated over all nights": counts["evaluated"],
            },
        )
        files = write_report(report, out_dir)
        if rank.run_id:
            log_report(files, rank.run_id, cfg.tracking_uri)
            _tag_run(rank, cfg, status, night)
        champ = promotion.by_alias("champion") if promotion else None
        chall = promotion.by_alias("challenger") if promotion else None
        entry.update(
            status="ok",
            finished=_now_iso(),
            executed=int(rank.campaign.executed),
            skipped=int(rank.campaign.skipped),
            run_id=rank.run_id,
            promotion=status,
            champion=f"{champ.name}/{champ.version}" if champ else "",
            challenger=f"{chall.name}/{chall.version}" if chall else "",
            previous=dict(promotion.previous) if promotion else {},
            failed=[list(f) for f in report.failed],
            report=str(files.markdown),
            rule=rank.rule,
        )
        write_state(state_path, state)
        say(f"report: {files.markdown} ({files.html})")
        return NightlyResult(
            date=night,
            state_dir=state_dir,
            out_dir=out_dir,
            state_path=state_path,
            checkpoints=found.checkpoints,
            new=new,
            failed=report.failed,
            rank=rank,
            promotion_status=status,
            promotion=promotion,
            report_md=files.markdown,
            report_html=files.html,
            executed=int(rank.campaign.executed),
            skipped=int(rank.campaign.skipped),
            warnings=rank.warnings,
        )
    except BaseException as exc:
        interrupted = isinstance(exc, KeyboardInterrupt)
        entry.update(
            status="interrupted" if interrupted else "failed",
            finished=_now_iso(),
            error="" if interrupted else f"{type(exc).__name__}: {exc}"[:4000],
        )
        write_state(state_path, state)
        raise


def _patch_ranking_json(rank: RankResult, status: str) -> None:
    """Add this night's promotion decision to ``ranking.json`` (rank_checkpoints ran with promote=False)."""
    try:
        data = json.loads(rank.json_path.read_text())
    except (OSError, ValueError):
        return
    data["promotion_status"] = status
    data["promotion"] = [p.__dict__ for p in rank.promotion.promotions] if rank.promotion else []
    data["warnings"] = rank.warnings
    tmp = rank.json_path.with_name(f".{rank.json_path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, rank.json_path)


def _tag_run(rank: RankResult, cfg: NightlyConfig, status: str, night: str) -> None:
    import mlflow

    from policies import tracking

    client = mlflow.MlflowClient(tracking_uri=tracking.resolve_tracking_uri(cfg.tracking_uri))
    tags = {"twinrank.nightly_date": night, "twinrank.promotion": status[:5000], "twinrank.task": cfg.task}
    if rank.promotion is not None and rank.promotion.decision:
        tags["twinrank.promotion_decision"] = rank.promotion.decision[:5000]
    if rank.promotion:
        for p in rank.promotion.promotions:
            tags[f"twinrank.{p.alias}"] = f"{p.name}/{p.version}"
    for k, v in tags.items():
        client.set_tag(rank.run_id, k, v)


# ---- scheduling ----------------------------------------------------------------------------------------------
def parse_cron(expr: str, timezone: Any = None) -> Any:
    """An APScheduler ``CronTrigger`` from a 5-field crontab expression, or a clear error."""
    from apscheduler.triggers.cron import CronTrigger

    fields = expr.split()
    hint = (
        "use five fields 'minute hour day-of-month month day-of-week', e.g. '0 2 * * *' for 02:00 every "
        "night or '30 1 * * 1-5' for 01:30 on weekdays"
    )
    if len(fields) != 5:
        raise NightlyConfigError(f"cron expression {expr!r} has {len(fields)} field(s); {hint}")
    try:
        return CronTrigger.from_crontab(expr, timezone=timezone)
    except (ValueError, TypeError) as exc:
        raise NightlyConfigError(f"invalid cron expression {expr!r} ({exc}); {hint}") from exc


def nightly_job(cfg: NightlyConfig) -> NightlyResult | None:
    """The scheduled job: one run, logged; a run that finds the lock taken is skipped."""
    logger.info("nightly run starting (state %s)", cfg.state_dir)
    try:
        res = run_nightly(cfg)
    except NightlyLockedError as exc:
        logger.warning("nightly run skipped: %s", exc)
        return None
    except Exception:
        logger.error("nightly run failed:\n%s", traceback.format_exc())
        raise
    logger.info(
        "nightly run done: %d checkpoint(s), %d new, %d episode(s) run, promotion %s; report %s",
        len(res.checkpoints),
        len(res.new),
        res.executed,
        res.promotion_status,
        res.report_md,
    )
    return res


def make_scheduler(
    cfg: NightlyConfig, cron: str, *, blocking: bool = False, run_now: bool = False, timezone: Any = None
) -> Any:
    """A scheduler (not started) running :func:`nightly_job` on ``cron`` (5-field crontab).

    ``blocking``: a ``BlockingScheduler`` (``start()`` runs it in this thread), else a
    ``BackgroundScheduler`` (its own thread; ``twinrank serve`` uses this one).
    ``run_now``: also run once as soon as the scheduler starts. The job is ``NIGHTLY_JOB_ID``;
    one instance at a time, missed runs coalesced into one (up to an hour late).
    """
    from apscheduler.schedulers.background import BackgroundScheduler
    from apscheduler.schedulers.blocking import BlockingScheduler

    cfg.validate()
    kwargs = {"timezone": timezone} if timezone is not None else {}
    sched = BlockingScheduler(**kwargs) if blocking else BackgroundScheduler(**kwargs)
    trigger = parse_cron(cron, timezone=sched.timezone)
    extra: dict[str, Any] = {}
    if run_now:
        extra["next_run_time"] = _dt.datetime.now(sched.timezone)
    sched.add_job(
        nightly_job,
        trigger,
        args=[cfg],
        id=NIGHTLY_JOB_ID,
        name=f"twinrank nightly ({cron})",
        max_instances=1,
        coalesce=True,
        misfire_grace_time=3600,
        replace_existing=True,
        **extra,
    )
    return sched


def next_fire_time(cron: str, timezone: Any = None, after: _dt.datetime | None = None) -> _dt.datetime | None:
    """When ``cron`` fires next after ``after`` (default now)."""
    trig = parse_cron(cron, timezone=timezone)
    start = after or _dt.datetime.now(trig.timezone)
    return trig.get_next_fire_time(None, start)


def iter_runs(state_dir: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """The runs recorded in a state folder, oldest first."""
    yield from load_state(Path(state_dir) / STATE_FILE).get("runs", [])


__all__ = [
    "Discovery",
    "FoundCheckpoint",
    "LOCK_FILE",
    "NIGHTLY_JOB_ID",
    "NightlyConfig",
    "NightlyConfigError",
    "NightlyError",
    "NightlyLock",
    "NightlyLockedError",
    "NightlyResult",
    "STATE_FILE",
    "discover",
    "found_checkpoint",
    "iter_runs",
    "load_state",
    "make_scheduler",
    "next_fire_time",
    "nightly_job",
    "parse_cron",
    "resolve_real_logs",
    "run_nightly",
    "state_counts",
    "unique_labels",
    "write_state",
]
