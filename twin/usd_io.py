"""Scenes as USD stages: write/read a :class:`~twin.scene.SceneCfg`, and export compiled twins.

Functions:

- :func:`write_scene_usd` authors a scene as a USD stage (``.usda`` text or ``.usd``/``.usdc``
  binary), Z-up, metres.
- :func:`read_scene_usd` reads such a stage back into a ``SceneCfg`` (exact round trip). It
  also accepts hand-authored stages (plain Cube/Sphere/Cylinder/Capsule prims, cameras with
  only focal length and apertures, UsdLux lights, UsdPhysics bodies and joints), filling
  missing ``twinrank:`` attributes with defaults.
- :func:`export_compiled_usd` writes a compiled twin back to USD: the scene exactly as
  :func:`write_scene_usd` does (so the file reads back with :func:`read_scene_usd`) plus the
  compiled MuJoCo geometry of the robot (link meshes, posed) under ``/World/Robot/Links``.
- :func:`export_model_usd` is a visual snapshot of any ``MjModel``/``MjData`` made with
  MuJoCo's own ``mujoco.usd.exporter.USDExporter`` (flat geometry list, textures as PNG
  files next to it); it is for viewers and renderers, not for reading back.

Stage layout written by :func:`write_scene_usd` (``twinrank:`` attributes are custom)::

    /World                      default prim; scene name, workspace, physics, floor/background
      /Robot                    Xform at the robot base; model, home qpos, gains
      /Bodies/<body>            Xform per body; nested bodies are child prims; a body attached to
                                a robot link keeps its pose in that link's frame (twinrank:parent)
        <geom>                  Cube (size 2, scaled by half-extents), Sphere, Cylinder,
                                Capsule (axis Z) or Mesh (points + twinrank:meshFile)
        <joint>                 PhysicsRevoluteJoint / PhysicsPrismaticJoint (body1 = body)
      /Cameras/<camera>         Camera; apertures encode fx, fy, cx, cy at width x height
      /Lights/<light>           SphereLight (MuJoCo spot) or DistantLight (directional)
      /Sites/<site>             Xform; translate in the frame of twinrank:body (world if "")
      /Markers/<tag>            Xform per fiducial tag (only when the scene has any): pose in
                                the frame of twinrank:body; twinrank:id, size, family
      /physicsScene             UsdPhysics.Scene (gravity)

Standard schema attributes (transforms, displayColor, focalLength, light colour, joint
limits, mass) are what other tools show and edit. Where a schema attribute is single
precision, the exact double value is also stored as a ``twinrank:`` attribute; on reading,
the stored value is used only while it still agrees with the schema attribute, so an edit
made in a USD tool wins over a stale stored value.

Hand-authored stages: prims without ``CollisionAPI`` collide (only a ``CollisionAPI`` with
``collisionEnabled = false`` makes a geom visual-only); a rigid body (``RigidBodyAPI``)
without a joint gets a free joint; a bare Gprim directly under ``/World`` (or a Scope)
becomes a static body holding one geom; cameras without a resolution are 640 pixels wide
with the aperture's aspect ratio. Stages must be Z-up in metres where they say so
(unauthored ``upAxis``/``metersPerUnit`` are taken as Z and 1).
"""

from __future__ import annotations

import math
import os
import re
import shutil
from pathlib import Path
from typing import Any

import mujoco
import numpy as np
from pxr import Gf, Sdf, Tf, Usd, UsdGeom, UsdLux, UsdPhysics, Vt

from twin.compile import CompiledScene, camera_quat
from twin.meshes import load_mesh
from twin.robot import ARM_JOINTS
from twin.scene import (
    BodyCfg,
    CameraCfg,
    GeomCfg,
    JointCfg,
    LightCfg,
    MarkerCfg,
    PhysicsCfg,
    Pose,
    RobotCfg,
    SceneCfg,
    SceneError,
    SiteCfg,
    TextureCfg,
    validate_scene,
)

USD_SUFFIXES = (".usda", ".usd", ".usdc", ".usdz")
NS = "twinrank:"
FORMAT_VERSION = 1
# Camera film size per pixel, in the units of focalLength and the apertures (millimetres by
# convention). Only focal length / aperture ratios matter; 3 um is a D435i-like pixel.
PIXEL_FILM = 0.003
DEFAULT_CAMERA_WIDTH = 640
# Nominal UsdLux intensities (MuJoCo light brightness is the diffuse colour).
SPHERE_LIGHT_INTENSITY = 1000.0
DISTANT_LIGHT_INTENSITY = 3.0
_T = Sdf.ValueTypeNames
_DOUBLE = UsdGeom.XformOp.PrecisionDouble
_AXES = {"X": (1.0, 0.0, 0.0), "Y": (0.0, 1.0, 0.0), "Z": (0.0, 0.0, 1.0)}
_SUPPORTED_GPRIMS = "Cube, Sphere, Cylinder, Capsule or Mesh"
PoseScale = tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]]  # (pos, quat wxyz, scale)


# ==== writing ================================================================================


def write_scene_usd(scene: SceneCfg, path: str | os.PathLike[str], embed_mesh_points: bool = True) -> Path:
    """Author ``scene`` as a USD stage at ``path`` (.usda text, .usd/.usdc binary).

    Mesh geoms keep their file path in ``twinrank:meshFile`` (the source of truth when
    reading back); with ``embed_mesh_points`` the Mesh prims also hold the triangles so USD
    viewers show them. Raises SceneError for an invalid scene or an unsupported suffix.
    """
    out = _check_out_path(path)
    stage = _scene_stage(scene, embed_mesh_points)
    stage.GetRootLayer().Export(str(out))
    return out


def _check_out_path(path: str | os.PathLike[str]) -> Path:
    out = Path(path)
    if out.suffix.lower() not in (".usda", ".usd", ".usdc"):
        raise SceneError(f"USD output {str(out)!r}: use a .usda (text), .usd or .usdc (binary) file name")
    out.parent.mkdir(parents=True, exist_ok=True)
    return out


def _scene_stage(scene: SceneCfg, embed_mesh_points: bool = True) -> Usd.Stage:
    """An in-memory stage holding the scene (see the module docstring for the layout)."""
    validate_scene(scene)
    stage = Usd.Stage.CreateInMemory()
    UsdGeom.SetStageUpAxis(stage, UsdGeom.Tokens.z)
    UsdGeom.SetStageMetersPerUnit(stage, 1.0)
    world = UsdGeom.Xform.Define(stage, "/World").GetPrim()
    stage.SetDefaultPrim(world)
    _set(world, "version", FORMAT_VERSION, _T.Int)
    _set(world, "sceneName", scene.name, _T.String)
    _set(world, "workspaceMin", Gf.Vec3d(*scene.workspace[0]), _T.Double3)
    _set(world, "workspaceMax", Gf.Vec3d(*scene.workspace[1]), _T.Double3)
    _set(world, "floorRgba", Gf.Vec4d(*scene.floor_rgba), _T.Double4)
    _set(world, "backgroundRgb", Gf.Vec3d(*scene.background_rgb), _T.Double3)
    if scene.floor_texture is not None:
        _write_texture(world, "floorTexture", scene.floor_texture)
    ph = scene.physics
    _set(world, "physics:timestep", ph.timestep, _T.Double)
    _set(world, "physics:integrator", ph.integrator, _T.Token)
    _set(world, "physics:gravity", Gf.Vec3d(*ph.gravity), _T.Double3)
    _set(world, "physics:noslipIterations", ph.noslip_iterations, _T.Int)
    phys_scene = UsdPhysics.Scene.Define(stage, "/World/physicsScene")
    g = np.asarray(ph.gravity, dtype=float)
    g_norm = float(np.linalg.norm(g))
    phys_scene.CreateGravityDirectionAttr(Gf.Vec3f(*(g / g_norm if g_norm > 0 else (0.0, 0.0, -1.0))))
    phys_scene.CreateGravityMagnitudeAttr(g_norm)

    _write_robot(stage, scene.robot)
    UsdGeom.Scope.Define(stage, "/World/Bodies")
    used: set[str] = set()
    for body in scene.bodies:
        _write_body(stage, Sdf.Path("/World/Bodies"), used, body, parent_body=None, embed=embed_mesh_points)
    UsdGeom.Scope.Define(stage, "/World/Cameras")
    used = set()
    for cam in scene.cameras:
        _write_camera(stage, Sdf.Path("/World/Cameras").AppendChild(_prim_name(cam.name, "camera", used)), cam)
    UsdGeom.Scope.Define(stage, "/World/Lights")
    used = set()
    for light in scene.lights:
        _write_light(stage, Sdf.Path("/World/Lights").AppendChild(_prim_name(light.name, "light", used)), light)
    UsdGeom.Scope.Define(stage, "/World/Sites")
    used = set()
    for site in scene.sites:
        xf = UsdGeom.Xform.Define(stage, Sdf.Path("/World/Sites").AppendChild(_prim_name(site.name, "site", used)))
        _set_pose(xf, site.pos, (1.0, 0.0, 0.0, 0.0))
        prim = xf.GetPrim()
        _set(prim, "name", site.name, _T.String)
        _set(prim, "halfExtents", Gf.Vec3d(*site.half_extents), _T.Double3)
        _set(prim, "body", site.body, _T.String)
    if scene.markers:  # scenes without markers keep the stage they always had
        UsdGeom.Scope.Define(stage, "/World/Markers")
        used = set()
        for m in scene.markers:
            name = _prim_name(f"{m.family}_{m.id}", "marker", used)
            xf = UsdGeom.Xform.Define(stage, Sdf.Path("/World/Markers").AppendChild(name))
            _set_pose(xf, m.pose.pos, m.pose.quat)
            prim = xf.GetPrim()
            _set(prim, "id", int(m.id), _T.Int)
            _set(prim, "size", float(m.size), _T.Double)
            _set(prim, "body", m.body, _T.String)
            _set(prim, "family", m.family, _T.Token)
    return stage


