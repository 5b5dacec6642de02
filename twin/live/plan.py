"""Real-trial plans: which checkpoint to run for each upcoming real-robot trial.

``twinrank plan-real`` (:mod:`selection.planning`) writes a plan with :func:`write_plan`; the
live recorder (:mod:`twin.live.recorder`, ``plan_file:=...``) reads it with :func:`read_plan`
and tags each real episode it logs with the planned trial's checkpoint
(:data:`EPISODE_KEYS` in the episode's start event, read back as ``RealEpisode.meta``), so
real outcomes can be attributed to checkpoints. The format lives here, below both.

File format
-----------
One CSV file (UTF-8). Leading lines starting with ``#`` carry metadata as ``# key: value``
(``task``, ``created``, ``budget``, ``eps``, ``confidence``, ``method``; any other key is kept;
``#`` lines that are not ``key: value`` are comments). Then a header and one row per trial::

    # task: mug_to_sink
    # created: 2025-01-31T10:02:11
    # budget: 3
    # method: lucb
    trial,checkpoint,checkpoint_id,path
    1,bc/step_0000030,3f2a9c0d11be,runs/bc/step_0000030
    2,diffusion/step_0000100,a0c4e1f2d3b4,models:/mug_diffusion/4
    3,bc/step_0000030,3f2a9c0d11be,runs/bc/step_0000030

Columns: ``trial`` (an integer, unique; trials run in ascending order), ``checkpoint`` (the
label shown in rankings), ``checkpoint_id`` (the 12-hex content id of
:func:`policies.checkpoint.checkpoint_id`, may be empty), ``path`` (where the checkpoint
lives, or a ``models:/`` URI, may be empty). ``checkpoint_id`` and ``path`` may be left out of
a hand-written plan; other columns are ignored. Metadata values are read as JSON when they
parse (``3`` -> 3, ``0.05`` -> 0.05, ``true`` -> True), else as text; :func:`write_plan`
quotes a text value that would parse (``"12"``), so metadata round-trips.

Shell: ``grep -v '^#' plan.csv | tail -n +2 | cut -d, -f2``; pandas:
``pd.read_csv(path, comment="#")`` (no field contains ``#``: :func:`write_plan` refuses it).

Errors are :class:`PlanError` (a ``ValueError``): one line naming the file, the problem and
the fix.
"""

from __future__ import annotations

import csv
import io
import json
import numbers
import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: the plan's CSV columns, in the order written
PLAN_COLUMNS = ("trial", "checkpoint", "checkpoint_id", "path")
#: columns a plan file must have (the others default to "")
REQUIRED_COLUMNS = ("trial", "checkpoint")
#: metadata keys written by ``twinrank plan-real`` (others are allowed)
META_KEYS = ("task", "created", "budget", "eps", "confidence", "method")
#: keys the recorder adds to an episode's start event (``RealEpisode.meta``) for a planned trial
EPISODE_KEYS = ("checkpoint", "checkpoint_id", "plan_trial")

_RE_META = re.compile(r"^#\s*([A-Za-z_][A-Za-z0-9_.-]*)\s*:\s?(.*)$")
_FIX_WRITE = "write a new one with `twinrank plan-real`"


class PlanError(ValueError):
    """A plan file that cannot be used (missing, empty, bad columns or trial numbers)."""


@dataclass
class PlannedTrial:
    """One upcoming real trial: run ``checkpoint`` (label as in rankings) for trial ``trial``."""

    trial: int
    checkpoint: str
    checkpoint_id: str = ""
    path: str = ""

    def episode_tags(self) -> dict[str, Any]:
        """The :data:`EPISODE_KEYS` of an episode that runs this trial."""
        return {"checkpoint": self.checkpoint, "checkpoint_id": self.checkpoint_id, "plan_trial": self.trial}

    def describe(self) -> str:
        """``bc/step_0000030 (id 3f2a9c0d11be, path runs/bc/step_0000030)``."""
        extra = [f"id {self.checkpoint_id}"] if self.checkpoint_id else []
        extra += [f"path {self.path}"] if self.path else []
        return self.checkpoint + (f" ({', '.join(extra)})" if extra else "")


@dataclass
class RealTrialPlan:
    """A read plan: ``trials`` in the order they run (ascending trial number), ``meta`` from
    the ``# key: value`` lines, ``path`` the file it was read from."""

    trials: list[PlannedTrial]
    meta: dict[str, Any] = field(default_factory=dict)
    path: str = ""

    def __len__(self) -> int:
        return len(self.trials)

    def checkpoints(self) -> list[str]:
        """Distinct checkpoint labels, in order of first appearance."""
        return list(dict.fromkeys(t.checkpoint for t in self.trials))


# ---- writing ------------------------------------------------------------------------------------
def _meta_text(key: str, value: Any, path: Path) -> str:
    if not isinstance(key, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.-]*", key):
        raise PlanError(f"plan file {path}: metadata key {key!r} is not a name; use letters, digits, '_', '.', '-'")
    if isinstance(value, str):
        try:
            json.loads(value)
        except ValueError:
            # plain text stays as it is (quoted only when the reader would strip its spaces)
            text = value if value == value.strip() else json.dumps(value)
        else:
            text = json.dumps(value)  # "12", "true": quoted, so it reads back as text
    else:
        try:
            text = json.dumps(value)
        except TypeError as exc:
            raise PlanError(
                f"plan file {path}: metadata {key}={value!r} is not JSON-serialisable ({exc}); pass text or numbers"
            ) from None
    if "\n" in text or "\r" in text:
        raise PlanError(f"plan file {path}: metadata {key} contains a line break; pass a one-line value")
    return f"# {key}: {text}"


