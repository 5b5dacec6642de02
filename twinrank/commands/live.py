"""`twinrank live ...`: the live twin over ROS 2 (see ros_ws/README.md and launch/README.md).

- ``twinrank live graph [name:=value ...]``: the nodes, parameters and remaps the launch
  arguments give (``--json`` for machine-readable output);
- ``twinrank live args``: every launch argument (``--markdown`` for the README table);
- ``twinrank live run [name:=value ...]``: start the graph with plain rclpy (no ros2 launch);
- ``twinrank live install-ament``: register the ROS 2 package ``twin`` in the venv (needed
  after an editable install; ``make install`` runs it);
- ``twinrank live bench``: twin_sync latency / rate / CPU at 1 kHz (see twin/live/bench.py);
- ``twinrank live calibrate-camera``: a camera's pose by hand-eye calibration with a ChArUco
  board on the gripper (see twin/live/handeye.py and twin/live/HARDWARE.md);
- ``twinrank live markers``: the fiducial tags object_tracker expects on a task's objects
  (``markers:=true``), as PNGs to print at 100 % and where each goes.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from twinrank.output import console, fail, print_table, styled

live_app = typer.Typer(
    help="Live twin over ROS 2: node graph, launch arguments, run, ament registration.",
    no_args_is_help=True,
    rich_markup_mode=None,
)


def _nodes(assignments: list[str]):
    from twin.live.graph import live_graph
    from twin.live.runner import parse_assignments

    try:
        return live_graph(**parse_assignments(assignments or []))
    except ValueError as exc:
        fail(str(exc))


@live_app.command("graph")
def graph(
    assignments: list[str] = typer.Argument(None, help="Launch arguments as name:=value."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """The nodes the launch arguments start (same as ros2 launch twin live.launch.py)."""
    nodes = _nodes(assignments)
    if as_json:
        print(json.dumps([n.to_dict() for n in nodes], indent=2))
        return
    for n in nodes:
        console.print(styled(n.name, "bold", f"({n.package}/{n.executable}): {n.description}"))
        for k, v in n.full_parameters().items():
            mark = "" if k in n.parameters else "  (default)"
            console.print(f"    {k} = {v!r}{mark}")
        for a, b in n.remaps:
            console.print(f"    remap {a} -> {b}")


README_FILES = ("ros_ws/README.md", "launch/README.md")


@live_app.command("args")
def args(
    markdown: bool = typer.Option(False, "--markdown", help="Markdown tables (launch arguments and node parameters)."),
    write_readmes: bool = typer.Option(
        False, "--write-readmes", help="Regenerate the tables in " + " and ".join(README_FILES) + "."
    ),
) -> None:
    """Every launch argument of live.launch.py with its default and description."""
    from twin.live.ament import REPO
    from twin.live.graph import (
        LAUNCH_ARGUMENTS,
        launch_arguments_markdown,
        node_parameters_markdown,
        render_generated_blocks,
    )

    if write_readmes:
        for rel in README_FILES:
            path = REPO / rel
            old = path.read_text()
            new = render_generated_blocks(old)
            if new != old:
                path.write_text(new)
            console.print(f"{rel}: {'updated' if new != old else 'up to date'}")
        return
    if markdown:
        print(launch_arguments_markdown())
        print()
        print(node_parameters_markdown())
        return
    print_table(
        "ros2 launch twin live.launch.py <name>:=<value>",
        ("argument", "default", "description"),
        [(a.name, a.default or "(empty)", a.description) for a in LAUNCH_ARGUMENTS],
    )


@live_app.command("run")
def run(
    assignments: list[str] = typer.Argument(None, help="Launch arguments as name:=value."),
    mode: str = typer.Option("process", help="process: one process per node; thread: all in this one."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the node commands and exit."),
) -> None:
    """Run the live graph with plain rclpy (needs the ros extra: pip install -e '.[ros]')."""
    from twin.live.runner import main as run_main

    argv = [*(assignments or []), "--mode", mode] + (["--dry-run"] if dry_run else [])
    raise typer.Exit(code=run_main(argv))


@live_app.command("bench")
def bench(
    rate: float = typer.Option(1000.0, help="/joint_states publish rate (Hz)."),
    seconds: float = typer.Option(60.0, help="Duration."),
    sync_rate: float = typer.Option(100.0, help="twin_sync sync_rate_hz."),
    record: bool = typer.Option(True, "--record/--no-record", help="Also run the recorder."),
    json_out: Path = typer.Option(None, "--json", help="Also write the result here."),
) -> None:
    """twin_sync benchmark: publish -> twin latency p50/p99, update rate, CPU per node (not a test)."""
    from twin.live.bench import main as bench_main

    argv = ["--rate", str(rate), "--seconds", str(seconds), "--sync-rate", str(sync_rate)]
    argv += [] if record else ["--no-record"]
    argv += ["--json", str(json_out)] if json_out else []
    raise typer.Exit(code=bench_main(argv))


@live_app.command("install-ament")
def install_ament(
    prefix: Path = typer.Option(None, help="Install prefix (default: this Python's, sys.prefix)."),
    symlink: bool = typer.Option(False, "--symlink", help="Link to the repository's files."),
    check: bool = typer.Option(False, "--check", help="Only check the registration."),
) -> None:
    """Register the ROS 2 package 'twin' (ament index marker, package.xml, launch file, lib/twin/ executables)."""
    from twin.live.ament import check_ament
    from twin.live.ament import install_ament as do_install

    root = prefix if prefix is not None else Path(sys.prefix)
    if not check:
        try:
            written = do_install(root, symlink=symlink)
        except (FileNotFoundError, OSError) as exc:
            fail(str(exc))
        console.print(f"registered ROS 2 package 'twin' in {root} ({len(written)} files)")
    problems = check_ament(root)
    if problems:
        fail("; ".join(problems))
    console.print(f"ok: AMENT_PREFIX_PATH={root} ros2 launch twin live.launch.py")


@live_app.command("markers")
def markers(
    task: str = typer.Option(..., help="Twin task whose objects get tags (as object_tracker's markers:=true)."),
    out: Path = typer.Option(Path("outputs/tags"), help="Output folder for the PNGs and tags.md."),
    dpi: int = typer.Option(600, help="Print resolution stored in the PNGs."),
) -> None:
    """Printable AprilTags for a task's objects and where to stick them (tags.md)."""
    from twin.fiducials import write_printable_tags
    from twin.live.tracking import cell_task_cfg
    from twin.tasks import list_tasks

    if task not in list_tasks():
        fail(f"task {task!r} is not a twin task; use one of {', '.join(list_tasks())}")
    if dpi < 72:
        fail(f"--dpi {dpi} is too coarse for a tag's bits; use 300 or more")
    scene = cell_task_cfg(task, True).scene
    if not scene.markers:
        fail(f"task {task!r}: no object has a flat top face for a tag; track its objects with tracking_methods:=icp")
    rows = write_printable_tags(scene, str(out), dpi)
    print_table(
        f"fiducial tags of {task}",
        ["tag", "object", "black square mm", "file"],
        [[str(r["id"]), str(r["body"]), f"{1000 * float(r['size_m']):.1f}", str(r["file"])] for r in rows],
    )
    console.print(f"wrote {len(rows)} tags and {out / 'tags.md'} (print at 100 %, then check the square with a ruler)")


