"""Short human-readable reports of a ranking: Markdown and a self-contained HTML page.

Used by the nightly job (selection/nightly.py) and by ``twinrank rank``. A report says:

* when, which spec, which real-data logs, the MLflow run of the ranking;
* the rule used and why (given, chosen by leave-one-out over past validations, or the default);
* ``champion`` / ``challenger``: which model version holds each alias, its reason, the previous
  holder, and whether anything changed this time ("promoted", "no change", "not promoted: ...");
* the ranking table, top N (rank, checkpoint, score, sim nominal, sim perturbed, OOD, model
  version, note);
* the three plots (scatter of sim success vs OOD, per-condition heat map, rank chart): linked
  from the Markdown (they sit next to it), embedded as PNG data in the HTML so that the page
  stands alone (e.g. as an MLflow artifact);
* checkpoints new this time, checkpoints that failed (with the reason), counts, warnings.

::

    from selection.report import report_from_rank, write_report
    rep = report_from_rank(rank_result, title="Ranking of reach checkpoints")
    files = write_report(rep, rank_result.out_dir)      # report.md, report.html
    log_report(files, rank_result.run_id, tracking_uri)  # artifacts under report/
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

PLOT_TITLES = {"scatter": "Sim success vs OOD", "heatmap": "Success per condition", "rank_chart": "Rank chart"}


@dataclass
class Holder:
    """One alias after the ranking: who holds it, why, and who held it before."""

    alias: str
    model_version: str  # "name/version"
    checkpoint: str
    score: float
    reason: str
    previous: str = ""  # "name/version" before this ranking ("" = nobody)

    @property
    def changed(self) -> bool:
        return self.previous != self.model_version


@dataclass
class Report:
    """Everything a report shows. Build it with :func:`report_from_rank` (or by hand)."""

    title: str
    ranking: pd.DataFrame
    rule: str
    rule_reason: str
    plots: dict[str, Path] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    run_id: str = ""
    spec: str = ""
    real_logs: list[str] = field(default_factory=list)
    #: "promoted", "no change", "not promoted: <why>", "promotion off", "dry run"
    promotion_status: str = ""
    #: why (selection/promotion.py): the rule, P(best) / P(beats the champion), n, the runs
    promotion_decision: str = ""
    holders: list[Holder] = field(default_factory=list)
    new_checkpoints: list[str] = field(default_factory=list)
    #: (checkpoint or source, reason): evaluation failures, discovery failures
    failed: list[tuple[str, str]] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    top_n: int = 10
    date: str = ""
    ui_command: str = ""
    #: the twin's fidelity to the real logs (selection.calibration.TwinFidelity.summary()), if measured
    fidelity: str = ""
    #: how real success was predicted (selection.prediction.PredictionResult.summary()), if at all
    prediction: str = ""


@dataclass
class ReportFiles:
    markdown: Path
    html: Path


def holders_from_promotion(promotion: Any) -> list[Holder]:
    """:class:`Holder` rows from a :class:`selection.promotion.PromotionResult` (or None)."""
    if promotion is None:
        return []
    return [
        Holder(
            alias=p.alias,
            model_version=f"{p.name}/{p.version}",
            checkpoint=p.checkpoint,
            score=p.score,
            reason=p.reason,
            previous=promotion.previous.get(p.alias, ""),
        )
        for p in promotion.promotions
    ]


def failed_rows(ranking: pd.DataFrame) -> list[tuple[str, str]]:
    """Unranked checkpoints whose evaluation failed, with the reason (from the ``note`` column)."""
    out = []
    for _, row in ranking[ranking["rank"].isna()].iterrows():
        note = str(row.get("note") or "")
        if note.startswith("evaluation"):
            out.append((str(row["checkpoint"]), note))
    return out


def report_from_rank(
    result: Any,
    *,
    title: str = "Checkpoint ranking",
    promotion_status: str | None = None,
    new_checkpoints: Sequence[str] = (),
    failed: Sequence[tuple[str, str]] = (),
    counts: dict[str, int] | None = None,
    top_n: int = 10,
    spec: str = "",
    real_logs: Sequence[str] = (),
    date: str = "",
    ui_command: str = "",
) -> Report:
    """A :class:`Report` from a :class:`selection.job.RankResult`.

    ``failed`` adds failures found before the ranking (e.g. a registry version that could not
    be downloaded) to the checkpoints whose evaluation failed. ``promotion_status`` defaults to
    "promoted" when the result carries a promotion, else "promotion off".
    """
    ranking = result.ranking
    if promotion_status is None:
        promotion_status = "promoted" if result.promotion is not None else "promotion off"
    n_ranked = int(ranking["rank"].notna().sum())
    base_counts = {"checkpoints": len(ranking), "ranked": n_ranked, "unranked": len(ranking) - n_ranked}
    campaign = getattr(result, "campaign", None)
    if campaign is not None:
        base_counts["episodes run"] = int(campaign.executed)
        base_counts["episodes reused"] = int(campaign.skipped)
    base_counts.update(counts or {})
    return Report(
        title=title,
        ranking=ranking,
        rule=result.rule,
        rule_reason=result.rule_reason,
        plots=dict(result.plots),
        warnings=list(result.warnings),
        run_id=result.run_id,
        spec=spec,
        real_logs=list(real_logs),
        promotion_status=promotion_status,
        promotion_decision=getattr(result.promotion, "decision", "") if result.promotion is not None else "",
        holders=holders_from_promotion(result.promotion),
        new_checkpoints=list(new_checkpoints),
        failed=[*failed, *failed_rows(ranking)],
        counts=base_counts,
        top_n=top_n,
        date=date or _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        ui_command=ui_command,
        fidelity=result.fidelity.summary() if getattr(result, "fidelity", None) is not None else "",
        prediction=_prediction_text(getattr(result, "prediction", None)),
    )


def _prediction_text(pred: Any) -> str:
    if pred is None:
        return ""
    if not pred.claims_real:
        return (
            "No real outcomes for any checkpoint: nothing is claimed about real success (the sim columns are "
            "sim success). Log real episodes that name their checkpoint (the recorder following a "
            "`twinrank plan-real` plan) or pass an outcomes CSV."
        )
    return f"{pred.level:.0%} intervals; {pred.summary()}. " + " ".join(pred.notes)


# ---- table ---------------------------------------------------------------------------------------
TABLE_COLUMNS = [
    "rank",
    "checkpoint",
    "score",
    "P(best)",
    "P(beats champion)",
    "sim nominal",
    "sim perturbed",
    "OOD",
    "real trials",
    "real predicted [interval]",
    "model version",
    "note",
]


def _real_cells(r: Any) -> list[str]:
    """'s/n' of a checkpoint's real trials and its predicted real success with its interval
    (selection/prediction.py); 'no claim' where nothing is claimed about real success."""
    n = r.get("real_trials")
    trials = f"{int(r.get('real_successes') or 0)}/{int(n)}" if pd.notna(n) and n else "-"
    pred = r.get("real_pred")
    if pred is None or pd.isna(pred):
        return [trials, "no claim" if "real_pred" in r else "n/a"]
    return [trials, f"{float(pred):.2f} [{float(r['real_lo']):.2f}, {float(r['real_hi']):.2f}]"]


def _num(v: Any, spec: str = ".3f") -> str:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return "n/a"
    return "n/a" if math.isnan(f) else format(f, spec)


def table_rows(ranking: pd.DataFrame, top_n: int | None = None) -> list[list[str]]:
    """The ranking as display rows (:data:`TABLE_COLUMNS`), best first; ``top_n`` ranked rows
    (unranked rows always follow: they carry the failures)."""
    ranked = ranking[ranking["rank"].notna()].sort_values("rank")
    if top_n is not None:
        ranked = ranked.head(top_n)
    rows = []
    tied = set(ranking["rank"][ranking["rank"].notna() & ranking["rank"].duplicated(keep=False)])
    for _, r in pd.concat([ranked, ranking[ranking["rank"].isna()]]).iterrows():
        note = "; ".join(x for x in (str(r.get("mark") or ""), str(r.get("note") or "")) if x and x != "nan")
        rows.append(
            [
                (_num(r["rank"], ".0f") + ("=" if r["rank"] in tied else "")) if pd.notna(r["rank"]) else "-",
                str(r["checkpoint"]),
                _num(r.get("score")),
                _num(r.get("p_best"), ".2f"),
                _num(r.get("p_beats_champion"), ".2f"),
                _num(r.get("sim_nominal"), ".2f"),
                _num(r.get("sim_perturbed"), ".2f"),
                _num(r.get("ood"), ".2f"),
                *_real_cells(r),
                str(r.get("model_version") or "") or "-",
                note,
            ]
        )
    return rows


# ---- Markdown --------------------------------------------------------------------------------------
def _md_cell(s: str) -> str:
    return s.replace("|", "\\|").replace("\n", " ")


def render_markdown(rep: Report, plot_dir: Path | None = None) -> str:
    """The report as Markdown; plots are linked relative to ``plot_dir`` (the report's folder)."""
    out = [f"# {rep.title}", ""]
    meta = [f"- date: {rep.date}"]
    if rep.spec:
        meta.append(f"- evaluation spec: `{rep.spec}`")
    meta.append(f"- real-data logs: {', '.join(f'`{b}`' for b in rep.real_logs) or 'none'}")
    if rep.run_id:
        meta.append(f"- MLflow ranking run: `{rep.run_id}`")
    if rep.ui_command:
        meta.append(f"- MLflow UI: `{rep.ui_command}`")
    out += meta + ["", "## Rule", "", f"**{rep.rule}** — {rep.rule_reason}", ""]
    if rep.fidelity:
        out += ["## Twin fidelity", "", _md_cell(rep.fidelity), ""]
    if rep.prediction:
        out += ["## Predicted real success", "", _md_cell(rep.prediction), ""]
    out += ["## Champion and challenger", "", f"Promotion: **{rep.promotion_status}**", ""]
    if rep.promotion_decision:
        out += [f"Decision: {_md_cell(rep.promotion_decision)}", ""]
    if rep.holders:
        out += [
            "| alias | model version | checkpoint | score | previous holder | reason |",
            "|---|---|---|---|---|---|",
        ]
        for h in rep.holders:
            prev = h.previous or "none"
            if not h.changed:
                prev += " (unchanged)"
            out.append(
                f"| {h.alias} | {h.model_version} | {_md_cell(h.checkpoint)} | {_num(h.score)} | {prev} | "
                f"{_md_cell(h.reason)} |"
            )
    else:
        out.append("No alias was set.")
    out += [
        "",
        f"## Ranking (top {rep.top_n})",
        "",
        "| " + " | ".join(TABLE_COLUMNS) + " |",
        "|" + "---|" * len(TABLE_COLUMNS),
    ]
    for row in table_rows(rep.ranking, rep.top_n):
        out.append("| " + " | ".join(_md_cell(c) for c in row) + " |")
    out += ["", "## Plots", ""]
    for key, p in rep.plots.items():
        rel = os.path.relpath(p, plot_dir) if plot_dir is not None else str(p)
        out.append(f"![{PLOT_TITLES.get(key, key)}]({rel})")
    out += ["", "## New checkpoints", ""]
    out += [f"- {c}" for c in rep.new_checkpoints] or ["none"]
    out += ["", "## Failed checkpoints", ""]
    out += [f"- **{c}**: {_md_cell(why)}" for c, why in rep.failed] or ["none"]
    out += ["", "## Counts", ""]
    out += [f"- {k}: {v}" for k, v in rep.counts.items()]
    out += ["", "## Warnings", ""]
    out += [f"- {_md_cell(w)}" for w in rep.warnings] or ["none"]
    return "\n".join(out) + "\n"


# ---- HTML ----------------------------------------------------------------------------------------------
_CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:70em}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left}
th{background:#f2f2f2}.num{text-align:right}img{max-width:100%;border:1px solid #eee;margin:.5em 0}
.warn{color:#8a5a00}.fail{color:#a00}"""


def _img(p: Path) -> str:
    if not Path(p).is_file():
        return f"<p class='warn'>plot {html.escape(str(p))} is missing</p>"
    data = base64.b64encode(Path(p).read_bytes()).decode()
    return f"<img alt='{html.escape(Path(p).stem)}' src='data:image/png;base64,{data}'>"


def _ul(items: Sequence[str], cls: str = "") -> str:
    if not items:
        return "<p>none</p>"
    c = f" class='{cls}'" if cls else ""
    return f"<ul{c}>" + "".join(f"<li>{i}</li>" for i in items) + "</ul>"


def render_html(rep: Report) -> str:
    """The report as one self-contained HTML page (plots embedded)."""
    e = html.escape
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{e(rep.title)}</title>"
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{e(rep.title)}</h1>",
    ]
    meta = [f"date: {e(rep.date)}"]
    if rep.spec:
        meta.append(f"evaluation spec: <code>{e(rep.spec)}</code>")
    meta.append("real-data logs: " + (", ".join(f"<code>{e(b)}</code>" for b in rep.real_logs) or "none"))
    if rep.run_id:
        meta.append(f"MLflow ranking run: <code>{e(rep.run_id)}</code>")
    if rep.ui_command:
        meta.append(f"MLflow UI: <code>{e(rep.ui_command)}</code>")
    parts.append(_ul(meta))
    parts.append(f"<h2>Rule</h2><p><b>{e(rep.rule)}</b> — {e(rep.rule_reason)}</p>")
    if rep.fidelity:
        parts.append(f"<h2>Twin fidelity</h2><p>{e(rep.fidelity)}</p>")
    if rep.prediction:
        parts.append(f"<h2>Predicted real success</h2><p>{e(rep.prediction)}</p>")
    parts.append(f"<h2>Champion and challenger</h2><p>Promotion: <b>{e(rep.promotion_status)}</b></p>")
    if rep.promotion_decision:
        parts.append(f"<p>Decision: {e(rep.promotion_decision)}</p>")
    if rep.holders:
        parts.append(
            "<table><tr><th>alias</th><th>model version</th><th>checkpoint</th><th>score</th>"
            "<th>previous holder</th><th>reason</th></tr>"
        )
        for h in rep.holders:
            prev = (h.previous or "none") + ("" if h.changed else " (unchanged)")
            parts.append(
                f"<tr><td>{e(h.alias)}</td><td>{e(h.model_version)}</td><td>{e(h.checkpoint)}</td>"
                f"<td class='num'>{_num(h.score)}</td><td>{e(prev)}</td><td>{e(h.reason)}</td></tr>"
            )
        parts.append("</table>")
    else:
        parts.append("<p>No alias was set.</p>")
    parts.append(
        f"<h2>Ranking (top {rep.top_n})</h2><table><tr>" + "".join(f"<th>{e(c)}</th>" for c in TABLE_COLUMNS) + "</tr>"
    )
    for row in table_rows(rep.ranking, rep.top_n):
        cells = [
            f"<td class='num'>{e(c)}</td>" if i in (0, 2, 3, 4, 5, 6, 7) else f"<td>{e(c)}</td>"
            for i, c in enumerate(row)
        ]
        parts.append("<tr>" + "".join(cells) + "</tr>")
    parts.append("</table><h2>Plots</h2>")
    for key, p in rep.plots.items():
        parts.append(f"<h3>{e(PLOT_TITLES.get(key, key))}</h3>{_img(p)}")
    parts.append("<h2>New checkpoints</h2>" + _ul([e(c) for c in rep.new_checkpoints]))
    parts.append("<h2>Failed checkpoints</h2>" + _ul([f"<b>{e(c)}</b>: {e(w)}" for c, w in rep.failed], "fail"))
    parts.append("<h2>Counts</h2>" + _ul([f"{e(k)}: {v}" for k, v in rep.counts.items()]))
    parts.append("<h2>Warnings</h2>" + _ul([e(w) for w in rep.warnings], "warn"))
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


# ---- files and MLflow ----------------------------------------------------------------------------------
def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_report(rep: Report, out_dir: str | os.PathLike[str], stem: str = "report") -> ReportFiles:
    """Write ``<stem>.md`` and ``<stem>.html`` into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = ReportFiles(markdown=out / f"{stem}.md", html=out / f"{stem}.html")
    _atomic_write_text(files.markdown, render_markdown(rep, plot_dir=out))
    _atomic_write_text(files.html, render_html(rep))
    return files


def log_report(files: ReportFiles, run_id: str, tracking_uri: str | None = None) -> None:
    """Log both report files as artifacts (under ``report/``) of the MLflow run ``run_id``."""
    import mlflow

    from policies import tracking

    client = mlflow.MlflowClient(tracking_uri=tracking.resolve_tracking_uri(tracking_uri))
    for p in (files.markdown, files.html):
        client.log_artifact(run_id, str(p), artifact_path="report")


__all__ = [
    "Holder",
    "Report",
    "ReportFiles",
    "TABLE_COLUMNS",
    "failed_rows",
    "holders_from_promotion",
    "log_report",
    "render_html",
    "render_markdown",
    "report_from_rank",
    "table_rows",
    "write_report",
]
