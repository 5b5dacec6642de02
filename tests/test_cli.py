"""The `twinrank` CLI end to end (real MuJoCo, real USD files)."""

import json
import math
import re

import numpy as np
import trimesh
from typer.testing import CliRunner

from twin.perturbations import FACTOR_NAMES, Condition, list_factors, load_suite
from twinrank.cli import app

runner = CliRunner()


def test_tasks_and_factors_are_listed():
    r = runner.invoke(app, ["tasks"])
    assert r.exit_code == 0, r.output
    for name in ("mug_to_sink", "box_to_shelf", "open_cabinet", "push_t"):
        assert name in r.output
    r = runner.invoke(app, ["factors"])
    assert r.exit_code == 0 and "light_intensity" in r.output and "SA" in r.output


def test_suite_validate_accepts_good_and_names_bad_field(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("name: mine\nfactors:\n  light_intensity: {kind: AI, range: [0.5, 1.5]}\n")
    r = runner.invoke(app, ["suite", "validate", str(good)])
    assert r.exit_code == 0 and "mine" in r.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nfactors:\n  object_scale: {range: [1.1, 0.9]}\n")
    r = runner.invoke(app, ["suite", "validate", str(bad)])
    assert r.exit_code == 2 and "object_scale" in r.output


def test_suite_sample_is_a_function_of_seed():
    a = runner.invoke(app, ["suite", "sample", "default", "--seed", "5", "--json"]).output
    b = runner.invoke(app, ["suite", "sample", "default", "--seed", "5", "--json"]).output
    c = runner.invoke(app, ["suite", "sample", "default", "--seed", "6", "--json"]).output
    assert json.loads(a) == json.loads(b) != json.loads(c)


def test_suite_sample_json_round_trips_to_the_same_condition():
    r = runner.invoke(app, ["suite", "sample", "default", "--seed", "7", "--json"])
    assert r.exit_code == 0, r.output
    expected = load_suite("default").sample(7).to_dict()
    assert json.loads(r.output) == expected  # floats compare exactly: JSON keeps every digit
    assert Condition.from_dict(json.loads(r.output)).to_dict() == expected


def _sample_rows(output: str) -> dict[str, tuple[str, str]]:
    """factor -> (kind, value) from the plain table `suite sample` prints when not on a terminal."""
    rows = {}
    for line in output.splitlines():
        parts = line.split(None, 2)
        if len(parts) == 3 and parts[0] in FACTOR_NAMES:
            rows[parts[0]] = (parts[1], parts[2])
    return rows


def _significant_digits(number: str) -> int:
    mantissa = number.lstrip("-").split("e")[0].replace(".", "").lstrip("0")
    return len(mantissa)


def test_suite_sample_prints_readable_values_with_degrees_and_3_significant_digits():
    seed = 3
    r = runner.invoke(app, ["suite", "sample", "default", "--seed", str(seed)])
    assert r.exit_code == 0, r.output
    suite = load_suite("default")
    cond = suite.sample(seed)
    rows = _sample_rows(r.output)
    assert set(rows) == set(cond.values)  # one row per factor
    assert all(rows[n][0] == suite.factors[n].kind for n in rows)
    # The camera orientation range is an angle (rad in the suite): printed in degrees.
    cam = re.match(r"cam0 (\S+) deg about axis \((\S+), (\S+), (\S+)\)", rows["camera_orientation"][1])
    assert cam, rows["camera_orientation"]
    angle_rad = cond.values["camera_orientation"][0][3]
    assert float(cam.group(1)) == float(f"{math.degrees(angle_rad):.3g}")
    assert [float(g) for g in cam.groups()[1:]] == [float(f"{v:.3g}") for v in cond.values["camera_orientation"][0][:3]]
    yaw = re.search(r"yaw (\S+) deg", rows["object_pose"][1])
    assert yaw and float(yaw.group(1)) == float(f"{math.degrees(cond.values['object_pose'][0][2]):.3g}")
    assert rows["actuation_latency"][1] == f"{cond.values['actuation_latency']:#.3g} s"
    # Every number has 3 significant digits or fewer (cam0/obj0 slot names are not numbers).
    numbers = [n for _, v in rows.values() for n in re.findall(r"(?<![A-Za-wyz_\d.])-?\d+(?:\.\d+)?(?:e[-+]\d+)?", v)]
    assert len(numbers) > 50
    assert max(_significant_digits(n) for n in numbers) == 3, numbers


def test_suite_sample_bad_input_is_one_line_exit_2(tmp_path):
    def one_line_error(args):
        r = runner.invoke(app, ["suite", "sample", *args])
        assert r.exit_code == 2, (r.output, r.exception)
        assert "Traceback" not in r.output
        lines = r.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), r.output
        return lines[0]

    msg = one_line_error(["nosuch"])
    assert "'nosuch'" in msg and "default" in msg and "YAML" in msg  # the problem, the built-ins, the path option
    bad = tmp_path / "broken.yaml"
    bad.write_text("name: broken\nfactors:\n  light_intensity: {range: [0.5, 1.5]\n")
    msg = one_line_error([str(bad)])
    assert str(bad) in msg and "not valid YAML" in msg and "line " in msg
    msg = one_line_error([str(tmp_path / "missing.yaml")])
    assert "missing.yaml" in msg and "not found" in msg
    msg = one_line_error(["default", "--seed", "-1"])
    assert "--seed -1" in msg and "non-negative" in msg