@live_app.command("calibrate-camera")
def calibrate_camera(
    task: str = typer.Option(
        "reach", help="Twin task whose scene holds the camera (and, with fake hardware, is rendered)."
    ),
    camera: str = typer.Option("cam_left", help="Scene camera to calibrate."),
    scene_file: Path = typer.Option(None, "--scene", help="Twin scene (USD) to calibrate instead of the task's."),
    robot_ip: str = typer.Option("127.0.0.1", help="FCI address of the robot (franka-sim: 127.0.0.1)."),
    fake_hardware: bool = typer.Option(
        False, "--fake-hardware", help="Start franka-sim and a software RealSense rendering the twin."
    ),
    serial: str = typer.Option(None, help="RealSense serial (default: the first camera found)."),
    poses: int = typer.Option(12, help="Board poses (3-15)."),
    seed: int = typer.Option(0, help="Seed of the pose planner."),
    method: str = typer.Option("park", help="cv2.calibrateHandEye method: tsai, park, horaud, andreff, daniilidis."),
    known_mount: bool = typer.Option(
        False, "--known-mount", help="The board is mounted exactly as specified: no hand-eye unknown."
    ),
    dynamics: float = typer.Option(0.15, help="Fraction of the FR3 velocity/acceleration/jerk limits for the moves."),
    width: int = typer.Option(640, help="Colour stream width."),
    height: int = typer.Option(480, help="Colour stream height."),
    out: Path = typer.Option(Path("outputs/calibrate-camera"), help="Output folder."),
) -> None:
    """A camera's pose from a ChArUco board held by the gripper (eye-to-hand, cv2.calibrateHandEye):
    moves the robot through board poses, writes calibrated_scene.usda and camera_calibration.yaml."""
    import numpy as np
    from scipy.spatial.transform import Rotation

    from twin.live.camera_model import matrix_pose
    from twin.live.handeye import CalibrationError
    from twin.live.handeye import calibrate_camera as run
    from twin.scene import SceneError
    from twin.tasks import TaskError, make_task
    from twinrank.output import info

    try:
        if scene_file is not None:
            from twin.usd_io import read_scene_usd

            scene = read_scene_usd(scene_file)
        else:
            scene = make_task(task).cfg.scene
        report = run(
            scene,
            camera,
            out,
            task=task,
            robot_ip=robot_ip,
            fake_hardware=fake_hardware,
            poses=poses,
            seed=seed,
            method=method,
            known_mount=known_mount,
            serial=serial,
            width=width,
            height=height,
            dynamics=dynamics,
            progress=info,
        )
    except (CalibrationError, SceneError, TaskError, ImportError) as exc:
        fail(str(exc))
    res = report.result
    pos, quat = matrix_pose(res.T_base_cam)
    euler = np.degrees(Rotation.from_matrix(res.T_base_cam[:3, :3]).as_euler("xyz"))
    used = sum(r.view is not None for r in report.records)
    console.print(
        f"camera {camera} in the robot base frame (optical axes): pos {np.round(pos, 4).tolist()} m, "
        f"quat wxyz {np.round(quat, 5).tolist()} (xyz euler {np.round(euler, 2).tolist()} deg)"
    )
    console.print(f"residual: {res.summary()} ({used} of {len(report.records)} poses used)")
    if report.kinematics_spread is not None:
        console.print(
            "franky O_T_EE in the twin's hand frame varies by "
            f"{report.kinematics_spread[0]:.2f} mm / {report.kinematics_spread[1]:.3f} deg across the poses "
            "(robot and twin kinematics agree up to a constant offset when small)"
        )
    if report.true_error is not None:
        mm, deg = report.true_error
        before = report.start_error or (float("nan"), float("nan"))
        console.print(
            f"error against the true camera pose (fake hardware): {mm:.2f} mm, {deg:.3f} deg "
            f"(the scene's camera before: {before[0]:.1f} mm, {before[1]:.2f} deg)"
        )
    for kind, path in report.files.items():
        console.print(f"wrote {kind}: {path}")


def register(app: typer.Typer) -> None:
    app.add_typer(live_app, name="live")
