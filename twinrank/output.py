"""What every `twinrank` command prints, and the exit codes they share.

* One console for all commands. Markup is off: a message is printed as written, so paths,
  ``[lo, hi]`` ranges, ``[sha256]`` or ``pip install -e '.[ros]'`` come out intact; colour
  comes only from the helpers below.
* On a terminal: Rich tables and progress bars. Not on a terminal (cron, a pipe, a log
  file): plain text that reads well in a log: tables as aligned columns with full names,
  commands on one line, and progress as timestamped lines with rate and ETA every few
  per cent of the work instead of a bar.

Exit codes (the README lists the same table; every command uses it):

====  ==========================================================================
code  meaning
====  ==========================================================================
0     everything asked was done
1     internal error (a bug: the traceback says where; please report it)
2     bad input: an argument, file, spec, checkpoint path or registered model is
      wrong or missing (the message names it and the fix); what could be done was
      done and kept
3     another run holds the lock (nightly); nothing was done
4     partial: some checkpoints or items failed (each listed with its reason);
      the rest was done and kept
5     results kept on disk but MLflow could not be reached; they are synced by the
      next run (``mlflow_pending.json`` marks them)
130   interrupted (Ctrl-C / SIGINT); finished work is kept, the same command resumes
====  ==========================================================================
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import time
from collections.abc import Callable, Iterator, Sequence
from enum import IntEnum
from typing import Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text


class ExitCode(IntEnum):
    OK = 0
    INTERNAL = 1
    BAD_INPUT = 2
    LOCKED = 3
    PARTIAL = 4
    TRACKING_DEFERRED = 5
    INTERRUPTED = 130


EXIT_CODE_MEANINGS: dict[ExitCode, str] = {
    ExitCode.OK: "everything asked was done",
    ExitCode.INTERNAL: "internal error (a bug: the traceback says where)",
    ExitCode.BAD_INPUT: "bad input: an argument, file, spec, checkpoint or registered model is wrong or missing; "
    "what could be done was done and kept",
    ExitCode.LOCKED: "another run holds the lock (nightly); nothing was done",
    ExitCode.PARTIAL: "partial: some checkpoints or items failed (each listed with its reason); the rest was done",
    ExitCode.TRACKING_DEFERRED: "results kept on disk but MLflow was unreachable; the next run syncs them",
    ExitCode.INTERRUPTED: "interrupted (Ctrl-C); finished work is kept and the same command resumes",
}


def _make_console() -> Console:
    probe = Console()
    if probe.is_terminal:
        return Console(markup=False, highlight=False)
    # Not a terminal: no width limit on plain lines (a log file has none); tables are printed
    # as plain columns by print_table.
    return Console(markup=False, highlight=False, soft_wrap=True, width=200, no_color=True)


console = _make_console()


def is_terminal() -> bool:
    return console.is_terminal


def styled(prefix: str, style: str, msg: str) -> Text:
    """``prefix`` in ``style`` followed by ``msg`` verbatim (never parsed as markup)."""
    return Text.assemble((prefix, style), " ", msg)


def error(msg: str) -> None:
    console.print(styled("error:", "bold red", msg))


def warn(msg: str) -> None:
    console.print(styled("warning:", "yellow", msg))


def info(msg: str) -> None:
    console.print(Text(msg))


def command(label: str, cmd: str) -> None:
    """A shell command on one line, never wrapped (it is meant to be copied)."""
    console.print(Text.assemble((label, "bold"), " ", cmd), soft_wrap=True)


def fail(msg: str, code: ExitCode | int = ExitCode.BAD_INPUT) -> None:
    """Print a one-line error and exit with ``code``."""
    error(msg)
    raise typer.Exit(code=int(code))


def exit_with(code: ExitCode | int) -> None:
    if int(code) != 0:
        raise typer.Exit(code=int(code))


def rule(title: str) -> None:
    if is_terminal():
        console.rule(Text(title))
    else:
        console.print(Text(f"== {title} =="))


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], right: Sequence[str] = ()) -> None:
    """A table: Rich on a terminal; aligned plain columns with every cell in full otherwise."""
    cells = [[("" if v is None else str(v)) for v in row] for row in rows]
    if is_terminal():
        table = Table(title=title)
        for col in columns:
            table.add_column(col, justify="right" if col in right else "left", overflow="fold")
        for row in cells:
            table.add_row(*[Text(c) for c in row])
        console.print(table)
        return
    widths = [max([len(c)] + [len(r[i]) for r in cells if i < len(r)]) for i, c in enumerate(columns)]

    def line(vals: Sequence[str]) -> str:
        return "  ".join(
            (v.rjust(w) if columns[i] in right else v.ljust(w)) for i, (v, w) in enumerate(zip(vals, widths))
        ).rstrip()

    out = [title, line(list(columns)), line(["-" * w for w in widths])] + [line(r) for r in cells]
    console.print(Text("\n".join(out)), soft_wrap=True)


def print_ranking(ranking: Any, title: str, top: int | None = None) -> None:
    """The ranking table of `twinrank rank` / `nightly` (the report's columns, ``top`` rows)."""
    from selection.report import TABLE_COLUMNS, table_rows

    print_table(
        title,
        TABLE_COLUMNS,
        table_rows(ranking, top),
        right=("rank", "score", "P(best)", "P(beats champion)", "sim nominal", "sim perturbed", "OOD"),
    )


def print_promotion(status: str, promotion: Any, header: bool = True) -> None:
    """The promotion decision and each alias it set (champion / challenger), with the reason."""
    if header:
        console.print(styled("promotion:", "bold", status))
    if promotion is None:
        return
    if promotion.decision and promotion.decision != status:
        console.print(styled("  decision:", "bold", promotion.decision))
    for p in promotion.promotions:
        prev = promotion.previous.get(p.alias, "")
        change = "unchanged" if prev == f"{p.name}/{p.version}" else f"previously {prev or 'nobody'}"
        console.print(styled(f"  {p.alias}:", "bold", f"{p.name}/{p.version} ({p.checkpoint}; {change}) — {p.reason}"))


def print_warnings(warnings: list[str]) -> None:
    for w in warnings:
        warn(w)


def rate_interval(rate: float, n: int) -> str:
    """``0.45 [0.26, 0.66]``: a success rate measured on ``n`` episodes with its Wilson 95 % interval."""
    from evaluator.results import wilson_interval

    lo, hi = wilson_interval(round(rate * n), n)
    return f"{rate:.2f} [{lo:.2f}, {hi:.2f}]"


def _fmt_rate(d: dict[str, Any], key: str = "success_rate") -> str:
    v = d.get(key) if d and d.get("n") else None
    return "-" if v is None else f"{v:.2f}"


def print_campaign(result: Any, title: str) -> None:
    """The campaign's checkpoints ranked by overall sim success with P(best) (paired episodes;
    ties share a rank, e.g. "2="), the leader and the checkpoints indistinguishable from it
    marked; failed ones last, with their reason."""
    from evaluator.decision import METHOD, decision_mark
    from evaluator.tracking import racing_lines, table_order

    rows = []
    for c in sorted(result.checkpoints, key=table_order):
        o = c.overall
        rated = bool(o.get("n")) and o.get("success_rate") is not None
        drops = [(k, v.get("mean")) for k, v in c.paired_drop.items() if v.get("mean") is not None]
        worst = max(drops, key=lambda kv: kv[1]) if drops else None
        d = c.decision
        note = c.status if not c.error else f"{c.status}: {c.error}"
        if decision_mark(d):
            note = f"{note}; {decision_mark(d)}" if note != "ok" else decision_mark(d)
        if d.get("champion"):
            note = f"{note}; champion {d['champion']}"
        rows.append(
            (
                d.get("rank", "-") if rated else "-",
                c.label,
                _fmt_rate(o),
                f"{o.get('n', 0)}" if rated else "0",
                f"[{o['ci_low']:.2f}, {o['ci_high']:.2f}]" if rated else "-",
                f"{d['p_best']:.2f}" if d.get("p_best") is not None else ("out" if d.get("eliminated") else "-"),
                f"{d['p_beats_champion']:.2f}" if d.get("p_beats_champion") is not None else "-",
                _fmt_rate(c.per_condition.get("nominal", {})),
                f"{worst[0]} ({worst[1]:+.2f})" if worst else "-",
                note,
            )
        )
    print_table(
        title,
        (
            "rank",
            "checkpoint",
            "success",
            "n",
            "95% CI",
            "P(best)",
            "P(beats champion)",
            "nominal",
            "worst factor (paired drop)",
            "status",
        ),
        rows,
        right=("rank", "success", "n", "P(best)", "P(beats champion)"),
    )
    console.print(Text(f"P(best): {METHOD}; ranks shared by equal success are marked '='"), soft_wrap=True)
    racing = getattr(result, "racing", {}) or {}
    if racing:
        text = racing_lines(racing, {c.checkpoint_id: c.label for c in result.checkpoints})
        console.print(Text("\n".join(line.replace("`", "") for line in text[1:])), soft_wrap=True)


# ---------------------------------------------------------------------------------------------
# progress
# ---------------------------------------------------------------------------------------------


def _duration(s: float) -> str:
    s = max(0, int(round(s)))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {(s % 3600) // 60:02d} min"


class ProgressDisplay:
    """Progress of one piece of work at a time: a Rich bar on a terminal; otherwise a plain,
    timestamped line (done/total, rate, ETA) each time another ``1/steps`` of the work is done
    or ``every_s`` seconds passed, and whenever the description changes."""

    def __init__(self, unit: str = "", steps: int = 10, every_s: float = 60.0) -> None:
        self.unit = unit
        self.steps = steps
        self.every_s = every_s
        self._bar: Any = None
        self._task: Any = None
        self._desc = ""
        self._done = 0.0
        #: work done when the clock (re)started: a piece of work that resumes at 50/200 after
        #: other work (training between rounds of data collection) is timed from there
        self._done0 = 0.0
        self._total: float | None = None
        self._t0 = time.monotonic()
        self._last_print = 0.0
        self._next_mark = 0.0

    def __enter__(self) -> ProgressDisplay:
        if is_terminal():
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._bar = Progress(
                TextColumn("{task.description}", markup=False),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}", markup=False),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=console,
            )
            self._bar.__enter__()
            self._task = self._bar.add_task("starting", total=None, rate="")
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)
            self._bar = None
        elif exc[0] is None and self._total and self._done < self._total and self._done > 0:
            self._line()  # the last state, when the final update was not printed

    def print(self, msg: Text | str) -> None:
        """A message above the bar (or a plain line)."""
        console.print(msg if isinstance(msg, Text) else Text(msg))

    def set_desc(self, desc: str) -> None:
        """A new description, shown by the bar (or in the next plain line) without a line of its own."""
        self._desc = desc
        if self._bar is not None:
            self._bar.update(self._task, description=desc)

    def set_total(self, total: float) -> None:
        """A new total for the same piece of work (e.g. an adaptive campaign that needs fewer
        episodes than planned): the rate and ETA go on."""
        self._total = total
        if self._bar is not None:
            self._bar.update(self._task, total=total)

    def update(
        self, desc: str | None = None, done: float | None = None, total: float | None = None, unit: str | None = None
    ) -> None:
        if unit is not None:
            self.unit = unit
        restart = total is not None and (total != self._total or done == 0)
        if restart:
            self._t0 = time.monotonic()
            self._done0 = done if done is not None else 0.0
            self._next_mark = 0.0
        changed = desc is not None and desc != self._desc
        if desc is not None:
            self._desc = desc
        if total is not None:
            self._total = total
        if done is not None:
            self._done = done
        if self._bar is not None:
            self._bar.update(
                self._task, description=self._desc, completed=self._done, total=self._total, rate=self._rate_text()
            )
            return
        now = time.monotonic()
        due = (self._total and self._done >= self._next_mark) or now - self._last_print >= self.every_s
        if changed or restart or due or (self._total and self._done >= self._total):
            self._line()

    def advance(self, n: float = 1.0) -> None:
        self.update(done=self._done + n)

    def _rate(self) -> float | None:
        """Work per second since the clock (re)started; None before any work was done."""
        elapsed = time.monotonic() - self._t0
        if self._done <= self._done0 or elapsed <= 0:
            return None
        return (self._done - self._done0) / elapsed

    def _rate_text(self) -> str:
        rate = self._rate()
        return f"{rate:.1f} {self.unit}/s" if rate is not None and self.unit else ""

    def _line(self) -> None:
        now = time.monotonic()
        elapsed = now - self._t0
        stamp = _dt.datetime.now().strftime("%H:%M:%S")
        parts = [f"{stamp} {self._desc}"]
        if self._total:
            pct = 100.0 * self._done / self._total
            parts.append(f"{self._done:.0f}/{self._total:.0f} ({pct:.0f} %)")
            rate = self._rate()
            if rate is not None and self._done < self._total:
                parts.append(f"{rate:.2f} {self.unit or 'items'}/s, ETA {_duration((self._total - self._done) / rate)}")
            elif self._done >= self._total:
                parts.append(f"done in {_duration(elapsed)}")
            step = self._total / max(1, self.steps)
            self._next_mark = (int(self._done / step) + 1) * step if step > 0 else self._total
        console.print(Text(", ".join(parts)), soft_wrap=True)
        self._last_print = now


