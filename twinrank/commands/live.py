"""`twinrank live ...`: the live twin over ROS 2 (see ros_ws/README.md and launch/README.md).

- ``twinrank live graph [name:=value ...]``: the nodes, parameters and remaps the launch
  arguments give (``--json`` for machine-readable output);
- ``twinrank live args``: every launch argument (``--markdown`` for the README table);
- ``twinrank live run [name:=value ...]``: start the graph with plain rclpy (no ros2 launch);
- ``twinrank live install-ament``: register the ROS 2 package ``twin`` in the venv (needed
  after an editable install; ``make install`` runs it);
- ``twinrank live bench``: twin_sync latency / rate / CPU at 1 kHz (see twin/live/bench.py).
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


def register(app: typer.Typer) -> None:
    app.add_typer(live_app, name="live")
