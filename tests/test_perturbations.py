"""Perturbation suites: determinism, YAML, validation, per-factor effects, env integration.

Real MuJoCo throughout (no mocks). Renders use EGL.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from twin.compile import compile_scene  # noqa: E402
from twin.perturbations import (  # noqa: E402
    FACTOR_NAMES,
    Condition,
    FactorSpec,
    PerturbationError,
    PerturbationSuite,
    list_factors,
    load_suite,
    nominal_condition,
)
from twin.tasks import make_task  # noqa: E402

REQUIRED = [
    "light_intensity",
    "light_direction",
    "light_color",
    "object_color",
    "object_texture",
    "table_texture",
    "background",
    "distractors",
    "camera_position",
    "camera_orientation",
    "camera_fov",
    "object_pose",
    "object_scale",
    "friction",
    "mass",
    "joint_damping",
    "controller_gains",
    "actuation_latency",
    "observation_noise",
]

_WORLD_SCRIPT = r"""
import hashlib, json, sys
import numpy as np
from twin.compile import compile_scene
from twin.perturbations import load_suite
from twin.tasks import make_task
task = make_task("mug_to_sink")
cond = load_suite("default", task=task.name).sample(int(sys.argv[1]))
scene = cond.apply_to_scene(task.cfg.scene, task)
m = compile_scene(scene).model
h = hashlib.sha256()
for arr in (m.geom_size, m.body_mass, m.geom_rgba, m.cam_pos):
    h.update(np.ascontiguousarray(arr).tobytes())
