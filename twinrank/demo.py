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
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from twin.perturbations import load_suite, nominal_condition
from twin.rollout import EpisodeResult, expert_env, run_expert_episode
from twin.tasks import list_tasks

FRAME = (240, 180)
DEMO_FACTORS = ("light_intensity", "camera_position", "distractors", "object_scale")


def run_demo(out_dir: Path, tasks: list[str] | None = None, episodes: int = 1, seed: int = 0,
             console: Console | None = None, chain: bool = True, tracking_uri: str | None = None) -> dict:
    console = console or Console()
    console.rule("1/3 the twin: tasks under perturbations")
    summary = run_twin_demo(out_dir, tasks, episodes, seed, console)
    if chain:
        run_chain(out_dir, console, tracking_uri)
    return summary


DEMO_SPEC = """name: demo
tasks: [reach]
suite: default
conditions: [nominal, light_intensity, camera_position, object_pose, actuation_latency, combined]
episodes_per_condition: 8
batch_size: 8
video: {enabled: true, width: 160, height: 120}
"""


def run_chain(out_dir: Path, console: Console, tracking_uri: str | None = None) -> None:
    """Train (or reuse) a small checkpoint family, evaluate it, log everything to MLflow."""
    from evaluator import EvalSpec, evaluate
    from evaluator.tracking import log_or_defer
    from policies.bc import BCConfig
    from policies.train import DemoCfg, TrainConfig, run_training
    from twinrank import tracking

    console.rule("2/3 train a checkpoint family (BC on reach)")
    train_dir = out_dir / "train" / "bc-reach"
    ckpts = sorted(str(p.parent) for p in (train_dir / "checkpoints").glob("*/manifest.json"))
    if ckpts:
        console.print(f"reusing {len(ckpts)} cached checkpoints in {train_dir}")
    else:
        cfg = TrainConfig(algo="bc", task="reach", demos=DemoCfg(episodes=8, seed=1000),
                          bc=BCConfig(epochs=200, batch_size=32), checkpoint_every=40, eval_episodes=5,
                          experiment="twinrank-demo", model_name="reach-demo")
        with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=console) as progress:
            bar = progress.add_task("collecting demonstrations", total=cfg.bc.epochs)
            result = run_training(cfg, train_dir, tracking_uri=tracking_uri, cache_dir=out_dir / ".cache",
                                  progress=lambda d, done, tot: progress.update(bar, description=d, completed=done))
        ckpts = [str(r.path) for r in result.checkpoints]
        console.print(f"{len(ckpts)} checkpoints registered as versions of 'reach-demo'")
    console.rule("3/3 evaluate the family under perturbations")
    spec = EvalSpec.from_yaml(DEMO_SPEC)
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TimeRemainingColumn(), console=console) as progress:
        bar = progress.add_task("episodes", total=None)

        def on_event(ev) -> None:  # noqa: ANN001
            if ev.kind == "start":
                progress.update(bar, total=ev.total, completed=0)
            elif ev.kind == "episode":
                progress.update(bar, completed=ev.done)
            elif ev.kind == "videos":
                progress.update(bar, description="videos", total=ev.total, completed=0)
            elif ev.kind == "video":
                progress.advance(bar)

        campaign = evaluate(ckpts, spec, out_dir / "eval", progress=on_event)
    table = Table(title="Checkpoints ranked by sim success under perturbations")
    for col in ("rank", "checkpoint", "success", "95% CI", "nominal", "combined"):
        table.add_column(col)
    ranked = sorted(campaign.checkpoints, key=lambda c: -(c.overall.get("success_rate") or 0.0))
    for i, c in enumerate(ranked, 1):
        pc = c.per_condition
        table.add_row(str(i), c.label, f"{c.overall.get('success_rate', 0):.2f}",
                      f"[{c.overall.get('ci_low', 0):.2f}, {c.overall.get('ci_high', 0):.2f}]",
                      f"{pc.get('nominal', {}).get('success_rate', float('nan')):.2f}",
                      f"{pc.get('combined', {}).get('success_rate', float('nan')):.2f}")
    console.print(table)
    logged = log_or_defer(campaign, tracking_uri)
    console.print(f"eval results: {campaign.eval_info_path}")
    if logged is None:
        console.print("MLflow unreachable: results kept on disk, synced by the next `twinrank eval`")
    console.print(f"[bold]open the MLflow UI:[/] {tracking.ui_command(tracking_uri)}  (then http://127.0.0.1:5000)")


def run_twin_demo(out_dir: Path, tasks: list[str] | None = None, episodes: int = 1, seed: int = 0,
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