def _write_robot(stage: Usd.Stage, robot: RobotCfg) -> None:
    xf = UsdGeom.Xform.Define(stage, "/World/Robot")
    _set_pose(xf, robot.base.pos, robot.base.quat)
    prim = xf.GetPrim()
    _set(prim, "model", robot.model, _T.Token)
    _set(prim, "homeQpos", Vt.DoubleArray(list(robot.home_qpos)), _T.DoubleArray)
    _set(prim, "kp", Vt.DoubleArray(list(robot.kp)), _T.DoubleArray)
    _set(prim, "kd", Vt.DoubleArray(list(robot.kd)), _T.DoubleArray)
    _set(prim, "jointDampingScale", robot.joint_damping_scale, _T.Double)
    _set(prim, "gripperForce", robot.gripper_force, _T.Double)


def _write_body(
    stage: Usd.Stage, parent: Sdf.Path, used: set[str], body: BodyCfg, parent_body: Sdf.Path | None, embed: bool
) -> None:
    path = parent.AppendChild(_prim_name(body.name, "body", used))
    xf = UsdGeom.Xform.Define(stage, path)
    _set_pose(xf, body.pose.pos, body.pose.quat)
    prim = xf.GetPrim()
    _set(prim, "name", body.name, _T.String)
    _set(prim, "kind", body.kind, _T.String)
    if body.parent:  # attached to a robot link or scene body: the pose is in that body's frame
        _set(prim, "parent", body.parent, _T.String)
    if body.joint is not None:
        UsdPhysics.RigidBodyAPI.Apply(prim)
    if body.mass is not None:
        UsdPhysics.MassAPI.Apply(prim).CreateMassAttr(float(body.mass))
        _set(prim, "mass", float(body.mass), _T.Double)
    children: set[str] = set()
    if body.joint is not None:
        _write_joint(stage, path, children, body, parent_body)
    for i, geom in enumerate(body.geoms):
        _write_geom(stage, path.AppendChild(_prim_name(geom.name, f"geom{i}", children)), geom, embed)
    for child in body.children:
        _write_body(stage, path, children, child, parent_body=path, embed=embed)


def _write_joint(
    stage: Usd.Stage, body_path: Sdf.Path, used: set[str], body: BodyCfg, parent_body: Sdf.Path | None
) -> None:
    j = body.joint
    assert j is not None
    prim = stage.GetPrimAtPath(body_path)
    if j.type == "free":
        _set(prim, "joint", "free", _T.Token)
        _set(prim, "jointName", j.name, _T.String)
        return
    path = body_path.AppendChild(_prim_name(j.name, "joint", used))
    joint = (UsdPhysics.RevoluteJoint if j.type == "hinge" else UsdPhysics.PrismaticJoint).Define(stage, path)
    axis = np.asarray(j.axis, dtype=float)
    rot1 = Gf.Rotation(Gf.Vec3d(1.0, 0.0, 0.0), Gf.Vec3d(*(axis / np.linalg.norm(axis)))).GetQuat()
    body_rot = Gf.Quatd(*body.pose.quat).GetNormalized()
    pos0 = Gf.Vec3d(*body.pose.pos) + Gf.Rotation(body_rot).TransformDir(Gf.Vec3d(*j.pos))
    rot0 = (body_rot * rot1).GetNormalized()
    if parent_body is not None:
        joint.CreateBody0Rel().SetTargets([parent_body])
    joint.CreateBody1Rel().SetTargets([body_path])
    joint.CreateAxisAttr("X")
    joint.CreateLocalPos0Attr(Gf.Vec3f(*pos0))
    joint.CreateLocalRot0Attr(Gf.Quatf(rot0))
    joint.CreateLocalPos1Attr(Gf.Vec3f(*j.pos))
    joint.CreateLocalRot1Attr(Gf.Quatf(rot1))
    if j.range is not None:
        lo, hi = j.range
        if j.type == "hinge":
            lo, hi = math.degrees(lo), math.degrees(hi)  # UsdPhysics revolute limits are degrees
        joint.CreateLowerLimitAttr(float(lo))
        joint.CreateUpperLimitAttr(float(hi))
        _set(joint.GetPrim(), "range", Gf.Vec2d(*j.range), _T.Double2)
    jp = joint.GetPrim()
    _set(jp, "name", j.name, _T.String)
    _set(jp, "axis", Gf.Vec3d(*j.axis), _T.Double3)
    _set(jp, "pos", Gf.Vec3d(*j.pos), _T.Double3)
    _set(jp, "damping", float(j.damping), _T.Double)
    _set(jp, "frictionloss", float(j.frictionloss), _T.Double)
    _set(jp, "stiffness", float(j.stiffness), _T.Double)


def _write_geom(stage: Usd.Stage, path: Sdf.Path, g: GeomCfg, embed: bool) -> None:
    scale: tuple[float, ...] | None = None
    if g.type == "box":
        gp = UsdGeom.Cube.Define(stage, path)
        gp.CreateSizeAttr(2.0)
        scale = tuple(g.size[:3])
    elif g.type == "sphere":
        gp = UsdGeom.Sphere.Define(stage, path)
        gp.CreateRadiusAttr(float(g.size[0]))
    elif g.type == "cylinder":
        gp = UsdGeom.Cylinder.Define(stage, path)
        gp.CreateRadiusAttr(float(g.size[0]))
        gp.CreateHeightAttr(2.0 * float(g.size[1]))
        gp.CreateAxisAttr(UsdGeom.Tokens.z)
    elif g.type == "capsule":
        gp = UsdGeom.Capsule.Define(stage, path)
        gp.CreateRadiusAttr(float(g.size[0]))
        gp.CreateHeightAttr(2.0 * float(g.size[1]))
        gp.CreateAxisAttr(UsdGeom.Tokens.z)
    else:  # mesh
        gp = UsdGeom.Mesh.Define(stage, path)
        scale = tuple(g.mesh_scale)
        _set(gp.GetPrim(), "meshFile", Sdf.AssetPath(str(g.mesh)), _T.Asset)
        if embed:
            verts, faces = load_mesh(g.mesh, where=f"geom {str(path)!r}")
            points = Vt.Vec3fArray.FromNumpy(verts.astype(np.float32))
            gp.CreatePointsAttr(points)
            gp.CreateFaceVertexCountsAttr(Vt.IntArray.FromNumpy(np.full(len(faces), 3, dtype=np.int32)))
            gp.CreateFaceVertexIndicesAttr(Vt.IntArray.FromNumpy(faces.reshape(-1).astype(np.int32)))
            gp.CreateSubdivisionSchemeAttr(UsdGeom.Tokens.none)
            gp.CreateExtentAttr(UsdGeom.PointBased.ComputeExtent(points))
    if g.type != "mesh":
        gp.CreateExtentAttr(UsdGeom.Boundable.ComputeExtentFromPlugins(gp, Usd.TimeCode.Default()))
    _set_pose(gp, g.pose.pos, g.pose.quat, scale)
    prim = gp.GetPrim()
    gp.CreateDisplayColorPrimvar(UsdGeom.Tokens.constant).Set(Vt.Vec3fArray([Gf.Vec3f(*g.rgba[:3])]))
    gp.CreateDisplayOpacityPrimvar(UsdGeom.Tokens.constant).Set(Vt.FloatArray([float(g.rgba[3])]))
    _set(prim, "rgba", Gf.Vec4d(*g.rgba), _T.Double4)
    _set(prim, "name", g.name, _T.String)
    if g.friction is not None:
        _set(prim, "friction", float(g.friction), _T.Double)
    UsdPhysics.CollisionAPI.Apply(prim).CreateCollisionEnabledAttr(bool(g.collide))
    if not g.visible:
        gp.CreatePurposeAttr(UsdGeom.Tokens.guide)  # collision proxy: hidden unless guides are shown
    if g.texture is not None:
        _write_texture(prim, "texture", g.texture)


