"""Scene description: the data a twin is compiled from.

A scene is plain dataclasses (this module), stored as a USD stage (``twin.usd_io``) and
compiled to MuJoCo through MjSpec (``twin.compile``). Units are SI (metres, kilograms,
radians); quaternions are ``(w, x, y, z)`` as in MuJoCo; all poses are in the world frame
unless a field says otherwise. The robot base sits at ``robot.base`` and task sites are
named points/regions in the world frame.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import math
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from typing import Any, Literal

import numpy as np

Vec3 = tuple[float, float, float]
Quat = tuple[float, float, float, float]
RGBA = tuple[float, float, float, float]

GeomType = Literal["box", "sphere", "cylinder", "capsule", "mesh"]
JointType = Literal["free", "hinge", "slide"]


class SceneError(ValueError):
    """A scene description is invalid. The message names the field and the fix."""


@dataclass
class Pose:
    pos: Vec3 = (0.0, 0.0, 0.0)
    quat: Quat = (1.0, 0.0, 0.0, 0.0)


@dataclass
class TextureCfg:
    """A procedural MuJoCo texture (no image files needed) or an image file."""

    builtin: Literal["checker", "gradient", "flat", "file"] = "checker"
    rgb1: tuple[float, float, float] = (0.8, 0.8, 0.8)
    rgb2: tuple[float, float, float] = (0.6, 0.6, 0.6)
    file: str | None = None
    repeat: tuple[float, float] = (4.0, 4.0)


@dataclass
class GeomCfg:
    """One collision/visual shape of a body, in the body frame.

    ``size`` follows MuJoCo: box half-extents (3), sphere radius (1), cylinder/capsule
    (radius, half-length). Mesh geoms read ``mesh`` (OBJ/STL/GLB/PLY path) scaled by
    ``mesh_scale``.
    """

    type: GeomType = "box"
    size: tuple[float, ...] = (0.05, 0.05, 0.05)
    pose: Pose = field(default_factory=Pose)
    rgba: RGBA = (0.7, 0.7, 0.7, 1.0)
    name: str = ""
    mesh: str | None = None
    mesh_scale: Vec3 = (1.0, 1.0, 1.0)
    friction: float | None = None
    texture: TextureCfg | None = None
    collide: bool = True
    visible: bool = True


@dataclass
class JointCfg:
    """A joint between a body and its parent (axis and position in the body frame)."""

    name: str = ""
    type: JointType = "hinge"
    axis: Vec3 = (0.0, 0.0, 1.0)
    pos: Vec3 = (0.0, 0.0, 0.0)
    range: tuple[float, float] | None = None
    damping: float = 0.0
    frictionloss: float = 0.0
    stiffness: float = 0.0


@dataclass
class BodyCfg:
    """A rigid body: fixture (no joint or an articulation joint) or object (free joint).

    ``kind`` is a semantic tag used by tasks and perturbations: table, sink, shelf,
    cabinet, object, distractor, scan, background.

    ``parent`` (top-level bodies only) attaches the body to a robot link (e.g. ``panda_hand``)
    or another scene body instead of the world; ``pose`` is then in that body's frame.
    """

    name: str
    pose: Pose = field(default_factory=Pose)
    geoms: list[GeomCfg] = field(default_factory=list)
    joint: JointCfg | None = None
    children: list[BodyCfg] = field(default_factory=list)
    mass: float | None = None
    kind: str = "fixture"
    parent: str = ""


@dataclass
class CameraCfg:
    """A pinhole camera: intrinsics in pixels, pose as position + look-at target.

    Defaults are a RealSense D435i colour stream at 640x480.
    """

    name: str
    pos: Vec3 = (0.0, -0.5, 0.7)
    target: Vec3 = (0.5, 0.0, 0.0)
    up: Vec3 = (0.0, 0.0, 1.0)
    width: int = 640
    height: int = 480
    fx: float = 615.0
    fy: float = 615.0
    cx: float = 320.0
    cy: float = 240.0

    @property
    def fovy_deg(self) -> float:
        return math.degrees(2.0 * math.atan(self.height / (2.0 * self.fy)))

    def intrinsic_matrix(self) -> np.ndarray:
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])


@dataclass
class LightCfg:
    name: str
    pos: Vec3 = (0.0, 0.0, 2.0)
    dir: Vec3 = (0.0, 0.0, -1.0)
    diffuse: tuple[float, float, float] = (0.7, 0.7, 0.7)
    ambient: tuple[float, float, float] = (0.1, 0.1, 0.1)
    specular: tuple[float, float, float] = (0.2, 0.2, 0.2)
    directional: bool = False
    castshadow: bool = False


@dataclass
class SiteCfg:
    """A named task site: a point with an optional box region (half-extents).

    ``body`` attaches it to a body (pose then in that body's frame); empty = world.
    """

    name: str
    pos: Vec3 = (0.0, 0.0, 0.0)
    half_extents: Vec3 = (0.01, 0.01, 0.01)
    body: str = ""


#: fiducial families the twin can draw and detect (``twin.fiducials``) -> number of tag ids
MARKER_FAMILIES = {"apriltag_36h11": 587}


@dataclass
class MarkerCfg:
    """A fiducial tag printed on a body.

    ``size`` is the edge of the tag's outer black square (m); the compiled tag also has a
    white quiet zone one bit wide around it. ``pose`` is the tag frame in the body frame:
    origin at the tag centre on its printed surface, z the outward normal, x right and y up
    of the printed image seen from the front (OpenCV's ArUco marker frame).
    """

    id: int
    size: float
    body: str
    pose: Pose = field(default_factory=Pose)
    family: str = "apriltag_36h11"


@dataclass
class RobotCfg:
    """The arm: model, base pose, home joint configuration and controller gains."""

    model: Literal["panda"] = "panda"
    base: Pose = field(default_factory=Pose)
    # Home: TCP 0.41 m above the table, pointing straight down (gripper axes = world x, -y, -z).
    home_qpos: tuple[float, ...] = (0.0, -0.2401, 0.0, -2.1157, 0.0, 1.8756, 0.7853981634)
    kp: tuple[float, ...] = (4500.0, 4500.0, 3500.0, 3500.0, 2000.0, 2000.0, 2000.0)
    kd: tuple[float, ...] = (450.0, 450.0, 350.0, 350.0, 200.0, 200.0, 200.0)
    joint_damping_scale: float = 1.0
    gripper_force: float = 140.0
    gripper_kp: float = 2500.0


@dataclass
class PhysicsCfg:
    timestep: float = 0.002
    integrator: Literal["implicitfast", "Euler", "RK4", "implicit"] = "implicitfast"
    gravity: Vec3 = (0.0, 0.0, -9.81)
    noslip_iterations: int = 0
    # Contact stiffness (MuJoCo solref time constant, s). MuJoCo's default 0.02 lets a
    # grasped object creep out of the fingers; 0.005 (2.5 physics steps) holds it.
    contact_timeconst: float = 0.005


@dataclass
class SceneCfg:
    """Everything needed to build one twin: robot, bodies, cameras, lights, sites.

    ``workspace`` is the axis-aligned box (min, max) point clouds are cropped to.
    """

    name: str = "cell"
    robot: RobotCfg = field(default_factory=RobotCfg)
    bodies: list[BodyCfg] = field(default_factory=list)
    cameras: list[CameraCfg] = field(default_factory=list)
    lights: list[LightCfg] = field(default_factory=list)
    sites: list[SiteCfg] = field(default_factory=list)
    workspace: tuple[Vec3, Vec3] = ((-0.8, -0.8, -0.3), (0.8, 0.8, 1.0))
    physics: PhysicsCfg = field(default_factory=PhysicsCfg)
    floor_rgba: RGBA = (0.35, 0.35, 0.38, 1.0)
    floor_texture: TextureCfg | None = None
    background_rgb: tuple[float, float, float] = (0.55, 0.65, 0.75)
    # MuJoCo's camera-attached headlight (ambient room light); lighting factors scale it.
    headlight_ambient: tuple[float, float, float] = (0.25, 0.25, 0.25)
    headlight_diffuse: tuple[float, float, float] = (0.3, 0.3, 0.3)
    #: fiducial tags on bodies (``twin.fiducials.with_markers`` adds one per object)
    markers: list[MarkerCfg] = field(default_factory=list)

    # ---- look-ups -------------------------------------------------------------------
    def iter_bodies(self) -> list[BodyCfg]:
        out: list[BodyCfg] = []
        stack = list(reversed(self.bodies))
        while stack:
            b = stack.pop()
            out.append(b)
            stack.extend(reversed(b.children))
        return out

    def body(self, name: str) -> BodyCfg:
        for b in self.iter_bodies():
            if b.name == name:
                return b
        known = ", ".join(b.name for b in self.iter_bodies())
        raise SceneError(f"scene {self.name!r} has no body {name!r} (bodies: {known})")

    def camera(self, name: str) -> CameraCfg:
        for c in self.cameras:
            if c.name == name:
                return c
        raise SceneError(f"scene {self.name!r} has no camera {name!r} (cameras: {[c.name for c in self.cameras]})")

    def site(self, name: str) -> SiteCfg:
        for s in self.sites:
            if s.name == name:
                return s
        raise SceneError(
            f"scene {self.name!r} has no site {name!r} (sites: {[s.name for s in self.sites]}); "
            "add it with SiteCfg(name=...) or the scan's --site option"
        )

    def copy(self) -> SceneCfg:
        return copy.deepcopy(self)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def digest(self) -> str:
        """Stable content hash (used to cache compiled models).

        Hashes the typed form (``from_dict(to_dict())``) so that 0 and 0.0 hash alike.
        """
        data = SceneCfg.from_dict(self.to_dict()).to_dict()
        if not data["markers"]:
            del data["markers"]  # a scene without markers hashes as before markers existed
        _drop_world_parents(data["bodies"])  # world-attached bodies hash as before ``parent`` existed
        blob = json.dumps(data, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    @staticmethod
    def from_dict(data: dict[str, Any]) -> SceneCfg:
        return _from_dict(SceneCfg, data)

    def validate(self) -> None:
        validate_scene(self)


def _drop_world_parents(bodies: list[dict[str, Any]]) -> None:
    for b in bodies:
        if not b.get("parent"):
            b.pop("parent", None)
        _drop_world_parents(b["children"])


# ---- dict <-> dataclass ------------------------------------------------------------------


def dataclass_from_dict(cls: Any, data: Any, strict: bool = False) -> Any:
    """Build dataclass ``cls`` (recursively, with typed tuples/lists/unions) from plain data.

    ``strict``: unknown keys raise ValueError naming them (at any depth).
    """
    return _from_dict(cls, data, strict)


@functools.cache
def _type_hints(cls: Any) -> dict[str, Any]:
    """``typing.get_type_hints`` of a dataclass, once per class (it compiles every string
    annotation on each call; scenes are rebuilt from dicts on every reset)."""
    import typing

    return typing.get_type_hints(cls)


def _from_dict(cls: Any, data: Any, strict: bool = False) -> Any:
    if data is None:
        return None
    if isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise ValueError(f"{cls.__name__}: expected a mapping of fields, got {type(data).__name__}")
    hints = _type_hints(cls)
    if strict:
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(
                f"{cls.__name__}: unknown field(s) {unknown}; valid: {sorted(f.name for f in fields(cls))}"
            )
    kwargs = {}
    for f in fields(cls):
        if f.name not in data:
            continue
        kwargs[f.name] = _coerce(hints[f.name], data[f.name], strict)
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, strict: bool = False) -> Any:
    import types
    import typing

    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        non_none = [a for a in args if a is not type(None)]
        return _coerce(non_none[0], value, strict)
    if is_dataclass(tp):
        return _from_dict(tp, value, strict)
    if origin is list:
        return [_coerce(args[0], v, strict) for v in value]
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, strict) for v in value)
        return tuple(_coerce(a, v, strict) for a, v in zip(args, value))
    if tp is float:
        return float(value)
    if tp is int:
        return int(value)
    return value


# ---- validation -------------------------------------------------------------------------

_GEOM_SIZES = {"box": 3, "sphere": 1, "cylinder": 2, "capsule": 2}


def validate_scene(scene: SceneCfg) -> None:
    """Raise SceneError naming the first invalid field and how to fix it."""
    names: set[str] = set()
    for body in scene.iter_bodies():
        where = f"body {body.name!r}"
        if not body.name:
            raise SceneError("a body has an empty name; give every body a unique name")
        if body.name in names:
            raise SceneError(f"{where}: duplicate body name; body names must be unique")
        names.add(body.name)
        _check_quat(body.pose.quat, f"{where}.pose.quat")
        if body.mass is not None and not (body.mass > 0 and math.isfinite(body.mass)):
            raise SceneError(f"{where}.mass = {body.mass}: mass must be a positive number (kg)")
        if not body.geoms and not body.children:
            raise SceneError(f"{where}: has no geoms; add at least one GeomCfg")
        for i, g in enumerate(body.geoms):
            gw = f"{where}.geoms[{i}]"
            if g.type == "mesh":
                if not g.mesh:
                    raise SceneError(f"{gw}: type 'mesh' needs a mesh file path in 'mesh'")
            elif g.type in _GEOM_SIZES:
                n = _GEOM_SIZES[g.type]
                if len(g.size) < n or any(not (s > 0 and math.isfinite(s)) for s in g.size[:n]):
                    raise SceneError(f"{gw}.size = {tuple(g.size)}: a {g.type} needs {n} positive finite sizes")
            else:
                raise SceneError(f"{gw}.type = {g.type!r}: use one of box, sphere, cylinder, capsule, mesh")
            if g.friction is not None and not (0 <= g.friction < 10):
                raise SceneError(f"{gw}.friction = {g.friction}: sliding friction must be in [0, 10)")
            if len(g.rgba) != 4 or any(not (0 <= c <= 1) for c in g.rgba):
                raise SceneError(f"{gw}.rgba = {g.rgba}: four values in [0, 1] expected")
        if body.joint is not None:
            j = body.joint
            if j.type not in ("free", "hinge", "slide"):
                raise SceneError(f"{where}.joint.type = {j.type!r}: use free, hinge or slide")
            if j.range is not None and not j.range[0] < j.range[1]:
                raise SceneError(f"{where}.joint.range = {j.range}: lower bound must be below upper")
    for cam in scene.cameras:
        cw = f"camera {cam.name!r}"
        if cam.width <= 0 or cam.height <= 0:
            raise SceneError(f"{cw}: width/height must be positive pixels")
        if not (cam.fx > 0 and cam.fy > 0):
            raise SceneError(f"{cw}: focal lengths fx, fy must be positive (pixels)")
        if np.allclose(np.subtract(cam.pos, cam.target), 0):
            raise SceneError(f"{cw}: pos and target coincide; the camera must look somewhere")
    for site in scene.sites:
        if site.body and site.body not in names:
            raise SceneError(f"site {site.name!r}.body = {site.body!r}: no such body")
    _validate_markers(scene, names)
    lo, hi = scene.workspace
    if any(a >= b for a, b in zip(lo, hi)):
        raise SceneError(f"workspace = {scene.workspace}: each min must be below its max")
    if len(scene.robot.home_qpos) != 7:
        raise SceneError(f"robot.home_qpos has {len(scene.robot.home_qpos)} values; the arm has 7 joints")
    if not (0 < scene.physics.timestep <= 0.01):
        raise SceneError(f"physics.timestep = {scene.physics.timestep}: use a value in (0, 0.01] s")


def _validate_markers(scene: SceneCfg, bodies: set[str]) -> None:
    ids: dict[tuple[str, int], int] = {}
    for i, m in enumerate(scene.markers):
        where = f"markers[{i}]"
        if m.family not in MARKER_FAMILIES:
            raise SceneError(f"{where}.family = {m.family!r}: use one of {', '.join(MARKER_FAMILIES)}")
        if m.body not in bodies:
            raise SceneError(f"{where}.body = {m.body!r}: no such body; fix the name (bodies: {sorted(bodies)})")
        if not (m.size > 0 and math.isfinite(m.size)):
            raise SceneError(f"{where}.size = {m.size}: the tag's black-square edge must be a positive length (m)")
        if not 0 <= m.id < MARKER_FAMILIES[m.family]:
            raise SceneError(f"{where}.id = {m.id}: {m.family} ids are 0..{MARKER_FAMILIES[m.family] - 1}")
        key = (m.family, m.id)
        if key in ids:
            raise SceneError(
                f"{where}: id {m.id} is also used by markers[{ids[key]}]; each {m.family} id may appear "
                "once in a scene (pick another id)"
            )
        ids[key] = i
        if len(m.pose.pos) != 3 or not all(math.isfinite(v) for v in m.pose.pos):
            raise SceneError(f"{where}.pose.pos = {m.pose.pos}: three finite numbers (m, body frame)")
        _check_quat(m.pose.quat, f"{where}.pose.quat")


def _check_quat(q: Quat, where: str) -> None:
    if len(q) != 4 or not all(math.isfinite(v) for v in q) or abs(np.linalg.norm(q)) < 1e-9:
        raise SceneError(f"{where} = {q}: a quaternion is 4 finite numbers (w, x, y, z), not all zero")


# ---- helpers for building scenes -------------------------------------------------------


def yaw_quat(yaw: float) -> Quat:
    return (math.cos(yaw / 2.0), 0.0, 0.0, math.sin(yaw / 2.0))


def box(name: str, half: Vec3, pos: Vec3 = (0, 0, 0), rgba: RGBA = (0.7, 0.7, 0.7, 1.0), **kw: Any) -> GeomCfg:
    return GeomCfg(type="box", size=tuple(half), pose=Pose(pos=tuple(pos)), rgba=rgba, name=name, **kw)
