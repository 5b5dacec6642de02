"""Scanned scenes on real trimesh + MuJoCo: a concave bowl scan collides as a bowl with voxel
collision (and as a filled hull without), in every supported file format."""

import math
from pathlib import Path

import numpy as np
import pytest
import trimesh

from twin.cell import franka_cell
from twin.compile import compile_scene
from twin.scan import add_scan, scan_body, voxel_boxes
from twin.scene import BodyCfg, GeomCfg, JointCfg, Pose, SceneError
from twin.sim import TwinSim
from twin.usd_io import read_scene_usd, write_scene_usd

BOWL_RADIUS = 0.15
BOWL_POS = (0.5, -0.3, 0.0)
BALL_RADIUS = 0.02
COLOR = (30, 120, 200, 255)


@pytest.fixture(scope="module")
def bowl_files(tmp_path_factory) -> dict[str, Path]:
    """An open hemispherical bowl (concave, one surface) resting on z = 0, coloured per
    vertex, exported as OBJ, GLB and PLY."""
    folder = tmp_path_factory.mktemp("scan")
    sphere = trimesh.creation.icosphere(subdivisions=4, radius=BOWL_RADIUS)
    bowl = trimesh.Trimesh(sphere.vertices, sphere.faces[sphere.triangles_center[:, 2] < 0.0])
    bowl.remove_unreferenced_vertices()
    bowl.apply_translation((0.0, 0.0, BOWL_RADIUS))
    bowl.visual.vertex_colors = np.tile(COLOR, (len(bowl.vertices), 1))
    files = {}
    for ext in ("obj", "glb", "ply"):
        files[ext] = folder / f"bowl.{ext}"
        bowl.export(files[ext])
    return files


def drop_ball(scene, start_xy=(0.02, 0.0), seconds=1.0) -> np.ndarray:
    """Drop a small free sphere above the bowl centre and return where it rests (world)."""
    scene.bodies.append(
        BodyCfg(
            name="ball",
            kind="object",
            joint=JointCfg(type="free"),
            mass=0.05,
            pose=Pose(pos=(BOWL_POS[0] + start_xy[0], BOWL_POS[1] + start_xy[1], 0.35)),
            geoms=[GeomCfg(type="sphere", size=(BALL_RADIUS,), friction=0.8)],
        )
    )
    sim = TwinSim(scene)
    sim.reset_robot()
    steps = int(round(seconds / sim.model.opt.timestep))
    assert sim.step(steps)
    assert np.abs(sim.data.qvel[sim.model.jnt_dofadr[sim.model.joint("ball_free").id] :][:6]).max() < 0.05
    return sim.body_pose("ball")[:3]


@pytest.mark.parametrize("ext", ["obj", "glb", "ply"])
def test_voxel_collision_holds_a_ball_inside_the_concave_scan(bowl_files, ext):
    scene = add_scan(
        franka_cell(), bowl_files[ext], pose=Pose(pos=BOWL_POS), sites={"bowl": (*BOWL_POS[:2], 0.08, 0.1, 0.1, 0.07)}
    )
    scan = scene.body("scan")
    assert scan.kind == "scan" and scan.joint is None
    visual, boxes = scan.geoms[0], scan.geoms[1:]
    assert visual.type == "mesh" and not visual.collide and visual.visible
    assert visual.rgba == pytest.approx((*(c / 255 for c in COLOR[:3]), 1.0))
    assert 20 < len(boxes) < 2000
    assert all(g.type == "box" and g.collide and not g.visible for g in boxes)
    rest = drop_ball(scene)
    # Inside the bowl: near the bottom (z = 0), well below the rim (z = 0.15).
    assert rest[2] < 0.06
    assert np.hypot(rest[0] - BOWL_POS[0], rest[1] - BOWL_POS[1]) < BOWL_RADIUS - BALL_RADIUS
    site = scene.site("bowl")
    assert np.all(np.abs(rest - np.array(site.pos)) <= np.array(site.half_extents))


def test_hull_collision_fills_the_concavity(bowl_files):
    scene = add_scan(franka_cell(), bowl_files["obj"], pose=Pose(pos=BOWL_POS), collision="hull")
    (geom,) = scene.body("scan").geoms
    assert geom.type == "mesh" and geom.collide
    rest = drop_ball(scene)
    # MuJoCo collides the mesh as its convex hull: the ball sits on the rim plane.
    assert rest[2] == pytest.approx(BOWL_RADIUS + BALL_RADIUS, abs=0.01)


def test_scan_scale_pose_and_up_axis(bowl_files):
    body = scan_body(bowl_files["ply"], name="sink_scan", pose=Pose(pos=(1.0, 2.0, 3.0)), scale=2.0, voxel_pitch=0.04)
    assert body.geoms[0].mesh_scale == (2.0, 2.0, 2.0)
    assert Path(body.geoms[0].mesh).is_absolute()
    centers = np.array([g.pose.pos for g in body.geoms[1:]])
    halves = np.array([g.size for g in body.geoms[1:]])
    lo, hi = (centers - halves).min(axis=0), (centers + halves).max(axis=0)
    # The scaled bowl spans +-0.3 m in x/y and 0..0.3 m in z (plus half a voxel of padding).
    np.testing.assert_allclose(lo, (-0.3, -0.3, 0.0), atol=0.04)
    np.testing.assert_allclose(hi, (0.3, 0.3, 0.3), atol=0.04)
    y_up = scan_body(bowl_files["ply"], up_axis="y", pose=Pose(quat=(1.0, 0.0, 0.0, 0.0)))
    assert y_up.pose.quat == pytest.approx((math.cos(math.pi / 4), math.sin(math.pi / 4), 0.0, 0.0))