def _write_texture(prim: Usd.Prim, prefix: str, tex: TextureCfg) -> None:
    _set(prim, f"{prefix}:builtin", tex.builtin, _T.Token)
    _set(prim, f"{prefix}:rgb1", Gf.Vec3d(*tex.rgb1), _T.Double3)
    _set(prim, f"{prefix}:rgb2", Gf.Vec3d(*tex.rgb2), _T.Double3)
    _set(prim, f"{prefix}:repeat", Gf.Vec2d(*tex.repeat), _T.Double2)
    if tex.file is not None:
        _set(prim, f"{prefix}:file", tex.file, _T.String)


def _write_camera(stage: Usd.Stage, path: Sdf.Path, cam: CameraCfg) -> None:
    ucam = UsdGeom.Camera.Define(stage, path)
    q = camera_quat(cam)  # MuJoCo and USD cameras both look along -z with +y up
    _set_pose(ucam, cam.pos, tuple(float(v) for v in q))
    focal = cam.fx * PIXEL_FILM
    h_ap = cam.width * PIXEL_FILM
    v_ap = cam.height * PIXEL_FILM * cam.fx / cam.fy  # so that focal / v_ap * height = fy
    ucam.CreateProjectionAttr(UsdGeom.Tokens.perspective)
    ucam.CreateFocalLengthAttr(focal)
    ucam.CreateHorizontalApertureAttr(h_ap)
    ucam.CreateVerticalApertureAttr(v_ap)
    ucam.CreateHorizontalApertureOffsetAttr((cam.width / 2.0 - cam.cx) / cam.width * h_ap)
    ucam.CreateVerticalApertureOffsetAttr((cam.cy - cam.height / 2.0) / cam.height * v_ap)
    ucam.CreateClippingRangeAttr(Gf.Vec2f(0.01, 100.0))
    prim = ucam.GetPrim()
    _set(prim, "name", cam.name, _T.String)
    _set(prim, "intrinsics", Gf.Vec4d(cam.fx, cam.fy, cam.cx, cam.cy), _T.Double4)
    _set(prim, "resolution", Gf.Vec2i(cam.width, cam.height), _T.Int2)
    _set(prim, "target", Gf.Vec3d(*cam.target), _T.Double3)
    _set(prim, "up", Gf.Vec3d(*cam.up), _T.Double3)


def _write_light(stage: Usd.Stage, path: Sdf.Path, light: LightCfg) -> None:
    if light.directional:
        ul: Any = UsdLux.DistantLight.Define(stage, path)
        ul.CreateIntensityAttr(DISTANT_LIGHT_INTENSITY)
    else:
        ul = UsdLux.SphereLight.Define(stage, path)
        ul.CreateIntensityAttr(SPHERE_LIGHT_INTENSITY)
        ul.CreateRadiusAttr(0.05)
    d = np.asarray(light.dir, dtype=float)
    rot = Gf.Rotation(Gf.Vec3d(0.0, 0.0, -1.0), Gf.Vec3d(*(d / np.linalg.norm(d)))).GetQuat()
    _set_pose(ul, light.pos, _quat_tuple(rot))
    ul.CreateColorAttr(Gf.Vec3f(*np.clip(light.diffuse, 0.0, 1.0)))
    UsdLux.ShadowAPI.Apply(ul.GetPrim()).CreateShadowEnableAttr(bool(light.castshadow))
    prim = ul.GetPrim()
    _set(prim, "name", light.name, _T.String)
    _set(prim, "dir", Gf.Vec3d(*light.dir), _T.Double3)
    _set(prim, "diffuse", Gf.Vec3d(*light.diffuse), _T.Double3)
    _set(prim, "ambient", Gf.Vec3d(*light.ambient), _T.Double3)
    _set(prim, "specular", Gf.Vec3d(*light.specular), _T.Double3)


# ==== reading ================================================================================


def read_scene_usd(path: str | os.PathLike[str]) -> SceneCfg:
    """Read a scene from a USD stage written by :func:`write_scene_usd` or by hand.

    The root is the layer's default prim (``/World`` as written here; ``/World`` is also
    used when no default prim is set). Raises SceneError naming the prim/attribute and the
    fix for: a missing or non-USD file, a malformed stage, no root prim, a non Z-up or
    non-metre stage, a Mesh without (or with a missing) mesh file, non-positive sizes,
    non-finite, zero-scaled or mirrored transforms, and unsupported joint types.
    """
    stage = _open_stage(path)
    return _ReadContext(stage, Path(path)).scene()


def _open_stage(path: str | os.PathLike[str]) -> Usd.Stage:
    p = Path(path)
    if not p.is_file():
        raise SceneError(f"USD scene {str(p)!r} not found; check the path")
    if p.suffix.lower() not in USD_SUFFIXES:
        raise SceneError(f"{str(p)!r} is not a USD file (suffix {p.suffix!r}); give a {', '.join(USD_SUFFIXES)} file")
    resolved = str(p.resolve())
    layer = Sdf.Layer.Find(resolved)
    if layer is not None:  # another stage in this process holds it: pick up changes on disk
        layer.Reload(force=True)
    try:
        stage = Usd.Stage.Open(resolved)
    except Tf.ErrorException as exc:
        text = re.sub(r"pxrInternal\w*::", "", " ".join(str(exc).split()))
        where = re.search(r":(\d+):(\d+): (.*?)' in <", text)
        detail = f"line {where[1]}, column {where[2]}: {where[3]}" if where else text[:300]
        raise SceneError(
            f"USD scene {str(p)!r} is malformed and could not be parsed ({detail}); fix the file or re-export it"
        ) from exc
    if stage is None:
        raise SceneError(f"USD scene {str(p)!r} could not be opened; re-export it")
    return stage