print(json.dumps({"values": cond.values, "digest": scene.digest(), "model": h.hexdigest()}, sort_keys=True))
"""


@pytest.fixture(scope="module")
def suite() -> PerturbationSuite:
    return load_suite("default", task="mug_to_sink")


@pytest.fixture(scope="module")
def task():
    return make_task("mug_to_sink")


def _fixed(suite: PerturbationSuite, name: str, lo: float, hi: float | None = None) -> PerturbationSuite:
    """Single-factor suite with a degenerate (or given) range."""
    one = suite.only(name)
    one.factors[name].range = (lo, lo if hi is None else hi)
    return one


def _model_hash(scene) -> str:
    m = compile_scene(scene).model
    h = hashlib.sha256()
    for arr in (m.geom_size, m.body_mass, m.geom_rgba, m.cam_pos):
        h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()


# ---- factor table and suites --------------------------------------------------------------


def test_factor_table_covers_issue() -> None:
    infos = {f["name"]: f for f in list_factors()}
    assert list(FACTOR_NAMES) == REQUIRED
    assert set(infos) == set(REQUIRED)
    for info in infos.values():
        assert info["kind"] in ("AI", "SA") and info["description"] and len(info["range"]) == 2
    for ai in ("light_intensity", "camera_fov", "background", "distractors", "object_texture"):
        assert infos[ai]["kind"] == "AI"
    for sa in ("object_pose", "object_scale", "friction", "mass", "actuation_latency", "controller_gains"):
        assert infos[sa]["kind"] == "SA"
    assert infos["object_scale"]["range"] == [0.9, 1.1]


def test_default_suite_has_every_factor(suite: PerturbationSuite) -> None:
    assert suite.name == "default"
    assert suite.factor_names() == REQUIRED
    c = suite.sample(0)
    assert c.name == "default" and set(c.values) == set(REQUIRED)
    assert suite.only("camera_fov").sample(0).name == "camera_fov"
    assert suite.nominal().sample(0).name == "nominal" and suite.nominal().sample(0).values == {}
    assert PerturbationSuite().sample(3).values == {}
    assert set(suite.only_kind("AI").factor_names()) | set(suite.only_kind("SA").factor_names()) == set(REQUIRED)
    ev = suite.evaluation_suites()
    assert list(ev)[0] == "nominal" and list(ev)[-1] == "default" and len(ev) == len(REQUIRED) + 2


# ---- determinism --------------------------------------------------------------------------


def test_same_seed_same_world_across_processes(suite: PerturbationSuite, task) -> None:
    outs = []
    for hashseed in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=hashseed)
        res = subprocess.run(
            [sys.executable, "-c", _WORLD_SCRIPT, "11"],
            capture_output=True,
            text=True,
            env=env,
            check=True,
            timeout=120,
        )
        outs.append(json.loads(res.stdout.strip().splitlines()[-1]))
    assert outs[0] == outs[1]
    c = suite.sample(11)
    scene = c.apply_to_scene(task.cfg.scene, task)
    assert json.loads(json.dumps(c.values)) == outs[0]["values"]
    assert scene.digest() == outs[0]["digest"]
    assert _model_hash(scene) == outs[0]["model"]


def test_different_seeds_differ_and_streams_are_per_factor(suite: PerturbationSuite, task) -> None:
    a, b = suite.sample(1), suite.sample(2)
    for name in REQUIRED:
        assert a.values[name] != b.values[name], name
    assert a.apply_to_scene(task.cfg.scene, task).digest() != b.apply_to_scene(task.cfg.scene, task).digest()
    # A factor's values do not depend on which other factors are in the suite.
    for name in ("light_intensity", "distractors", "object_pose"):
        assert suite.only(name).sample(1).values[name] == a.values[name]
    assert suite.sample(1).values == a.values


def test_condition_json_round_trip_applies_identically(suite: PerturbationSuite, task) -> None:
    c = suite.sample(5)
    again = Condition.from_dict(json.loads(json.dumps(c.to_dict())))
    assert again == c
    base = task.cfg.scene
    assert again.apply_to_scene(base, task).digest() == c.apply_to_scene(base, task).digest()
    assert again.latency_s == c.latency_s and again.obs_noise_std == c.obs_noise_std


def test_apply_to_scene_never_mutates_input(suite: PerturbationSuite, task) -> None:
    base = task.cfg.scene
    before = base.digest()
    out = suite.sample(7).apply_to_scene(base, task)
    assert base.digest() == before
    assert out is not base and out.digest() != before
    assert nominal_condition().apply_to_scene(base, task).digest() == before


# ---- YAML and validation ------------------------------------------------------------------


def test_yaml_round_trip(suite: PerturbationSuite, tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    suite.to_yaml(path)
    again = PerturbationSuite.from_yaml(path)
    assert again == suite
    assert again.sample(3).values == suite.sample(3).values
    assert load_suite(str(path)) == suite
    text = """
name: mine
factors:
  light_intensity: {kind: AI, range: [0.5, 0.9]}
  distractors: {range: [2, 2]}
  object_pose: {range: [-0.01, 0.01], yaw_range: [0.0, 0.1]}
  mass: {enabled: false}
  camera_fov: {}
tasks:
  mug_to_sink:
    distractors: {range: [3, 3]}
