"""`twinrank calibrate`: real-to-sim calibration of the twin from logged episodes
(selection/calibration.py). Writes the calibrated suite and an evaluation spec that uses it,
a JSON report and a plot, and logs them to MLflow."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from twinrank import output
from twinrank.output import ExitCode, console, fail


def calibrate(
    task: str = typer.Argument(..., help="Task of the logged episodes."),
    logs: list[Path] = typer.Option(
        ..., "--logs", help="Logged episodes: rosbag2 bags or folders of bags (repeat the option)."
    ),
    out: Path = typer.Option(Path("outputs/calibrate"), help="Output folder."),
    params: str = typer.Option(
        "actuation_latency,mass,friction",
        help="Comma-separated: actuation_latency, mass, friction, joint_damping, controller_gains.",
    ),
    control_mode: str = typer.Option(
        None, help="Control mode the actions were logged in (default: the task's expert's)."
    ),
    max_evals: int = typer.Option(
        120, min=4, help="Replay evaluations the optimiser may spend (each replays every episode)."
    ),
    episodes: int = typer.Option(20, min=1, help="Use at most this many logged episodes."),
    seed: int = typer.Option(0, help="Optimiser seed (the result is deterministic for a seed)."),
    tracking_uri: str = typer.Option(None, help="MLflow tracking URI (default: ./mlflow.db)."),
) -> None:
    """Calibrate the twin's physics to logged episodes: replay their actions, fit the parameters (CMA-ES)."""
    from selection.calibration import CalibrationError
    from selection.calibration import calibrate as run_calibration
    from selection.nightly import NightlyConfigError, resolve_real_logs
    from selection.realdata import RealDataError, read_bag
    from twin.tasks import TaskError, get_task_class

    try:
        get_task_class(task)
    except TaskError as exc:
        fail(str(exc))
    names = [p.strip() for p in params.split(",") if p.strip()]
    try:
        bags = resolve_real_logs([str(p) for p in logs], output.warn)
        eps: list[Any] = []
        for b in bags:
            eps += read_bag(b, images=False)
    except (NightlyConfigError, RealDataError) as exc:
        fail(str(exc))
    if not eps:
        fail(
            f"no episodes in {', '.join(str(b) for b in bags)}: record some (twinrank proxy-real record, the live recorder)"
        )
    eps = eps[:episodes]
    console.print(f"calibrating {', '.join(names)} of the {task} twin on {len(eps)} logged episode(s)")
    try:
        with output.ProgressDisplay(unit="evals") as bar:
            bar.update(desc="replaying the logs", done=0, total=max_evals)
            res = run_calibration(
                eps,
                task,
                params=names,
                control_mode=control_mode,
                max_evals=max_evals,
                seed=seed,
                progress=lambda d, done, tot: bar.update(desc=d, done=min(done, tot), total=tot),
            )
    except CalibrationError as exc:
        fail(str(exc))
    for line in res.skipped:
        output.warn(f"skipped {line}")
    files = write_outputs(res, out)
    output.print_table(
        f"Calibration of the {task} twin from {res.episodes} logged episode(s) ({res.evaluations} replay evaluations, "
        f"{res.wall_s:.0f} s)",
        ["parameter", "estimate", "near-optimal range", "std. error (local)", "nominal", "identified", "note"],
        [
            [
                e.name,
                f"{e.value:.4g} {e.unit}",
                f"{e.lo:.4g}..{e.hi:.4g}" if e.lo == e.lo else "-",
                f"{e.se:.2g}" if e.identified else "-",
                f"{e.nominal:g}",
                "yes" if e.identified else "NO (kept nominal)",
                e.note,
            ]
            for e in res.estimates.values()
        ],
    )
    drop = 1.0 - res.residual_after / res.residual_before if res.residual_before > 0 else 0.0
    output.info(
        f"replay residual (RMS over TCP path and object positions): {res.residual_before * 1000:.2f} mm -> "
        f"{res.residual_after * 1000:.2f} mm ({drop:.0%} lower)"
    )
    output.info(f"calibrated suite: {files['suite']}; report: {files['report']}; plot: {files['plot']}")
    output.command("evaluate on the calibrated twin:", f"twinrank eval <checkpoints> --spec {files['spec']}")
    code = _log_mlflow(res, files, tracking_uri)
    output.exit_with(code)