class _ReadContext:
    """State for reading one stage: the root prim, transform cache and joint look-up."""

    def __init__(self, stage: Usd.Stage, path: Path) -> None:
        self.stage = stage
        self.path = path
        self.base_dir = path.resolve().parent
        self.cache = UsdGeom.XformCache(Usd.TimeCode.Default())
        root = stage.GetDefaultPrim()
        if not root or not root.IsValid():
            root = stage.GetPrimAtPath("/World")
        if not root or not root.IsValid():
            raise SceneError(
                f"USD scene {str(path)!r} has no default prim and no /World prim; put the scene "
                'under /World and set the layer\'s defaultPrim = "World"'
            )
        self.root = root
        self._check_units()
        self.skip = {root.GetPath().AppendChild(n) for n in ("Robot", "Sites", "Markers")}
        self.joints: dict[Sdf.Path, Usd.Prim] = {}
        for prim in Usd.PrimRange(root):
            if self._skipped(prim.GetPath()) or not prim.IsA(UsdPhysics.Joint):
                continue
            targets = UsdPhysics.Joint(prim).GetBody1Rel().GetTargets()
            if not targets:
                raise SceneError(f"joint prim {prim.GetPath()}: physics:body1 is not set; target the moving body")
            if targets[0] in self.joints:
                raise SceneError(
                    f"joint prim {prim.GetPath()}: body {targets[0]} already has joint "
                    f"{self.joints[targets[0]].GetPath()}; a body has at most one joint"
                )
            self.joints[targets[0]] = prim

    def _check_units(self) -> None:
        where = f"USD scene {str(self.path)!r}"
        if self.stage.HasAuthoredMetadata("upAxis") and UsdGeom.GetStageUpAxis(self.stage) != UsdGeom.Tokens.z:
            raise SceneError(
                f"{where}: upAxis = {UsdGeom.GetStageUpAxis(self.stage)!r}; twin scenes are Z-up, "
                're-export the stage with upAxis = "Z"'
            )
        if self.stage.HasAuthoredMetadata("metersPerUnit"):
            mpu = UsdGeom.GetStageMetersPerUnit(self.stage)
            if not math.isclose(mpu, 1.0, rel_tol=1e-9):
                raise SceneError(
                    f"{where}: metersPerUnit = {mpu}; twin scenes are in metres, "
                    "re-export the stage with metersPerUnit = 1"
                )

    def _skipped(self, path: Sdf.Path) -> bool:
        return any(path.HasPrefix(s) for s in self.skip)

    # ---- the scene ---------------------------------------------------------------------
    def scene(self) -> SceneCfg:
        root = self.root
        defaults = SceneCfg()
        scene = SceneCfg(name=str(_get(root, "sceneName", self.path.stem)))
        scene.robot = self.robot()
        scene.bodies = self.bodies_under(root)
        scene.cameras, scene.lights = self.cameras_and_lights()
        scene.sites = self.sites()
        scene.markers = self.markers()
        lo = _floats(_get(root, "workspaceMin", defaults.workspace[0]))
        hi = _floats(_get(root, "workspaceMax", defaults.workspace[1]))
        scene.workspace = (lo, hi)
        scene.floor_rgba = _floats(_get(root, "floorRgba", defaults.floor_rgba))
        scene.background_rgb = _floats(_get(root, "backgroundRgb", defaults.background_rgb))
        scene.floor_texture = _read_texture(root, "floorTexture")
        scene.physics = self.physics()
        try:
            validate_scene(scene)
        except SceneError as exc:
            raise SceneError(f"USD scene {str(self.path)!r}: {exc}") from exc
        return scene

    def physics(self) -> PhysicsCfg:
        d = PhysicsCfg()
        gravity = _get(self.root, "physics:gravity")
        if gravity is None:
            gravity = d.gravity
            for prim in Usd.PrimRange(self.root):
                if prim.IsA(UsdPhysics.Scene):
                    ps = UsdPhysics.Scene(prim)
                    direction = np.asarray(ps.GetGravityDirectionAttr().Get(), dtype=float)
                    magnitude = float(ps.GetGravityMagnitudeAttr().Get())
                    if np.linalg.norm(direction) > 0 and math.isfinite(magnitude) and magnitude >= 0:
                        gravity = tuple(direction / np.linalg.norm(direction) * magnitude)
                    break
        integrator = str(_get(self.root, "physics:integrator", d.integrator))
        if integrator not in ("implicitfast", "Euler", "RK4", "implicit"):
            raise SceneError(
                f"{self.root.GetPath()}.{NS}physics:integrator = {integrator!r}: use implicitfast, "
                "implicit, Euler or RK4"
            )
        return PhysicsCfg(
            timestep=float(_get(self.root, "physics:timestep", d.timestep)),
            integrator=integrator,  # type: ignore[arg-type]
            gravity=_floats(gravity),
            noslip_iterations=int(_get(self.root, "physics:noslipIterations", d.noslip_iterations)),
        )

    def robot(self) -> RobotCfg:
        d = RobotCfg()
        prim = self.root.GetChild("Robot")
        if not prim:
            return d
        pos, quat, _ = self.pose(prim, None)
        model = str(_get(prim, "model", d.model))
        if model != "panda":
            raise SceneError(f"{prim.GetPath()}.{NS}model = {model!r}: only 'panda' is supported")
        return RobotCfg(
            model="panda",
            base=Pose(pos=pos, quat=quat),
            home_qpos=_floats(_get(prim, "homeQpos", d.home_qpos)),
            kp=_floats(_get(prim, "kp", d.kp)),
            kd=_floats(_get(prim, "kd", d.kd)),
            joint_damping_scale=float(_get(prim, "jointDampingScale", d.joint_damping_scale)),
            gripper_force=float(_get(prim, "gripperForce", d.gripper_force)),
        )

    # ---- bodies ------------------------------------------------------------------------
    def bodies_under(self, group: Usd.Prim) -> list[BodyCfg]:
        """Top-level bodies among the children of a grouping prim (root, Scope, untyped)."""
        out: list[BodyCfg] = []
        for prim in group.GetChildren():
            if self._skipped(prim.GetPath()) or not prim.IsActive():
                continue
            if prim.IsA(UsdGeom.Xform):
                body = self.body(prim, None)
                if body is not None:
                    out.append(body)
            elif prim.IsA(UsdGeom.Gprim):
                out.append(self.gprim_body(prim))
            elif prim.IsA(UsdGeom.Scope) or not prim.GetTypeName():
                out.extend(self.bodies_under(prim))
        return out

    def body(self, prim: Usd.Prim, parent: Usd.Prim | None) -> BodyCfg | None:
        where = str(prim.GetPath())
        pos, quat, scale = self.pose(prim, parent)
        if not np.allclose(scale, 1.0, atol=1e-6):
            raise SceneError(
                f"body prim {where} has scale {scale}; MuJoCo bodies are rigid, move the scale onto its geom prims"
            )
        geoms: list[GeomCfg] = []
        children: list[BodyCfg] = []
        self._collect(prim, prim, geoms, children)
        if not geoms and not children:
            return None  # an empty Xform (e.g. a locator) is not a body
        joint = self.joint(prim)
        mass = self.mass(prim)
        default_kind = "object" if joint is not None and joint.type == "free" else "fixture"
        return BodyCfg(
            name=str(_get(prim, "name", prim.GetName())),
            pose=Pose(pos=pos, quat=quat),
            geoms=geoms,
            joint=joint,
            children=children,
            mass=mass,
            kind=str(_get(prim, "kind", default_kind)),
            parent=str(_get(prim, "parent", "")),
        )

    def _collect(self, body_prim: Usd.Prim, prim: Usd.Prim, geoms: list[GeomCfg], children: list[BodyCfg]) -> None:
        for child in prim.GetChildren():
            if not child.IsActive():
                continue
            if child.IsA(UsdGeom.Xform):
                b = self.body(child, body_prim)
                if b is not None:
                    children.append(b)
            elif child.IsA(UsdGeom.Gprim):
                geoms.append(self.geom(child, body_prim))
            elif child.IsA(UsdGeom.Scope) or not child.GetTypeName():
                self._collect(body_prim, child, geoms, children)

    def gprim_body(self, prim: Usd.Prim) -> BodyCfg:
        """A bare Gprim at the top level: a body at the prim's rigid pose holding one geom."""
        pos, quat, scale = self.pose(prim, None)
        geom = self.geom(prim, None, pose=((0.0, 0.0, 0.0), (1.0, 0.0, 0.0, 0.0), scale))
        joint = self.joint(prim)
        default_kind = "object" if joint is not None else "fixture"
        return BodyCfg(
            name=str(_get(prim, "bodyName", prim.GetName())),
            pose=Pose(pos=pos, quat=quat),
            geoms=[geom],
            joint=joint,
            mass=self.mass(prim),
            kind=str(_get(prim, "kind", default_kind)),
        )

    def mass(self, prim: Usd.Prim) -> float | None:
        schema_mass = None
        if prim.HasAPI(UsdPhysics.MassAPI):
            attr = UsdPhysics.MassAPI(prim).GetMassAttr()
            if attr.HasAuthoredValue():
                schema_mass = float(attr.Get())
        mass = _exact(prim, "mass", None if schema_mass is None else (schema_mass,))
        if mass is None:
            return None
        value = float(mass[0])
        if value == 0.0 and schema_mass is not None:
            return None  # UsdPhysics: mass 0 means "not specified"
        if not (value > 0 and math.isfinite(value)):
            raise SceneError(f"{prim.GetPath()}.physics:mass = {value}: mass must be a positive number (kg)")
        return value

    def joint(self, body_prim: Usd.Prim) -> JointCfg | None:
        where = str(body_prim.GetPath())
        tag = _get(body_prim, "joint")
        jprim = self.joints.get(body_prim.GetPath())
        if tag is not None:
            if str(tag) != "free":
                raise SceneError(
                    f'{where}.{NS}joint = {str(tag)!r}: unknown joint type; use "free" or author a '
                    "PhysicsRevoluteJoint / PhysicsPrismaticJoint prim with body1 = this body"
                )
            if jprim is not None:
                raise SceneError(f'{where}: has {NS}joint = "free" and joint prim {jprim.GetPath()}; keep one')
            return JointCfg(name=str(_get(body_prim, "jointName", "")), type="free")
        if jprim is None:
            if body_prim.HasAPI(UsdPhysics.RigidBodyAPI):
                return JointCfg(name=str(_get(body_prim, "jointName", "")), type="free")
            return None
        jw = str(jprim.GetPath())
        if jprim.IsA(UsdPhysics.RevoluteJoint):
            jtype = "hinge"
            ujoint: Any = UsdPhysics.RevoluteJoint(jprim)
        elif jprim.IsA(UsdPhysics.PrismaticJoint):
            jtype = "slide"
            ujoint = UsdPhysics.PrismaticJoint(jprim)
        else:
            raise SceneError(
                f"joint prim {jw} is a {jprim.GetTypeName() or 'untyped'} joint; unknown joint type, "
                "use PhysicsRevoluteJoint (hinge) or PhysicsPrismaticJoint (slide)"
            )
        token = str(ujoint.GetAxisAttr().Get())
        if token not in _AXES:
            raise SceneError(f"joint prim {jw}.physics:axis = {token!r}: use X, Y or Z")
        rot1 = ujoint.GetLocalRot1Attr().Get()
        rot = Gf.Rotation(Gf.Quatd(rot1)) if rot1 is not None else Gf.Rotation(Gf.Quatd(1.0))
        axis_derived = _floats(rot.TransformDir(Gf.Vec3d(*_AXES[token])))
        axis = _exact(jprim, "axis", axis_derived, direction=True)
        pos1 = ujoint.GetLocalPos1Attr().Get()
        pos = _exact(jprim, "pos", _floats(pos1) if pos1 is not None else (0.0, 0.0, 0.0), atol=1e-6)
        lo, hi = ujoint.GetLowerLimitAttr().Get(), ujoint.GetUpperLimitAttr().Get()
        rng_derived = None
        if lo is not None and hi is not None and math.isfinite(lo) and math.isfinite(hi):
            rng_derived = (math.radians(lo), math.radians(hi)) if jtype == "hinge" else (float(lo), float(hi))
        rng = _exact(jprim, "range", rng_derived, atol=1e-6) if rng_derived is not None else None
        for attr in ("damping", "frictionloss", "stiffness"):
            value = float(_get(jprim, attr, 0.0))
            if not (value >= 0 and math.isfinite(value)):
                raise SceneError(f"joint prim {jw}.{NS}{attr} = {value}: must be a finite number >= 0")
        return JointCfg(
            name=str(_get(jprim, "name", jprim.GetName())),
            type=jtype,
            axis=axis,
            pos=pos,  # type: ignore[arg-type]
            range=None if rng is None else (float(rng[0]), float(rng[1])),
            damping=float(_get(jprim, "damping", 0.0)),
            frictionloss=float(_get(jprim, "frictionloss", 0.0)),
            stiffness=float(_get(jprim, "stiffness", 0.0)),
        )

    # ---- geoms -------------------------------------------------------------------------
    def geom(self, prim: Usd.Prim, body: Usd.Prim | None, pose: PoseScale | None = None) -> GeomCfg:
        where = str(prim.GetPath())
        pos, quat, scale = pose if pose is not None else self.pose(prim, body)
        s = np.asarray(scale, dtype=float)
        g = GeomCfg(name=str(_get(prim, "name", prim.GetName())))
        if prim.IsA(UsdGeom.Cube):
            size = _positive(UsdGeom.Cube(prim).GetSizeAttr().Get(), f"{where}.size")
            g.type = "box"
            g.size = _floats(size / 2.0 * s)
        elif prim.IsA(UsdGeom.Sphere):
            radius = _positive(UsdGeom.Sphere(prim).GetRadiusAttr().Get(), f"{where}.radius")
            if not np.allclose(s, s[0], rtol=1e-6):
                raise SceneError(
                    f"{where}: a Sphere with non-uniform scale {tuple(s)} is an ellipsoid; use a "
                    "uniform scale or a Mesh"
                )
            g.type = "sphere"
            g.size = (float(radius * s[0]),)
        elif prim.IsA(UsdGeom.Cylinder) or prim.IsA(UsdGeom.Capsule):
            schema: Any = UsdGeom.Cylinder(prim) if prim.IsA(UsdGeom.Cylinder) else UsdGeom.Capsule(prim)
            radius = _positive(schema.GetRadiusAttr().Get(), f"{where}.radius")
            height = _positive(schema.GetHeightAttr().Get(), f"{where}.height")
            axis = str(schema.GetAxisAttr().Get())
            a = "XYZ".index(axis)
            perp = [i for i in range(3) if i != a]
            if not math.isclose(s[perp[0]], s[perp[1]], rel_tol=1e-6):
                raise SceneError(
                    f"{where}: scale {tuple(s)} squashes the round cross-section; scale the two "
                    f"axes other than {axis} equally"
                )
            g.type = "cylinder" if prim.IsA(UsdGeom.Cylinder) else "capsule"
            g.size = (float(radius * s[perp[0]]), float(height / 2.0 * s[a]))
            if axis != "Z":  # MuJoCo cylinders/capsules run along z: rotate z onto the axis
                to_axis = Gf.Rotation(Gf.Vec3d(0.0, 0.0, 1.0), Gf.Vec3d(*_AXES[axis])).GetQuat()
                quat = _quat_tuple((Gf.Quatd(*quat) * to_axis).GetNormalized())
        elif prim.IsA(UsdGeom.Mesh):
            g.type = "mesh"
            g.mesh = self.mesh_file(prim)
            g.mesh_scale = _floats(s)
        else:
            raise SceneError(f"{where} is a {prim.GetTypeName()}; twin geoms are {_SUPPORTED_GPRIMS} prims")
        g.pose = Pose(pos=pos, quat=quat)
        gp = UsdGeom.Gprim(prim)
        color = gp.GetDisplayColorPrimvar()
        opacity = gp.GetDisplayOpacityPrimvar()
        rgb = color.Get() if color and color.HasAuthoredValue() else None
        alpha = opacity.Get() if opacity and opacity.HasAuthoredValue() else None
        stored = _get(prim, "rgba")
        default = _floats(stored) if stored is not None else GeomCfg().rgba
        derived = (*(_floats(rgb[0]) if rgb else default[:3]), float(alpha[0]) if alpha else default[3])
        g.rgba = _exact(prim, "rgba", derived)
        friction = _get(prim, "friction")
        g.friction = None if friction is None else float(friction)
        if prim.HasAPI(UsdPhysics.CollisionAPI):
            g.collide = bool(UsdPhysics.CollisionAPI(prim).GetCollisionEnabledAttr().Get())
        g.visible = (
            gp.GetVisibilityAttr().Get() != UsdGeom.Tokens.invisible
            and gp.GetPurposeAttr().Get() != UsdGeom.Tokens.guide
        )
        g.texture = _read_texture(prim, "texture")
        return g

    def mesh_file(self, prim: Usd.Prim) -> str:
        where = str(prim.GetPath())
        asset = _get(prim, "meshFile")
        if asset is None or not str(asset.path):
            raise SceneError(
                f"Mesh prim {where} has no {NS}meshFile; set it to the OBJ/GLB/PLY/STL file the mesh "
                "comes from (e.g. asset twinrank:meshFile = @scan.obj@)"
            )
        authored = str(asset.path)
        p = Path(authored)
        candidates = [p] if p.is_absolute() else [p, self.base_dir / p]
        if asset.resolvedPath:
            candidates.append(Path(asset.resolvedPath))
        for c in candidates:
            if c.is_file():
                return authored if c == p else str(c)
        raise SceneError(
            f"Mesh prim {where}: mesh file {authored!r} not found (looked in the current folder and "
            f"{str(self.base_dir)!r}); copy the file there or fix {NS}meshFile"
        )

    # ---- cameras, lights, sites ------------------------------------------------------------
    def cameras_and_lights(self) -> tuple[list[CameraCfg], list[LightCfg]]:
        cameras: list[CameraCfg] = []
        lights: list[LightCfg] = []
        for prim in Usd.PrimRange(self.root):
            if self._skipped(prim.GetPath()) or not prim.IsActive():
                continue
            if prim.IsA(UsdGeom.Camera):
                cameras.append(self.camera(prim))
            elif (
                prim.IsA(UsdLux.DistantLight)
                or prim.IsA(UsdLux.SphereLight)
                or prim.IsA(UsdLux.DiskLight)
                or prim.IsA(UsdLux.RectLight)
                or prim.IsA(UsdLux.CylinderLight)
            ):
                lights.append(self.light(prim))
            # DomeLights (environment light) have no MuJoCo counterpart and are skipped.
        return cameras, lights

    def camera(self, prim: Usd.Prim) -> CameraCfg:
        where = str(prim.GetPath())
        ucam = UsdGeom.Camera(prim)
        pos, quat, _ = self.pose(prim, None)
        if str(ucam.GetProjectionAttr().Get()) != UsdGeom.Tokens.perspective:
            raise SceneError(
                f"camera {where}: projection is {ucam.GetProjectionAttr().Get()!r}; twin cameras are "
                'pinhole, set projection = "perspective"'
            )
        focal = _positive(ucam.GetFocalLengthAttr().Get(), f"{where}.focalLength")
        h_ap = _positive(ucam.GetHorizontalApertureAttr().Get(), f"{where}.horizontalAperture")
        v_ap = _positive(ucam.GetVerticalApertureAttr().Get(), f"{where}.verticalAperture")
        h_off = float(ucam.GetHorizontalApertureOffsetAttr().Get())
        v_off = float(ucam.GetVerticalApertureOffsetAttr().Get())
        res = _get(prim, "resolution")
        if res is not None:
            width, height = int(res[0]), int(res[1])
            if width <= 0 or height <= 0:
                raise SceneError(f"camera {where}.{NS}resolution = {tuple(res)}: width and height must be positive")
        else:
            width = DEFAULT_CAMERA_WIDTH
            height = max(1, round(width * v_ap / h_ap))
        derived = (
            focal / h_ap * width,
            focal / v_ap * height,
            width / 2.0 - h_off / h_ap * width,
            height / 2.0 + v_off / v_ap * height,
        )
        fx, fy, cx, cy = _exact(prim, "intrinsics", derived, atol=1e-3)
        rot = Gf.Rotation(Gf.Quatd(*quat))
        forward = np.asarray(rot.TransformDir(Gf.Vec3d(0.0, 0.0, -1.0)), dtype=float)
        cam = CameraCfg(
            name=str(_get(prim, "name", prim.GetName())),
            pos=pos,
            width=width,
            height=height,
            fx=float(fx),
            fy=float(fy),
            cx=float(cx),
            cy=float(cy),
        )
        target, up = _get(prim, "target"), _get(prim, "up")
        if target is not None and up is not None:
            cam.target, cam.up = _floats(target), _floats(up)
            if _quat_close(camera_quat(cam), quat):
                return cam
        # No (or stale) look-at: look 1 m along the camera's -z with its +y as up.
        cam.target = _floats(np.asarray(pos) + forward)
        cam.up = _floats(rot.TransformDir(Gf.Vec3d(0.0, 1.0, 0.0)))
        return cam

    def light(self, prim: Usd.Prim) -> LightCfg:
        d = LightCfg(name="")
        pos, quat, _ = self.pose(prim, None)
        forward = _floats(Gf.Rotation(Gf.Quatd(*quat)).TransformDir(Gf.Vec3d(0.0, 0.0, -1.0)))
        color = UsdLux.LightAPI(prim).GetColorAttr()
        diffuse_derived = _floats(color.Get()) if color.HasAuthoredValue() else d.diffuse
        castshadow = False
        if prim.HasAPI(UsdLux.ShadowAPI):
            castshadow = bool(UsdLux.ShadowAPI(prim).GetShadowEnableAttr().Get())
        return LightCfg(
            name=str(_get(prim, "name", prim.GetName())),
            pos=pos,
            dir=_exact(prim, "dir", forward, direction=True),
            diffuse=_exact(prim, "diffuse", diffuse_derived, clip=True),
            ambient=_floats(_get(prim, "ambient", d.ambient)),
            specular=_floats(_get(prim, "specular", d.specular)),
            directional=prim.IsA(UsdLux.DistantLight),
            castshadow=castshadow,
        )

    def sites(self) -> list[SiteCfg]:
        group = self.root.GetChild("Sites")
        if not group:
            return []
        out: list[SiteCfg] = []
        for prim in group.GetChildren():
            if not prim.IsA(UsdGeom.Xformable):
                continue
            pos, _, _ = self.pose(prim, None)
            half = _floats(_get(prim, "halfExtents", SiteCfg(name="").half_extents))
            if any(not (h > 0 and math.isfinite(h)) for h in half):
                raise SceneError(f"site {prim.GetPath()}.{NS}halfExtents = {half}: three positive sizes (m)")
            out.append(
                SiteCfg(
                    name=str(_get(prim, "name", prim.GetName())),
                    pos=pos,
                    half_extents=half,
                    body=str(_get(prim, "body", "")),
                )
            )
        return out

    def markers(self) -> list[MarkerCfg]:
        """Fiducial tags: Xforms under ``Markers`` posed in the frame of ``twinrank:body``."""
        group = self.root.GetChild("Markers")
        if not group:
            return []
        out: list[MarkerCfg] = []
        for prim in group.GetChildren():
            if not prim.IsA(UsdGeom.Xformable):
                continue
            where = f"marker {prim.GetPath()}"
            for attr in ("id", "size", "body"):
                if _get(prim, attr) is None:
                    raise SceneError(f"{where}: {NS}{attr} is not set; a marker needs {NS}id, size and body")
            pos, quat, _ = self.pose(prim, None)
            out.append(
                MarkerCfg(
                    id=int(_get(prim, "id")),
                    size=_positive(_get(prim, "size"), f"{where}.{NS}size"),
                    body=str(_get(prim, "body")),
                    pose=Pose(pos=pos, quat=quat),
                    family=str(_get(prim, "family", "apriltag_36h11")),
                )
            )
        return out

    # ---- transforms --------------------------------------------------------------------
    def pose(self, prim: Usd.Prim, ref: Usd.Prim | None) -> PoseScale:
        """(pos, quat wxyz, scale) of ``prim`` in ``ref``'s frame (world when None).

        Prims authored as translate/orient/scale (as this module writes them) under
        untransformed parents are read from their ops exactly; anything else goes through
        the composed matrix.
        """
        where = str(prim.GetPath())
        exact = _simple_ops(prim) if self._untransformed_between(prim, ref) else None
        if exact is not None:
            pos, quat, scale = exact
            if not all(math.isfinite(v) for v in (*pos, *quat, *scale)):
                raise SceneError(
                    f"{where}: non-finite transform (pos {pos}, orient {quat}, scale {scale}); "
                    "fix the prim's xformOp values"
                )
            if any(v <= 0 for v in scale):
                raise SceneError(
                    f"{where}: xformOp:scale = {scale}; scales must be positive (no zero or mirrored axes)"
                )
            if all(v == 0 for v in quat):
                raise SceneError(f"{where}: xformOp:orient is all zeros; use a unit quaternion")
            return pos, quat, scale
        if ref is None:
            matrix = self.cache.GetLocalToWorldTransform(prim)
        else:
            matrix, _ = self.cache.ComputeRelativeTransform(prim, ref)
        return _decompose(matrix, where)

    def _untransformed_between(self, prim: Usd.Prim, ref: Usd.Prim | None) -> bool:
        p = prim.GetParent()
        while p and not p.IsPseudoRoot() and (ref is None or p.GetPath() != ref.GetPath()):
            if p.IsA(UsdGeom.Xformable) and UsdGeom.Xformable(p).GetOrderedXformOps():
                return False
            p = p.GetParent()
        return True


