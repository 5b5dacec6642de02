"""`twinrank rank`, `twinrank nightly`, `twinrank serve` and `twinrank proxy-real record|truth`.

See selection/README.md ("Ranking, promotion and the nightly job"). Bad input exits with code 2
and a message naming the problem; a nightly run that finds the lock taken exits with code 3.
"""

from __future__ import annotations

import logging
import math
import signal
import time
from pathlib import Path
from typing import Any

import typer

from twinrank import output
from twinrank.output import ExitCode, console, fail, styled

proxy_app = typer.Typer(
    help="The proxy-real domain: a shifted twin, or a second engine (--engine pybullet), standing in for the real cell (never real robot data).",
    no_args_is_help=True,
    rich_markup_mode=None,
)

EXIT_BAD_INPUT = int(ExitCode.BAD_INPUT)
EXIT_LOCKED = int(ExitCode.LOCKED)


def _resolve_checkpoints(refs: list[str], cache_dir: Path, tracking_uri: str | None) -> list[Any]:
    """Checkpoint dirs, folders of them, models:/ URIs -> FoundCheckpoint list (unique labels)."""
    from evaluator.run import CheckpointResolveError
    from evaluator.tracking import resolve_model_uri
    from selection.nightly import found_checkpoint, unique_labels
    from twinrank.cli import _expand_checkpoints

    found = []
    for r in _expand_checkpoints(refs):
        if r.startswith("models:/"):
            try:
                path, info = resolve_model_uri(r, cache_dir, tracking_uri)
            except CheckpointResolveError as exc:
                fail(str(exc))
            found.append(found_checkpoint(path, r, f"{info['registered_model']}/{info['model_version']}"))
        elif not Path(r).exists():
            fail(
                f"checkpoint {r} does not exist; give checkpoint folders (with manifest.json), folders of them, "
                f"or models:/NAME/VERSION"
            )
        else:
            found.append(found_checkpoint(r, "path"))
    by_id: dict[str, Any] = {}
    for f in found:
        by_id.setdefault(f.checkpoint_id, f)
    kept = list(by_id.values())
    unique_labels(kept)
    return kept


def _fmt(v: Any, spec: str = ".3f") -> str:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return "n/a"
    return "n/a" if math.isnan(f) else format(f, spec)


def _ranking_exit_code(res: Any) -> ExitCode:
    """4 when a checkpoint could not be evaluated, 5 when MLflow was unreachable, else 0."""
    failed = [s for s in getattr(res.campaign, "checkpoints", []) if s.status != "ok"]
    if failed:
        return ExitCode.PARTIAL
    return ExitCode.TRACKING_DEFERRED if not res.run_id else ExitCode.OK