def write_plan(
    path: str | os.PathLike[str], trials: Sequence[PlannedTrial], *, meta: dict[str, Any] | None = None
) -> Path:
    """Write ``trials`` (in the given order) to the CSV plan file ``path`` with ``meta`` as
    ``# key: value`` lines (see the module docstring). The file is replaced atomically (a
    recorder reading it never sees half a plan). Raises :class:`PlanError` on an empty plan,
    duplicate or non-integer trial numbers, an empty checkpoint, or ``#`` / line breaks in a
    field. Returns the path."""
    out = Path(path)
    if not trials:
        raise PlanError(f"plan file {out}: no trials to write; pass at least one PlannedTrial")
    lines = [_meta_text(k, v, out) for k, v in (meta or {}).items()]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(PLAN_COLUMNS)
    seen: set[int] = set()
    for t in trials:
        if isinstance(t.trial, bool) or not isinstance(t.trial, numbers.Integral):
            raise PlanError(f"plan file {out}: trial {t.trial!r} is not an integer; number trials 1, 2, 3, ...")
        trial = int(t.trial)
        if trial in seen:
            raise PlanError(f"plan file {out}: trial {trial} appears twice; give every trial its own number")
        seen.add(trial)
        if not str(t.checkpoint).strip():
            raise PlanError(f"plan file {out}: trial {trial} has no checkpoint; set PlannedTrial.checkpoint")
        row = [str(trial), str(t.checkpoint), str(t.checkpoint_id), str(t.path)]
        for name, v in zip(PLAN_COLUMNS, row):
            if "#" in v or "\n" in v or "\r" in v:
                raise PlanError(
                    f"plan file {out}: trial {trial} {name} {v!r} contains '#' or a line break "
                    f"(comment readers would cut it); rename it"
                )
        w.writerow(row)
    text = "\n".join([*lines, buf.getvalue()]) if lines else buf.getvalue()
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out


# ---- reading ------------------------------------------------------------------------------------
def _meta_value(text: str) -> Any:
    text = text.strip()
    try:
        return json.loads(text)
    except ValueError:
        return text


def read_plan(path: str | os.PathLike[str]) -> RealTrialPlan:
    """Read a plan file written by :func:`write_plan` (or by hand). Trials are returned in
    ascending trial order. Raises :class:`PlanError` (one line: the file, the problem, the
    fix) when the file is missing, unreadable, has no header or no trials, lacks the
    ``trial`` / ``checkpoint`` columns, or has a non-integer, duplicate or checkpoint-less
    trial."""
    p = Path(path)
    if not p.exists():
        raise PlanError(f"plan file {p} does not exist; check the path or {_FIX_WRITE}")
    if not p.is_file():
        raise PlanError(f"plan file {p} is not a file; pass the plan's .csv file")
    try:
        text = p.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise PlanError(f"plan file {p} cannot be read ({exc}); {_FIX_WRITE}") from None
    meta: dict[str, Any] = {}
    body: list[tuple[int, str]] = []  # (line number, text) of the CSV lines
    for n, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if stripped.startswith("#"):
            if not body and (m := _RE_META.match(stripped)):
                meta[m.group(1)] = _meta_value(m.group(2))
            continue
        if stripped:
            body.append((n, line))
    if not body:
        raise PlanError(f"plan file {p} has no header line; the first line after '#' lines is {','.join(PLAN_COLUMNS)}")
    rows = list(csv.reader([line for _, line in body]))
    header = [h.strip() for h in rows[0]]
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise PlanError(
            f"plan file {p}: the header {','.join(header)!r} has no column(s) {', '.join(missing)}; "
            f"the header must be {','.join(PLAN_COLUMNS)}"
        )
    dup_cols = sorted({h for h in header if header.count(h) > 1 and h in PLAN_COLUMNS})
    if dup_cols:
        raise PlanError(f"plan file {p}: column(s) {', '.join(dup_cols)} appear twice in the header; keep one of each")
    col = {c: header.index(c) for c in PLAN_COLUMNS if c in header}
    trials: list[PlannedTrial] = []
    first_line: dict[int, int] = {}
    for (n, _), row in zip(body[1:], rows[1:]):
        if len(row) > len(header):
            raise PlanError(
                f"plan file {p}, line {n}: {len(row)} fields but the header has {len(header)}; "
                f"quote fields that contain commas"
            )

        def get(c: str, row: list[str] = row) -> str:
            i = col.get(c)
            return row[i].strip() if i is not None and i < len(row) else ""

        raw = get("trial")
        try:
            trial = int(raw)
        except ValueError:
            raise PlanError(
                f"plan file {p}, line {n}: trial {raw!r} is not an integer; number trials 1, 2, 3, ..."
            ) from None
        if trial in first_line:
            raise PlanError(
                f"plan file {p}, line {n}: trial {trial} appears twice (also line {first_line[trial]}); "
                f"give every trial its own number"
            )
        first_line[trial] = n
        checkpoint = get("checkpoint")
        if not checkpoint:
            raise PlanError(f"plan file {p}, line {n}: trial {trial} has no checkpoint; fill in the checkpoint column")
        trials.append(PlannedTrial(trial, checkpoint, get("checkpoint_id"), get("path")))
    if not trials:
        raise PlanError(f"plan file {p} has a header but no trials; {_FIX_WRITE}")
    trials.sort(key=lambda t: t.trial)
    return RealTrialPlan(trials=trials, meta=meta, path=str(p))


__all__ = [
    "EPISODE_KEYS",
    "META_KEYS",
    "PLAN_COLUMNS",
    "REQUIRED_COLUMNS",
    "PlanError",
    "PlannedTrial",
    "RealTrialPlan",
    "read_plan",
    "write_plan",
]
