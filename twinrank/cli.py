"""The `twinrank` command line. Exit codes: see twinrank/output.py (and the README)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import typer  # noqa: E402

from twinrank import output  # noqa: E402
from twinrank.output import ExitCode, console, fail, print_table, styled  # noqa: E402

app = typer.Typer(
    help="Twinrank: digital-twin evaluation and policy selection for Franka manipulation. "
    "Exit codes: 0 done, 1 internal error, 2 bad input, 3 locked, 4 partial (some items failed), "
    "5 MLflow unreachable (results kept, synced next run), 130 interrupted.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    rich_markup_mode=None,
)
scene_app = typer.Typer(
    help="Scenes: export to USD, import scans, check compilation.", no_args_is_help=True, rich_markup_mode=None
)
suite_app = typer.Typer(help="Perturbation suites.", no_args_is_help=True, rich_markup_mode=None)
app.add_typer(scene_app, name="scene")
app.add_typer(suite_app, name="suite")

TRACKING_TIMEOUT_HELP = (
    "Seconds to wait for an MLflow tracking server before deferring the upload (default 15, "
    "or TWINRANK_TRACKING_TIMEOUT)."
)


def _tracking_timeout(value: float | None) -> None:
    """Apply --tracking-timeout for this process (MLflow's HTTP retries are bounded by it)."""
    from policies import tracking

    if value is None:
        return
    try:
        os.environ[tracking.TIMEOUT_ENV] = str(tracking.timeout_budget(value))
    except ValueError as exc:
        fail(str(exc))


@app.command()
def demo(
    out: Path = typer.Option(Path("demo_out"), help="Output folder."),
    task: list[str] = typer.Option(None, help="Tasks to run (default: all)."),
    episodes: int = typer.Option(1, min=1, help="Scripted episodes per task and condition."),
    seed: int = typer.Option(0, help="First seed."),
    chain: bool = typer.Option(True, "--chain/--twin-only", help="Also train, evaluate and log to MLflow."),
    tracking_uri: str = typer.Option(None, help="MLflow tracking URI (default: ./mlflow.db)."),
    tracking_timeout: float = typer.Option(None, help=TRACKING_TIMEOUT_HELP),
) -> None:
    """The whole chain: tasks under perturbations, train a checkpoint family, evaluate it, MLflow."""
    from twinrank.demo import run_demo

    _tracking_timeout(tracking_timeout)
    try:
        code = run_demo(
            out,
            tasks=task or None,
            episodes=episodes,
            seed=seed,
            console=console,
            chain=chain,
            tracking_uri=tracking_uri,
        )
    except ValueError as exc:
        fail(str(exc))
    output.exit_with(code)


def _success_cell(rate: float, n: int) -> str:
    """``0.45 [0.26, 0.66] (n = 20)``: a training checkpoint's in-sim success with its Wilson 95 % interval."""
    import math

    return f"{output.rate_interval(rate, n)} (n = {n})" if math.isfinite(rate) else "not evaluated"


@app.command()
def train(
    config: Path = typer.Argument(None, help="Training config YAML (see policies/train.py)."),
    algo: str = typer.Option(None, help="ppo_bc | ppo | bc | diffusion_bc | distill (default config)."),
    task: str = typer.Option(None, help="Task name."),
    steps: int = typer.Option(None, help="Total env steps (PPO)."),
    epochs: int = typer.Option(None, help="Epochs (BC)."),
    seed: int = typer.Option(None, help="Training seed."),
    out: Path = typer.Option(Path("outputs/train"), help="Output folder (checkpoints under it)."),
    tracking_uri: str = typer.Option(None, help="MLflow tracking URI (default: ./mlflow.db)."),
    tracking_timeout: float = typer.Option(None, help=TRACKING_TIMEOUT_HELP),
    set_: list[str] = typer.Option([], "--set", help="Override any config field: key.sub=value (YAML value)."),
) -> None:
    """Train a policy (PPO+BC, PPO, BC, diffusion BC, distillation) with checkpoints in MLflow."""
    import yaml

    from policies import tracking
    from policies.train import TrainConfig, TrainConfigError, default_config, run_training, with_overrides

    try:
        if config is not None:
            cfg = TrainConfig.from_yaml(config)
        else:
            cfg = default_config(algo or "ppo_bc", task or "reach")
        overrides = {
            "algo": algo if config is not None else None,
            "task": task,
            "total_env_steps": steps,
            "bc.epochs": epochs,
            "seed": seed,
        }
        for item in set_:
            key, sep, value = item.partition("=")
            if not sep:
                raise TrainConfigError(f"--set {item!r}: use key=value, e.g. --set ppo.num_envs=4")
            overrides[key] = yaml.safe_load(value)
        cfg = with_overrides(cfg, **overrides)
    except (TrainConfigError, KeyError) as exc:
        fail(str(exc))
    run_dir = out / f"{cfg.algo}-{cfg.task}-{cfg.digest()}"
    _tracking_timeout(tracking_timeout)
    try:  # training registers every checkpoint: the store must answer before anything is trained
        tracking.wait_for_server(tracking.resolve_tracking_uri(tracking_uri), on_wait=output.info)
    except tracking.TrackingUnavailable as exc:
        fail(f"{exc}; nothing was trained: start the server or give another --tracking-uri")
    from policies.runtime import set_torch_threads

    threads = set_torch_threads("training")
    console.print(
        f"training {cfg.algo} on {cfg.task} with {threads} torch thread(s) (TWINRANK_TORCH_THREADS "
        f"changes it); output {run_dir}"
    )
    with output.ProgressDisplay(unit="it") as bar:
        bar.update(desc="collecting demonstrations", done=0, total=1)

        def on_progress(desc: str, done: float, total: float) -> None:
            bar.update(desc=desc, done=done, total=total)

        try:
            result = run_training(
                cfg, run_dir, tracking_uri=tracking_uri, progress=on_progress, cache_dir=out / ".cache"
            )
        except (TrainConfigError, ValueError) as exc:
            fail(str(exc))
    evaluated = cfg.eval_episodes > 0
    rows = [
        (
            r.step,
            _success_cell(r.success_rate, cfg.eval_episodes) if evaluated else "not evaluated",
            r.model_version,
            r.path,
        )
        for r in result.checkpoints
    ]
    print_table(
        f"Checkpoints of run {result.run_id} (registered model {cfg.registered_model!r})",
        ("step", "in-sim success", "model version", "path"),
        rows,
        right=("step",),
    )
    output.command("MLflow UI:", tracking.ui_command(tracking_uri))


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


def _compare_with_champion(result: Any, tracking_uri: str | None) -> None:
    """P(beats the champion) of every checkpoint when the registered model's ``champion`` is in
    the campaign (checkpoints given as models:/ URIs or found in the registry by folder)."""
    from evaluator.decision import p_beats_reference
    from policies import tracking

    try:
        tracking.wait_for_server(tracking.resolve_tracking_uri(tracking_uri))
        client = tracking.setup(tracking_uri)
        for s in result.checkpoints:
            if not s.info.get("registered_model") and s.path and s.status == "ok":
                mv = tracking.find_model_version(client, s.path, s.checkpoint_id)
                if mv is not None:
                    s.info.update(registered_model=mv.name, model_version=str(mv.version))
        for name in sorted({s.info["registered_model"] for s in result.checkpoints if s.info.get("registered_model")}):
            try:
                champ = client.get_model_version_by_alias(name, "champion")
            except Exception:  # noqa: BLE001 - no champion yet
                continue
            ref = next(
                (
                    s
                    for s in result.checkpoints
                    if s.info.get("registered_model") == name and str(s.info.get("model_version")) == str(champ.version)
                ),
                None,
            )
            if ref is None:
                continue
            for cid, p in p_beats_reference(result.checkpoints, result.episodes, ref.checkpoint_id).items():
                result.summary(cid).decision["p_beats_champion"] = p
            ref.decision["champion"] = f"{name}/{champ.version}"
    except Exception:  # noqa: BLE001 - the registry is optional here: the table simply has no champion column
        return


@app.command("eval")
def eval_cmd(
    checkpoints: list[str] = typer.Argument(
        ..., help="Checkpoint dirs, folders of them, or models:/name/version or models:/name@alias URIs."
    ),
    spec: str = typer.Option("default", help="Evaluation spec: a YAML path or a built-in name."),
    out: Path = typer.Option(None, help="Campaign folder (default outputs/eval/<spec>-<digest>)."),
    executor: str = typer.Option("local", help="local | inline | ray"),
    address: str = typer.Option(None, help="Ray cluster address (with --executor ray)."),
    workers: int = typer.Option(None, min=1, help="Worker processes (default: one per core)."),
    episodes: int = typer.Option(None, min=1, help="Override episodes per condition."),
    tracking_uri: str = typer.Option(None, help="MLflow tracking URI (default: ./mlflow.db)."),
    tracking_timeout: float = typer.Option(None, help=TRACKING_TIMEOUT_HELP),
    mlflow_log: bool = typer.Option(True, "--mlflow/--no-mlflow", help="Log the campaign to MLflow."),
    adaptive: bool = typer.Option(
        False,
        "--adaptive",
        help="Race the checkpoints: rounds over a shared shuffled episode list, drop the ones confidently "
        "worse, stop when the best is known within --epsilon at 1 - --delta (the spec's list is the budget).",
    ),
    epsilon: float = typer.Option(0.05, min=0.0, max=0.99, help="Adaptive: success margin of 'best'."),
    delta: float = typer.Option(0.05, min=1e-6, max=0.5, help="Adaptive: error probability of the pick."),
    round_episodes: int = typer.Option(
        None, min=1, help="Adaptive: episodes per checkpoint per round (default: one work unit, the spec's batch_size)."
    ),
) -> None:
    """Evaluate checkpoints under the spec's perturbation conditions (paired design), log to MLflow.

    Exit code 2 when a checkpoint path or registered model does not exist, 4 when a checkpoint
    failed (the others are evaluated and logged either way), 5 when MLflow was unreachable."""
    from evaluator import EvalSpecError, evaluate, load_spec
    from evaluator.racing import RacingCfg
    from evaluator.run import CheckpointResolveError, unresolved_ref
    from evaluator.tracking import log_or_defer, resolve_model_uri, sync_pending
    from policies import tracking

    _tracking_timeout(tracking_timeout)
    try:
        espec = load_spec(spec)
        if episodes is not None:
            espec = espec.replace(episodes_per_condition=episodes, seeds=None)
        espec.validate()
    except (EvalSpecError, ValueError, OSError) as exc:
        fail(str(exc))
    out = out or Path("outputs/eval") / f"{espec.name}-{espec.digest()[:8]}"
    status = output.info
    if mlflow_log:  # campaigns whose upload failed earlier go first (this one is logged at the end)
        for folder in sync_pending(out.parent, tracking_uri, skip=[out], status=status):
            console.print(f"synced pending campaign {folder} to MLflow")
    refs: list[Any] = []
    registry: dict[str, dict[str, str]] = {}
    bad_input: list[str] = []
    for r in _expand_checkpoints(checkpoints):
        if r.startswith("models:/"):
            try:
                path, info = resolve_model_uri(r, out / ".models", tracking_uri)
            except CheckpointResolveError as exc:
                output.error(str(exc))
                bad_input.append(r)
                refs.append(unresolved_ref(r, str(exc)))  # a row with the reason
                continue
            registry[str(path.resolve())] = info
            refs.append(str(path))
        else:
            if not Path(r).exists():
                output.error(
                    f"checkpoint {r} does not exist; give checkpoint folders (with manifest.json), "
                    f"folders of them, or models:/NAME/VERSION"
                )
                bad_input.append(r)
            refs.append(r)
    if len(bad_input) == len(refs):
        fail("no checkpoint to evaluate (see above)")
    console.print(
        f"evaluating {len(refs)} checkpoint(s) on spec {espec.name!r} ({espec.digest()[:8]}); campaign folder {out}"
    )
    try:
        with output.eval_progress() as (on_event, _log):
            result = evaluate(
                refs,
                espec,
                out,
                executor=executor,
                workers=workers,
                address=address,
                progress=on_event,
                adaptive=RacingCfg(epsilon=epsilon, delta=delta) if adaptive else None,
                round_episodes=round_episodes,
            )
    except KeyboardInterrupt:
        console.print(f"interrupted; finished episodes are kept in {out}; rerun the same command to resume")
        raise typer.Exit(code=ExitCode.INTERRUPTED)
    except (ValueError, RuntimeError) as exc:  # e.g. the folder holds another spec's results
        fail(str(exc))
    for s in result.checkpoints:
        if s.path and str(Path(s.path).resolve()) in registry:
            s.info.update(registry[str(Path(s.path).resolve())])
    if mlflow_log:
        _compare_with_champion(result, tracking_uri)
    design = "adaptive racing over" if adaptive else ""
    output.print_campaign(
        result,
        f"Ranking by overall sim success (spec {espec.name!r}, {design} {espec.episodes_per_condition} "
        f"paired seeds per condition, Wilson 95% CI)".replace(",  ", ", "),
    )
    if result.executed and result.elapsed_s > 0:
        share = result.physics_share
        console.print(
            f"{result.executed} episodes in {result.elapsed_s:.1f} s ({result.executed / result.elapsed_s:.1f}"
            " episodes/s)" + (f"; {share:.0%} of the workers' time in physics" if share else "")
        )
    console.print(f"results: {result.eval_info_path}")
    code = ExitCode.BAD_INPUT if bad_input else ExitCode.PARTIAL if result.failed else ExitCode.OK
    if mlflow_log:
        uri = tracking.resolve_tracking_uri(tracking_uri)
        console.print(f"uploading the campaign to MLflow at {uri}")
        logged = log_or_defer(result, tracking_uri, status=status)
        if logged is None:
            output.warn(f"MLflow at {uri} unreachable: results kept in {out}; the next `twinrank eval` syncs them")
            code = code or ExitCode.TRACKING_DEFERRED
        else:
            verb = "updated" if logged.updated else "logged"
            console.print(
                f"MLflow campaign run {logged.parent_run_id} {verb} ({len(logged.checkpoint_runs)} checkpoint runs)"
            )
            output.command("open the UI with:", tracking.ui_command(tracking_uri))
    for s in result.failed:
        console.print(styled("failed:", "red", f"{s.label}: {s.error}"))
    output.exit_with(code)


@app.command()
def tasks() -> None:
    """List the registered tasks."""
    from twin.tasks import get_task_class, list_tasks

    rows = []
    for name in list_tasks():
        cls = get_task_class(name)
        doc = (cls.__doc__ or "").strip().splitlines()[0]
        rows.append((name, f"{cls.default_cfg().actions.mode} ({cls.expert_mode})", doc))
    print_table("Tasks", ("name", "control (expert)", "summary"), rows)


@app.command()
def factors() -> None:
    """List the perturbation factors (name, AI/SA kind, default range with units)."""
    from twin.perturbations import list_factors

    rows = [(f["name"], f["kind"], f["range_text"], f["description"]) for f in list_factors()]
    print_table(
        "Perturbation factors (AI = action-invariant, SA = semantic; default ranges as suite YAML takes them: "
        "x = scale of the nominal value, angles in rad with degrees after '=')",
        ("factor", "kind", "default range (units)", "description"),
        rows,
    )


@suite_app.command("validate")
def suite_validate(path: Path) -> None:
    """Validate a perturbation suite YAML file."""
    from twin.perturbations import PerturbationError, load_suite

    try:
        suite = load_suite(str(path))
        suite.validate()
    except (PerturbationError, ValueError, OSError) as exc:
        fail(str(exc))
    console.print(styled("ok", "green", f"suite {suite.name!r}: {', '.join(suite.factor_names())}"))


@suite_app.command("sample")
def suite_sample(
    path: str = typer.Argument("default", help="A built-in suite name or a suite YAML path."),
    seed: int = typer.Option(0, help="Episode seed (a non-negative integer)."),
    as_json: bool = typer.Option(
        False, "--json", help="Print the exact condition as JSON (Condition.to_dict()) instead of the table."
    ),
) -> None:
    """Print the condition a suite gives for a seed (a pure function of suite and seed): one row per
    factor, 3 significant digits, angles in degrees; --json for the exact values."""
    import json
    import shlex

    from twin.perturbations import N_SLOTS, PerturbationError, available_suites, describe_condition, load_suite

    if seed < 0:
        fail(f"--seed {seed}: seeds are non-negative integers (e.g. --seed 0)")
    try:
        suite = load_suite(path)
        cond = suite.sample(seed)
    except PerturbationError as exc:
        fail(str(exc))
    except (OSError, ValueError) as exc:  # unreadable file, not UTF-8 text, ...
        fail(
            f"suite {path!r} cannot be read ({exc}); give a built-in suite ({', '.join(available_suites())}) "
            f"or a path to a suite YAML file"
        )
    if as_json:
        print(json.dumps(cond.to_dict(), indent=2))
        return
    rows = describe_condition(cond, suite)
    if not rows:
        console.print(f"suite {suite.name!r}, seed {seed}: condition {cond.name!r} (no factor enabled)")
        return
    print_table(
        f"Suite {suite.name!r}, seed {seed}: condition {cond.name!r} (3 significant digits; angles in deg; "
        f"xN = N times the nominal value; cam<i>/obj<i> = value for camera/object i, cycling every {N_SLOTS})",
        ("factor", "kind", "value"),
        rows,
    )
    output.command("exact values:", f"twinrank suite sample {shlex.quote(path)} --seed {seed} --json")


@scene_app.command("export")
def scene_export(task: str, out: Path = typer.Argument(..., help="Output .usda path")) -> None:
    """Write a task's scene as a USD stage."""
    from twin.scene import SceneError
    from twin.tasks import TaskError, make_task
    from twin.usd_io import write_scene_usd

    try:
        write_scene_usd(make_task(task).cfg.scene, out)
    except (SceneError, TaskError) as exc:
        fail(str(exc))
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
        fail(str(exc))
    m = compiled.model
    console.print(
        styled(
            "ok",
            "green",
            f"{scene.name}: {len(scene.iter_bodies())} bodies, {len(scene.cameras)} "
            f"cameras, {len(scene.sites)} sites; MuJoCo: nbody={m.nbody} ngeom={m.ngeom} "
            f"nq={m.nq}",
        )
    )


@scene_app.command("scan")
def scene_scan(
    mesh: Path = typer.Argument(..., help="Scanned mesh (OBJ, GLB/GLTF, PLY, STL)."),
    out: Path = typer.Argument(..., help="Output .usda scene."),
    task: str = typer.Option(None, help="Start from this task's scene (default: the empty cell)."),
    pos: tuple[float, float, float] = typer.Option((0.0, 0.0, 0.0), help="Scan position x y z (m)."),
    yaw: float = typer.Option(0.0, help="Scan yaw about z (rad)."),
    scale: float = typer.Option(1.0, help="Uniform scale (e.g. 0.01 for a centimetre export)."),
    up_axis: str = typer.Option("z", help="The export's up axis: z, or y (Polycam GLB)."),
    site: list[str] = typer.Option([], help="Task site NAME=x,y,z[,hx,hy,hz] in world metres."),
    voxel_pitch: float = typer.Option(0.02, help="Collision voxel size (m)."),
) -> None:
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
        scene = add_scan(
            base,
            str(mesh),
            pose=Pose(pos=pos, quat=yaw_quat(yaw)),
            scale=scale,
            sites=sites,
            up_axis=up_axis,
            voxel_pitch=voxel_pitch,
        )
        write_scene_usd(scene, out)
    except (SceneError, TaskError, ValueError) as exc:
        fail(str(exc))
    console.print(
        f"wrote {out} ({len(scene.body('scan').geoms) - 1} collision boxes, sites: {', '.join(sites) or 'none'})"
    )


@app.command()
def render(
    task: str,
    out: Path = typer.Option(Path("render.png")),
    camera: str = typer.Option(None),
    width: int = 640,
    height: int = 480,
    seed: int = 0,
    scene: Path = typer.Option(None, help="Use this USD scene instead of the task's own."),
) -> None:
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
        fail(str(exc))
    console.print(f"wrote {out}")


from twinrank.commands import register_all  # noqa: E402

register_all(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
