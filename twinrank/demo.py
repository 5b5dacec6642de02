"""`twinrank demo`: the whole chain on the embedded default (MuJoCo + a local MLflow store).

1. The twin: build every task, run its scripted controller under a few perturbation
   conditions, write a contact sheet of camera views and a success summary.
2. Train a checkpoint family on a mission task (BC on ``box_to_shelf``, a checkpoint every
   20 epochs; reused from the demo folder when it is already there), registered in the
   MLflow model registry.
3. Rank it: the twin under perturbations (paired design) combined with OOD scores on logs
   that a second engine (PyBullet, playing the real cell) recorded of the scripted
   demonstrator; the probability of each checkpoint being best, the promotion decision,
   everything logged to MLflow.
4. Fidelity: the second engine's own success per checkpoint (read only here, never by the
   ranking) against each ranking: MMRV, Pearson, Spearman, regret@1 with bootstrap
   intervals, and a scatter; "no verdict" when that engine does not separate the family at
   the episodes it ran. Then the command that opens the MLflow UI.
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
    output.rule("1/4 the twin: tasks under perturbations")
    run_twin_demo(out_dir, tasks, episodes, seed, console)
    if chain:
        return run_chain(out_dir, console, tracking_uri)
    return int(ExitCode.OK)


DEMO_TASK = "box_to_shelf"
DEMO_SPEC = f"""name: demo
tasks: [{DEMO_TASK}]
suite: default
conditions: [nominal, object_pose, friction, actuation_latency, combined]
episodes_per_condition: 8
batch_size: 8
"""
DEMO_MODEL = f"{DEMO_TASK}-demo"
#: episodes of the scripted demonstrator logged in the second engine: the "real" logs OOD reads
REAL_LOG_EPISODES = 6
#: episodes per checkpoint in the second engine: its ground truth, read only by the fidelity step
TRUTH_EPISODES = 20
#: the rankings the fidelity table judges (ingredient or rule name -> label)
FIDELITY_ROWS = {"sim_nominal": "sim nominal", "sim_perturbed": "sim perturbed", "ood_only": "OOD alone"}


def run_chain(out_dir: Path, console: Console | None = None, tracking_uri: str | None = None) -> int:
    """Train (or reuse) a checkpoint family on a mission task, rank it (twin under perturbations +
    OOD on logs of a second engine), and judge the ranking against that engine's own success."""
    from policies import tracking
    from selection.proxy_real import ProxyRealDomain, record_logs

    output.rule(f"2/4 train a checkpoint family (BC on {DEMO_TASK})")
    ckpts = train_family(out_dir, tracking_uri)
    output.rule("3/4 rank it: the twin under perturbations + OOD on logs of the second engine (PyBullet)")
    dom = ProxyRealDomain.load(None).with_engine("pybullet")
    bag = out_dir / "proxy_real_pybullet_logs"
    if not (bag / "metadata.yaml").is_file():
        output.info(f"recording {REAL_LOG_EPISODES} episodes of the scripted demonstrator in {dom.label} -> {bag}")
        record_logs(DEMO_TASK, bag, domain=dom, episodes=REAL_LOG_EPISODES, operator="expert")
    res = rank_family(ckpts, bag, out_dir, tracking_uri)
    output.rule("4/4 fidelity: does the twin rank the family as the second engine does?")
    show_fidelity(res, ckpts, dom, out_dir, tracking_uri)
    output.info(f"ranking: {res.csv_path}")
    code = ExitCode.PARTIAL if res.campaign is not None and res.campaign.failed else ExitCode.OK
    if not res.run_id:
        uri = tracking.resolve_tracking_uri(tracking_uri)
        output.warn(f"MLflow at {uri} unreachable: results kept on disk in {out_dir}")
        return int(code or ExitCode.TRACKING_DEFERRED)
    output.info(f"MLflow ranking run {res.run_id} (experiment twinrank-selection, registered model {DEMO_MODEL!r})")
    output.command("open the MLflow UI:", tracking.ui_command(tracking_uri) + "   # then http://127.0.0.1:5000")
    return int(code)


def train_family(out_dir: Path, tracking_uri: str | None) -> list[str]:
    """BC on the demonstrator's episodes, a checkpoint every 20 epochs: from barely trained to
    as good as BC gets here (reused from the demo folder when it is there)."""
    from policies.bc import BCConfig
    from policies.train import DemoCfg, TrainConfig, run_training

    train_dir = out_dir / "train" / f"bc-{DEMO_TASK}"
    ckpts = sorted(str(p.parent) for p in (train_dir / "checkpoints").glob("*/manifest.json"))
    if ckpts:
        output.info(f"reusing {len(ckpts)} cached checkpoints in {train_dir}")
        return ckpts
    cfg = TrainConfig(
        algo="bc",
        task=DEMO_TASK,
        control_mode="discrete",
        demos=DemoCfg(episodes=60, seed=1000),
        bc=BCConfig(epochs=160, batch_size=64),
        checkpoint_every=20,
        eval_episodes=0,  # the ranking step evaluates them
        experiment="twinrank-demo",
        model_name=DEMO_MODEL,
    )
    with output.ProgressDisplay(unit="it") as bar:  # demonstrations, then epochs
        bar.update(desc="collecting demonstrations", done=0, total=cfg.bc.epochs)
        result = run_training(
            cfg,
            train_dir,
            tracking_uri=tracking_uri,
            cache_dir=out_dir / ".cache",
            progress=lambda d, done, tot: bar.update(desc=d, done=done, total=tot),
        )
    output.info(f"{len(result.checkpoints)} checkpoints registered as versions of {DEMO_MODEL!r}")
    return [str(r.path) for r in result.checkpoints]