def _simple_ops(prim: Usd.Prim) -> PoseScale | None:
    """Exact (pos, quat, scale) when the op stack is translate? orient? scale? (no suffixes)."""
    if not prim.IsA(UsdGeom.Xformable):
        return None
    xf = UsdGeom.Xformable(prim)
    if xf.GetResetXformStack():
        return None
    order = [UsdGeom.XformOp.TypeTranslate, UsdGeom.XformOp.TypeOrient, UsdGeom.XformOp.TypeScale]
    values: dict[Any, Any] = {}
    last = -1
    for op in xf.GetOrderedXformOps():
        kind = op.GetOpType()
        if kind not in order or order.index(kind) <= last or op.IsInverseOp() or op.GetOpName().count(":") != 1:
            return None
        last = order.index(kind)
        values[kind] = op.Get()
        if values[kind] is None:
            return None
    pos = _floats(values.get(UsdGeom.XformOp.TypeTranslate, (0.0, 0.0, 0.0)))
    q = values.get(UsdGeom.XformOp.TypeOrient)
    quat = (1.0, 0.0, 0.0, 0.0) if q is None else _quat_tuple(q)
    scale = _floats(values.get(UsdGeom.XformOp.TypeScale, (1.0, 1.0, 1.0)))
    return pos, quat, scale