def test_factors_show_units_for_every_default_range():
    r = runner.invoke(app, ["factors"])
    assert r.exit_code == 0, r.output
    lines = {
        line.split()[0]: line for line in r.output.splitlines() if line.split() and line.split()[0] in FACTOR_NAMES
    }
    assert set(lines) == set(FACTOR_NAMES)
    for f in list_factors():
        assert f["units"], f"factor {f['name']} has no units"
        lo, hi = f["range"]
        assert f"[{lo:g}, {hi:g}] {f['units']}" in lines[f["name"]]
        for field, units in f["extra_units"].items():
            assert units and f"{field} [" in lines[f["name"]] and units in lines[f["name"]]
    assert "[0, 0.087] rad = [0, 4.98] deg" in lines["camera_orientation"]
    assert "yaw_range [-0.26, 0.26] rad = [-14.9, 14.9] deg" in lines["object_pose"]
    assert "[0.9, 1.1] x" in lines["object_scale"] and "[0, 0.06] s" in lines["actuation_latency"]


def test_scene_export_check_and_render_from_usd(tmp_path):
    usd = tmp_path / "cell.usda"
    r = runner.invoke(app, ["scene", "export", "mug_to_sink", str(usd)])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["scene", "check", str(usd)])
    assert r.exit_code == 0 and "2 cameras" in r.output and "1 sites" in r.output
    png = tmp_path / "view.png"
    r = runner.invoke(
        app, ["render", "mug_to_sink", "--scene", str(usd), "--out", str(png), "--width", "160", "--height", "120"]
    )
    assert r.exit_code == 0, r.output
    from PIL import Image

    assert np.asarray(Image.open(png)).std() > 10


def test_scene_scan_adds_static_collision_and_sites(tmp_path):
    mesh = trimesh.creation.box(extents=(0.3, 0.3, 0.1))
    path = tmp_path / "scan.ply"
    mesh.export(path)
    out = tmp_path / "scanned.usda"
    r = runner.invoke(
        app,
        [
            "scene",
            "scan",
            str(path),
            str(out),
            "--pos",
            "0.5",
            "0.3",
            "0.05",
            "--site",
            "target=0.5,0.3,0.12,0.1,0.1,0.02",
        ],
    )
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["scene", "check", str(out)])
    assert r.exit_code == 0 and "1 sites" in r.output
    bad = runner.invoke(app, ["scene", "scan", str(tmp_path / "missing.obj"), str(out)])
    assert bad.exit_code == 2 and "missing.obj" in bad.output


def test_unknown_task_is_a_clear_error(tmp_path):
    r = runner.invoke(app, ["scene", "export", "pour_tea", str(tmp_path / "x.usda")])
    assert r.exit_code == 2 and "unknown task 'pour_tea'" in r.output


def test_readme_exit_code_table_matches_the_cli():
    """One documented table of exit codes shared by all commands (README = twinrank/output.py)."""
    from pathlib import Path

    from twinrank.output import EXIT_CODE_MEANINGS, exit_codes_markdown

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    assert exit_codes_markdown() in readme
    assert {int(c) for c in EXIT_CODE_MEANINGS} == {0, 1, 2, 3, 4, 5, 130}


def test_help_and_errors_print_brackets_as_written(tmp_path):
    r = runner.invoke(app, ["live", "run", "--help"])
    assert r.exit_code == 0 and "'.[ros]'" in r.output, r.output
    bad = tmp_path / "bad[1].yaml"
    bad.write_text("name: bad\nfactors:\n  object_scale: {range: [1.1, 0.9]}\n")
    r = runner.invoke(app, ["suite", "validate", str(bad)])
    assert r.exit_code == 2 and "[1.1, 0.9]" in r.output and "give [lo, hi] with lo <= hi" in r.output, r.output


def test_progress_rate_after_other_work_counts_from_where_the_work_resumed(monkeypatch):
    """Training resumes its epoch bar at 50/200 after a data-collection round: the rate is
    timed from there (it printed 36768045 it/s, the 50 earlier epochs over a few ms)."""
    from twinrank import output

    clock = [100.0]
    monkeypatch.setattr(output.time, "monotonic", lambda: clock[0])
    with output.console.capture() as cap, output.ProgressDisplay(unit="epochs", steps=20) as bar:
        bar.update(desc="BC epoch", done=0, total=200)
        clock[0] += 50.0
        bar.update(desc="BC epoch", done=50, total=200)
        bar.update(desc="takeover round 1", done=0, total=100)
        clock[0] += 20.0
        bar.update(done=100, total=100)
        bar.update(desc="BC epoch", done=50, total=200)  # resumes: no rate from 0 work yet
        clock[0] += 10.0
        bar.update(desc="BC epoch", done=60, total=200)
    lines = [ln for ln in cap.get().splitlines() if "BC epoch" in ln]
    assert "1.00 epochs/s" in lines[1]  # 50 epochs in 50 s
    assert "/s" not in lines[2] and "50/200" in lines[2]
    assert "1.00 epochs/s, ETA 2 min 20 s" in lines[3]  # 10 epochs in 10 s, 140 to go