@contextlib.contextmanager
def eval_progress(first: str = "starting workers") -> Iterator[tuple[Callable[[Any], None], Callable[[str], None]]]:
    """Progress of an evaluation (``evaluator.evaluate``'s events): yields (event callback,
    log callback). Failed checkpoints and lost workers are printed as they happen."""
    with ProgressDisplay(unit="ep") as bar:
        bar.update(desc=first)

        def on_event(ev: Any) -> None:
            if ev.kind == "start":
                bar.update(
                    desc=f"episodes ({ev.skipped} already done)", done=0, total=max(ev.total, 1) if ev.total else 1
                )
                if not ev.total:
                    bar.update(done=1)
            elif ev.kind == "episode":
                bar.update(done=ev.done)
            elif ev.kind == "checkpoint_failed":
                bar.print(styled("checkpoint failed", "red", f"{ev.label}: {ev.message}"))
            elif ev.kind == "worker_lost":
                bar.print(
                    styled("warning:", "yellow", ev.message or f"worker {ev.worker_pid} lost; re-running its episodes")
                )
            elif ev.kind == "eliminated":
                bar.print(f"{ev.label}: {ev.message}")
            elif ev.kind == "race_done":
                bar.print(f"race over: {ev.message}")
            elif ev.kind == "round" and ev.total:
                bar.set_total(ev.total)
            elif ev.kind == "videos":
                bar.update(desc="recording videos", done=0, total=max(ev.total, 1), unit="videos")
            elif ev.kind == "video":
                bar.advance()

        def on_log(msg: str) -> None:
            if msg.startswith("warning: "):
                bar.print(styled("warning:", "yellow", msg[len("warning: ") :]))
            else:
                bar.print(msg)
                bar.set_desc(msg[:80])  # the message is printed once, also in a log file

        yield on_event, on_log


def exit_codes_markdown() -> str:
    """The exit-code table as Markdown (the README's copy is checked against it)."""
    lines = ["| exit code | meaning |", "|---|---|"]
    lines += [f"| {int(c)} | {m} |" for c, m in EXIT_CODE_MEANINGS.items()]
    return "\n".join(lines)


__all__ = [
    "EXIT_CODE_MEANINGS",
    "ExitCode",
    "ProgressDisplay",
    "command",
    "console",
    "error",
    "eval_progress",
    "exit_codes_markdown",
    "exit_with",
    "fail",
    "info",
    "is_terminal",
    "print_campaign",
    "print_table",
    "rate_interval",
    "rule",
    "styled",
    "warn",
]
