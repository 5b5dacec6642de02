"""Episode results: the append-only store, statistics and the report files.

* :class:`ResultStore`: ``episodes.jsonl`` in the campaign directory, one JSON object per
  finished episode, appended (flushed and fsynced) as results arrive, keyed by
  ``(checkpoint_id, task, condition, seed)``. ``campaign.json`` next to it records the spec
  digest; a directory holding results of another spec is refused. A torn last line (a
  process killed while writing) is dropped on load.
* Statistics: :func:`wilson_interval` (success rate, 95 %), :func:`paired_drop` (mean over
  seeds of ``success_nominal(seed) - success_condition(seed)`` with a paired t interval and
  an exact McNemar test on the discordant seeds).
* Reports: :func:`summarize_checkpoint`, :func:`write_eval_info` (``eval_info.json``:
  per-episode, per-condition and aggregate, in the spirit of LeRobot's eval_info.json) and
  :func:`write_parquet` (``episodes.parquet``, ``conditions.parquet``).
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from evaluator.spec import NOMINAL, EvalSpec

Z95 = 1.959963984540054
EPISODES_FILE = "episodes.jsonl"
CAMPAIGN_FILE = "campaign.json"
EVAL_INFO_FILE = "eval_info.json"
EPISODES_PARQUET = "episodes.parquet"
CONDITIONS_PARQUET = "conditions.parquet"


class ResultStoreError(RuntimeError):
    """The campaign directory cannot be used (another spec's results, locked by another run)."""


@dataclass
class EpisodeResult:
    """One finished episode. ``failure_reason`` is ``""`` on success, else e.g. ``timeout``,
    ``physics_unstable``, ``policy_error``, ``policy_nonfinite_action``,
    ``policy_invalid_action``, ``env_error``; ``error`` holds the detail message."""

    checkpoint_id: str
    task: str
    condition: str
    seed: int
    success: bool
    ret: float
    length: int
    failure_reason: str = ""
    error: str = ""
    final_info: dict[str, float] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, str, str, int]:
        return (self.checkpoint_id, self.task, self.condition, int(self.seed))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["return"] = d.pop("ret")
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EpisodeResult:
        return cls(
            checkpoint_id=str(d["checkpoint_id"]),
            task=str(d["task"]),
            condition=str(d["condition"]),
            seed=int(d["seed"]),
            success=bool(d["success"]),
            ret=float(d["return"]),
            length=int(d["length"]),
            failure_reason=str(d.get("failure_reason", "")),
            error=str(d.get("error", "")),
            final_info=dict(d.get("final_info") or {}),
        )

    def outcome(self) -> tuple[Any, ...]:
        """The fields that must be identical between two runs of the same spec and checkpoint."""
        return (
            self.key,
            self.success,
            self.ret,
            self.length,
            self.failure_reason,
            self.error,
            tuple(sorted(self.final_info.items())),
        )


# ---------------------------------------------------------------------------------------------
# the store
# ---------------------------------------------------------------------------------------------


