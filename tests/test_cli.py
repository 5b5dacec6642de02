"""The `twinrank` CLI end to end (real MuJoCo, real USD files)."""

import json

import numpy as np
import trimesh
from typer.testing import CliRunner

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
    a = runner.invoke(app, ["suite", "sample", "default", "--seed", "5"]).output
    b = runner.invoke(app, ["suite", "sample", "default", "--seed", "5"]).output
    c = runner.invoke(app, ["suite", "sample", "default", "--seed", "6"]).output
    assert json.loads(a) == json.loads(b) != json.loads(c)


def test_scene_export_check_and_render_from_usd(tmp_path):
    usd = tmp_path / "cell.usda"
    r = runner.invoke(app, ["scene", "export", "mug_to_sink", str(usd)])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["scene", "check", str(usd)])
    assert r.exit_code == 0 and "2 cameras" in r.output and "1 sites" in r.output
    png = tmp_path / "view.png"
    r = runner.invoke(app, ["render", "mug_to_sink", "--scene", str(usd), "--out", str(png), "--width", "160",
                            "--height", "120"])
    assert r.exit_code == 0, r.output
    from PIL import Image

    assert np.asarray(Image.open(png)).std() > 10


def test_scene_scan_adds_static_collision_and_sites(tmp_path):
    mesh = trimesh.creation.box(extents=(0.3, 0.3, 0.1))
    path = tmp_path / "scan.ply"
    mesh.export(path)
    out = tmp_path / "scanned.usda"
    r = runner.invoke(app, ["scene", "scan", str(path), str(out), "--pos", "0.5", "0.3", "0.05",
                            "--site", "target=0.5,0.3,0.12,0.1,0.1,0.02"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["scene", "check", str(out)])
    assert r.exit_code == 0 and "1 sites" in r.output
    bad = runner.invoke(app, ["scene", "scan", str(tmp_path / "missing.obj"), str(out)])
    assert bad.exit_code == 2 and "missing.obj" in bad.output


def test_unknown_task_is_a_clear_error(tmp_path):
    r = runner.invoke(app, ["scene", "export", "pour_tea", str(tmp_path / "x.usda")])
    assert r.exit_code == 2 and "unknown task 'pour_tea'" in r.output
