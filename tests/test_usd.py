"""Scenes as USD (real usd-core, real MuJoCo): round trips, hand-authored stages, bad input,
and exports of compiled twins."""

import math
from pathlib import Path
from typing import Any

import mujoco
import numpy as np
import pytest
import trimesh
from pxr import Gf, Sdf, Usd, UsdGeom, UsdPhysics

from twin.cell import cabinet
from twin.compile import compile_scene
from twin.scene import (
    BodyCfg,
    GeomCfg,
    JointCfg,
    LightCfg,
    MarkerCfg,
    Pose,
    SceneCfg,
    SceneError,
    SiteCfg,
    TextureCfg,
    yaw_quat,
)
from twin.tasks import list_tasks, make_task
from twin.usd_io import export_compiled_usd, export_model_usd, read_scene_usd, write_scene_usd


def assert_same(a: Any, b: Any, path: str = "scene") -> None:
    """Structural equality of two to_dict() trees, floats up to 1e-9."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), path
        for k in a:
            assert_same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, type(a)) and len(a) == len(b), f"{path}: {a!r} != {b!r}"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{path}[{i}]")
    elif isinstance(a, float) or isinstance(b, float):
        assert b == pytest.approx(a, rel=1e-9, abs=1e-12), f"{path}: {a!r} != {b!r}"
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def task_scene() -> SceneCfg:
    return make_task("mug_to_sink").cfg.scene


def rich_scene(tmp_path: Path) -> SceneCfg:
    """The task scene plus every feature: hinge/slide joints, nested bodies, body sites,
    sphere/capsule/mesh geoms, textures, rotated poses, a directional shadow light, fiducial
    markers."""
    scene = task_scene()
    cab, cab_site = cabinet()
    scene.bodies.append(cab)
    scene.sites.append(cab_site)
    mesh_file = tmp_path / "part.obj"
    trimesh.creation.box(extents=(0.04, 0.06, 0.02)).export(mesh_file)
    scene.bodies.append(
        BodyCfg(
            name="drawer rail",
            kind="my custom kind",
            pose=Pose(pos=(0.2, 0.4, 0.1), quat=yaw_quat(0.4)),
            geoms=[
                GeomCfg(
                    type="capsule",
                    size=(0.01, 0.05),
                    pose=Pose(pos=(0.0, 0.0, 0.02), quat=(0.8, 0.6, 0.0, 0.0)),
                    rgba=(0.1, 0.2, 0.3, 0.5),
                )
            ],
            children=[
                BodyCfg(
                    name="drawer",
                    mass=0.3,
                    pose=Pose(pos=(0.05, 0.0, 0.0)),
                    joint=JointCfg(
                        name="drawer_slide",
                        type="slide",
                        axis=(1.0, 0.0, 0.0),
                        pos=(0.0, 0.01, 0.0),
                        range=(0.0, 0.2),
                        damping=2.0,
                        frictionloss=0.1,
                        stiffness=0.5,
                    ),
                    geoms=[
                        GeomCfg(type="sphere", size=(0.02,), friction=0.7, name=""),
                        GeomCfg(
                            type="mesh",
                            mesh=str(mesh_file),
                            mesh_scale=(1.0, 2.0, 0.5),
                            pose=Pose(pos=(0.0, 0.0, 0.03)),
                            name="handle mesh",
                        ),
                        GeomCfg(type="box", size=(0.01, 0.01, 0.01), collide=False, name="marker"),
                        GeomCfg(type="box", size=(0.03, 0.03, 0.001), visible=False, name="proxy"),
                    ],
                )
            ],
        )
    )
    scene.bodies[0].geoms[0].texture = TextureCfg(builtin="gradient", rgb1=(0.1, 0.2, 0.3), repeat=(2.0, 3.0))
    scene.floor_texture = TextureCfg(builtin="checker")
    scene.lights.append(
        LightCfg(
            name="sun",
            pos=(0.0, 0.0, 3.0),
            dir=(0.3, 0.1, -1.0),
            directional=True,
            castshadow=True,
            ambient=(0.2, 0.2, 0.2),
            specular=(0.0, 0.1, 0.0),
        )
    )
    scene.cameras[0].cx, scene.cameras[0].cy, scene.cameras[0].fy = 318.5, 244.25, 610.0
    scene.sites.append(SiteCfg(name="drop zone", pos=(0.3, 0.3, 0.05), half_extents=(0.05, 0.06, 0.07)))
    scene.markers += [
        MarkerCfg(id=7, size=0.04, body="mug", pose=Pose(pos=(0.0, 0.0, 0.0455), quat=yaw_quat(0.3))),
        MarkerCfg(id=586, size=0.015, body="drawer", pose=Pose(pos=(0.0, 0.0, 0.021), quat=(0.8, 0.6, 0.0, 0.0))),
    ]
    scene.physics.timestep = 0.001
    scene.workspace = ((-1.0, -1.0, -0.5), (1.0, 1.0, 1.5))
    scene.robot.base = Pose(pos=(0.0, 0.1, 0.0), quat=yaw_quat(0.1))
    scene.robot.kp = (4000.0,) * 7
    return scene


# ---- round trips --------------------------------------------------------------------------


def test_task_scene_round_trip_keeps_everything(tmp_path):
    scene = task_scene()
    path = write_scene_usd(scene, tmp_path / "scene.usda")
    back = read_scene_usd(path)
    assert_same(scene.to_dict(), back.to_dict())
    assert [b.name for b in back.iter_bodies()] == [b.name for b in scene.iter_bodies()]
    assert back.body("mug").mass == scene.body("mug").mass
    assert back.body("mug").joint.type == "free"
    cam, cam0 = back.camera("cam_left"), scene.camera("cam_left")
    assert (cam.fx, cam.fy, cam.cx, cam.cy, cam.width, cam.height) == (cam0.fx, cam0.fy, cam0.cx, cam0.cy, 640, 480)
    assert back.site("sink").half_extents == scene.site("sink").half_extents
    # The same scene through from_dict (floats everywhere) has the same digest.
    assert SceneCfg.from_dict(scene.to_dict()).digest() == back.digest()


@pytest.mark.parametrize("task", list_tasks())
def test_every_registered_task_scene_round_trips(tmp_path, task):
    scene = make_task(task).cfg.scene
    assert_same(scene.to_dict(), read_scene_usd(write_scene_usd(scene, tmp_path / f"{task}.usd")).to_dict())


@pytest.mark.parametrize("suffix", [".usda", ".usd"])
def test_rich_scene_round_trip(tmp_path, suffix):
    scene = rich_scene(tmp_path)
    back = read_scene_usd(write_scene_usd(scene, tmp_path / f"rich{suffix}"))
    assert_same(scene.to_dict(), back.to_dict())
    door = back.body("cabinet_door")
    assert door.joint.type == "hinge" and door.joint.axis == (0.0, 0.0, -1.0)
    assert door.joint.range == pytest.approx((0.0, 1.9))
    drawer = back.body("drawer")
    assert drawer.joint.type == "slide" and drawer.joint.damping == 2.0 and drawer.mass == 0.3
    assert [g.name for g in drawer.geoms] == ["", "handle mesh", "marker", "proxy"]
    assert back.body("drawer rail").kind == "my custom kind"
    assert back.site("cabinet_handle").body == "cabinet_door"
    assert back.lights[-1].directional and back.lights[-1].castshadow


def test_round_tripped_scene_compiles_to_the_same_model(tmp_path):
    for scene in (task_scene(), rich_scene(tmp_path)):
        back = read_scene_usd(write_scene_usd(scene, tmp_path / "s.usda"))
        m1, m2 = compile_scene(scene).model, compile_scene(back).model
        assert (m1.nbody, m1.ngeom, m1.njnt, m1.ncam, m1.nlight, m1.nsite) == (
            m2.nbody,
            m2.ngeom,
            m2.njnt,
            m2.ncam,
            m2.nlight,
            m2.nsite,
        )
        np.testing.assert_allclose(m2.body_mass, m1.body_mass, rtol=1e-12)
        np.testing.assert_allclose(m2.body_pos, m1.body_pos, atol=1e-12)
        np.testing.assert_allclose(m2.body_quat, m1.body_quat, atol=1e-12)
        np.testing.assert_allclose(m2.geom_size, m1.geom_size, atol=1e-12)
        np.testing.assert_array_equal(m2.jnt_type, m1.jnt_type)
        np.testing.assert_allclose(m2.jnt_range, m1.jnt_range, atol=1e-12)
        np.testing.assert_allclose(m2.cam_intrinsic, m1.cam_intrinsic, atol=1e-9)
        np.testing.assert_allclose(m2.cam_quat, m1.cam_quat, atol=1e-12)
        np.testing.assert_allclose(m2.site_pos, m1.site_pos, atol=1e-12)


def test_stage_uses_standard_schemas(tmp_path):
    scene = rich_scene(tmp_path)
    stage = Usd.Stage.Open(str(write_scene_usd(scene, tmp_path / "rich.usda")))
    assert stage.GetDefaultPrim().GetPath() == Sdf.Path("/World")
    assert UsdGeom.GetStageUpAxis(stage) == UsdGeom.Tokens.z and UsdGeom.GetStageMetersPerUnit(stage) == 1.0
    robot = stage.GetPrimAtPath("/World/Robot")
    assert list(robot.GetAttribute("twinrank:homeQpos").Get()) == list(scene.robot.home_qpos)
    mug = stage.GetPrimAtPath("/World/Bodies/mug")
    assert mug.HasAPI(UsdPhysics.RigidBodyAPI) and mug.HasAPI(UsdPhysics.MassAPI)
    assert UsdPhysics.MassAPI(mug).GetMassAttr().Get() == pytest.approx(0.2)
    top = UsdGeom.Cube(stage.GetPrimAtPath("/World/Bodies/table/table_top"))
    assert top.GetSizeAttr().Get() == 2.0
    cache = UsdGeom.XformCache()
    # A size-2 cube scaled by the half-extents spans the box: world bound = table top.
    bbox = UsdGeom.BBoxCache(Usd.TimeCode.Default(), ["default"])
    bound = bbox.ComputeWorldBound(top.GetPrim()).ComputeAlignedRange()
    np.testing.assert_allclose(bound.GetMin(), (0.45 - 0.6, -0.75, -0.04), atol=1e-6)
    np.testing.assert_allclose(bound.GetMax(), (0.45 + 0.6, 0.75, 0.0), atol=1e-6)
    hinge = stage.GetPrimAtPath("/World/Bodies/cabinet/cabinet_door/cabinet_door_hinge")
    assert hinge.IsA(UsdPhysics.RevoluteJoint)
    assert UsdPhysics.RevoluteJoint(hinge).GetUpperLimitAttr().Get() == pytest.approx(math.degrees(1.9), rel=1e-6)
    assert stage.GetPrimAtPath("/World/Bodies/drawer_rail/drawer/drawer_slide").IsA(UsdPhysics.PrismaticJoint)
    mesh = UsdGeom.Mesh(stage.GetPrimAtPath("/World/Bodies/drawer_rail/drawer/handle_mesh"))
    assert len(mesh.GetPointsAttr().Get()) == 8 and len(mesh.GetFaceVertexCountsAttr().Get()) == 12
    proxy = UsdGeom.Imageable(stage.GetPrimAtPath("/World/Bodies/drawer_rail/drawer/proxy"))
    assert proxy.GetPurposeAttr().Get() == UsdGeom.Tokens.guide
    marker = stage.GetPrimAtPath("/World/Bodies/drawer_rail/drawer/marker")
    assert UsdPhysics.CollisionAPI(marker).GetCollisionEnabledAttr().Get() is False
    # Camera apertures alone reproduce the intrinsics (no twinrank attributes needed).
    ucam = UsdGeom.Camera(stage.GetPrimAtPath("/World/Cameras/cam_left"))
    cam = scene.camera("cam_left")
    fl = ucam.GetFocalLengthAttr().Get()
    ha, va = ucam.GetHorizontalApertureAttr().Get(), ucam.GetVerticalApertureAttr().Get()
    h_off, v_off = ucam.GetHorizontalApertureOffsetAttr().Get(), ucam.GetVerticalApertureOffsetAttr().Get()
    assert fl / ha * cam.width == pytest.approx(cam.fx, rel=1e-6)
    assert fl / va * cam.height == pytest.approx(cam.fy, rel=1e-6)
    assert cam.width / 2 - h_off / ha * cam.width == pytest.approx(cam.cx, rel=1e-6)
    assert cam.height / 2 + v_off / va * cam.height == pytest.approx(cam.cy, rel=1e-6)
    # The camera prim looks at the target.
    m = cache.GetLocalToWorldTransform(ucam.GetPrim())
    forward = np.asarray(m.TransformDir(Gf.Vec3d(0, 0, -1)))
    expected = np.subtract(cam.target, cam.pos)
    np.testing.assert_allclose(forward / np.linalg.norm(forward), expected / np.linalg.norm(expected), atol=1e-9)


def test_edits_in_usd_tools_win_over_stored_values(tmp_path):
    path = write_scene_usd(task_scene(), tmp_path / "s.usda")
    stage = Usd.Stage.Open(str(path))
    top = UsdGeom.Gprim(stage.GetPrimAtPath("/World/Bodies/table/table_top"))
    top.GetDisplayColorPrimvar().Set([Gf.Vec3f(1.0, 0.0, 0.0)])
    UsdGeom.Camera(stage.GetPrimAtPath("/World/Cameras/cam_left")).GetFocalLengthAttr().Set(2 * 615.0 * 0.003)
    cam_xf = UsdGeom.Xformable(stage.GetPrimAtPath("/World/Cameras/cam_right"))
    cam_xf.GetOrderedXformOps()[1].Set(Gf.Quatd(1.0, 0.0, 0.0, 0.0))  # now looks straight down
    stage.GetRootLayer().Save()
    back = read_scene_usd(path)
    assert back.body("table").geoms[0].rgba == pytest.approx((1.0, 0.0, 0.0, 1.0))
    assert back.camera("cam_left").fx == pytest.approx(2 * 615.0, rel=1e-6)
    right = back.camera("cam_right")
    assert np.subtract(right.target, right.pos) == pytest.approx((0.0, 0.0, -1.0))
    compile_scene(back)


# ---- hand-authored stages -----------------------------------------------------------------

MINIMAL_USDA = """#usda 1.0
(
    defaultPrim = "World"
    upAxis = "Z"
    metersPerUnit = 1
)