# ---- twinrank rank --------------------------------------------------------------------------------------------
def rank(
    checkpoints: list[str] = typer.Argument(
        ..., help="Checkpoint dirs, folders of them, or models:/name/version or models:/name@alias URIs."
    ),
    spec: str = typer.Option("default", help="Evaluation spec: a YAML path or a built-in name."),
    real_logs: list[Path] = typer.Option(
        ..., "--real-logs", help="Real-data logs: rosbag2 bags or folders of bags (repeat the option)."
    ),
    rule: str = typer.Option(None, help="Ranking rule (default: chosen from --validations, else vsdr)."),
    validations: Path = typer.Option(None, help="Folder of past validations (JSON) to choose the rule from."),
    out: Path = typer.Option(
        None,
        help="Output folder (default outputs/rank/<spec>-<digest>); re-running with "
        "the same folder reuses finished episodes.",
    ),
    tracking_uri: str = typer.Option(None, help="MLflow tracking URI (default: ./mlflow.db)."),
    promote: bool = typer.Option(True, "--promote/--no-promote", help="Set the champion/challenger aliases."),
    threshold: float = typer.Option(
        None,
        help="P(challenger beats champion) a promotion needs (default: the registered model's tag "
        "twinrank.promotion_threshold, else 0.95).",
    ),
    force: bool = typer.Option(
        False, "--force", help="Without a champion, promote the most probable best even below the threshold (recorded)."
    ),
    workers: int = typer.Option(None, min=1, help="Worker processes (default: one per core)."),
    executor: str = typer.Option("local", help="local | inline | ray"),
    ood_episodes: int = typer.Option(
        10, min=1, help="Episodes per condition (nominal, combined) of the campaign recorded as each OOD reference."
    ),
    top: int = typer.Option(20, min=1, help="Rows of the printed table and the report."),
    fidelity_max_residual_mm: float = typer.Option(
        None,
        help="Promotion gate: promote only if the twin replays the real logs within this RMS residual (mm) of "
        "their TCP path and object positions (see `twinrank calibrate`). Default: no gate (the fidelity is "
        "still measured and reported whenever --real-logs are given).",
    ),
    fidelity_suite: Path = typer.Option(
        None, help="Calibrated suite the gate replays under (default: the twin as is)."
    ),
    outcomes: Path = typer.Option(
        None,
        "--outcomes",
        help="CSV of real outcomes (checkpoint,successes,trials): with these and the real episodes that name their "
        "checkpoint, each checkpoint gets a predicted real success with its interval.",
    ),
    level: float = typer.Option(0.9, help="Interval level of the predicted real success."),
) -> None:
    """Rank checkpoints by twin success and OOD on real logs; promote champion/challenger; write a report."""
    from evaluator.results import ResultStoreError
    from evaluator.spec import EvalSpecError, load_spec
    from policies import tracking
    from selection.calibration import FidelityGate
    from selection.job import OODSettings, rank_checkpoints
    from selection.nightly import NightlyConfigError, resolve_real_logs
    from selection.prediction import PredictConfig, PredictionError, outcomes_from_csv
    from selection.ranking import RULES, RankingError
    from selection.report import log_report, report_from_rank, write_report

    try:
        espec = load_spec(spec)
        espec.validate()
    except (EvalSpecError, OSError, ValueError) as exc:
        fail(str(exc))
    if rule is not None and rule not in RULES:
        fail(f"unknown ranking rule {rule!r}; rules: {', '.join(RULES)}")
    if validations is not None and not validations.is_dir():
        fail(f"--validations {validations} is not a folder")
    if fidelity_suite is not None and not fidelity_suite.is_file():
        fail(f"--fidelity-suite {fidelity_suite} not found; give the calibrated_suite.yaml `twinrank calibrate` wrote")
    if not 0.5 <= level < 1:
        fail(f"--level {level}: give an interval level in [0.5, 1), e.g. 0.9")
    try:
        bags = resolve_real_logs([str(p) for p in real_logs], output.warn)
        real_outcomes = outcomes_from_csv(outcomes) if outcomes is not None else None
    except (NightlyConfigError, PredictionError) as exc:
        fail(str(exc))
    # the twin's fidelity to the real logs is measured whenever there are logs (as nightly does);
    # it blocks promotion only with --fidelity-max-residual-mm
    gate = (
        FidelityGate(fidelity_max_residual_mm, str(fidelity_suite) if fidelity_suite else None)
        if fidelity_max_residual_mm is not None or bags
        else None
    )
    out = out or Path("outputs/rank") / f"{espec.name}-{espec.digest()[:8]}"
    found = _resolve_checkpoints(checkpoints, out / ".models", tracking_uri)
    extra = {f.label: {"model_version": f.model_version} for f in found if f.model_version}
    console.print(f"ranking {len(found)} checkpoint(s) on spec {espec.name!r} with {len(bags)} real-data log(s)")
    try:
        with output.eval_progress() as (on_event, on_log):
            res = rank_checkpoints(
                [f.ref() for f in found],
                espec,
                bags,
                out,
                rule=rule,
                validations_dir=validations,
                tracking_uri=tracking_uri,
                promote=promote,
                executor=executor,
                workers=workers,
                ood=OODSettings(reference_episodes=ood_episodes),
                progress=on_event,
                log=on_log,
                extra_columns=extra,
                threshold=threshold,
                force=force,
                fidelity_gate=gate,
                real_outcomes=real_outcomes,
                prediction=PredictConfig(level=level),
            )
    except KeyboardInterrupt:
        console.print(f"interrupted; finished episodes are kept in {out} — rerun the same command to resume")
        raise typer.Exit(code=ExitCode.INTERRUPTED)
    except (ResultStoreError, RankingError, ValueError) as exc:
        fail(str(exc))
    output.print_ranking(res.ranking, f"Ranking by rule {res.rule!r} ({res.rule_reason})", top)
    status = (
        (res.promotion.decision if res.promotion is not None else "not promoted (see warnings)")
        if promote
        else "promotion off (--no-promote)"
    )
    if res.fidelity is not None and not res.fidelity.passed:
        status = f"not promoted: {res.fidelity.reason()}"
    output.print_promotion(status, res.promotion)
    output.print_warnings(res.warnings)
    rep = report_from_rank(
        res,
        title=f"Ranking of {len(found)} checkpoint(s) on spec {espec.name}",
        promotion_status=status,
        top_n=top,
        spec=espec.name,
        real_logs=[str(b) for b in bags],
        ui_command=tracking.ui_command(tracking_uri),
    )
    files = write_report(rep, out)
    if res.run_id:
        log_report(files, res.run_id, tracking_uri)
    console.print(f"ranking: {res.csv_path}; report: {files.markdown} ({files.html})")
    if res.run_id:
        console.print(f"MLflow run {res.run_id}")
        output.command("open the UI with:", tracking.ui_command(tracking_uri))
    output.exit_with(_ranking_exit_code(res))


