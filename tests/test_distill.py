"""Synthetic point clouds (twin/pointcloud.py) and DAgger teacher-student distillation
(policies/distill.py, CASHER Eq. 2): real MuJoCo, real rendering, real torch, real MLflow."""

from __future__ import annotations

import time
from types import SimpleNamespace

import mujoco
import numpy as np
import pytest
import torch

from policies import CallablePolicy, PolicySpec, load_checkpoint, make_policy, save_checkpoint
from policies.data import dataset_info, iter_episodes
from policies.distill import (
    DistillConfig,
    DistillState,
    ExpertTeacher,
    distill,
    make_teacher,
    rollout_episode,
)
from policies.interface import ConfigError
from twin.env import TwinEnv
from twin.pointcloud import sampling_table, surface_area, synthetic_point_cloud
from twin.tasks.base import ObservationCfg

torch.set_num_threads(1)

MUG_RGB = (0.8, 0.25, 0.2)


def _local(sim, gid: int, xyz: np.ndarray) -> np.ndarray:
    """World points -> frame of geom ``gid``."""
    rot = sim.data.geom_xmat[gid].reshape(3, 3)
    return (xyz - sim.data.geom_xpos[gid]) @ rot


def _on_mesh(p: np.ndarray, verts: np.ndarray, faces: np.ndarray, tol: float = 1e-5) -> bool:
    """Whether point ``p`` lies on one of the triangles (within ``tol`` m)."""
    a, b, c = verts[faces[:, 0]], verts[faces[:, 1]], verts[faces[:, 2]]
    e1, e2, d = b - a, c - a, p - a
    n = np.cross(e1, e2)
    nn = np.linalg.norm(n, axis=1)
    ok = nn > 1e-14
    plane = np.abs(np.einsum("ij,ij->i", d, n)) / np.where(ok, nn, 1.0)
    # barycentric coordinates of the projection
    d11, d12, d22 = (e1 * e1).sum(1), (e1 * e2).sum(1), (e2 * e2).sum(1)
    dp1, dp2 = (d * e1).sum(1), (d * e2).sum(1)
    den = np.where(ok, d11 * d22 - d12 * d12, 1.0)
    u = (d22 * dp1 - d12 * dp2) / den
    v = (d11 * dp2 - d12 * dp1) / den
    eps = 1e-6
    return bool(np.any(ok & (plane < tol) & (u >= -eps) & (v >= -eps) & (u + v <= 1 + eps)))


@pytest.fixture(scope="module")
def reach_env():
    env = TwinEnv("reach", control_mode="discrete")
    env.reset(seed=3)
    yield env
    env.close()


# ---------------------------------------------------------------------------------------------
# synthetic point clouds
# ---------------------------------------------------------------------------------------------