def _decompose(matrix: Gf.Matrix4d, where: str) -> PoseScale:
    if not np.isfinite(np.asarray(matrix)).all():
        raise SceneError(f"{where}: non-finite transform; fix the prim's (or a parent's) xformOp values")
    det = matrix.GetDeterminant3()
    if abs(det) < 1e-18:
        raise SceneError(f"{where}: transform has a zero scale; scales must be positive")
    if det < 0:
        raise SceneError(f"{where}: transform is mirrored (negative scale); use positive scales")
    xf = Gf.Transform(matrix)
    scale = _floats(xf.GetScale())
    if abs(xf.GetPivotOrientation().GetAngle()) > 1e-6 and not np.allclose(scale, scale[0], rtol=1e-6):
        raise SceneError(
            f"{where}: transform is sheared (non-uniform scale before a rotation); apply "
            "non-uniform scale on the geom prim itself, after its rotation"
        )
    quat = _quat_tuple(xf.GetRotation().GetQuat())
    if quat[0] < 0:
        quat = tuple(-v for v in quat)
    return _floats(xf.GetTranslation()), quat, scale


# ==== compiled scenes ========================================================================


def export_compiled_usd(
    compiled: CompiledScene | mujoco.MjModel, path: str | os.PathLike[str], data: mujoco.MjData | None = None
) -> Path:
    """Write a compiled twin back to USD, robot geometry included.

    For a :class:`~twin.compile.CompiledScene` the stage is the scene as
    :func:`write_scene_usd` writes it (it reads back with :func:`read_scene_usd`) plus the
    compiled robot under ``/World/Robot/Links/panda_link0/...``: one Xform per MuJoCo body
    nested along the kinematic tree, posed at ``data`` (at the home configuration when
    ``data`` is None), holding the link meshes and primitives of its visible geoms
    (groups 0-2). With ``data``, free bodies are also written at their current poses.

    For a bare ``MjModel`` (no scene description) the whole compiled body tree is written
    under ``/World/Model/world`` instead; such a file is for viewing, not for reading back.
    """
    out = _check_out_path(path)
    if isinstance(compiled, CompiledScene):
        model = compiled.model
        scene = compiled.scene.copy()
        if data is None:
            data = mujoco.MjData(model)
            for name, q in zip(ARM_JOINTS, scene.robot.home_qpos):
                data.qpos[model.jnt_qposadr[model.joint(name).id]] = q
        else:
            _free_bodies_at(scene, model, data)
        mujoco.mj_kinematics(model, data)
        stage = _scene_stage(scene)
        links = UsdGeom.Scope.Define(stage, "/World/Robot/Links").GetPrim()
        _set(links, "compiled", True, _T.Bool)
        base = model.body("panda_link0").id
        _write_model_body(stage, links.GetPath(), set(), model, data, base, parent_id=base)
    elif isinstance(compiled, mujoco.MjModel):
        model = compiled
        if data is None:
            data = mujoco.MjData(model)
        mujoco.mj_kinematics(model, data)
        stage = Usd.Stage.CreateInMemory()
        UsdGeom.SetStageUpAxis(stage, UsdGeom.Tokens.z)
        UsdGeom.SetStageMetersPerUnit(stage, 1.0)
        stage.SetDefaultPrim(UsdGeom.Xform.Define(stage, "/World").GetPrim())
        group = UsdGeom.Scope.Define(stage, "/World/Model").GetPrim()
        _set(group, "compiled", True, _T.Bool)
        _write_model_body(stage, group.GetPath(), set(), model, data, 0, parent_id=None)
    else:
        raise SceneError(f"export_compiled_usd: expected a CompiledScene or MjModel, got {type(compiled).__name__}")
    stage.GetRootLayer().Export(str(out))
    return out


