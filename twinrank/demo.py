"""`twinrank demo`: build every task, run its scripted controller under a few perturbation
conditions, and write a contact sheet of camera views plus a success summary."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from twin.perturbations import load_suite, nominal_condition
from twin.rollout import EpisodeResult, expert_env, run_expert_episode
from twin.tasks import list_tasks

FRAME = (240, 180)
DEMO_FACTORS = ("light_intensity", "camera_position", "distractors", "object_scale")


def run_demo(out_dir: Path, tasks: list[str] | None = None, episodes: int = 2, seed: int = 0,
             console: Console | None = None) -> dict:
    console = console or Console()
    out_dir.mkdir(parents=True, exist_ok=True)
    tasks = tasks or list_tasks()
    suite = load_suite("default")
    conditions = [("nominal", None)] + [(f, suite.only(f)) for f in DEMO_FACTORS if f in suite.factor_names()]
    conditions.append(("combined", suite))
    results: list[EpisodeResult] = []
    sheet_rows: list[tuple[str, list[tuple[str, np.ndarray]]]] = []
    total = len(tasks) * len(conditions) * episodes
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TimeRemainingColumn(), console=console) as progress:
        bar = progress.add_task("episodes", total=total)
        for task in tasks:
            env = expert_env(task)
            cams = tuple(env.camera_names())
            tiles: list[tuple[str, np.ndarray]] = []
            for cname, csuite in conditions:
                for ep in range(episodes):
                    s = seed + ep
                    cond = nominal_condition() if csuite is None else csuite.sample(s)
                    progress.update(bar, description=f"{task} / {cname} / seed {s}")
                    res = run_expert_episode(env, s, cond, record=cams if ep == 0 else (), frame_size=FRAME)
                    res.condition = cname
                    results.append(res)
                    if ep == 0:
                        label = f"{cname} {'OK' if res.success else 'FAIL'}"
                        if cname == "nominal":
                            tiles += [(f"{cam} start", res.frames[cam][0]) for cam in cams]
                            tiles += [(f"{cams[0]} end {'OK' if res.success else 'FAIL'}", res.frames[cams[0]][-1])]
                        else:
                            tiles.append((label, res.frames[cams[0]][0]))
                    progress.advance(bar)
            env.close()
            sheet_rows.append((task, tiles))
    sheet_path = out_dir / "contact_sheet.png"
    contact_sheet(sheet_rows).save(sheet_path)
    summary = summarize(results)
    (out_dir / "summary.json").write_text(json.dumps(
        {"summary": summary, "episodes": [{k: v for k, v in asdict(r).items() if k != "frames"} for r in results]},
        indent=2))
    table = Table(title="Scripted controller success (episodes ok / run)")
    table.add_column("task")
    cond_names = [c for c, _ in conditions]
    for c in cond_names:
        table.add_column(c, justify="center")
    for task in tasks:
        row = [task]
        for c in cond_names:
            ok, n = summary[task][c]
            row.append(f"{ok}/{n}")
        table.add_row(*row)
    console.print(table)
    console.print(f"contact sheet: {sheet_path}\nsummary: {out_dir / 'summary.json'}")
    return summary


def summarize(results: list[EpisodeResult]) -> dict[str, dict[str, tuple[int, int]]]:
    out: dict[str, dict[str, list[int]]] = {}
    for r in results:
        cell = out.setdefault(r.task, {}).setdefault(r.condition, [0, 0])
        cell[0] += int(r.success)
        cell[1] += 1
    return {t: {c: (v[0], v[1]) for c, v in conds.items()} for t, conds in out.items()}


def contact_sheet(rows: list[tuple[str, list[tuple[str, np.ndarray]]]], label_w: int = 120) -> Image.Image:
    w, h = FRAME
    ncol = max(len(t) for _, t in rows)
    sheet = Image.new("RGB", (label_w + ncol * w, len(rows) * (h + 16)), (30, 30, 30))
    draw = ImageDraw.Draw(sheet)
    for r, (task, tiles) in enumerate(rows):
        y = r * (h + 16)
        draw.text((6, y + h // 2), task, fill=(255, 255, 255))
        for c, (label, img) in enumerate(tiles):
            x = label_w + c * w
            sheet.paste(Image.fromarray(img), (x, y))
            draw.text((x + 4, y + h + 2), label, fill=(220, 220, 220))
    return sheet