def test_synthetic_cloud_lies_on_geom_surfaces(reach_env):
    sim = reach_env.sim
    m = sim.model
    pts, gids = synthetic_point_cloud(sim, 6000, np.random.default_rng(0), return_geoms=True)
    assert pts.shape == (6000, 6) and pts.dtype == np.float32
    lo, hi = (np.asarray(b) for b in sim.scene.workspace)
    assert np.all(pts[:, :3] >= lo - 1e-6) and np.all(pts[:, :3] <= hi + 1e-6)
    table = sampling_table(m)
    seen = set()
    for gid in np.unique(gids):
        sel = gids == gid
        xyz = pts[sel, :3].astype(np.float64)
        loc = _local(sim, gid, xyz)
        size = m.geom_size[gid]
        t = m.geom_type[gid]
        name = m.geom(gid).name
        seen.add(name)
        # Colour = the table's colour of that geom (MuJoCo's rgba/material rule).
        row = int(np.flatnonzero(table.geom_ids == gid)[0])
        np.testing.assert_allclose(pts[sel, 3:], np.broadcast_to(table.colors[row], (int(sel.sum()), 3)), atol=1e-6)
        if t == mujoco.mjtGeom.mjGEOM_BOX:
            excess = np.abs(loc) - size  # <= 0 inside, one component == 0 on a face
            assert np.all(excess <= 1e-5), name
            assert np.all(np.abs(excess.max(axis=1)) <= 1e-5), name
        elif t == mujoco.mjtGeom.mjGEOM_CYLINDER:
            r = np.linalg.norm(loc[:, :2], axis=1)
            assert np.all(r <= size[0] + 1e-5) and np.all(np.abs(loc[:, 2]) <= size[1] + 1e-5), name
            on_side = np.abs(r - size[0]) <= 1e-5
            on_cap = np.abs(np.abs(loc[:, 2]) - size[1]) <= 1e-5
            assert np.all(on_side | on_cap), name
        elif t == mujoco.mjtGeom.mjGEOM_MESH:
            mid = m.geom_dataid[gid]
            va, nv = m.mesh_vertadr[mid], m.mesh_vertnum[mid]
            fa, nf = m.mesh_faceadr[mid], m.mesh_facenum[mid]
            verts = m.mesh_vert[va : va + nv].astype(np.float64)
            faces = m.mesh_face[fa : fa + nf]
            for p in loc[:20]:
                assert _on_mesh(p, verts, faces), name
    # The scene's objects all show up; the floor plane (z = -0.75) is outside the crop box.
    assert {"mug_body", "mug_handle", "table_top", "sink_bottom"} <= seen
    assert "floor" not in seen

    # Mug points: on the 3 cm cylinder (or its handle) around the mug's axis, in mug red.
    mug = m.geom("mug_body").id
    mug_pts = pts[gids == mug]
    assert len(mug_pts) > 0
    axis_xy = sim.data.geom_xpos[mug][:2]
    assert np.all(np.linalg.norm(mug_pts[:, :2] - axis_xy, axis=1) <= 0.03 + 1e-5)
    np.testing.assert_allclose(mug_pts[:, 3:], np.broadcast_to(MUG_RGB, mug_pts[:, 3:].shape), atol=1e-6)
    # Table top: a 4 cm slab whose top face is the table surface z = 0.
    top = pts[gids == m.geom("table_top").id]
    assert np.all((top[:, 2] >= -0.04 - 1e-5) & (top[:, 2] <= 1e-5))
    frac_top = np.mean(np.abs(top[:, 2]) < 1e-5)
    assert 0.4 < frac_top < 0.6  # top and bottom faces have the same area; the sides are thin
    # Textured table: rgba x the checker texture's mean colour (what the renderer shows).
    assert np.all(top[:, 3:] < np.asarray(m.geom_rgba[m.geom("table_top").id][:3]))