# ---- twinrank nightly / serve --------------------------------------------------------------------------------
def _config(config: Path | None, **overrides: Any) -> Any:
    from selection.nightly import NightlyConfig, NightlyConfigError

    try:
        cfg = NightlyConfig.from_yaml(config) if config is not None else NightlyConfig()
        over = {
            k: ([str(p) for p in v] if isinstance(v, list) else str(v) if isinstance(v, Path) else v)
            for k, v in overrides.items()
        }
        cfg = cfg.with_overrides(**over)
        cfg.validate()
    except NightlyConfigError as exc:
        fail(str(exc))
    return cfg


_CONFIG_HELP = "Nightly config YAML (fields: see selection/README.md); options override it."


def nightly(
    config: Path = typer.Argument(None, help=_CONFIG_HELP),
    task: str = typer.Option(None, help="Task whose checkpoints are ranked."),
    spec: str = typer.Option(None, help="Evaluation spec: a YAML path or a built-in name."),
    registered_model: list[str] = typer.Option(None, help="Registered model: all its versions (repeatable)."),
    experiment: list[str] = typer.Option(None, help="MLflow experiment: its runs' checkpoints (repeatable)."),
    directory: list[Path] = typer.Option(None, help="Folder searched for checkpoints (repeatable)."),
    real_logs: list[Path] = typer.Option(None, "--real-logs", help="Bag or folder of bags (repeatable)."),
    state_dir: Path = typer.Option(None, help="Persistent state folder (campaign, caches, reports)."),
    tracking_uri: str = typer.Option(None, help="MLflow tracking URI (default: ./mlflow.db)."),
    rule: str = typer.Option(None, help="Ranking rule (default: chosen from validations, else vsdr)."),
    validations: Path = typer.Option(None, help="Folder of past validations (JSON)."),
    workers: int = typer.Option(None, min=1, help="Worker processes (default: one per core)."),
    executor: str = typer.Option(None, help="local | inline | ray"),
    promote: bool = typer.Option(None, "--promote/--no-promote", help="Set champion/challenger aliases."),
) -> None:
    """One nightly run: discover checkpoints, evaluate the new ones, rank all, promote, report (cron calls this)."""
    from selection.nightly import NightlyConfigError, NightlyError, NightlyLockedError, run_nightly

    cfg = _config(
        config,
        task=task,
        spec=spec,
        registered_model=registered_model,
        experiment=experiment,
        directory=directory,
        real_logs=real_logs,
        state_dir=state_dir,
        tracking_uri=tracking_uri,
        rule=rule,
        validations_dir=validations,
        workers=workers,
        executor=executor,
        promote=promote,
    )
    try:
        with output.eval_progress() as (on_event, on_log):
            res = run_nightly(cfg, progress=on_event, log=on_log)
    except NightlyLockedError as exc:
        fail(str(exc), EXIT_LOCKED)
    except NightlyConfigError as exc:
        fail(str(exc))
    except NightlyError as exc:  # e.g. no checkpoint of the task in any source
        fail(str(exc), ExitCode.BAD_INPUT)
    except KeyboardInterrupt:
        console.print(f"interrupted; finished episodes are kept in {cfg.state_dir} — the next run resumes")
        raise typer.Exit(code=ExitCode.INTERRUPTED)
    output.print_ranking(
        res.rank.ranking, f"Night {res.date}: rule {res.rank.rule!r} ({res.rank.rule_reason})", cfg.top_n
    )
    console.print(
        f"{len(res.checkpoints)} checkpoint(s), {len(res.new)} new ({', '.join(res.new) or 'none'}); "
        f"{res.executed} episode(s) run, {res.skipped} reused"
    )
    for what, why in res.failed:
        console.print(styled("failed", "red", f"{what}: {why}"))
    output.print_promotion(res.promotion_status, res.promotion, header=False)  # the run's log said "promotion: ..."
    output.print_warnings(res.warnings)
    console.print(f"state: {res.state_path}")  # the run's log named the report
    from policies import tracking

    if res.rank.run_id:
        console.print(f"MLflow run {res.rank.run_id}")
        output.command("open the UI with:", tracking.ui_command(cfg.tracking_uri))
    output.exit_with(ExitCode.PARTIAL if res.failed else _ranking_exit_code(res.rank))


