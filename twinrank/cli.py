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
         episodes: int = typer.Option(1, min=1, help="Scripted episodes per task and condition."),
         seed: int = typer.Option(0, help="First seed."),
         chain: bool = typer.Option(True, "--chain/--twin-only", help="Also train, evaluate and log to MLflow."),
         tracking_uri: str = typer.Option(None, help="MLflow tracking URI (default: ./mlflow.db).")) -> None:
    """The whole chain: tasks under perturbations, train a checkpoint family, evaluate it, MLflow."""
    from twinrank.demo import run_demo

    try:
        run_demo(out, tasks=task or None, episodes=episodes, seed=seed, console=console, chain=chain,
                 tracking_uri=tracking_uri)
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


def _expand_checkpoints(refs: list[str]) -> list[str]:
    """Checkpoint dirs as given; a folder of checkpoints (e.g. a training run) expands to them."""
    out: list[str] = []
    for r in refs:
        p = Path(r)
        if not r.startswith("models:/") and p.is_dir() and not (p / "manifest.json").exists():
            found = sorted(str(m.parent) for m in p.rglob("manifest.json"))
            out.extend(found or [r])
        else:
            out.append(r)
    return out


@app.command("eval")
def eval_cmd(checkpoints: list[str] = typer.Argument(..., help="Checkpoint dirs, folders of them, or models:/name/version "
                                                             "or models:/name@alias URIs."),
             spec: str = typer.Option("default", help="Evaluation spec: a YAML path or a built-in name."),
             out: Path = typer.Option(None, help="Campaign folder (default outputs/eval/<spec>-<digest>)."),
             executor: str = typer.Option("local", help="local | inline | ray"),
             address: str = typer.Option(None, help="Ray cluster address (with --executor ray)."),
             workers: int = typer.Option(None, help="Worker processes (default: one per core)."),
             episodes: int = typer.Option(None, help="Override episodes per condition."),
             tracking_uri: str = typer.Option(None, help="MLflow tracking URI (default: ./mlflow.db)."),
             mlflow_log: bool = typer.Option(True, "--mlflow/--no-mlflow", help="Log the campaign to MLflow.")) -> None:
    """Evaluate checkpoints under the spec's perturbation conditions (paired design), log to MLflow."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from evaluator import EvalSpecError, evaluate, load_spec
    from evaluator.run import CheckpointResolveError
    from evaluator.tracking import load_campaign, log_or_defer, pending_campaigns, resolve_model_uri

    try:
        espec = load_spec(spec)
        if episodes is not None:
            espec = espec.replace(episodes_per_condition=episodes, seeds=None)
        espec.validate()
    except (EvalSpecError, ValueError, OSError) as exc:
        _fail(str(exc))
    out = out or Path("outputs/eval") / f"{espec.name}-{espec.digest()[:8]}"
    if mlflow_log:  # campaigns whose upload failed earlier go first
        for folder in pending_campaigns(out.parent):
            if log_or_defer(load_campaign(folder), tracking_uri) is not None:
                console.print(f"synced pending campaign {folder} to MLflow")
    refs: list[str] = []
    registry: dict[str, dict[str, str]] = {}
    for r in _expand_checkpoints(checkpoints):
        if r.startswith("models:/"):
            try:
                path, info = resolve_model_uri(r, out / ".models", tracking_uri)
            except CheckpointResolveError as exc:
                console.print(f"[yellow]warning:[/] {exc}")
                refs.append(r)  # fails this checkpoint with the reason
                continue
            registry[str(path.resolve())] = info
            refs.append(str(path))
        else:
            refs.append(r)
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                  console=console) as progress:
        bar = progress.add_task("starting workers", total=None, rate="")

        def on_event(ev) -> None:  # noqa: ANN001
            if ev.kind == "start":
                progress.update(bar, total=ev.total, completed=0, description=f"episodes ({ev.skipped} already done)")
            elif ev.kind == "episode":
                elapsed = progress.tasks[bar].elapsed or 1e-9
                progress.update(bar, completed=ev.done, rate=f"{ev.done / elapsed:.1f} ep/s")
            elif ev.kind == "checkpoint_failed":
                console.print(f"[red]checkpoint failed[/] {ev.label}: {ev.message}")
            elif ev.kind == "worker_lost":
                console.print(f"[yellow]worker {ev.worker_pid} lost; re-running its episodes[/]")
            elif ev.kind == "videos":
                progress.update(bar, description="recording videos", total=ev.total, completed=0)
            elif ev.kind == "video":
                progress.advance(bar)

        try:
            result = evaluate(refs, espec, out, executor=executor, workers=workers, address=address, progress=on_event)
        except KeyboardInterrupt:
            console.print(f"interrupted; finished episodes are kept in {out} — rerun the same command to resume")
            raise typer.Exit(code=130)
    for s in result.checkpoints:
        if s.path and str(Path(s.path).resolve()) in registry:
            s.info.update(registry[str(Path(s.path).resolve())])
    table = Table(title=f"Ranking by overall sim success (spec {espec.name!r}, {espec.episodes_per_condition} "
                        "paired seeds per condition)")
    for col in ("rank", "checkpoint", "success", "95% CI", "nominal", "worst factor (paired drop)", "status"):
        table.add_column(col)
    ranked = sorted(result.checkpoints, key=lambda c: -(c.overall.get("success_rate") or -1.0))
    for i, c in enumerate(ranked, 1):
        o = c.overall
        nominal = c.per_condition.get("nominal", {}).get("success_rate")
        drops = [(k, v.get("mean")) for k, v in c.paired_drop.items() if v.get("mean") is not None]
        worst = max(drops, key=lambda kv: kv[1]) if drops else None
        table.add_row(str(i), c.label, f"{o.get('success_rate', float('nan')):.2f}" if o else "-",
                      f"[{o['ci_low']:.2f}, {o['ci_high']:.2f}]" if o.get("ci_low") is not None else "-",
                      f"{nominal:.2f}" if nominal is not None else "-",
                      f"{worst[0]} ({worst[1]:+.2f})" if worst else "-",
                      c.status if not c.error else f"{c.status}: {c.error[:60]}")
    console.print(table)
    if result.executed and result.elapsed_s > 0:
        share = result.physics_share
        console.print(f"{result.executed} episodes in {result.elapsed_s:.1f} s ({result.executed / result.elapsed_s:.1f}"
                      " episodes/s)" + (f"; {share:.0%} of the workers' time in physics" if share else ""))
    console.print(f"results: {result.eval_info_path}")
    if mlflow_log:
        logged = log_or_defer(result, tracking_uri)
        if logged is None:
            console.print("[yellow]MLflow unreachable: results kept on disk; they are synced on the next run[/]")
        else:
            from twinrank import tracking

            console.print(f"MLflow run {logged.parent_run_id}; open the UI with: {tracking.ui_command(tracking_uri)}")


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


from twinrank.commands import register_all  # noqa: E402

register_all(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