def test_textured_scan_takes_its_mean_texture_colour(tmp_path):
    from PIL import Image

    box = trimesh.creation.box(extents=(0.2, 0.2, 0.1))
    box.visual = trimesh.visual.TextureVisuals(
        uv=np.full((len(box.vertices), 2), 0.5), image=Image.new("RGB", (4, 4), (10, 200, 30))
    )
    box.export(tmp_path / "textured.glb")
    body = scan_body(tmp_path / "textured.glb", collision="hull")
    assert body.geoms[0].rgba == pytest.approx((10 / 255, 200 / 255, 30 / 255, 1.0))


def test_voxel_boxes_cover_exactly_the_filled_voxels():
    mesh = trimesh.creation.annulus(r_min=0.08, r_max=0.1, height=0.05)
    pitch = 0.01
    grid = mesh.voxelized(pitch)
    boxes = voxel_boxes(mesh, pitch)
    assert len(boxes) < grid.filled_count / 3  # runs were merged
    volume = sum(8 * h[0] * h[1] * h[2] for _, h in boxes)
    assert volume == pytest.approx(grid.filled_count * pitch**3, rel=1e-9)
    # Every voxel centre lies in exactly one box.
    centers = np.array([c for c, _ in boxes])
    halves = np.array([h for _, h in boxes])
    inside = np.all(np.abs(grid.points[:, None, :] - centers[None]) < halves[None] + 1e-9, axis=2)
    assert np.all(inside.sum(axis=1) == 1)


def test_add_scan_copies_the_scene_and_adds_sites(bowl_files):
    base = franka_cell()
    scene = add_scan(
        base,
        bowl_files["obj"],
        pose=Pose(pos=BOWL_POS),
        sites={"sink": (0.5, -0.3, 0.08, 0.1, 0.1, 0.07), "drop": (0.4, 0.0, 0.1)},
    )
    assert "scan" not in [b.name for b in base.bodies] and not base.sites
    assert scene.site("sink").half_extents == (0.1, 0.1, 0.07)
    assert scene.site("drop").half_extents == (0.01, 0.01, 0.01) and scene.site("drop").body == ""
    model = compile_scene(scene).model
    assert model.site("sink").id >= 0
    with pytest.raises(SceneError, match="already has a body 'scan'"):
        add_scan(scene, bowl_files["obj"])
    with pytest.raises(SceneError, match="already has a site"):
        add_scan(scene, bowl_files["obj"], name="scan2", sites={"sink": (0.0, 0.0, 0.0)})
    with pytest.raises(SceneError, match=r"site 'bad'.*\(x, y, z\)"):
        add_scan(base, bowl_files["obj"], sites={"bad": (0.0, 0.0)})
    with pytest.raises(SceneError, match="half-extents"):
        add_scan(base, bowl_files["obj"], sites={"bad": (0.0, 0.0, 0.0, 0.1, -0.1, 0.1)})


def test_scanned_scene_round_trips_through_usd(bowl_files, tmp_path):
    scene = add_scan(franka_cell(), bowl_files["glb"], pose=Pose(pos=BOWL_POS), sites={"bowl": (0.5, -0.3, 0.08)})
    back = read_scene_usd(write_scene_usd(scene, tmp_path / "scan.usd"))
    assert back.to_dict() == scene.to_dict()


def test_bad_scans_raise_scene_error(tmp_path, bowl_files):
    with pytest.raises(SceneError, match="file not found"):
        scan_body(tmp_path / "missing.obj")
    fbx = tmp_path / "room.fbx"
    fbx.write_bytes(b"fbx")
    with pytest.raises(SceneError, match=r"unsupported file type '\.fbx'"):
        scan_body(fbx)
    broken = tmp_path / "broken.glb"
    broken.write_bytes(b"not a glb at all")
    with pytest.raises(SceneError, match="could not be read as a mesh"):
        scan_body(broken)
    empty = tmp_path / "empty.obj"
    empty.write_text("# no geometry\n")
    with pytest.raises(SceneError, match="no triangles"):
        scan_body(empty)
    for scale in (0.0, -1.0, float("nan")):
        with pytest.raises(SceneError, match="scale"):
            scan_body(bowl_files["obj"], scale=scale)
    with pytest.raises(SceneError, match="collision = 'sdf'"):
        scan_body(bowl_files["obj"], collision="sdf")  # type: ignore[arg-type]
    with pytest.raises(SceneError, match="voxel_pitch"):
        scan_body(bowl_files["obj"], voxel_pitch=0.0)
