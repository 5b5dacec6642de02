"""`twinrank demo`: the whole chain on the embedded default (MuJoCo + a local MLflow store).

1. The twin: build every task, run its scripted controller under a few perturbation
   conditions, write a contact sheet of camera views and a success summary.
2. Train a small checkpoint family (BC on ``reach``; reused from the demo folder when it is
   already there), registered in the MLflow model registry.
3. Evaluate the family under perturbations (paired design), print the ranked table and
   log the campaign to MLflow, then print the command that opens the MLflow UI.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from rich.console import Console

from twin.perturbations import load_suite, nominal_condition
from twin.rollout import EpisodeResult, expert_env, run_expert_episode
from twin.tasks import list_tasks
from twinrank import output
from twinrank.output import ExitCode

FRAME = (240, 180)
DEMO_FACTORS = ("light_intensity", "camera_position", "distractors", "object_scale")


def run_demo(
    out_dir: Path,
    tasks: list[str] | None = None,
    episodes: int = 1,
    seed: int = 0,
    console: Console | None = None,
    chain: bool = True,
    tracking_uri: str | None = None,
) -> int:
    """The demo; returns the exit code (0, or 4/5 when a checkpoint failed / MLflow was unreachable)."""
    output.rule("1/3 the twin: tasks under perturbations")
    run_twin_demo(out_dir, tasks, episodes, seed, console)
    if chain:
        return run_chain(out_dir, console, tracking_uri)
    return int(ExitCode.OK)


DEMO_SPEC = """name: demo
tasks: [reach]
suite: default
conditions: [nominal, light_intensity, camera_position, object_pose, actuation_latency, combined]
episodes_per_condition: 8
batch_size: 8
video: {enabled: true}
"""
DEMO_MODEL = "reach-demo"


def run_chain(out_dir: Path, console: Console | None = None, tracking_uri: str | None = None) -> int:
    """Train (or reuse) a small checkpoint family, evaluate it, log everything to MLflow."""
    from evaluator import EvalSpec, evaluate
    from evaluator.tracking import log_or_defer
    from policies import tracking
    from policies.bc import BCConfig
    from policies.train import DemoCfg, TrainConfig, run_training

    output.rule("2/3 train a checkpoint family (BC on reach)")
    train_dir = out_dir / "train" / "bc-reach"
    ckpts = sorted(str(p.parent) for p in (train_dir / "checkpoints").glob("*/manifest.json"))
    if ckpts:
        output.info(f"reusing {len(ckpts)} cached checkpoints in {train_dir}")
    else:
        cfg = TrainConfig(
            algo="bc",
            task="reach",
            demos=DemoCfg(episodes=8, seed=1000),
            bc=BCConfig(epochs=200, batch_size=32),
            checkpoint_every=40,
            eval_episodes=5,
            experiment="twinrank-demo",
            model_name=DEMO_MODEL,
        )
        with output.ProgressDisplay(unit="epochs") as bar:
            bar.update(desc="collecting demonstrations", done=0, total=cfg.bc.epochs)
            result = run_training(
                cfg,
                train_dir,
                tracking_uri=tracking_uri,
                cache_dir=out_dir / ".cache",
                progress=lambda d, done, tot: bar.update(desc=d, done=done, total=tot),
            )
        ckpts = [str(r.path) for r in result.checkpoints]
        output.info(f"{len(ckpts)} checkpoints registered as versions of {DEMO_MODEL!r}")
    output.rule("3/3 evaluate the family under perturbations")
    spec = EvalSpec.from_yaml(DEMO_SPEC)
    with output.eval_progress() as (on_event, _log):
        campaign = evaluate(ckpts, spec, out_dir / "eval", progress=on_event)
    output.print_campaign(
        campaign,
        f"Checkpoints ranked by sim success under perturbations (spec {spec.name!r}, "
        f"{spec.episodes_per_condition} paired seeds per condition, Wilson 95% CI)",
    )
    output.info(f"eval results: {campaign.eval_info_path}")
    uri = tracking.resolve_tracking_uri(tracking_uri)
    output.info(f"uploading the campaign to MLflow at {uri}")
    logged = log_or_defer(campaign, tracking_uri, status=output.info)
    code = ExitCode.PARTIAL if campaign.failed else ExitCode.OK
    if logged is None:
        output.warn(f"MLflow at {uri} unreachable: results kept on disk, synced by the next `twinrank eval`")
        return int(code or ExitCode.TRACKING_DEFERRED)
    output.info(
        f"MLflow campaign run {logged.parent_run_id} (experiment twinrank-eval, registered model {DEMO_MODEL!r})"
    )
    output.command("open the MLflow UI:", tracking.ui_command(tracking_uri) + "   # then http://127.0.0.1:5000")
    return int(code)


def run_twin_demo(
    out_dir: Path, tasks: list[str] | None = None, episodes: int = 1, seed: int = 0, console: Console | None = None
) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    tasks = tasks or list_tasks()
    suite = load_suite("default")
    conditions = [("nominal", None)] + [(f, suite.only(f)) for f in DEMO_FACTORS if f in suite.factor_names()]
    conditions.append(("combined", suite))
    results: list[EpisodeResult] = []
    sheet_rows: list[tuple[str, list[tuple[str, str, np.ndarray]]]] = []
    total = len(tasks) * len(conditions) * episodes
    with output.ProgressDisplay(unit="ep") as bar:
        bar.update(desc="episodes", done=0, total=total)
        for task in tasks:
            env = expert_env(task)
            cams = tuple(env.camera_names())
            tiles: list[tuple[str, str, np.ndarray]] = []  # (column header, cell label, frame)
            for cname, csuite in conditions:
                for ep in range(episodes):
                    s = seed + ep
                    cond = nominal_condition() if csuite is None else csuite.sample(s)
                    bar.update(desc=f"{task} / {cname} / seed {s}")
                    res = run_expert_episode(env, s, cond, record=cams if ep == 0 else (), frame_size=FRAME)
                    res.condition = cname
                    results.append(res)
                    if ep == 0:
                        label = f"seed {s}: {'OK' if res.success else 'FAIL'}"
                        if cname == "nominal":
                            tiles += [(f"nominal\n{cam}, first frame", label, res.frames[cam][0]) for cam in cams]
                            tiles += [(f"nominal\n{cams[0]}, last frame", label, res.frames[cams[0]][-1])]
                        else:
                            tiles.append((f"{cname}\n{cams[0]}, first frame", label, res.frames[cams[0]][0]))
                    bar.advance()
            env.close()
            sheet_rows.append((task, tiles))
    sheet_path = out_dir / "contact_sheet.png"
    contact_sheet(sheet_rows).save(sheet_path)
    summary = summarize(results)
    (out_dir / "summary.json").write_text(
        json.dumps(
            {"summary": summary, "episodes": [{k: v for k, v in asdict(r).items() if k != "frames"} for r in results]},
            indent=2,
        )
    )
    cond_names = [c for c, _ in conditions]
    output.print_table(
        "Scripted controller success (episodes ok / run)",
        ["task", *cond_names],
        [[task, *(f"{summary[task][c][0]}/{summary[task][c][1]}" for c in cond_names)] for task in tasks],
    )
    output.info(f"contact sheet: {sheet_path}")
    output.info(f"summary: {out_dir / 'summary.json'}")
    return summary


def summarize(results: list[EpisodeResult]) -> dict[str, dict[str, tuple[int, int]]]:
    out: dict[str, dict[str, list[int]]] = {}
    for r in results:
        cell = out.setdefault(r.task, {}).setdefault(r.condition, [0, 0])
        cell[0] += int(r.success)
        cell[1] += 1
    return {t: {c: (v[0], v[1]) for c, v in conds.items()} for t, conds in out.items()}


HEADER_FONT_SIZE = 16  # px: column headers (condition, camera) and task names
LABEL_FONT_SIZE = 15  # px: the label strip under each tile
SHEET_BG = (30, 30, 30)
HEADER_BG = (12, 12, 12)
STRIP_BG = (0, 0, 0)
LABEL_COLORS = {"OK": (110, 220, 110), "FAIL": (255, 95, 95)}
_PAD = 6
_GAP = 4  # px between tiles


def _font(size: int):  # -> ImageFont.FreeTypeFont (the bitmap default font on old Pillow)
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # scalable font: Pillow >= 10.1 with FreeType
    except (TypeError, ValueError, OSError, ImportError):
        return ImageFont.load_default()


def _label_color(label: str) -> tuple[int, int, int]:
    """Green for a label ending in OK, red for FAIL, light grey otherwise."""
    for word, colour in LABEL_COLORS.items():
        if label.rstrip().endswith(word):
            return colour
    return (225, 225, 225)


def contact_sheet(rows: list[tuple[str, list[tuple[str, str, np.ndarray]]]], label_w: int | None = None) -> Image.Image:
    """The demo's contact sheet: one row per task (its name in the left column), one column per
    (condition, camera, frame); a header row names the columns (``"condition\ncamera, frame"``,
    one text line per ``\n``) and a dark strip under each tile carries its label (green when it
    ends in ``OK``, red for ``FAIL``). ``rows`` is ``[(task, [(column, label, frame), ...])]``;
    the header shows the first row's column names; a tile whose column differs from its
    header gets its own column name in its label. ``label_w`` (left column width) defaults to
    the widest task name."""
    w, h = FRAME
    head_font, label_font = _font(HEADER_FONT_SIZE), _font(LABEL_FONT_SIZE)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    ncol = max((len(t) for _, t in rows), default=0)
    header: list[str] = []
    for c in range(ncol):
        header.append(next((tiles[c][0] for _, tiles in rows if c < len(tiles)), ""))
    if label_w is None:
        label_w = max([probe.textlength(task, font=head_font) for task, _ in rows] + [40]) + 2 * _PAD
    label_w = int(label_w)
    head_lines = max([len(col.split("\n")) for col in header] + [1])
    line_h = HEADER_FONT_SIZE + 4
    header_h = head_lines * line_h + 2 * _PAD
    strip_h = LABEL_FONT_SIZE + 2 * _PAD
    row_h = h + strip_h + _GAP
    sheet = Image.new("RGB", (label_w + ncol * (w + _GAP), header_h + len(rows) * row_h), SHEET_BG)
    draw = ImageDraw.Draw(sheet)
    draw.rectangle((0, 0, sheet.width - 1, header_h - 1), fill=HEADER_BG)
    draw.text((_PAD, header_h - _PAD - line_h), "task", fill=(170, 170, 170), font=head_font)
    for c, col in enumerate(header):
        x = label_w + c * (w + _GAP)
        for k, line in enumerate(col.split("\n")):
            fill = (255, 255, 255) if k == 0 else (190, 190, 190)
            draw.text(
                (x + _PAD, _PAD + k * line_h), _fit(probe, line, head_font, w - 2 * _PAD), fill=fill, font=head_font
            )
    for r, (task, tiles) in enumerate(rows):
        y = header_h + r * row_h
        draw.text((_PAD, y + h // 2 - HEADER_FONT_SIZE // 2), task, fill=(255, 255, 255), font=head_font)
        for c, (column, label, img) in enumerate(tiles):
            x = label_w + c * (w + _GAP)
            sheet.paste(Image.fromarray(np.asarray(img)).convert("RGB").resize((w, h)), (x, y))
            draw.rectangle((x, y + h, x + w - 1, y + h + strip_h - 1), fill=STRIP_BG)
            if column != header[c]:
                label = f"{column.replace(chr(10), ' ')}: {label}"
            draw.text(
                (x + _PAD, y + h + _PAD - 1),
                _fit(probe, label, label_font, w - 2 * _PAD),
                fill=_label_color(label),
                font=label_font,
            )
    return sheet


def _fit(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> str:
    """``text``, shortened with an ellipsis when it is wider than ``width`` px."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text + "..."