def _free_bodies_at(scene: SceneCfg, model: mujoco.MjModel, data: mujoco.MjData) -> None:
    """Move the scene's top-level free bodies to their poses in ``data``."""
    mujoco.mj_kinematics(model, data)
    for body in scene.bodies:
        if body.joint is not None and body.joint.type == "free":
            bid = model.body(body.name).id
            body.pose = Pose(pos=_floats(data.xpos[bid]), quat=_floats(data.xquat[bid]))


def _write_model_body(
    stage: Usd.Stage,
    parent: Sdf.Path,
    used_in_parent: set[str],
    model: mujoco.MjModel,
    data: mujoco.MjData,
    body_id: int,
    parent_id: int | None,
) -> None:
    name = model.body(body_id).name or f"body{body_id}"
    path = parent.AppendChild(_prim_name(name, f"body{body_id}", used_in_parent))
    xf = UsdGeom.Xform.Define(stage, path)
    if parent_id is None or parent_id == body_id:
        pos, quat = np.zeros(3), np.array([1.0, 0.0, 0.0, 0.0])
    else:  # pose relative to the parent body: p^-1 * c
        inv = np.zeros(4)
        mujoco.mju_negQuat(inv, data.xquat[parent_id])
        pos = np.zeros(3)
        mujoco.mju_rotVecQuat(pos, data.xpos[body_id] - data.xpos[parent_id], inv)
        quat = np.zeros(4)
        mujoco.mju_mulQuat(quat, inv, data.xquat[body_id])
    _set_pose(xf, _floats(pos), _floats(quat))
    _set(xf.GetPrim(), "name", name, _T.String)
    used: set[str] = set()
    for gid in np.flatnonzero(model.geom_bodyid == body_id):
        if model.geom_group[gid] > 2:
            continue
        gname = model.geom(gid).name or f"geom{gid}"
        _write_model_geom(stage, path.AppendChild(_prim_name(gname, f"geom{gid}", used)), model, int(gid))
    for child in np.flatnonzero(model.body_parentid == body_id):
        if child != body_id:
            _write_model_body(stage, path, used, model, data, int(child), parent_id=body_id)