def test_synthetic_cloud_is_area_uniform_with_planes_and_meshes():
    xml = """
    <mujoco>
      <asset><mesh name="tet" vertex="0 0 0  0.2 0 0  0 0.2 0  0 0 0.2"/></asset>
      <worldbody>
        <geom name="ground" type="plane" size="0 0 1" rgba="0.2 0.3 0.4 1"/>
        <geom name="slab" type="box" pos="0 0 0.5" size="0.4 0.1 0.05" rgba="1 0 0 1"/>
        <geom name="ball" type="sphere" pos="0.5 0.5 0.5" size="0.1" rgba="0 1 0 1"/>
        <geom name="pill" type="capsule" pos="-0.5 0.5 0.5" size="0.05 0.1" rgba="0 0 1 1"/>
        <geom name="tetra" type="mesh" mesh="tet" pos="0.5 -0.5 0.3" rgba="1 1 0 1"/>
        <geom name="hidden" type="box" pos="0 0 0.8" size="0.1 0.1 0.1" group="3"/>
      </worldbody>
    </mujoco>"""
    model = mujoco.MjModel.from_xml_string(xml)
    data = mujoco.MjData(model)
    mujoco.mj_forward(model, data)
    box = ((-1.0, -1.0, -0.1), (1.0, 1.0, 1.0))
    sim = SimpleNamespace(model=model, data=data)
    pts, gids = synthetic_point_cloud(sim, 40000, 1, workspace=box, return_geoms=True)
    names = [model.geom(g).name for g in gids]
    assert "hidden" not in names  # group 3 is not rendered, so not sampled
    areas = surface_area(sim, workspace=box)
    assert areas["ground"] == pytest.approx(4.0)  # the infinite plane is sampled inside the box only
    assert areas["slab"] == pytest.approx(8 * (0.04 + 0.005 + 0.02))
    assert areas["ball"] == pytest.approx(4 * np.pi * 0.01)
    assert areas["pill"] == pytest.approx(4 * np.pi * 0.05**2 + 4 * np.pi * 0.05 * 0.1)
    assert areas["tetra"] == pytest.approx(3 * 0.5 * 0.2 * 0.2 + np.sqrt(3) / 4 * (0.2 * np.sqrt(2)) ** 2, rel=1e-6)
    total = sum(areas.values())
    for name, area in areas.items():
        frac = names.count(name) / len(names)
        assert frac == pytest.approx(area / total, abs=0.01), name
    ground = pts[np.array(names) == "ground"]
    assert np.all(np.abs(ground[:, 2]) < 1e-6) and np.all(np.abs(ground[:, :2]) <= 1.0)
    np.testing.assert_allclose(ground[:, 3:], np.broadcast_to((0.2, 0.3, 0.4), ground[:, 3:].shape), atol=1e-6)
    ball = pts[np.array(names) == "ball"]
    np.testing.assert_allclose(np.linalg.norm(ball[:, :3] - (0.5, 0.5, 0.5), axis=1), 0.1, atol=1e-6)
    pill = pts[np.array(names) == "pill"][:, :3] - (-0.5, 0.5, 0.5)
    seg_z = np.clip(pill[:, 2], -0.1, 0.1)  # capsule = points at distance r from its axis segment
    d = np.linalg.norm(pill - np.stack([np.zeros_like(seg_z), np.zeros_like(seg_z), seg_z], 1), axis=1)
    np.testing.assert_allclose(d, 0.05, atol=1e-6)
    # Slab faces are hit in proportion to their areas (top + bottom: 0.32 of 0.52 m^2).
    slab = pts[np.array(names) == "slab"][:, :3] - (0, 0, 0.5)
    on_tb = np.mean(np.abs(np.abs(slab[:, 2]) - 0.05) < 1e-6)
    assert on_tb == pytest.approx(0.32 / 0.52, abs=0.03)


def test_synthetic_cloud_options_and_speed(reach_env):
    sim = reach_env.sim
    a = synthetic_point_cloud(sim, 512, 7)
    b = synthetic_point_cloud(sim, 512, 7)
    np.testing.assert_array_equal(a, b)  # seeded
    _, gids = synthetic_point_cloud(sim, 3000, 0, include_robot=False, return_geoms=True)
    robot_bodies = {b for b in range(sim.model.nbody) if sim.model.body(b).name.startswith("panda_")}
    assert not any(sim.model.geom_bodyid[g] in robot_bodies for g in gids)
    _, gids = synthetic_point_cloud(sim, 3000, 0, return_geoms=True)
    assert any(sim.model.geom_bodyid[g] in robot_bodies for g in gids)
    # Tight crop box: only the mug's neighbourhood; still exactly num_points.
    mug = sim.body_pose("mug")[:3]
    box = (tuple(mug - 0.05), tuple(mug + 0.05))
    pts = synthetic_point_cloud(sim, 256, 0, workspace=box)
    assert pts.shape == (256, 6)
    assert np.all(np.abs(pts[:, :3] - mug) <= 0.05 + 1e-6)
    # Nothing visible in the box: zeros, like the rendered cloud.
    assert not synthetic_point_cloud(sim, 64, 0, workspace=((5, 5, 5), (6, 6, 6))).any()
    # The sampling table is cached per model: a call costs milliseconds.
    assert sampling_table(sim.model) is sampling_table(sim.model)
    rng = np.random.default_rng(0)
    synthetic_point_cloud(sim, 2048, rng)
    t0 = time.perf_counter()
    for _ in range(20):
        synthetic_point_cloud(sim, 2048, rng)
    per_call = (time.perf_counter() - t0) / 20
    assert per_call < 0.03, f"{per_call * 1e3:.1f} ms per 2048-point cloud"