def write_outputs(res: Any, out: Path) -> dict[str, Path]:
    """calibrated_suite.yaml, calibrated_spec.yaml (its combined condition), calibration.json, residuals.png."""
    import yaml

    out.mkdir(parents=True, exist_ok=True)
    suite_path = out / "calibrated_suite.yaml"
    suite_path.write_text(
        f"# twinrank calibrate: {res.task}, {res.episodes} episodes, replay residual "
        f"{res.residual_before * 1000:.2f} -> {res.residual_after * 1000:.2f} mm\n" + res.suite().to_yaml()
    )
    spec_path = out / "calibrated_spec.yaml"
    spec_path.write_text(
        yaml.safe_dump(
            {
                "name": f"calibrated-{res.task}",
                "tasks": [res.task],
                "suite": str(suite_path.resolve()),
                "conditions": ["combined"],
                "episodes_per_condition": 20,
            },
            sort_keys=False,
        )
    )
    report = out / "calibration.json"
    report.write_text(json.dumps(res.to_dict(), indent=1, default=float))
    plot = out / "residuals.png"
    _plot(res, plot)
    return {"suite": suite_path, "spec": spec_path, "report": report, "plot": plot}


def _plot(res: Any, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    k = np.arange(res.episodes)
    axes[0].bar(k - 0.2, np.array(res.per_episode_before) * 1000, 0.4, label="twin as it was")
    axes[0].bar(k + 0.2, np.array(res.per_episode_after) * 1000, 0.4, label="calibrated")
    axes[0].set_xlabel("logged episode")
    axes[0].set_ylabel("replay residual, RMS (mm)")
    axes[0].set_title(f"{res.task}: replay residual per episode")
    axes[0].legend(fontsize=8)
    if res.history:
        axes[1].plot(np.arange(1, len(res.history) + 1), np.array(res.history) * 1000, marker="o", ms=3)
        axes[1].set_xlabel("CMA-ES generation")
    else:
        axes[1].axhline(res.residual_after * 1000, ls="--", c="grey")
        axes[1].set_xlabel("(one parameter: grid + bounded Brent search)")
    axes[1].set_ylabel("best residual (mm)")
    axes[1].set_title("optimisation")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _log_mlflow(res: Any, files: dict[str, Path], tracking_uri: str | None) -> ExitCode:
    from policies import tracking
    from selection.job import tracking_client

    uri = tracking.resolve_tracking_uri(tracking_uri)
    try:
        client = tracking_client(tracking_uri)
        exp = client.get_experiment_by_name("twinrank-calibration")
        exp_id = exp.experiment_id if exp is not None else client.create_experiment("twinrank-calibration")
        run = client.create_run(exp_id, run_name=f"calibrate-{res.task}", tags={"task": res.task})
        rid = run.info.run_id
        client.log_param(rid, "params", ",".join(res.params))
        client.log_param(rid, "episodes", res.episodes)
        client.log_metric(rid, "residual_before_mm", res.residual_before * 1000)
        client.log_metric(rid, "residual_after_mm", res.residual_after * 1000)
        for e in res.estimates.values():
            client.log_metric(rid, f"estimate/{e.name}", e.value)
            client.set_tag(rid, f"identified/{e.name}", str(e.identified))
        for p in files.values():
            client.log_artifact(rid, str(p))
        client.set_terminated(rid)
    except Exception as exc:  # noqa: BLE001 - any transport/server error: the files stay on disk
        output.warn(
            f"MLflow at {uri} unreachable ({type(exc).__name__}): the calibration is kept in {files['report'].parent}"
        )
        return ExitCode.TRACKING_DEFERRED
    console.print(f"MLflow run {rid} (experiment twinrank-calibration)")
    return ExitCode.OK


def register(app: typer.Typer) -> None:
    app.command("calibrate")(calibrate)
