"""The `twinrank` command line."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import typer  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

app = typer.Typer(help="Twinrank: digital-twin evaluation and policy selection for Franka manipulation.",
                  no_args_is_help=True, pretty_exceptions_show_locals=False)
scene_app = typer.Typer(help="Scenes: export to USD, import scans, check compilation.", no_args_is_help=True)
suite_app = typer.Typer(help="Perturbation suites.", no_args_is_help=True)
app.add_typer(scene_app, name="scene")
app.add_typer(suite_app, name="suite")
console = Console()


def _fail(msg: str) -> None:
    console.print(f"[bold red]error:[/] {msg}")
    raise typer.Exit(code=2)


@app.command()
def demo(out: Path = typer.Option(Path("demo_out"), help="Output folder."),
         task: list[str] = typer.Option(None, help="Tasks to run (default: all)."),
         episodes: int = typer.Option(2, min=1, help="Episodes per task and condition."),
         seed: int = typer.Option(0, help="First seed.")) -> None:
    """Build every task, run its scripted controller under perturbations, write a contact sheet."""
    from twinrank.demo import run_demo

    try:
        run_demo(out, tasks=task or None, episodes=episodes, seed=seed, console=console)
    except ValueError as exc:
        _fail(str(exc))


@app.command()
def train(config: Path = typer.Argument(None, help="Training config YAML (see policies/train.py)."),
          algo: str = typer.Option(None, help="ppo_bc | ppo | bc | diffusion_bc | distill (default config)."),
          task: str = typer.Option(None, help="Task name."),
          steps: int = typer.Option(None, help="Total env steps (PPO)."),
          epochs: int = typer.Option(None, help="Epochs (BC)."),
          seed: int = typer.Option(None, help="Training seed."),
          out: Path = typer.Option(Path("outputs/train"), help="Output folder (checkpoints under it)."),
          tracking_uri: str = typer.Option(None, help="MLflow tracking URI (default: ./mlflow.db)."),
          set_: list[str] = typer.Option([], "--set", help="Override any config field: key.sub=value (YAML value).")
          ) -> None:
    """Train a policy (PPO+BC, PPO, BC, diffusion BC, distillation) with checkpoints in MLflow."""
    import yaml
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from policies.train import TrainConfig, TrainConfigError, default_config, run_training, with_overrides
    from twinrank import tracking

    try:
        if config is not None:
            cfg = TrainConfig.from_yaml(config)
        else:
            cfg = default_config(algo or "ppo_bc", task or "reach")
        overrides = {"algo": algo if config is not None else None, "task": task, "total_env_steps": steps,
                     "bc.epochs": epochs, "seed": seed}
        for item in set_:
            key, sep, value = item.partition("=")
            if not sep:
                raise TrainConfigError(f"--set {item!r}: use key=value, e.g. --set ppo.num_envs=4")
            overrides[key] = yaml.safe_load(value)
        cfg = with_overrides(cfg, **overrides)
    except (TrainConfigError, KeyError) as exc:
        _fail(str(exc))
    run_dir = out / f"{cfg.algo}-{cfg.task}-{cfg.digest()}"
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed:.0f}/{task.total:.0f}"),
                  TimeElapsedColumn(), TimeRemainingColumn(), console=console) as progress:
        bar = progress.add_task("collecting demonstrations", total=1)

        def on_progress(desc: str, done: float, total: float) -> None:
            progress.update(bar, description=desc, completed=done, total=total)

        try:
            result = run_training(cfg, run_dir, tracking_uri=tracking_uri, progress=on_progress,
                                  cache_dir=out / ".cache")
        except (TrainConfigError, ValueError) as exc:
            _fail(str(exc))
    table = Table(title=f"Checkpoints of run {result.run_id} (registered model {cfg.registered_model!r})")
    for col in ("step", "in-sim success", "model version", "path"):
        table.add_column(col)
    for r in result.checkpoints:
        table.add_row(str(r.step), f"{r.success_rate:.2f}", r.model_version, str(r.path))
    console.print(table)
    console.print(f"MLflow UI: {tracking.ui_command(tracking_uri)}")


@app.command()
def tasks() -> None:
    """List the registered tasks."""
    from twin.tasks import get_task_class, list_tasks

    table = Table(title="Tasks")
    table.add_column("name")
    table.add_column("control (expert)")
    table.add_column("summary")
    for name in list_tasks():
        cls = get_task_class(name)
        doc = (cls.__doc__ or "").strip().splitlines()[0]
        table.add_row(name, f"{cls.default_cfg().actions.mode} ({cls.expert_mode})", doc)
    console.print(table)


@app.command()
def factors() -> None:
    """List the perturbation factors (name, AI/SA kind, default range)."""
    from twin.perturbations import list_factors

    table = Table(title="Perturbation factors (AI = action-invariant, SA = semantic)")
    for col in ("factor", "kind", "default range", "description"):
        table.add_column(col)
    for f in list_factors():
        table.add_row(f["name"], f["kind"], str(f["range"]), f["description"])
    console.print(table)


@suite_app.command("validate")
def suite_validate(path: Path) -> None:
    """Validate a perturbation suite YAML file."""
    from twin.perturbations import PerturbationError, load_suite

    try:
        suite = load_suite(str(path))
        suite.validate()
    except (PerturbationError, ValueError, OSError) as exc:
        _fail(str(exc))
    console.print(f"[green]ok[/] suite {suite.name!r}: {', '.join(suite.factor_names())}")


@suite_app.command("sample")
def suite_sample(path: str = typer.Argument("default"), seed: int = 0) -> None:
    """Print the condition a suite gives for a seed (a pure function of suite and seed)."""
    import json

    from twin.perturbations import load_suite

    console.print_json(json.dumps(load_suite(path).sample(seed).to_dict()))


@scene_app.command("export")
def scene_export(task: str, out: Path = typer.Argument(..., help="Output .usda path")) -> None:
    """Write a task's scene as a USD stage."""
    from twin.scene import SceneError
    from twin.tasks import TaskError, make_task
    from twin.usd_io import write_scene_usd

    try:
        write_scene_usd(make_task(task).cfg.scene, out)
    except (SceneError, TaskError) as exc:
        _fail(str(exc))
    console.print(f"wrote {out}")