def _write_model_geom(stage: Usd.Stage, path: Sdf.Path, model: mujoco.MjModel, gid: int) -> None:
    gtype = model.geom_type[gid]
    size = model.geom_size[gid]
    scale: tuple[float, ...] | None = None
    G = mujoco.mjtGeom
    if gtype == G.mjGEOM_MESH:
        mid = model.geom_dataid[gid]
        va, vn = model.mesh_vertadr[mid], model.mesh_vertnum[mid]
        fa, fn = model.mesh_faceadr[mid], model.mesh_facenum[mid]
        gp: Any = UsdGeom.Mesh.Define(stage, path)
        points = Vt.Vec3fArray.FromNumpy(model.mesh_vert[va : va + vn].astype(np.float32))
        gp.CreatePointsAttr(points)
        gp.CreateFaceVertexCountsAttr(Vt.IntArray.FromNumpy(np.full(fn, 3, dtype=np.int32)))
        gp.CreateFaceVertexIndicesAttr(
            Vt.IntArray.FromNumpy(model.mesh_face[fa : fa + fn].reshape(-1).astype(np.int32))
        )
        gp.CreateSubdivisionSchemeAttr(UsdGeom.Tokens.none)
        gp.CreateExtentAttr(UsdGeom.PointBased.ComputeExtent(points))
    elif gtype == G.mjGEOM_BOX:
        gp = UsdGeom.Cube.Define(stage, path)
        gp.CreateSizeAttr(2.0)
        scale = _floats(size)
    elif gtype in (G.mjGEOM_SPHERE, G.mjGEOM_ELLIPSOID):
        gp = UsdGeom.Sphere.Define(stage, path)
        gp.CreateRadiusAttr(1.0)
        scale = _floats(size) if gtype == G.mjGEOM_ELLIPSOID else (float(size[0]),) * 3
    elif gtype in (G.mjGEOM_CYLINDER, G.mjGEOM_CAPSULE):
        gp = (UsdGeom.Cylinder if gtype == G.mjGEOM_CYLINDER else UsdGeom.Capsule).Define(stage, path)
        gp.CreateRadiusAttr(float(size[0]))
        gp.CreateHeightAttr(2.0 * float(size[1]))
        gp.CreateAxisAttr(UsdGeom.Tokens.z)
    else:  # planes, height fields, SDFs: not part of the robot
        return
    if gtype != G.mjGEOM_MESH:
        gp.CreateExtentAttr(UsdGeom.Boundable.ComputeExtentFromPlugins(gp, Usd.TimeCode.Default()))
    _set_pose(gp, _floats(model.geom_pos[gid]), _floats(model.geom_quat[gid]), scale)
    matid = model.geom_matid[gid]
    rgba = model.mat_rgba[matid] if matid >= 0 else model.geom_rgba[gid]
    gp.CreateDisplayColorPrimvar(UsdGeom.Tokens.constant).Set(Vt.Vec3fArray([Gf.Vec3f(*map(float, rgba[:3]))]))
    gp.CreateDisplayOpacityPrimvar(UsdGeom.Tokens.constant).Set(Vt.FloatArray([float(rgba[3])]))


def export_model_usd(
    model: mujoco.MjModel, data: mujoco.MjData, path: str | os.PathLike[str], camera_names: list[str] | None = None
) -> Path:
    """Visual snapshot of a compiled model at ``data``, written by MuJoCo's USDExporter.

    Everything MuJoCo would render (robot meshes, fixtures, floor, lights, the named
    cameras) becomes a flat list of Mesh prims under ``/World``; textures are written as
    PNG files to ``<path stem>_assets/assets/`` and referenced from the stage. Use it to
    look at a twin in a USD viewer or renderer; use :func:`export_compiled_usd` for a file
    that reads back as a scene.
    """
    from mujoco.usd.exporter import USDExporter

    out = _check_out_path(path).resolve()
    folder = f"{out.stem}_assets"
    exporter = USDExporter(
        model,
        height=min(480, model.vis.global_.offheight),
        width=min(480, model.vis.global_.offwidth),
        output_directory=folder,
        output_directory_root=str(out.parent),
        camera_names=camera_names,
        verbose=False,
    )
    exporter.update_scene(data)
    stage = exporter.stage
    # The exporter anchors texture paths at its frames/ folder; re-anchor them at ``out``.
    frames = Path(exporter.frames_directory).resolve()
    for prim in stage.Traverse():
        for attr in prim.GetAttributes():
            value = attr.Get()
            if isinstance(value, Sdf.AssetPath) and value.path and not os.path.isabs(value.path):
                target = (frames / value.path).resolve()
                attr.Set(Sdf.AssetPath(os.path.relpath(target, out.parent)))
    stage.GetRootLayer().Export(str(out))
    shutil.rmtree(frames, ignore_errors=True)
    return out


# ==== small helpers ==========================================================================


def _set(prim: Usd.Prim, name: str, value: Any, type_name: Sdf.ValueTypeName) -> None:
    prim.CreateAttribute(NS + name, type_name, custom=True).Set(value)


def _get(prim: Usd.Prim, name: str, default: Any = None) -> Any:
    attr = prim.GetAttribute(NS + name)
    if attr and attr.HasAuthoredValue():
        return attr.Get()
    return default


def _floats(values: Any) -> tuple[float, ...]:
    return tuple(float(v) for v in values)


def _quat_tuple(q: Gf.Quatd | Gf.Quatf) -> tuple[float, float, float, float]:
    im = q.GetImaginary()
    return (float(q.GetReal()), float(im[0]), float(im[1]), float(im[2]))


def _quat_close(a: Any, b: Any, tol: float = 1e-6) -> bool:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return abs(abs(float(np.dot(a / np.linalg.norm(a), b / np.linalg.norm(b)))) - 1.0) < tol


def _positive(value: Any, where: str) -> float:
    v = float(value)
    if not (v > 0 and math.isfinite(v)):
        raise SceneError(f"{where} = {v}: must be a positive finite size (m); fix the attribute")
    return v


def _exact(
    prim: Usd.Prim,
    name: str,
    derived: tuple[float, ...] | None,
    atol: float = 1e-6,
    direction: bool = False,
    clip: bool = False,
) -> Any:
    """The stored double-precision ``twinrank:<name>`` if it agrees with ``derived``.

    ``derived`` is the value read from the standard (often single-precision) schema
    attribute; when they disagree the schema attribute was edited after writing and wins.
    ``direction`` compares normalized vectors; ``clip`` compares after clipping to [0, 1].
    """
    stored = _get(prim, name)
    if stored is None:
        return derived
    value = (float(stored),) if isinstance(stored, (int, float)) else _floats(stored)
    if derived is None:
        return value
    a, b = np.asarray(value, dtype=float), np.asarray(derived, dtype=float)
    if clip:
        a = np.clip(a, 0.0, 1.0)
    if direction:
        na = np.linalg.norm(a)
        a = a / na if na > 0 else a
        b = b / np.linalg.norm(b)
    if a.shape == b.shape and np.allclose(a, b, rtol=1e-5, atol=atol):
        return value
    return _floats(derived)


def _read_texture(prim: Usd.Prim, prefix: str) -> TextureCfg | None:
    builtin = _get(prim, f"{prefix}:builtin")
    if builtin is None:
        return None
    d = TextureCfg()
    if str(builtin) not in ("checker", "gradient", "flat", "file"):
        raise SceneError(
            f"{prim.GetPath()}.{NS}{prefix}:builtin = {str(builtin)!r}: use checker, gradient, flat or file"
        )
    file = _get(prim, f"{prefix}:file")
    return TextureCfg(
        builtin=str(builtin),  # type: ignore[arg-type]
        rgb1=_floats(_get(prim, f"{prefix}:rgb1", d.rgb1)),  # type: ignore[arg-type]
        rgb2=_floats(_get(prim, f"{prefix}:rgb2", d.rgb2)),  # type: ignore[arg-type]
        file=None if file is None else str(file),
        repeat=_floats(_get(prim, f"{prefix}:repeat", d.repeat)),
    )  # type: ignore[arg-type]


def _prim_name(name: str, fallback: str, used: set[str]) -> str:
    """A valid, sibling-unique USD prim name for ``name`` (the exact name is stored separately)."""
    base = Tf.MakeValidIdentifier(name) if name else fallback
    candidate, i = base, 1
    while candidate in used:
        candidate = f"{base}_{i}"
        i += 1
    used.add(candidate)
    return candidate


def _set_pose(xf: UsdGeom.Xformable, pos: Any, quat: Any, scale: Any = None) -> None:
    xf.ClearXformOpOrder()
    xf.AddTranslateOp(_DOUBLE).Set(Gf.Vec3d(*map(float, pos)))
    xf.AddOrientOp(_DOUBLE).Set(Gf.Quatd(*map(float, quat)))
    if scale is not None:
        xf.AddScaleOp(_DOUBLE).Set(Gf.Vec3d(*map(float, scale)))