def test_synthetic_cloud_agrees_with_rendered_cloud():
    env = TwinEnv(
        "reach",
        control_mode="discrete",
        observations=ObservationCfg(point_cloud=True, num_points=1024, image_size=(96, 72)),
    )
    try:
        obs, _ = env.reset(seed=11)
        rendered = obs["point_cloud"]
        synthetic = synthetic_point_cloud(env.sim, 4096, 0)
        mug = env.sim.body_pose("mug")[:3]

        def red(pc):
            return pc[(pc[:, 3] > 0.5) & (pc[:, 4] < 0.4) & (pc[:, 5] < 0.4)]

        r, s = red(rendered), red(synthetic)
        assert len(r) > 0 and len(s) > 0
        # Both see the mug where it is (rendered: its camera-facing side; synthetic: all of it).
        assert np.linalg.norm(r[:, :2].mean(0) - mug[:2]) < 0.03
        assert np.linalg.norm(s[:, :2].mean(0) - mug[:2]) < 0.01
        # Same frame and crop: the clouds span the same table region.
        for pc in (rendered, synthetic):
            assert np.all(pc[:, 2] >= env.scene.workspace[0][2] - 1e-6)
        assert abs(np.median(rendered[:, 2]) - np.median(synthetic[:, 2])) < 0.1
        # Only the synthetic cloud is fully observed: the table's underside (z = -4 cm).
        assert np.mean(synthetic[:, 2] < -0.035) > 0.1
        assert np.mean(rendered[:, 2] < -0.035) < 0.01

        # Camera-facing surfaces inside the camera views, lit like the renderer: the same
        # region and colours as the rendered cloud (still no occlusion).
        lit = synthetic_point_cloud(env.sim, 4096, 0, viewpoints="cameras", shading=True)
        assert np.mean(lit[:, 2] < -0.035) < 0.01
        assert np.linalg.norm(lit[:, :2].mean(0) - rendered[:, :2].mean(0)) < 0.15
        assert np.linalg.norm(red(lit)[:, :2].mean(0) - mug[:2]) < 0.02

        def table_rgb(pc):
            near = (np.abs(pc[:, 2]) < 0.003) & (np.abs(pc[:, 0] - 0.5) < 0.25) & (np.abs(pc[:, 1]) < 0.1)
            return pc[near, 3:].mean(0)

        np.testing.assert_allclose(table_rgb(lit), table_rgb(rendered), atol=0.08)
        assert np.all(table_rgb(synthetic) < table_rgb(rendered) - 0.05)  # unlit geom colours are darker
    finally:
        env.close()


def test_camera_viewpoints_keep_what_faces_a_camera_inside_its_view(reach_env):
    from twin.render import intrinsics_for

    sim = reach_env.sim
    m, d = sim.model, sim.data
    pts, gids = synthetic_point_cloud(sim, 3000, 0, viewpoints="cameras", return_geoms=True)
    seen = np.zeros(len(pts), dtype=bool)
    for cam in range(m.ncam):
        w, h = m.cam_resolution[cam]
        k = intrinsics_for(m, cam, int(w), int(h))
        rot = d.cam_xmat[cam].reshape(3, 3)
        local = (pts[:, :3] - d.cam_xpos[cam]) @ rot  # MuJoCo camera: x right, y up, looks along -z
        z = -local[:, 2]
        u = k[0, 0] * local[:, 0] / z + k[0, 2]
        v = -k[1, 1] * local[:, 1] / z + k[1, 2]
        seen |= (z > 0) & (u >= -1) & (u <= w + 1) & (v >= -1) & (v <= h + 1)
    assert seen.all()
    # Back faces are culled: nothing of the table's underside or of the mug's bottom cap.
    top = m.geom("table_top").id
    assert not np.any((gids == top) & (pts[:, 2] < -0.035))
    mug = m.geom("mug_body").id
    assert not np.any((gids == mug) & (pts[:, 2] < sim.data.geom_xpos[mug][2] - 0.045 + 1e-4))
    with pytest.raises(ValueError, match="viewpoints"):
        synthetic_point_cloud(sim, 16, 0, viewpoints="everywhere")


# ---------------------------------------------------------------------------------------------
# DAgger distillation
# ---------------------------------------------------------------------------------------------