"""
    s = PerturbationSuite.from_yaml(text)
    assert s.name == "mine" and s.factor_names() == ["light_intensity", "distractors", "camera_fov", "object_pose"]
    assert s.factors["camera_fov"].range == (0.87, 1.15) and s.factors["object_pose"].extra_ranges["yaw_range"] == (
        0.0,
        0.1,
    )
    assert len(s.sample(0).values["distractors"]["items"]) == 2
    assert len(PerturbationSuite.from_yaml(text, task="mug_to_sink").sample(0).values["distractors"]["items"]) == 3
    assert PerturbationSuite.from_yaml(PerturbationSuite.from_yaml(text).to_yaml()) == s


def test_a_fixed_value_is_every_sample_and_survives_yaml(task) -> None:
    """``fixed:`` (what calibration writes for a camera's pose with its rotation axis): every
    seed gives that value, it round-trips through YAML, and it moves the compiled camera."""
    text = """
name: calibrated
factors:
  camera_position: {fixed: [[0.02, 0.0, -0.01], [0.0, 0.0, 0.0]]}
  camera_orientation: {fixed: [[0.0, 0.0, 1.0, 0.05], [0.0, 0.0, 1.0, 0.0]]}
  light_direction: {fixed: {tilt: 0.2, azimuth: 1.0}}
"""
    s = PerturbationSuite.from_yaml(text)
    a, b = s.sample(1).values, s.sample(12345).values
    assert a == b and a["camera_orientation"][0] == [0.0, 0.0, 1.0, 0.05] and a["light_direction"]["tilt"] == 0.2
    assert PerturbationSuite.from_yaml(s.to_yaml()) == s
    scene = s.sample(7).apply_to_scene(task.cfg.scene, task)
    moved = np.subtract(scene.cameras[0].pos, task.cfg.scene.cameras[0].pos)
    assert np.allclose(moved, [0.02, 0.0, -0.01]) and scene.cameras[1].pos == task.cfg.scene.cameras[1].pos


@pytest.mark.parametrize(
    "entry, factor, pattern",
    [
        ("light_intensity: {range: [1.6, 0.4]}", "light_intensity", "lo > hi"),
        ("light_intensity: {range: [0.0, 1.0]}", "light_intensity", r"0 \(exclusive\)"),
        ("actuation_latency: {range: [-0.01, 0.06]}", "actuation_latency", "outside the allowed bounds"),
        ("object_scale: {range: [0.9, 3.0]}", "object_scale", "outside the allowed bounds"),
        ("friction: {range: [a, 1.0]}", "friction", "finite numbers"),
        ("mass: {range: 1.5}", "mass", "not a range"),
        ("distractors: {range: [1.5, 3]}", "distractors", "integers"),
        ("camera_fov: {kind: XX}", "camera_fov", "'AI'"),
        ("camera_fov: {distribution: offset}", "camera_fov", "scale"),
        ("camera_fov: {ranges: [1, 1]}", "camera_fov", "unknown field 'ranges'"),
        ("object_pose: {yaw_range: [0.3, 0.1]}", "object_pose", "yaw_range"),
        ("lighting: {range: [0.4, 1.6]}", "lighting", "valid factors: light_intensity"),
        ("camera_orientation: {fixed: [0.3]}", "camera_orientation", r"shaped like \[\[x, \.\.\.\], \.\.\.\]"),
        ("light_direction: {fixed: {tilt: 0.3}}", "light_direction", "tilt: x, azimuth: x"),
        ("mass: {fixed: [a]}", "mass", "field 'fixed'"),
    ],
)
def test_validation_errors_name_the_factor(entry: str, factor: str, pattern: str) -> None:
    with pytest.raises(PerturbationError) as err:
        PerturbationSuite.from_yaml(f"name: bad\nfactors:\n  {entry}\n")
    msg = str(err.value)
    assert repr(factor) in msg and re.search(pattern, msg), msg


def test_load_suite_errors(tmp_path: Path, task) -> None:
    with pytest.raises(PerturbationError, match="built-in suites: .*default"):
        load_suite("no_such_suite")
    with pytest.raises(PerturbationError, match="not found"):
        load_suite(str(tmp_path / "missing.yaml"))
    with pytest.raises(PerturbationError, match="unknown perturbation factor 'bogus'"):
        Condition(values={"bogus": 1.0}).apply_to_scene(task.cfg.scene, task)
    with pytest.raises(PerturbationError, match="'camera_fov' is malformed"):
        Condition(values={"camera_fov": "wide"}).apply_to_scene(task.cfg.scene, task)
    with pytest.raises(PerturbationError, match="has no factor"):
        PerturbationSuite(name="x", factors={"mass": FactorSpec.default("mass")}).only("friction")


# ---- each factor alone --------------------------------------------------------------------


def _diff(a: Any, b: Any, path: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _diff(a.get(k), b.get(k), f"{path}.{k}" if path else str(k))
        return out
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and len(a) == len(b):
        out = []
        for i, (x, y) in enumerate(zip(a, b)):
            out += _diff(x, y, f"{path}.{i}")
        return out
    return [] if a == b else [path]


# body indices in the mug_to_sink scene: 0 table, 1 sink, 2 mug
_ALLOWED = {
    "light_intensity": r"(lights\.\d\.(diffuse|ambient|specular)|headlight_(ambient|diffuse))",
    "light_direction": r"lights\.\d\.dir",
    "light_color": r"(lights\.\d\.(diffuse|ambient)|headlight_(ambient|diffuse))",
    "object_color": r"bodies\.2\.geoms\.\d\.rgba",
    "object_texture": r"bodies\.2\.geoms\.\d\.texture(\.|$)",
    "table_texture": r"bodies\.0\.geoms\.0\.texture\.",
    "background": r"(background_rgb|floor_rgba)",
    "camera_position": r"cameras\.\d\.(pos|target)",
    "camera_orientation": r"cameras\.\d\.(target|up)",
    "camera_fov": r"cameras\.\d\.(fx|fy)",
    "object_scale": r"bodies\.2\.(pose\.pos\.2|geoms\.\d\.(size|pose\.pos))",
    "friction": r"bodies\.[02]\.geoms\.\d\.friction",
    "mass": r"bodies\.2\.mass",
    "joint_damping": r"robot\.joint_damping_scale",
    "controller_gains": r"robot\.(kp|kd)",
    "object_pose": r"$^",
    "actuation_latency": r"$^",
    "observation_noise": r"$^",
}


@pytest.mark.parametrize("name", [n for n in REQUIRED if n != "distractors"])
def test_each_factor_changes_only_its_fields(suite: PerturbationSuite, task, name: str) -> None:
    base = task.cfg.scene
    scene = suite.only(name).sample(3).apply_to_scene(base, task)
    changed = _diff(base.to_dict(), scene.to_dict())
    bad = [p for p in changed if not re.match(_ALLOWED[name], p)]
    assert not bad, f"{name} changed {bad}"
    if _ALLOWED[name] != r"$^":
        assert changed, f"{name} changed nothing"


def test_factor_effects_on_compiled_model(suite: PerturbationSuite, task) -> None:
    base = task.cfg.scene
    m0 = compile_scene(base).model
    mug = m0.body("mug").id

    def model(name: str, lo: float, hi: float | None = None):
        return compile_scene(_fixed(suite, name, lo, hi).sample(0).apply_to_scene(base, task)).model

    m = model("camera_position", 0.05)
    assert np.allclose(m.cam_pos - m0.cam_pos, 0.05) and np.allclose(m.cam_quat, m0.cam_quat)
    m = model("camera_orientation", 0.08)
    assert np.allclose(m.cam_pos, m0.cam_pos) and not np.allclose(m.cam_quat, m0.cam_quat)
    angle = [2 * math.acos(min(1.0, abs(float(np.dot(q, q0))))) for q, q0 in zip(m.cam_quat, m0.cam_quat)]
    assert np.allclose(angle, 0.08, atol=1e-6)
    m = model("camera_fov", 1.1)
    assert np.allclose(m.cam_intrinsic[:, :2], m0.cam_intrinsic[:, :2] * 1.1) and np.allclose(m.cam_pos, m0.cam_pos)
    m = model("mass", 2.0)
    assert math.isclose(m.body_mass[mug], 2.0 * m0.body_mass[mug], rel_tol=1e-6)
    others = [b for b in range(m0.nbody) if b != mug]
    assert np.allclose(m.body_mass[others], m0.body_mass[others])
    m = model("friction", 0.5)
    g_mug = m0.geom("mug_body").id
    assert math.isclose(m.geom_friction[g_mug, 0], 0.5 * m0.geom_friction[g_mug, 0])
    assert math.isclose(m.geom_friction[m0.geom("table_top").id, 0], 0.5 * m0.geom_friction[m0.geom("table_top").id, 0])
    assert m.geom_friction[m0.geom("sink_bottom").id, 0] == m0.geom_friction[m0.geom("sink_bottom").id, 0]
    m = model("controller_gains", 1.2)
    acts = [m0.actuator(f"panda_act{i}").id for i in range(1, 8)]
    assert np.allclose(m.actuator_gainprm[acts, 0], 1.2 * m0.actuator_gainprm[acts, 0])
    assert np.allclose(m.actuator_biasprm[acts, 2], 1.2 * m0.actuator_biasprm[acts, 2])
    m = model("joint_damping", 2.0)
    arm_dofs = [m0.jnt_dofadr[m0.joint(f"panda_joint{i}").id] for i in range(1, 8)]
    assert np.allclose(m.dof_damping[arm_dofs], 2.0 * m0.dof_damping[arm_dofs])
    m = model("light_intensity", 0.5)
    assert np.allclose(m.light_diffuse, 0.5 * m0.light_diffuse) and np.allclose(m.light_dir, m0.light_dir)
    m = model("light_direction", 0.4)
    cosines = np.sum(m.light_dir * m0.light_dir, axis=1) / (
        np.linalg.norm(m.light_dir, axis=1) * np.linalg.norm(m0.light_dir, axis=1)
    )
    # rotation by 0.4 rad about a horizontal axis: each direction turns by at most 0.4 rad
    assert np.all(np.arccos(np.clip(cosines, -1, 1)) <= 0.4 + 1e-6)
    assert np.all(np.arccos(np.clip(cosines, -1, 1)) > 0.2)


def test_fixture_hinge_damping_scales(suite: PerturbationSuite) -> None:
    from twin.cell import cabinet, franka_cell

    scene = franka_cell("cab")
    body, site = cabinet()
    scene.bodies.append(body)
    scene.sites.append(site)
    out = _fixed(suite, "joint_damping", 2.0).sample(0).apply_to_scene(scene, None)
    assert out.body("cabinet_door").joint.damping == pytest.approx(2 * scene.body("cabinet_door").joint.damping)
    assert out.robot.joint_damping_scale == pytest.approx(2.0)


def test_object_scale_range_and_geometry(suite: PerturbationSuite, task) -> None:
    base = task.cfg.scene
    one = suite.only("object_scale")
    r0, h0 = base.body("mug").geoms[0].size
    for seed in range(20):
        c = one.sample(seed)
        assert all(0.9 <= s <= 1.1 for s in c.values["object_scale"])
        s = c.values["object_scale"][0]
        mug = c.apply_to_scene(base, task).body("mug")
        assert mug.geoms[0].size == pytest.approx((r0 * s, h0 * s))
        assert mug.geoms[1].pose.pos[0] == pytest.approx(base.body("mug").geoms[1].pose.pos[0] * s)
        assert mug.pose.pos[2] == pytest.approx(h0 * s)  # still standing on the table (z = 0)


# ---- env integration ----------------------------------------------------------------------


def test_distractors_on_table_clear_of_keepouts_and_stable(suite: PerturbationSuite) -> None:
    from twin.env import TwinEnv

    env = TwinEnv("mug_to_sink", suite=suite.only("distractors"))
    sink = env.base_scene.site("sink")
    counts = []
    for seed in range(6):
        env.reset(seed=seed)
        ds = [b for b in env.scene.iter_bodies() if b.kind == "distractor"]
        counts.append(len(ds))
        assert len(ds) == len(env.condition.values["distractors"]["items"])
        for b in ds:
            x, y, _ = b.pose.pos
            g = b.geoms[0]
            r = math.hypot(*g.size[:2]) if g.type == "box" else g.size[0]
            assert -0.15 + r <= x <= 1.05 - r and -0.75 + r <= y <= 0.75 - r
            assert not (
                abs(x - sink.pos[0]) < sink.half_extents[0] + r and abs(y - sink.pos[1]) < sink.half_extents[1] + r
            )
            assert math.hypot(x - 0.5, y - 0.2) > 0.03 + r + 0.05  # clear of the mug's spawn area
        for _ in range(4):
            _, _, _, _, info = env.step(env.action_space.sample() * 0)
            assert info["failure_reason"] != "physics_unstable"
        for b in ds:
            z = env.sim.body_pose(b.name)[2]
            assert z == pytest.approx(b.pose.pos[2], abs=0.005)  # resting on the table top
    assert min(counts) >= 1 and max(counts) <= 4 and len(set(counts)) > 1
    env.close()


def test_object_pose_offsets_after_reset(suite: PerturbationSuite) -> None:
    from twin.env import TwinEnv

    env = TwinEnv("mug_to_sink")
    env.reset(seed=4)
    p0 = env.sim.body_pose("mug")
    c = suite.only("object_pose").sample(4)
    env.reset(seed=4, options={"condition": c.to_dict()})
    p1 = env.sim.body_pose("mug")
    dx, dy, dyaw = c.values["object_pose"][0]
    assert p1[:3] == pytest.approx(p0[:3] + np.array([dx, dy, 0.0]), abs=1e-9)

    def yaw(q: np.ndarray) -> float:
        w, x, y, z = q
        return math.atan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z))

    assert math.remainder(yaw(p1[3:]) - yaw(p0[3:]) - dyaw, 2 * math.pi) == pytest.approx(0.0, abs=1e-9)
    env.close()


def test_actuation_latency_delays_joint_response(suite: PerturbationSuite) -> None:
    from twin.env import TwinEnv

    env = TwinEnv("mug_to_sink", control_mode="joint_pos")
    moved = {}
    for lat in (0.0, 0.06):
        env.reset(seed=0, options={"condition": _fixed(suite, "actuation_latency", lat).sample(0)})
        assert env.sim.latency_substeps == round(lat / 0.002)
        q0 = env.sim.arm_qpos()
        action = np.concatenate([q0 + np.array([0.3, 0, 0, 0, 0, 0, 0]), [1.0]]).astype(np.float32)
        env.step(action)
        moved[lat] = float(env.sim.arm_qpos()[0] - q0[0])
    assert moved[0.0] > 0.05
    assert moved[0.06] < 0.5 * moved[0.0]
    env.close()


def test_renders_change_with_lighting_and_camera(suite: PerturbationSuite) -> None:
    from PIL import Image

    from twin.env import TwinEnv

    env = TwinEnv("mug_to_sink")
    imgs = {}
    conds = {
        "nominal": nominal_condition(),
        "light": _fixed(suite, "light_intensity", 0.4).sample(0),
        "light_dir": _fixed(suite, "light_direction", 0.5).sample(0),
        "camera": _fixed(suite, "camera_position", 0.05).sample(0),
        "camera_fov": _fixed(suite, "camera_fov", 0.87).sample(0),
        "combined": suite.sample(3),
    }
    for key, cond in conds.items():
        env.reset(seed=0, options={"condition": cond})
        img = env.render_camera("cam_left", 160, 120)
        assert img.shape == (120, 160, 3) and img.std() > 10 and 10 < img.mean() < 245, key
        imgs[key] = img.astype(np.float64)
    for key in conds:
        if key != "nominal":
            assert np.abs(imgs[key] - imgs["nominal"]).mean() > 2.0, key
    assert imgs["light"].mean() < imgs["nominal"].mean()
    for key in ("nominal", "light", "combined"):
        Image.fromarray(imgs[key].astype(np.uint8)).save(f"/tmp/perturb_{key}.png")
    env.close()


def test_observation_noise_reaches_observations(suite: PerturbationSuite) -> None:
    from twin.env import TwinEnv

    env = TwinEnv("mug_to_sink")
    obs0, _ = env.reset(seed=1)
    obs1, _ = env.reset(seed=1, options={"condition": _fixed(suite, "observation_noise", 0.01).sample(0)})
    d = obs1["proprio"] - obs0["proprio"]
    assert 0.003 < float(np.std(d)) < 0.03
    env.close()
