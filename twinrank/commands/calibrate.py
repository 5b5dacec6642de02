"""`twinrank calibrate`: real-to-sim calibration of the twin from logged episodes: physics by
replay (selection/calibration.py), cameras and lights from the logged images
(selection/camera_calibration.py). Writes the calibrated suite and an evaluation spec that uses
it, the calibrated scene (USD, with cameras), a JSON report and plots, and logs them to MLflow."""

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
        help="Comma-separated: actuation_latency, mass, friction, joint_damping, controller_gains; 'none' to skip "
        "the physics.",
    ),
    cameras: str = typer.Option(
        "auto",
        help="Cameras to fit to the logged images (pose, focal length; then the lights): 'auto' = every camera "
        "with logged frames, 'none', or comma-separated names.",
    ),
    control_mode: str = typer.Option(
        None, help="Control mode the actions were logged in (default: the task's expert's)."
    ),
    max_evals: int = typer.Option(
        160,
        min=4,
        help="Replay evaluations the optimiser may spend (each replays every episode; 60 left mass 20% off in "
        "bench_calibration, 160 recovered it).",
    ),
    camera_evals: int = typer.Option(
        500, min=20, help="Render evaluations CMA-ES may spend per camera (each renders every chosen frame)."
    ),
    frames_per_camera: int = typer.Option(4, min=1, help="Logged frames per camera the cameras are fitted to."),
    effort_weight: float = typer.Option(
        None,
        min=0.0,
        help="Weight of logged joint torques in the physics fit, m per N m (default 0.005: 1 N m counts as 5 mm; "
        "0: positions only).",
    ),
    episodes: int = typer.Option(20, min=1, help="Use at most this many logged episodes."),
    workers: int = typer.Option(
        None, min=1, help="Processes replaying each CMA-ES generation's candidates (default: one per core)."
    ),
    seed: int = typer.Option(0, help="Optimiser seed (the result is deterministic for a seed)."),
    tracking_uri: str = typer.Option(None, help="MLflow tracking URI (default: ./mlflow.db)."),
) -> None:
    """Calibrate the twin to logged episodes: physics by replaying their actions, cameras and lights from their images (CMA-ES)."""
    from evaluator.executors import default_workers
    from selection.calibration import CalibrationError
    from selection.calibration import calibrate as run_calibration
    from selection.camera_calibration import CameraCalibrationError, calibrate_cameras
    from selection.nightly import NightlyConfigError, resolve_real_logs
    from selection.realdata import RealDataError, read_bag
    from twin.tasks import TaskError, get_task_class

    try:
        get_task_class(task)
    except TaskError as exc:
        fail(str(exc))
    names = [] if params.strip() == "none" else [p.strip() for p in params.split(",") if p.strip()]
    cams = None if cameras in ("auto", "none") else [c.strip() for c in cameras.split(",") if c.strip()]
    if not names and cameras == "none":
        fail("--params none --cameras none leaves nothing to calibrate: give physics parameters or cameras")
    try:
        bags = resolve_real_logs([str(p) for p in logs], output.warn)
        eps: list[Any] = []
        for b in bags:
            eps += read_bag(b, images=cameras != "none")
    except (NightlyConfigError, RealDataError) as exc:
        fail(str(exc))
    if not eps:
        fail(
            f"no episodes in {', '.join(str(b) for b in bags)}: record some (twinrank proxy-real record, the live recorder)"
        )
    eps = eps[:episodes]
    with_images = any(ep.images for ep in eps)
    if cams and not with_images:
        fail(f"--cameras {cameras}: the logs have no camera frames; record them (twinrank proxy-real record --images)")
    res = cam_res = None
    if names:
        console.print(f"calibrating {', '.join(names)} of the {task} twin on {len(eps)} logged episode(s)")
        try:
            res = _with_progress(
                run_calibration,
                eps,
                task,
                params=names,
                control_mode=control_mode,
                max_evals=max_evals,
                seed=seed,
                effort_weight=effort_weight,
                workers=workers or default_workers(),
            )
        except CalibrationError as exc:
            fail(str(exc))
        for line in res.skipped:
            output.warn(f"skipped {line}")
        _print_physics(res)
    if cameras != "none" and with_images:
        console.print(f"fitting the {task} twin's cameras and lights to the logged images")
        try:
            cam_res = _with_progress(
                calibrate_cameras,
                eps,
                task,
                cameras=cams,
                frames_per_camera=frames_per_camera,
                max_evals=camera_evals,
                seed=seed,
            )
        except CameraCalibrationError as exc:
            fail(str(exc))
        for line in cam_res.skipped:
            output.warn(f"skipped {line}")
        _print_cameras(cam_res)
    elif cameras == "auto":
        output.info("no camera frames in the logs: cameras and lights not calibrated")
    files = write_outputs(task, res, cam_res, out)
    output.info("calibrated suite: " + ", ".join(f"{k} {v}" for k, v in files.items() if k != "spec"))
    output.command("evaluate on the calibrated twin:", f"twinrank eval <checkpoints> --spec {files['spec']}")
    code = _log_mlflow(task, res, cam_res, files, tracking_uri)
    output.exit_with(code)