def serve(
    config: Path = typer.Argument(None, help=_CONFIG_HELP),
    cron: str = typer.Option(
        "0 2 * * *", help="When to run: 5-field crontab 'minute hour day month weekday' (local time)."
    ),
    run_now: bool = typer.Option(False, "--run-now", help="Also run once right away."),
    task: str = typer.Option(None, help="Task whose checkpoints are ranked."),
    spec: str = typer.Option(None, help="Evaluation spec: a YAML path or a built-in name."),
    registered_model: list[str] = typer.Option(None, help="Registered model (repeatable)."),
    experiment: list[str] = typer.Option(None, help="MLflow experiment (repeatable)."),
    directory: list[Path] = typer.Option(None, help="Folder searched for checkpoints (repeatable)."),
    real_logs: list[Path] = typer.Option(None, "--real-logs", help="Bag or folder of bags (repeatable)."),
    state_dir: Path = typer.Option(None, help="Persistent state folder."),
    tracking_uri: str = typer.Option(None, help="MLflow tracking URI (default: ./mlflow.db)."),
) -> None:
    """Run the nightly job in this process on a cron schedule (APScheduler); Ctrl-C stops."""
    from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_EXECUTED, EVENT_JOB_MISSED, EVENT_JOB_SUBMITTED

    from selection.nightly import NIGHTLY_JOB_ID, NightlyConfigError, make_scheduler

    cfg = _config(
        config,
        task=task,
        spec=spec,
        registered_model=registered_model,
        experiment=experiment,
        directory=directory,
        real_logs=real_logs,
        state_dir=state_dir,
        tracking_uri=tracking_uri,
    )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("mlflow", "alembic", "apscheduler.executors.default"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        # A background scheduler thread and a main thread that only sleeps: Ctrl-C always lands in
        # the sleep below (a blocking scheduler could take it inside its own start-up and hang).
        sched = make_scheduler(cfg, cron, blocking=False, run_now=run_now)
    except NightlyConfigError as exc:
        fail(str(exc))
    trigger = sched.get_job(NIGHTLY_JOB_ID).trigger

    def next_run() -> str:
        import datetime as dt

        t = trigger.get_next_fire_time(None, dt.datetime.now(sched.timezone))
        return t.isoformat(timespec="seconds") if t else "never"

    # Ctrl-C stops even when this process was started with SIGINT ignored (a shell's background
    # job, a parent that ignores it: Python then installs no KeyboardInterrupt handler); SIGTERM
    # (kill, docker stop, systemd) stops the same way.
    signal.signal(signal.SIGINT, signal.default_int_handler)

    def on_term(signum: int, frame: Any) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, on_term)
    busy = {"running": False}

    def on_submit(ev: Any) -> None:
        busy["running"] = True

    def on_event(ev: Any) -> None:
        busy["running"] = False
        what = {
            EVENT_JOB_EXECUTED: "finished",
            EVENT_JOB_ERROR: "failed (see the log above)",
            EVENT_JOB_MISSED: "missed (the process was busy or asleep)",
        }.get(ev.code, "done")
        console.print(f"nightly run {what}; next run at {next_run()}")

    sched.add_listener(on_submit, EVENT_JOB_SUBMITTED)
    sched.add_listener(on_event, EVENT_JOB_EXECUTED | EVENT_JOB_ERROR | EVENT_JOB_MISSED)
    try:
        sched.start()
        console.print(
            f"serving the nightly job (state {cfg.state_dir}) on cron {cron!r}, timezone {sched.timezone}; "
            f"{'running now, then ' if run_now else ''}next run at {next_run()}. Ctrl-C stops."
        )
        while sched.running:
            time.sleep(0.5)
    except (KeyboardInterrupt, SystemExit):
        if busy["running"]:
            console.print(
                "stopping: the nightly run in progress finishes first (Ctrl-C again aborts it; the next "
                "run resumes its finished episodes)"
            )
        else:
            console.print("stopping")
        if sched.running:
            sched.shutdown(wait=False)
    console.print("scheduler stopped")


# ---- twinrank proxy-real --------------------------------------------------------------------------------------
ENGINE_HELP = (
    "Engine that plays the cell: mujoco (the twin's own, shifted) or pybullet (a second engine: its own "
    "robot model, motors, IK, contacts, renderer). Default: the domain file's (mujoco)."
)