def rank_family(ckpts: list[str], bag: Path, out_dir: Path, tracking_uri: str | None):  # -> selection.RankResult
    from evaluator import EvalSpec
    from selection.job import OODSettings, rank_checkpoints

    spec = EvalSpec.from_yaml(DEMO_SPEC)
    with output.eval_progress() as (on_event, on_log):
        res = rank_checkpoints(
            ckpts,
            spec,
            [bag],
            out_dir / "rank",
            tracking_uri=tracking_uri,
            ood=OODSettings(reference_episodes=5),
            progress=on_event,
            log=on_log,
        )
    output.print_ranking(
        res.ranking,
        f"Checkpoints ranked by rule {res.rule!r} ({spec.episodes_per_condition} paired seeds per condition, "
        f"{len(spec.conditions)} conditions, Wilson 95% CI; OOD on {REAL_LOG_EPISODES} logged episodes)",
    )
    output.print_promotion(res.promotion.decision if res.promotion is not None else "not promoted", res.promotion)
    output.print_warnings(res.warnings)
    return res


def fidelity_verdict(m: dict, y: np.ndarray, label: str, n: int) -> str:
    """One sentence on the combined ranking against the reality, from its Pearson interval
    (sure only when the interval excludes 0) and its regret@1."""
    r = m["Pearson"]
    if r.lo > 0:
        head = f"the twin's combined ranking agrees with {label} (Pearson {r}, above 0 at 95%)"
    elif r.hi < 0:
        head = f"the twin's combined ranking runs AGAINST {label} (Pearson {r}, below 0 at 95%)"
    else:
        head = f"{n} checkpoints cannot tell whether the twin ranks this family as {label} does (Pearson {r})"
    pick = f"fidelity: {head}; its first pick scores {y[0]:.2f} there, the best {y.max():.2f}"
    if m["regret@1"].value > 0.1:
        pick += (
            f" (regret@1 {m['regret@1'].value:.2f}): on this family the twin's choice would cost that much; "
            f"calibrate the twin before promoting on it"
        )
    return pick


def show_fidelity(res, ckpts: list[str], dom, out_dir: Path, tracking_uri: str | None) -> None:
    """The second engine's success per checkpoint (validation only: the ranking never read it),
    the fidelity table of each ranking against it, and the scatter (logged to the ranking run)."""
    from selection.fidelity import fidelity_metrics, fidelity_scatter, no_verdict_reason
    from selection.proxy_real import ground_truth
    from selection.ranking import rule_scores

    with output.eval_progress() as (on_event, _log):
        truth = ground_truth(
            ckpts, DEMO_TASK, out_dir / "truth_pybullet", domain=dom, episodes=TRUTH_EPISODES, progress=on_event
        )
    real = dict(zip(truth["checkpoint"], truth["real_success"], strict=True))
    df = res.ranking[res.ranking["checkpoint"].isin(real) & res.ranking["rank"].notna()].reset_index(drop=True)
    if len(df) < 2:
        output.warn(f"fewer than 2 checkpoints have both a ranking and a {dom.label} outcome: no fidelity to show")
        return
    y = np.array([real[c] for c in df["checkpoint"]])

    def interval(p: float) -> str:
        return output.rate_interval(p, TRUTH_EPISODES)

    output.print_table(
        f"Each checkpoint: twin vs {dom.label} ({TRUTH_EPISODES} episodes each, Wilson 95% CI; not real robot data)",
        ["rank", "checkpoint", "sim nominal", "sim perturbed", f"{dom.label}"],
        [
            [
                f"{int(r['rank'])}",
                str(r["checkpoint"]),
                f"{r['sim_nominal']:.2f}",
                f"{r['sim_perturbed']:.2f}",
                interval(v),
            ]
            for (_, r), v in zip(df.iterrows(), y, strict=True)
        ],
    )
    rows = []
    for key, label in {**FIDELITY_ROWS, "score": f"combined ({res.rule})"}.items():
        score = df["score"] if key == "score" else rule_scores(df, key)
        m = fidelity_metrics(score.to_numpy(dtype=float), y)
        rows.append([label, *(str(v) for v in m.values())])
    output.print_table(
        f"Ranking fidelity against {dom.label}, {len(df)} checkpoints (95% bootstrap CI over checkpoints; "
        f"MMRV lower is better)",
        ["ranking", "MMRV", "Pearson", "Spearman", "regret@1"],
        rows,
    )
    reason = no_verdict_reason(y, TRUTH_EPISODES)
    if reason:
        output.warn(f"no verdict on fidelity: {reason}; `make bench` (bench_selection) measures it on 18 checkpoints")
    else:
        output.info(fidelity_verdict(m, y, dom.label, len(df)))
    plot = fidelity_scatter(
        df["sim_perturbed"].to_numpy(dtype=float), {dom.label: y}, 0, DEMO_TASK, out_dir / "fidelity.png", res.rule
    )
    output.info(f"fidelity scatter: {plot}")
    if res.run_id:
        from selection.job import tracking_client

        try:
            tracking_client(tracking_uri).log_artifact(res.run_id, str(plot), "fidelity")
            tracking_client(tracking_uri).log_artifact(
                res.run_id, str(out_dir / "truth_pybullet" / "proxy_real_outcomes.csv"), "fidelity"
            )
        except Exception as exc:  # noqa: BLE001 - the files stay on disk
            output.warn(f"could not log the fidelity plot to MLflow ({type(exc).__name__}): kept at {plot}")


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