def _with_progress(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, progress=..., **kwargs)`` with a progress bar (evaluations done / budget)."""
    with output.ProgressDisplay(unit="evals") as bar:
        return fn(*args, progress=lambda d, done, tot: bar.update(desc=d, done=min(done, tot), total=tot), **kwargs)


def _print_physics(res: Any) -> None:
    output.print_table(
        f"Calibration of the {res.task} twin from {res.episodes} logged episode(s) ({res.evaluations} replay "
        f"evaluations, {res.wall_s:.0f} s)",
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
        f"{res.residual_after * 1000:.2f} mm ({abs(drop):.0%} {'lower' if drop >= 0 else 'higher'})"
    )
    if res.effort_weight > 0:
        output.info(
            f"arm joint torques (RMS difference, in the fit at {res.effort_weight * 1000:g} mm per N m): "
            f"{res.effort_before:.2f} -> {res.effort_after:.2f} N m"
        )
    for off in res.placement.values():
        output.info(off.text())


def _print_cameras(cr: Any) -> None:
    rows = []
    for e in cr.cameras.values():
        rows.append(
            [
                e.camera,
                ", ".join(f"{v * 100:+.1f}" for v in e.position) + f" (+-{max(e.position_se) * 100:.1f})",
                f"{e.rotation_deg:.2f} (+-{e.rotation_se_deg:.2f})",
                f"x{e.fov_scale:.3f} (+-{e.fov_se:.3f})",
                f"{e.residual_before:.4f} -> {e.residual_after:.4f}",
                f"{e.depth_before_mm:.1f} -> {e.depth_after_mm:.1f}" if e.depth_before_mm == e.depth_before_mm else "-",
                str(e.frames),
                "yes" if e.identified else f"NO (kept): {e.note}",
            ]
        )
    output.print_table(
        f"Cameras of the {cr.task} twin fitted to logged images ({cr.renders} renders, {cr.wall_s:.0f} s)",
        [
            "camera",
            "moved (cm)",
            "rotated (deg)",
            "focal",
            "image residual",
            "depth error (mm)",
            "frames",
            "identified",
        ],
        rows,
    )
    if cr.light is not None:
        output.info(cr.light.text())


def write_outputs(task: str, res: Any, cam_res: Any, out: Path) -> dict[str, Path]:
    """calibrated_suite.yaml, calibrated_spec.yaml (its combined condition), calibration.json, the
    plots (residuals.png, cameras.png) and, with cameras, calibrated_scene.usda."""
    import yaml

    from selection.calibration import calibrated_suite
    from twin.usd_io import write_scene_usd

    out.mkdir(parents=True, exist_ok=True)
    values = {**(res.condition_values() if res else {}), **(cam_res.condition_values() if cam_res else {})}
    head = [f"# twinrank calibrate: {task}"]
    if res is not None:
        head.append(
            f"# physics: {res.episodes} episodes, replay residual {res.residual_before * 1000:.2f} -> "
            f"{res.residual_after * 1000:.2f} mm"
        )
        head += [f"# {off.text()}" for off in res.placement.values()]
    if cam_res is not None:
        head += [f"# {e.text()}" for e in cam_res.cameras.values()]
        if cam_res.light is not None:
            head.append(f"# {cam_res.light.text()}")
    suite_path = out / "calibrated_suite.yaml"
    suite_path.write_text("\n".join(head) + "\n" + calibrated_suite(values, task).to_yaml())
    spec_path = out / "calibrated_spec.yaml"
    spec_path.write_text(
        yaml.safe_dump(
            {
                "name": f"calibrated-{task}",
                "tasks": [task],
                "suite": str(suite_path.resolve()),
                "conditions": ["combined"],
                "episodes_per_condition": 20,
            },
            sort_keys=False,
        )
    )
    report = out / "calibration.json"
    report.write_text(
        json.dumps(
            {
                "task": task,
                "physics": res.to_dict() if res else None,
                "cameras": cam_res.to_dict() if cam_res else None,
                "condition": values,
            },
            indent=1,
            default=float,
        )
    )
    files = {"suite": suite_path, "spec": spec_path, "report": report}
    if res is not None:
        files["plot"] = out / "residuals.png"
        _plot(res, files["plot"])
    if cam_res is not None:
        files["scene"] = out / "calibrated_scene.usda"
        write_scene_usd(cam_res.scene(), files["scene"])
        if cam_res.previews:
            files["cameras_plot"] = out / "cameras.png"
            _plot_cameras(cam_res, files["cameras_plot"])
    return files


def _plot_cameras(cr: Any, path: Path) -> None:
    """Per camera: the logged frame, the twin as it was and calibrated, and both differences."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    cams = list(cr.previews)
    fig, axes = plt.subplots(len(cams), 4, figsize=(13, 2.6 * len(cams)), squeeze=False)
    for row, cam in zip(axes, cams, strict=True):
        logged, before, after = cr.previews[cam]
        e = cr.cameras.get(cam)

        def diff(a: Any, b: Any) -> Any:
            return np.abs(a.astype(float) - b.astype(float)).mean(axis=2)

        row[0].imshow(logged)
        row[0].set_title(f"{cam}: logged", fontsize=9)
        row[1].imshow(before)
        row[1].set_title("twin as it was", fontsize=9)
        row[2].imshow(diff(logged, before), cmap="magma", vmin=0, vmax=80)
        row[2].set_title("|logged - twin as it was|", fontsize=9)
        row[3].imshow(diff(logged, after), cmap="magma", vmin=0, vmax=80)
        title = "|logged - calibrated twin|"
        if e is not None:
            title += f"\nresidual {e.residual_before:.4f} -> {e.residual_after:.4f}"
        row[3].set_title(title, fontsize=9)
        for ax in row:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


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
    axes[1].set_ylabel("best fit (mm)" if res.effort_weight <= 0 else "best fit (mm; 1 N m torque = 1 mm)")
    axes[1].set_title("optimisation")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _log_mlflow(task: str, res: Any, cam_res: Any, files: dict[str, Path], tracking_uri: str | None) -> ExitCode:
    from policies import tracking
    from selection.job import tracking_client

    uri = tracking.resolve_tracking_uri(tracking_uri)
    try:
        client = tracking_client(tracking_uri)
        exp = client.get_experiment_by_name("twinrank-calibration")
        exp_id = exp.experiment_id if exp is not None else client.create_experiment("twinrank-calibration")
        run = client.create_run(exp_id, run_name=f"calibrate-{task}", tags={"task": task})
        rid = run.info.run_id
        if res is not None:
            client.log_param(rid, "params", ",".join(res.params))
            client.log_param(rid, "episodes", res.episodes)
            client.log_metric(rid, "residual_before_mm", res.residual_before * 1000)
            client.log_metric(rid, "residual_after_mm", res.residual_after * 1000)
            for e in res.estimates.values():
                client.log_metric(rid, f"estimate/{e.name}", e.value)
                client.set_tag(rid, f"identified/{e.name}", str(e.identified))
            for off in res.placement.values():
                if off.n:
                    for k, v in zip(("dx_m", "dy_m", "dyaw_rad"), off.mean, strict=True):
                        client.log_metric(rid, f"placement/{off.object}/{k}", v)
                    client.set_tag(rid, f"identified/placement/{off.object}", str(off.identified))
        if cam_res is not None:
            for e in cam_res.cameras.values():
                for axis, v in zip("xyz", e.position, strict=True):
                    client.log_metric(rid, f"camera/{e.camera}/position_{axis}_m", v)
                client.log_metric(rid, f"camera/{e.camera}/rotation_deg", e.rotation_deg)
                client.log_metric(rid, f"camera/{e.camera}/fov_scale", e.fov_scale)
                client.log_metric(rid, f"camera/{e.camera}/image_residual_after", e.residual_after)
                client.set_tag(rid, f"identified/camera/{e.camera}", str(e.identified))
            if cam_res.light is not None:
                client.log_metric(rid, "light/intensity", cam_res.light.intensity)
                client.log_metric(rid, "light/tilt_deg", cam_res.light.tilt_deg)
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