# The main distillation run (shared by the tests below): reach, CASHER's 14 discrete actions,
# the task's scripted expert as the teacher, half of the episodes with synthetic clouds.
# 5 rounds, not 4: after round 4 the student succeeds on only 0.53-0.70 of 30 seeds (torch
# seeds 0-2), i.e. right at the 0.6 bar below, and the 10-seed estimate flipped between
# machines (0.5 / 0.7 / 0.9); after round 5 it is 0.83-0.97. 30 evaluation seeds: a binomial
# estimate with a usable interval (+-0.07 at p = 0.85, not +-0.15 as with 10).
MAIN = dict(
    iterations=5,
    episodes_per_iter=8,
    synthetic_fraction=0.5,
    num_points=512,
    image_size=(64, 48),
    epochs_per_iter=30,
    batch_size=32,
    lr=3e-3,
    eval_episodes=30,
    eval_every=0,
    seed=0,
)
STUDENT = {"point_mlp": (32, 64), "hidden_sizes": (128, 128)}


def _student(cfg: DistillConfig, config=STUDENT):
    env = TwinEnv("reach", control_mode="discrete", observations=cfg.observations())
    try:
        spec = PolicySpec.from_env(env, obs_keys=["point_cloud", "proprio"], task="reach")
    finally:
        env.close()
    return make_policy("pointcloud", config, spec)


@pytest.fixture(scope="module")
def distilled(tmp_path_factory):
    torch.manual_seed(0)
    cfg = DistillConfig(**MAIN)
    student = _student(cfg)
    state = DistillState()
    path = tmp_path_factory.mktemp("distill") / "dagger.h5"
    calls = []
    t0 = time.perf_counter()
    history = distill(
        student,
        "expert",
        "reach",
        cfg,
        control_mode="discrete",
        dataset_path=path,
        state=state,
        callback=lambda i, m: calls.append((i, dict(m))),
    )
    return SimpleNamespace(
        cfg=cfg, student=student, state=state, history=history, calls=calls, path=path, seconds=time.perf_counter() - t0
    )


# The three tests below share one distillation run (~100 s on an idle 2-core CPU, 4 DAgger
# rounds + 10 eval seeds took ~55 s): marked slow, still part of `make test`.
@pytest.mark.slow
def test_distilled_student_reaches_most_of_teacher_success(distilled):
    last = distilled.history[-1]
    teacher, student = last["distill/teacher_success"], last["eval/success_rate"]
    print(
        f"teacher {teacher:.2f} student {student:.2f} agreement {last['distill/agreement']:.2f} "
        f"({distilled.seconds:.0f} s)"
    )
    # Both measured on the same 30 fixed seeds (10000-10029); the student sees RENDERED clouds
    # only. Measured 2026-12-04 on a 2-core CPU (torch 2.13, mujoco 4.0), torch seed x torch
    # threads: teacher 1.0 in all; student / agreement (0, 1) 0.97 / 0.94, (1, 1) 0.83 / 0.97,
    # (2, 1) 0.83 / 0.93, (0, 2) 0.93 / 0.98, (1, 2) 0.90 / 0.98, (2, 2) 0.83 / 0.97; with
    # DistillConfig seed=1 (other episodes and shuffling) 0.87 / 0.86. The bar
    # (18 of 30 seeds) is 7 seeds below the worst of these (P(< 18/30 | p = 0.83) < 1e-3); an
    # untrained student scores 0/30 and the one after round 1 (teacher data only, agreement
    # 0.48) 0/30, so the bar still catches a distillation that does not work.
    assert teacher >= 0.9
    assert student >= 0.6 * teacher, f"student {student:.2f} < 0.6 x teacher {teacher:.2f}"
    assert last["distill/agreement"] > 0.8
    assert distilled.history[-1]["loss/bc"] < distilled.history[0]["loss/bc"]