def Xform "World"
{
    def Cube "crate"
    {
        double3 xformOp:translate = (0.5, 0.1, 0.05)
        float3 xformOp:scale = (0.05, 0.04, 0.05)
        uniform token[] xformOpOrder = ["xformOp:translate", "xformOp:scale"]
        color3f[] primvars:displayColor = [(0.8, 0.2, 0.2)]
    }

    def Sphere "ball" (
        prepend apiSchemas = ["PhysicsRigidBodyAPI", "PhysicsMassAPI"]
    )
    {
        double radius = 0.03
        float physics:mass = 0.1
        double3 xformOp:translate = (0.4, -0.1, 0.03)
        uniform token[] xformOpOrder = ["xformOp:translate"]
    }

    def Xform "shelf"
    {
        double3 xformOp:translate = (0.6, 0.3, 0)
        float xformOp:rotateZ = 90
        uniform token[] xformOpOrder = ["xformOp:translate", "xformOp:rotateZ"]

        def Cylinder "post"
        {
            double radius = 0.01
            double height = 0.3
            token axis = "X"
        }
    }

    def Camera "overhead"
    {
        float focalLength = 1.845
        float horizontalAperture = 1.92
        float verticalAperture = 1.44
        double3 xformOp:translate = (0.4, 0, 1.2)
        uniform token[] xformOpOrder = ["xformOp:translate"]
    }

    def DistantLight "sun"
    {
        color3f inputs:color = (0.9, 0.8, 0.7)
    }
}
"""


def test_hand_authored_minimal_stage_loads_and_compiles(tmp_path):
    path = tmp_path / "hand.usda"
    path.write_text(MINIMAL_USDA)
    scene = read_scene_usd(path)
    assert scene.name == "hand"
    crate = scene.body("crate")
    assert crate.joint is None and crate.kind == "fixture"
    assert crate.pose.pos == pytest.approx((0.5, 0.1, 0.05))
    assert crate.geoms[0].type == "box" and crate.geoms[0].size == pytest.approx((0.05, 0.04, 0.05))
    assert crate.geoms[0].rgba == pytest.approx((0.8, 0.2, 0.2, 1.0))
    assert crate.geoms[0].collide and crate.geoms[0].visible
    ball = scene.body("ball")
    assert ball.joint.type == "free" and ball.mass == pytest.approx(0.1) and ball.kind == "object"
    assert ball.geoms[0].size == pytest.approx((0.03,))
    shelf = scene.body("shelf")
    assert shelf.pose.quat == pytest.approx(yaw_quat(math.pi / 2))
    post = shelf.geoms[0]
    assert post.type == "cylinder" and post.size == pytest.approx((0.01, 0.15))
    # A cylinder along X: MuJoCo's z axis rotated onto x.
    rot = np.zeros(9)
    mujoco.mju_quat2Mat(rot, np.asarray(post.pose.quat))
    np.testing.assert_allclose(rot.reshape(3, 3)[:, 2], (1.0, 0.0, 0.0), atol=1e-9)
    cam = scene.camera("overhead")
    assert (cam.width, cam.height) == (640, 480)
    assert (cam.fx, cam.fy, cam.cx, cam.cy) == pytest.approx((615.0, 615.0, 320.0, 240.0), rel=1e-5)
    assert np.subtract(cam.target, cam.pos) == pytest.approx((0.0, 0.0, -1.0))
    sun = scene.lights[0]
    assert sun.directional and sun.dir == pytest.approx((0.0, 0.0, -1.0))
    assert sun.diffuse == pytest.approx((0.9, 0.8, 0.7), rel=1e-6)
    assert scene.robot.home_qpos == type(scene.robot)().home_qpos
    model = compile_scene(scene).model
    assert model.body("ball").mass[0] == pytest.approx(0.1)


# ---- bad input ----------------------------------------------------------------------------


def _stage_text(body: str, header: str = 'defaultPrim = "World"') -> str:
    return f'#usda 1.0\n(\n    {header}\n)\n\ndef Xform "World"\n{{\n{body}\n}}\n'


def _prim(kind: str, name: str, *body: str, schemas: str = "") -> str:
    meta = f" (\n    prepend apiSchemas = [{schemas}]\n)" if schemas else ""
    return f'def {kind} "{name}"{meta}\n{{\n' + "\n".join(body) + "\n}"


_XFORM_B = 'double3 xformOp:translate = (0, 0, 0)\nuniform token[] xformOpOrder = ["xformOp:translate"]'
BAD_STAGES = {
    "malformed": (
        '#usda 1.0\ndef Xform "World" {\n  double3 xformOp:translate = (0, 0\n}\n',
        r"malformed and could not be parsed \(line 4, column 1: parse error matching Sdf_",
    ),
    "no_world": ('#usda 1.0\ndef Xform "Root"\n{\n}\n', "no default prim and no /World"),
    "mesh_file_missing": (
        _stage_text(_prim("Mesh", "scan", "asset twinrank:meshFile = @missing_scan.obj@")),
        r"Mesh prim /World/scan: mesh file 'missing_scan.obj' not found",
    ),
    "mesh_without_file": (
        _stage_text(_prim("Mesh", "scan", "point3f[] points = [(0, 0, 0)]")),
        "Mesh prim /World/scan has no twinrank:meshFile",
    ),
    "negative_size": (_stage_text(_prim("Cube", "crate", "double size = -1")), r"/World/crate.size = -1.0"),
    "zero_radius": (
        _stage_text(_prim("Xform", "b", _prim("Sphere", "s", "double radius = 0"))),
        r"/World/b/s.radius = 0.0",
    ),
    "zero_height": (_stage_text(_prim("Capsule", "c", "double height = 0")), r"/World/c.height = 0.0"),
    "zero_scale": (
        _stage_text(
            _prim(
                "Cube", "crate", "double3 xformOp:scale = (1, 0, 1)", 'uniform token[] xformOpOrder = ["xformOp:scale"]'
            )
        ),
        r"/World/crate: xformOp:scale",
    ),
    "non_finite": (
        _stage_text(
            _prim(
                "Cube",
                "crate",
                "double3 xformOp:translate = (nan, 0, 0)",
                'uniform token[] xformOpOrder = ["xformOp:translate"]',
            )
        ),
        r"/World/crate: non-finite transform",
    ),
    "non_finite_matrix": (
        _stage_text(
            _prim("Cube", "crate", "float xformOp:rotateX = inf", 'uniform token[] xformOpOrder = ["xformOp:rotateX"]')
        ),
        r"/World/crate: non-finite transform",
    ),
    "mirrored": (
        _stage_text(
            _prim(
                "Xform",
                "b",
                "matrix4d xformOp:transform = ((-1, 0, 0, 0), (0, 1, 0, 0), (0, 0, 1, 0), (0, 0, 0, 1))",
                'uniform token[] xformOpOrder = ["xformOp:transform"]',
                _prim("Cube", "c"),
            )
        ),
        r"/World/b: transform is mirrored",
    ),
    "unknown_joint_prim": (
        _stage_text(
            _prim(
                "Xform",
                "b",
                _XFORM_B,
                _prim("Cube", "c"),
                _prim("PhysicsSphericalJoint", "ball_joint", "rel physics:body1 = </World/b>"),
            )
        ),
        r"joint prim /World/b/ball_joint is a PhysicsSphericalJoint joint; unknown joint type",
    ),
    "unknown_joint_attr": (
        _stage_text(_prim("Xform", "b", 'custom token twinrank:joint = "ball"', _prim("Cube", "c"))),
        r"/World/b.twinrank:joint = 'ball': unknown joint type",
    ),
    "joint_without_body1": (
        _stage_text(_prim("Xform", "b", _prim("Cube", "c"), _prim("PhysicsRevoluteJoint", "hinge"))),
        r"joint prim /World/b/hinge: physics:body1 is not set",
    ),
    "y_up": (_stage_text(_prim("Cube", "c"), header='defaultPrim = "World"\n    upAxis = "Y"'), "upAxis = 'Y'"),
    "centimetres": (
        _stage_text(_prim("Cube", "c"), header='defaultPrim = "World"\n    metersPerUnit = 0.01'),
        "metersPerUnit = 0.01",
    ),
    "unsupported_gprim": (_stage_text(_prim("Xform", "b", _prim("Cone", "c"))), r"/World/b/c is a Cone"),
    "bad_mass": (
        _stage_text(_prim("Cube", "c", "float physics:mass = -2", schemas='"PhysicsMassAPI"')),
        r"/World/c.physics:mass = -2.0",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_STAGES))
def test_bad_stages_raise_scene_error_naming_the_field(tmp_path, case):
    text, message = BAD_STAGES[case]
    path = tmp_path / f"{case}.usda"
    path.write_text(text)
    with pytest.raises(SceneError, match=message):
        read_scene_usd(path)


def test_bad_files_raise_scene_error(tmp_path):
    with pytest.raises(SceneError, match="not found"):
        read_scene_usd(tmp_path / "nope.usda")
    txt = tmp_path / "scene.txt"
    txt.write_text("hello")
    with pytest.raises(SceneError, match="is not a USD file"):
        read_scene_usd(txt)
    garbage = tmp_path / "garbage.usd"
    garbage.write_bytes(b"\x00\x01 definitely not usd")
    with pytest.raises(SceneError, match="could not be parsed|could not be opened"):
        read_scene_usd(garbage)
    with pytest.raises(SceneError, match=r"use a \.usda"):
        write_scene_usd(task_scene(), tmp_path / "scene.json")
    broken = task_scene()
    broken.bodies[0].geoms[0].size = (0.1, -0.1, 0.1)
    with pytest.raises(SceneError, match=r"body 'table'.geoms\[0\].size"):
        write_scene_usd(broken, tmp_path / "broken.usda")


def test_mesh_file_resolves_next_to_the_stage(tmp_path):
    (tmp_path / "sub").mkdir()
    trimesh.creation.box(extents=(0.1, 0.1, 0.1)).export(tmp_path / "sub" / "part.stl")
    path = tmp_path / "sub" / "s.usda"
    path.write_text(_stage_text(_prim("Mesh", "part", "asset twinrank:meshFile = @part.stl@")))
    scene = read_scene_usd(path)
    assert Path(scene.body("part").geoms[0].mesh) == tmp_path / "sub" / "part.stl"
    compile_scene(scene)


# ---- exports of compiled twins ------------------------------------------------------------


def test_export_compiled_usd_has_scene_and_robot_links(tmp_path):
    compiled = compile_scene(task_scene())
    path = export_compiled_usd(compiled, tmp_path / "compiled.usd")
    stage = Usd.Stage.Open(str(path))
    links = {p.GetName(): p for p in Usd.PrimRange(stage.GetPrimAtPath("/World/Robot/Links"))}
    for name in ("panda_link0", "panda_link1", "panda_link7", "panda_hand", "panda_leftfinger"):
        assert name in links
    meshes = [p for p in Usd.PrimRange(stage.GetPrimAtPath("/World/Robot/Links")) if p.IsA(UsdGeom.Mesh)]
    assert len(meshes) >= 10 and all(len(UsdGeom.Mesh(p).GetPointsAttr().Get()) > 0 for p in meshes)
    # The hand prim sits where MuJoCo puts it at the home configuration.
    model = compiled.model
    data = mujoco.MjData(model)
    for i, q in enumerate(compiled.scene.robot.home_qpos):
        data.qpos[model.jnt_qposadr[model.joint(f"panda_joint{i + 1}").id]] = q
    mujoco.mj_kinematics(model, data)
    hand_world = UsdGeom.XformCache().GetLocalToWorldTransform(links["panda_hand"]).ExtractTranslation()
    np.testing.assert_allclose(hand_world, data.xpos[model.body("panda_hand").id], atol=1e-9)
    # It still reads back as the same scene.
    assert_same(compiled.scene.to_dict(), read_scene_usd(path).to_dict())

    # With data: free bodies are written where the simulation has them.
    data.qpos[model.jnt_qposadr[model.joint("mug_free").id] :][:3] = (0.3, 0.25, 0.2)
    moved = read_scene_usd(export_compiled_usd(compiled, tmp_path / "moved.usda", data=data))
    assert moved.body("mug").pose.pos == pytest.approx((0.3, 0.25, 0.2))

    # A bare MjModel exports its whole body tree.
    bare = Usd.Stage.Open(str(export_compiled_usd(model, tmp_path / "bare.usd")))
    names = {p.GetName() for p in bare.Traverse()}
    assert {"world", "panda_link0", "panda_hand", "table", "mug"} <= names


def test_export_model_usd_snapshot_with_mujoco_exporter(tmp_path):
    compiled = compile_scene(task_scene())
    data = mujoco.MjData(compiled.model)
    mujoco.mj_forward(compiled.model, data)
    path = export_model_usd(compiled.model, data, tmp_path / "snapshot.usd", camera_names=["cam_left"])
    stage = Usd.Stage.Open(str(path))
    assert stage.GetDefaultPrim().GetPath() == Sdf.Path("/World")
    meshes = [p for p in stage.Traverse() if p.IsA(UsdGeom.Mesh)]
    assert len(meshes) >= compiled.model.ngeom - 2  # collision-only finger boxes are hidden
    assert any("link0" in p.GetName() for p in meshes)
    assets = [a.Get() for p in stage.Traverse() for a in p.GetAttributes() if isinstance(a.Get(), Sdf.AssetPath)]
    assert assets and all(Path(a.resolvedPath).is_file() for a in assets)