@proxy_app.command("record")
def proxy_record(
    task: str = typer.Argument(..., help="Task name."),
    out_bag: Path = typer.Argument(..., help="Output rosbag2 bag folder (must not exist)."),
    episodes: int = typer.Option(None, min=1, help="Episodes (default: the domain's)."),
    operator: str = typer.Option("expert", help="'expert' (scripted demonstrator) or a checkpoint dir."),
    domain: Path = typer.Option(None, help="Proxy-real domain YAML (default: the built-in one)."),
    engine: str = typer.Option(None, help=ENGINE_HELP),
    images: str = typer.Option(
        None, help="Also log every camera's colour and depth frames at WxH (e.g. 160x120; expert operator only)."
    ),
) -> None:
    """Write proxy-real logs of TASK (shifted conditions, twin engine or a second one) in the real-data bag schema."""
    from selection.proxy_real import ProxyRealDomain, ProxyRealError, record_logs
    from selection.realdata import RealDataError

    if out_bag.exists():
        fail(f"{out_bag} already exists; give a new bag folder")
    size = None
    if images is not None:
        w, _, h = images.lower().partition("x")
        if not (w.isdigit() and h.isdigit() and int(w) >= 16 and int(h) >= 16):
            fail(f"--images {images!r}: give the frame size as WxH, e.g. 160x120")
        size = (int(w), int(h))
    try:
        dom = ProxyRealDomain.load(domain).with_engine(engine)
        path = record_logs(task, out_bag, domain=dom, episodes=episodes, operator=operator, images=size)
    except (ProxyRealError, RealDataError, ValueError, KeyError, OSError) as exc:
        fail(str(exc))
    n = episodes or dom.episodes
    console.print(
        f"{dom.label} logs ({_what(dom)}, not real robot data): {n} episode(s) of {task} by "
        f"{operator} -> {path} (domain {dom.source})"
    )


@proxy_app.command("truth")
def proxy_truth(
    checkpoints: list[str] = typer.Argument(..., help="Checkpoint dirs, folders of them, models:/ URIs."),
    task: str = typer.Option(..., help="Task name."),
    out: Path = typer.Option(..., help="Output folder (proxy_real_outcomes.csv, campaign/)."),
    episodes: int = typer.Option(None, min=1, help="Episodes per checkpoint (default: the domain's)."),
    workers: int = typer.Option(None, min=1, help="Worker processes."),
    executor: str = typer.Option("local", help="local | inline | ray"),
    tracking_uri: str = typer.Option(None, help="MLflow tracking URI (for models:/ URIs)."),
    domain: Path = typer.Option(None, help="Proxy-real domain YAML (default: the built-in one)."),
    engine: str = typer.Option(None, help=ENGINE_HELP),
) -> None:
    """Proxy-real success of checkpoints (the stand-in for a real-robot evaluation; validation only)."""
    from selection.proxy_real import ProxyRealDomain, ProxyRealError, ground_truth

    try:
        dom = ProxyRealDomain.load(domain).with_engine(engine)
    except ProxyRealError as exc:
        fail(str(exc))
    found = _resolve_checkpoints(checkpoints, out / ".models", tracking_uri)
    try:
        with output.eval_progress() as (on_event, _log):
            df = ground_truth(
                [f.ref() for f in found],
                task,
                out,
                domain=dom,
                episodes=episodes,
                executor=executor,
                workers=workers,
                progress=on_event,
            )
    except (ProxyRealError, ValueError) as exc:
        fail(str(exc))
    output.print_table(
        f"{dom.label} success of {task} checkpoints ({_what(dom)}, not real robot data)",
        ("checkpoint", f"{dom.label} success", "episodes"),
        [(str(r["checkpoint"]), _fmt(r["real_success"], ".2f"), str(r["episodes"])) for _, r in df.iterrows()],
    )
    missing = [f.label for f in found if f.label not in set(df["checkpoint"])]
    if missing:
        output.warn(f"no {dom.label} outcome for {', '.join(missing)} (evaluation failed; see above)")
    console.print(f"wrote {out / 'proxy_real_outcomes.csv'} ({dom.label})")


def _what(dom: Any) -> str:
    return "the shifted twin" if dom.engine == "mujoco" else f"a second engine, {dom.engine}, under shifted conditions"


def register(app: typer.Typer) -> None:
    app.command("rank")(rank)
    app.command("nightly")(nightly)
    app.command("serve")(serve)
    app.add_typer(proxy_app, name="proxy-real")