@pytest.mark.slow
def test_dagger_aggregates_and_keeps_earlier_rounds(distilled):
    cfg, state, hist = distilled.cfg, distilled.state, distilled.history
    E = cfg.episodes_per_iter
    assert [i for i, _ in distilled.calls] == list(range(cfg.iterations))
    assert state.rounds == [i for i in range(cfg.iterations) for _ in range(E)]
    sizes = [h["dataset/transitions"] for h in hist]
    assert all(b > a for a, b in zip(sizes, sizes[1:])), sizes  # the dataset grows every round...
    for i, h in enumerate(hist):  # ...and each round trains on everything gathered so far
        assert h["dataset/episodes"] == (i + 1) * E
        assert h["dataset/transitions"] == sum(ep.length for ep in state.episodes[: (i + 1) * E])
    # The aggregate is on disk, round by round, labels = the teacher's actions.
    info = dataset_info(distilled.path)
    assert info["episodes"] == cfg.iterations * E and info["transitions"] == int(sizes[-1])
    on_disk = list(iter_episodes(distilled.path))
    for j, (ep, mem) in enumerate(zip(on_disk, state.episodes)):
        assert f"round={state.rounds[j]}," in ep.source
        np.testing.assert_array_equal(ep.actions, mem.actions)
        np.testing.assert_array_equal(ep.obs["point_cloud"], mem.obs["point_cloud"])
        assert ep.obs["point_cloud"].shape[1:] == (cfg.num_points, 6)
    # beta schedule: round 0 executes the teacher only, later rounds mostly the student.
    assert hist[0]["beta"] == 1.0 and hist[0]["rollout/student_step_fraction"] == 0.0
    assert hist[0]["rollout/success_rate"] >= 0.75  # the scripted expert solves reach
    for i in range(1, cfg.iterations):
        assert hist[i]["beta"] == pytest.approx(0.5**i)
        assert abs(hist[i]["rollout/student_step_fraction"] - (1 - 0.5**i)) < 0.2


@pytest.mark.slow
def test_synthetic_clouds_for_the_requested_fraction_of_episodes(distilled):
    cfg, state = distilled.cfg, distilled.state
    n_syn = cfg.synthetic_episodes()
    assert n_syn == cfg.episodes_per_iter // 2  # CASHER: half rendered, half synthetic
    for i in range(cfg.iterations):
        kinds = [s for s, r in zip(state.synthetic, state.rounds) if r == i]
        assert sum(kinds) == n_syn
        assert distilled.history[i]["synthetic_episodes"] == n_syn
    for ep, syn in zip(state.episodes, state.synthetic):
        assert ("cloud=synthetic" in ep.source) == syn
        pc = ep.obs["point_cloud"]
        # Synthetic clouds are sampled from the geoms: exact geom colours times the lights,
        # surfaces outside the camera views' occlusion included; rendered ones come from the
        # depth images (rgb quantised to 1/255).
        quantised = np.allclose(np.round(pc[..., 3:] * 255), pc[..., 3:] * 255, atol=1e-3)
        assert quantised == (not syn)


def test_rollout_labels_with_the_teacher_while_the_student_drives():
    """beta = 0: the student's action is executed at every step, the label is the teacher's."""
    env = TwinEnv("reach", control_mode="discrete")
    try:
        cfg = DistillConfig(num_points=256)
        spec = _student(cfg).spec
        idle = CallablePolicy(lambda obs: np.full(len(obs["proprio"]), 12), spec)  # "open": never moves
        ep, stats = rollout_episode(
            env, ExpertTeacher(), idle, 5, 0.0, np.random.default_rng(0), synthetic=True, num_points=256
        )
        assert stats.student_steps == stats.steps == ep.length == env.cfg.terminations.max_steps
        assert not stats.success
        # The arm never moved, so the expert keeps asking for its first move (down, action 5).
        assert set(ep.actions.tolist()) == {5}
        np.testing.assert_allclose(ep.obs["proprio"][0], ep.obs["proprio"][-1], atol=2e-3)
        assert ep.obs["point_cloud"].shape == (ep.length, 256, 6)
    finally:
        env.close()