class ResultStore:
    """Append-only per-episode results of one campaign directory (one spec)."""

    def __init__(self, out_dir: str | Path, spec: EvalSpec) -> None:
        self.dir = Path(out_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / EPISODES_FILE
        self.spec = spec
        self.spec_digest = spec.digest()
        self._lock_fd: int | None = None
        self._fh: Any = None
        self.results: dict[tuple[str, str, str, int], EpisodeResult] = {}

    def open(self) -> ResultStore:
        self._lock()
        meta_path = self.dir / CAMPAIGN_FILE
        if meta_path.is_file():
            try:
                meta = json.loads(meta_path.read_text())
            except json.JSONDecodeError as exc:
                raise ResultStoreError(
                    f"{meta_path} is not valid JSON ({exc}); remove the directory or pick another one"
                ) from exc
            if meta.get("spec_digest") != self.spec_digest:
                raise ResultStoreError(
                    f"{self.dir} holds results of another evaluation spec (digest {meta.get('spec_digest')}, this "
                    f"spec is {self.spec_digest}); use a fresh output directory to evaluate this spec"
                )
        elif self.path.exists() and self.path.stat().st_size > 0:
            raise ResultStoreError(f"{self.path} exists without {CAMPAIGN_FILE}; cannot tell which spec made it")
        else:
            meta = {
                "format": "twinrank-eval-campaign",
                "spec_digest": self.spec_digest,
                "spec": self.spec.to_dict(),
                "created": _now(),
            }
            _atomic_write_text(meta_path, json.dumps(meta, indent=2) + "\n")
        self._load()
        self._fh = open(self.path, "a", encoding="utf-8")
        return self

    def _lock(self) -> None:
        fd = os.open(self.dir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            raise ResultStoreError(f"{self.dir} is in use by another evaluation (lock {self.dir / '.lock'})") from exc
        self._lock_fd = fd

    def _load(self) -> None:
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        good_end = 0
        pos = 0
        while pos < len(data):
            nl = data.find(b"\n", pos)
            if nl < 0:
                break  # torn last line: no newline
            line = data[pos:nl]
            pos = nl + 1
            if not line.strip():
                good_end = pos
                continue
            try:
                r = EpisodeResult.from_dict(json.loads(line))
            except (ValueError, KeyError, TypeError):
                if pos >= len(data):
                    break  # a torn last line
                raise ResultStoreError(f"{self.path}: unreadable line {line[:200]!r} (not the last one)")
            self.results.setdefault(r.key, r)
            good_end = pos
        if good_end < len(data):
            with open(self.path, "r+b") as f:
                f.truncate(good_end)

    def has(self, key: tuple[str, str, str, int]) -> bool:
        return key in self.results

    def add(self, results: Iterable[EpisodeResult]) -> list[EpisodeResult]:
        """Append new results (already known keys are ignored); returns the new ones."""
        new = []
        for r in results:
            if r.key in self.results:
                continue
            self.results[r.key] = r
            new.append(r)
        if new and self._fh is not None:
            self._fh.write("".join(json.dumps(r.to_dict(), sort_keys=True, allow_nan=False) + "\n" for r in new))
            self._fh.flush()
            os.fsync(self._fh.fileno())
        return new

    def for_checkpoint(self, checkpoint_id: str, task: str | None = None) -> list[EpisodeResult]:
        return [
            r for r in self.results.values() if r.checkpoint_id == checkpoint_id and (task is None or r.task == task)
        ]

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> ResultStore:
        return self.open()

    def __exit__(self, *exc: Any) -> None:
        self.close()


# ---------------------------------------------------------------------------------------------
# statistics
# ---------------------------------------------------------------------------------------------


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (default 95 %); ``(0, 1)`` for n = 0."""
    if n <= 0:
        return (0.0, 1.0)
    if not 0 <= successes <= n:
        raise ValueError(f"successes = {successes} is not in 0..{n}")
    p = successes / n
    z2 = z * z
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    lo, hi = max(0.0, centre - half), min(1.0, centre + half)
    if successes == 0:
        lo = 0.0
    if successes == n:
        hi = 1.0
    return (lo, hi)


def _t_quantile(df: int, q: float = 0.975) -> float:
    from scipy.stats import t

    return float(t.ppf(q, df))


def mcnemar_exact_p(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value for ``b`` and ``c`` discordant pairs."""
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2.0**n
    return float(min(1.0, 2.0 * tail))


def paired_drop(base: dict[int, bool], other: dict[int, bool]) -> dict[str, Any]:
    """Paired drop ``base - other`` of success over the seeds both have.

    Returns ``n``, ``mean`` (the drop in success rate; positive = worse than nominal),
    ``ci_low``/``ci_high`` (95 % paired t interval of the mean difference; ``mean`` itself
    when n < 2), ``base_only`` (seeds that succeed only in ``base``), ``other_only`` and
    ``mcnemar_p`` (exact test of ``base_only`` vs ``other_only``).
    """
    seeds = sorted(set(base) & set(other))
    n = len(seeds)
    if n == 0:
        return {
            "n": 0,
            "mean": None,
            "ci_low": None,
            "ci_high": None,
            "base_only": 0,
            "other_only": 0,
            "mcnemar_p": None,
        }
    d = [int(bool(base[s])) - int(bool(other[s])) for s in seeds]
    mean = sum(d) / n
    b = sum(1 for x in d if x > 0)
    c = sum(1 for x in d if x < 0)
    if n >= 2:
        var = sum((x - mean) ** 2 for x in d) / (n - 1)
        half = _t_quantile(n - 1) * math.sqrt(var / n)
    else:
        half = 0.0
    return {
        "n": n,
        "mean": mean,
        "ci_low": max(-1.0, mean - half),
        "ci_high": min(1.0, mean + half),
        "base_only": b,
        "other_only": c,
        "mcnemar_p": mcnemar_exact_p(b, c),
    }


def rate_summary(results: Sequence[EpisodeResult]) -> dict[str, Any]:
    """n, successes, success rate with its Wilson 95 % interval, mean return and length,
    failure reasons counted."""
    n = len(results)
    k = sum(1 for r in results if r.success)
    lo, hi = wilson_interval(k, n)
    reasons: dict[str, int] = {}
    for r in results:
        if not r.success:
            reasons[r.failure_reason or "failure"] = reasons.get(r.failure_reason or "failure", 0) + 1
    return {
        "n": n,
        "successes": k,
        "success_rate": k / n if n else None,
        "ci_low": lo,
        "ci_high": hi,
        "return_mean": sum(r.ret for r in results) / n if n else None,
        "length_mean": sum(r.length for r in results) / n if n else None,
        "failure_reasons": dict(sorted(reasons.items())),
    }


# ---------------------------------------------------------------------------------------------
# per-checkpoint summaries
# ---------------------------------------------------------------------------------------------


@dataclass
class CheckpointSummary:
    """Everything a campaign knows about one checkpoint (what the lead logs to MLflow)."""

    checkpoint_id: str
    label: str
    path: str
    task: str
    status: str  # "ok" | "incomplete" | "failed"
    error: str = ""
    info: dict[str, Any] = field(default_factory=dict)  # policy_class, training_step, run_id, sha256...
    overall: dict[str, Any] = field(default_factory=dict)
    per_condition: dict[str, dict[str, Any]] = field(default_factory=dict)
    paired_drop: dict[str, dict[str, Any]] = field(default_factory=dict)
    episodes_expected: int = 0
    episodes_done: int = 0
    videos: list[dict[str, Any]] = field(default_factory=list)
    #: wall-clock span (epoch seconds) of the work units that evaluated this checkpoint
    started_at: float | None = None
    finished_at: float | None = None
    #: how sure the ranking is (evaluator.decision.decide_campaign): p_best, rank (ties share
    #: one), leader, indistinguishable (interval overlaps the leader's), n, method
    decision: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def metrics(self) -> dict[str, float]:
        """Flat numeric metrics for experiment trackers, grouped by ``/`` the way MLflow's UI
        groups charts (sections in ASCII order, so the capitalised groups come first):
        ``Overall/success`` (the headline: success over all conditions) with ``Overall/ci_low``,
        ``Overall/ci_high`` (Wilson 95 %), ``Overall/episodes``, ``Overall/return``,
        ``Overall/length``, ``Overall/p_best`` (evaluator.decision); ``Success/<condition>`` per condition with ``ci_low/<condition>``,
        ``ci_high/<condition>`` and ``return/<condition>``; per factor
        ``paired_drop/<condition>`` with ``paired_drop_ci_low/…`` and ``paired_drop_ci_high/…``."""
        out: dict[str, float] = {}
        o = self.overall
        for name, k in (
            ("success", "success_rate"),
            ("ci_low", "ci_low"),
            ("ci_high", "ci_high"),
            ("episodes", "n"),
            ("return", "return_mean"),
            ("length", "length_mean"),
        ):
            if o.get("n") and o.get(k) is not None:
                out[f"Overall/{name}"] = float(o[k])
        if self.decision.get("p_best") is not None:
            out["Overall/p_best"] = float(self.decision["p_best"])
        for c, s in self.per_condition.items():
            if not s.get("n"):
                continue
            for name, k in (
                ("Success", "success_rate"),
                ("ci_low", "ci_low"),
                ("ci_high", "ci_high"),
                ("return", "return_mean"),
            ):
                if s.get(k) is not None:
                    out[f"{name}/{c}"] = float(s[k])
        for c, s in self.paired_drop.items():
            if s.get("mean") is not None:
                out[f"paired_drop/{c}"] = float(s["mean"])
                out[f"paired_drop_ci_low/{c}"] = float(s["ci_low"])
                out[f"paired_drop_ci_high/{c}"] = float(s["ci_high"])
        return out

    def worst_condition(self) -> str | None:
        """The perturbed condition with the lowest success rate (with the paired design, the
        largest drop from nominal); nominal when it is the only one; ties go to the first in
        the spec's order. None without results."""
        rated = [c for c, s in self.per_condition.items() if s.get("n") and s.get("success_rate") is not None]
        candidates = [c for c in rated if c != NOMINAL] or rated
        if not candidates:
            return None
        return min(candidates, key=lambda c: self.per_condition[c]["success_rate"])


def summarize_checkpoint(summary: CheckpointSummary, results: Sequence[EpisodeResult], spec: EvalSpec) -> None:
    """Fill ``overall``, ``per_condition`` and ``paired_drop`` from the checkpoint's results."""
    conds = spec.condition_names(summary.task)
    by_cond: dict[str, list[EpisodeResult]] = {c: [] for c in conds}
    for r in results:
        by_cond.setdefault(r.condition, []).append(r)
    for rs in by_cond.values():
        rs.sort(key=lambda r: r.seed)
    summary.overall = rate_summary(list(results))
    summary.per_condition = {c: rate_summary(rs) for c, rs in by_cond.items()}
    nominal = {r.seed: r.success for r in by_cond.get(NOMINAL, [])}
    summary.paired_drop = {}
    if NOMINAL in by_cond:
        for c in spec.factor_conditions(summary.task):
            summary.paired_drop[c] = paired_drop(nominal, {r.seed: r.success for r in by_cond.get(c, [])})
    summary.episodes_done = len(results)


# ---------------------------------------------------------------------------------------------
# report files
# ---------------------------------------------------------------------------------------------


def episode_rows(results: Iterable[EpisodeResult], summaries: Sequence[CheckpointSummary]) -> list[dict[str, Any]]:
    by_id = {s.checkpoint_id: s for s in summaries}
    rows = []
    for r in results:
        s = by_id.get(r.checkpoint_id)
        rows.append(
            {
                "checkpoint_id": r.checkpoint_id,
                "checkpoint": s.label if s else "",
                "checkpoint_path": s.path if s else "",
                "task": r.task,
                "condition": r.condition,
                "seed": int(r.seed),
                "success": bool(r.success),
                "return": float(r.ret),
                "length": int(r.length),
                "failure_reason": r.failure_reason,
                "error": r.error,
            }
        )
    return rows


def write_eval_info(
    path: str | Path,
    spec: EvalSpec,
    summaries: Sequence[CheckpointSummary],
    results: Sequence[EpisodeResult],
    extra: dict[str, Any] | None = None,
) -> Path:
    """``eval_info.json``: ``per_episode`` (every episode), ``checkpoints`` (per checkpoint:
    overall, ``per_condition`` with Wilson intervals, ``paired_drop`` per condition,
    videos), ``aggregated`` (the ranking) and the spec."""
    ranked = sorted(
        [s for s in summaries if s.overall.get("success_rate") is not None],
        key=lambda s: (-s.overall["success_rate"], s.label),
    )
    per_episode = episode_rows(results, summaries)
    for row, r in zip(per_episode, results):
        row["final_info"] = r.final_info
    info = {
        "format": "twinrank-eval-info",
        "format_version": 1,
        "created": _now(),
        "spec_digest": spec.digest(),
        "spec": spec.to_dict(),
        "per_episode": per_episode,
        "checkpoints": [s.to_dict() for s in summaries],
        "aggregated": {
            "checkpoints": len(summaries),
            "failed_checkpoints": [s.checkpoint_id for s in summaries if s.status == "failed"],
            "episodes": len(per_episode),
            "ranking": [
                {
                    "checkpoint_id": s.checkpoint_id,
                    "checkpoint": s.label,
                    "success_rate": s.overall["success_rate"],
                    "ci_low": s.overall["ci_low"],
                    "ci_high": s.overall["ci_high"],
                    "nominal_success_rate": s.per_condition.get(NOMINAL, {}).get("success_rate"),
                    "rank": s.decision.get("rank"),
                    "p_best": s.decision.get("p_best"),
                    "indistinguishable_from_leader": s.decision.get("indistinguishable"),
                }
                for s in ranked
            ],
        },
        **(extra or {}),
    }
    p = Path(path)
    _atomic_write_text(p, json.dumps(_json_safe(info), indent=2, allow_nan=False, default=str) + "\n")
    return p


def _json_safe(x: Any) -> Any:
    """Non-finite floats (e.g. in a checkpoint's ``extra``) become None: strict JSON."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    return x


def write_parquet(
    out_dir: str | Path, summaries: Sequence[CheckpointSummary], results: Sequence[EpisodeResult]
) -> tuple[Path, Path]:
    """``episodes.parquet`` (one row per episode) and ``conditions.parquet`` (one row per
    checkpoint and condition, with Wilson intervals and the paired drop from nominal)."""
    import pandas as pd

    out = Path(out_dir)
    ep_cols = [
        "checkpoint_id",
        "checkpoint",
        "checkpoint_path",
        "task",
        "condition",
        "seed",
        "success",
        "return",
        "length",
        "failure_reason",
        "error",
    ]
    ep = pd.DataFrame(episode_rows(results, summaries), columns=ep_cols)
    ep = ep.astype({"seed": "int64", "success": "bool", "return": "float64", "length": "int64"})
    rows = []
    for s in summaries:
        for c, st in s.per_condition.items():
            pdrop = s.paired_drop.get(c, {})
            rows.append(
                {
                    "checkpoint_id": s.checkpoint_id,
                    "checkpoint": s.label,
                    "task": s.task,
                    "status": s.status,
                    "condition": c,
                    "n": st["n"],
                    "successes": st["successes"],
                    "success_rate": st["success_rate"],
                    "ci_low": st["ci_low"],
                    "ci_high": st["ci_high"],
                    "return_mean": st["return_mean"],
                    "length_mean": st["length_mean"],
                    "paired_drop": pdrop.get("mean"),
                    "paired_drop_ci_low": pdrop.get("ci_low"),
                    "paired_drop_ci_high": pdrop.get("ci_high"),
                    "mcnemar_p": pdrop.get("mcnemar_p"),
                }
            )
    cond_cols = [
        "checkpoint_id",
        "checkpoint",
        "task",
        "status",
        "condition",
        "n",
        "successes",
        "success_rate",
        "ci_low",
        "ci_high",
        "return_mean",
        "length_mean",
        "paired_drop",
        "paired_drop_ci_low",
        "paired_drop_ci_high",
        "mcnemar_p",
    ]
    cd = pd.DataFrame(rows, columns=cond_cols)
    for c in (
        "success_rate",
        "ci_low",
        "ci_high",
        "return_mean",
        "length_mean",
        "paired_drop",
        "paired_drop_ci_low",
        "paired_drop_ci_high",
        "mcnemar_p",
    ):
        cd[c] = cd[c].astype("float64")
    cd = cd.astype({"n": "int64", "successes": "int64"})
    p1, p2 = out / EPISODES_PARQUET, out / CONDITIONS_PARQUET
    _atomic_parquet(ep, p1)
    _atomic_parquet(cd, p2)
    return p1, p2


def _atomic_parquet(df: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    df.to_parquet(tmp, index=False)
    os.replace(tmp, path)


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


__all__ = [
    "CheckpointSummary",
    "EpisodeResult",
    "ResultStore",
    "ResultStoreError",
    "mcnemar_exact_p",
    "paired_drop",
    "rate_summary",
    "summarize_checkpoint",
    "wilson_interval",
    "write_eval_info",
    "write_parquet",
]