@scene_app.command("check")
def scene_check(path: Path) -> None:
    """Load a USD scene, compile it in MuJoCo, and print its contents."""
    from twin.compile import compile_scene
    from twin.scene import SceneError
    from twin.usd_io import read_scene_usd

    try:
        scene = read_scene_usd(path)
        compiled = compile_scene(scene)
    except SceneError as exc:
        _fail(str(exc))
    m = compiled.model
    console.print(f"[green]ok[/] {scene.name}: {len(scene.iter_bodies())} bodies, {len(scene.cameras)} cameras, "
                  f"{len(scene.sites)} sites; MuJoCo: nbody={m.nbody} ngeom={m.ngeom} nq={m.nq}")


@scene_app.command("scan")
def scene_scan(mesh: Path = typer.Argument(..., help="Scanned mesh (OBJ, GLB/GLTF, PLY, STL)."),
               out: Path = typer.Argument(..., help="Output .usda scene."),
               task: str = typer.Option(None, help="Start from this task's scene (default: the empty cell)."),
               pos: tuple[float, float, float] = typer.Option((0.0, 0.0, 0.0), help="Scan position x y z (m)."),
               yaw: float = typer.Option(0.0, help="Scan yaw about z (rad)."),
               scale: float = typer.Option(1.0, help="Uniform scale (e.g. 0.01 for a centimetre export)."),
               up_axis: str = typer.Option("z", help="The export's up axis: z, or y (Polycam GLB)."),
               site: list[str] = typer.Option([], help="Task site NAME=x,y,z[,hx,hy,hz] in world metres."),
               voxel_pitch: float = typer.Option(0.02, help="Collision voxel size (m).")) -> None:
    """Add a scanned mesh as static collision geometry (plus named task sites) and write the scene."""
    from twin.cell import franka_cell
    from twin.scan import add_scan
    from twin.scene import Pose, SceneError, yaw_quat
    from twin.tasks import TaskError, make_task
    from twin.usd_io import write_scene_usd

    try:
        sites = {}
        for item in site:
            name, _, vals = item.partition("=")
            nums = tuple(float(v) for v in vals.split(","))
            if not name or len(nums) not in (3, 6):
                raise SceneError(f"--site {item!r}: use NAME=x,y,z or NAME=x,y,z,hx,hy,hz")
            sites[name] = nums
        base = make_task(task).cfg.scene if task else franka_cell("scan")
        scene = add_scan(base, str(mesh), pose=Pose(pos=pos, quat=yaw_quat(yaw)), scale=scale, sites=sites,
                         up_axis=up_axis, voxel_pitch=voxel_pitch)
        write_scene_usd(scene, out)
    except (SceneError, TaskError, ValueError) as exc:
        _fail(str(exc))
    console.print(f"wrote {out} ({len(scene.body('scan').geoms) - 1} collision boxes, sites: {', '.join(sites) or 'none'})")


@app.command()
def render(task: str, out: Path = typer.Option(Path("render.png")), camera: str = typer.Option(None),
           width: int = 640, height: int = 480, seed: int = 0,
           scene: Path = typer.Option(None, help="Use this USD scene instead of the task's own.")) -> None:
    """Render a task's scene at reset from one camera to a PNG."""
    from PIL import Image

    from twin.env import TwinEnv
    from twin.scene import SceneError
    from twin.tasks import TaskError, make_task

    try:
        if scene is not None:
            from twin.usd_io import read_scene_usd

            t = make_task(task)
            t.cfg = t.cfg.replace(scene=read_scene_usd(scene))
            env = TwinEnv(t)
        else:
            env = TwinEnv(task)
        env.reset(seed=seed)
        cam = camera or env.camera_names()[0]
        Image.fromarray(env.render_camera(cam, width, height)).save(out)
    except (SceneError, TaskError) as exc:
        _fail(str(exc))
    console.print(f"wrote {out}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