def test_state_policy_checkpoint_as_teacher(tmp_path):
    """A state-based policy (CASHER's PPO teacher: an mlp over obs['state']) labels the data."""
    env = TwinEnv("reach", control_mode="discrete")
    torch.manual_seed(1)
    teacher = make_policy("mlp", {"hidden_sizes": (32, 32)}, PolicySpec.from_env(env, obs_keys=["state"]))
    env.close()
    save_checkpoint(teacher, tmp_path / "teacher", training_step=1)
    cfg = DistillConfig(
        iterations=1,
        episodes_per_iter=2,
        synthetic_fraction=1.0,
        num_points=128,
        epochs_per_iter=1,
        eval_episodes=0,
        teacher=str(tmp_path / "teacher"),
    )
    student = _student(cfg, {"point_mlp": (16,), "hidden_sizes": (32,)})
    state = DistillState()
    hist = distill(student, cfg.teacher, "reach", cfg, control_mode="discrete", state=state)
    assert len(hist) == 1 and len(state.episodes) == 2 and all(state.synthetic)
    loaded = load_checkpoint(tmp_path / "teacher")
    for ep in state.episodes:
        assert "teacher=checkpoint:teacher" in ep.source
        np.testing.assert_array_equal(ep.actions, loaded.act({"state": ep.obs["state"]}))
    with pytest.raises(ConfigError, match="state-based"):
        make_teacher(student)
    with pytest.raises(ConfigError, match="expert"):
        make_teacher(str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="unknown config field"):
        DistillConfig.from_dict({"iterations": 2, "episodes": 3})
    with pytest.raises(ConfigError, match="synthetic_fraction"):
        DistillConfig(synthetic_fraction=1.5)


def test_run_training_distill_registers_a_checkpoint_per_round(tmp_path):
    import mlflow

    from policies.train import TrainConfig, TrainConfigError, run_training

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cfg = TrainConfig(
        algo="distill",
        task="reach",
        policy="pointcloud",
        obs_keys=["point_cloud", "proprio"],
        policy_config={"point_mlp": [16, 32], "hidden_sizes": [32]},
        eval_episodes=1,
        # synthetic clouds only in the rollouts (cheap); the evaluation renders
        distill={
            "iterations": 2,
            "episodes_per_iter": 2,
            "synthetic_fraction": 1.0,
            "num_points": 128,
            "image_size": [64, 48],
            "epochs_per_iter": 2,
            "batch_size": 32,
        },
        model_name="reach-distill-test",
    )
    res = run_training(cfg, tmp_path / "run", tracking_uri=uri)
    assert [r.step for r in res.checkpoints] == [1, 2]
    assert len(res.history) == 2
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    versions = client.search_model_versions("name='reach-distill-test'")
    assert len(versions) == 2
    for v in versions:
        assert v.run_id == res.run_id
        policy = load_checkpoint(v.tags["checkpoint_dir"])
        assert policy.policy_name == "pointcloud"
        assert policy.spec.obs_keys == ["point_cloud", "proprio"]
        assert policy.spec.obs("point_cloud").shape == (128, 6)
        extra = policy.checkpoint_info["extra"]
        assert extra["algo"] == "distill" and extra["teacher"] == "expert"
        assert extra["distill_round"] == int(v.tags["training_step"])
    for key in ("eval/success_rate", "loss/bc", "distill/teacher_success", "distill/agreement", "dataset/transitions"):
        hist = client.get_metric_history(res.run_id, key)
        assert [m.step for m in hist] == [1, 2], key
    teacher = client.get_metric_history(res.run_id, "distill/teacher_success")
    assert teacher[0].value == 1.0  # the scripted expert solves reach
    sizes = [m.value for m in client.get_metric_history(res.run_id, "dataset/transitions")]
    assert sizes[1] > sizes[0]
    info = dataset_info(tmp_path / "run" / "distill_dataset.h5")
    assert info["episodes"] == 4 and info["task"] == "reach" and info["control_mode"] == "discrete"
    assert all("cloud=synthetic" in ep.source for ep in iter_episodes(tmp_path / "run" / "distill_dataset.h5"))
    with pytest.raises(TrainConfigError, match="distill"):
        run_training(
            TrainConfig(algo="distill", task="reach", policy="pointcloud", distill={"bogus": 1}),
            tmp_path / "bad",
            tracking_uri=uri,
        )
