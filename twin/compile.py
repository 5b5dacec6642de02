"""Compile a :class:`~twin.scene.SceneCfg` into a MuJoCo model through MjSpec."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import mujoco
import numpy as np

from twin.meshes import load_mesh
from twin.robot import build_robot_spec, set_joint_coef
from twin.scene import BodyCfg, CameraCfg, GeomCfg, MarkerCfg, SceneCfg, SceneError, TextureCfg, validate_scene

_GEOM_TYPES = {
    "box": mujoco.mjtGeom.mjGEOM_BOX,
    "sphere": mujoco.mjtGeom.mjGEOM_SPHERE,
    "cylinder": mujoco.mjtGeom.mjGEOM_CYLINDER,
    "capsule": mujoco.mjtGeom.mjGEOM_CAPSULE,
    "mesh": mujoco.mjtGeom.mjGEOM_MESH,
}
_INTEGRATORS = {
    "Euler": mujoco.mjtIntegrator.mjINT_EULER,
    "RK4": mujoco.mjtIntegrator.mjINT_RK4,
    "implicit": mujoco.mjtIntegrator.mjINT_IMPLICIT,
    "implicitfast": mujoco.mjtIntegrator.mjINT_IMPLICITFAST,
}
# Geom group conventions: 0 scene visuals, 2 robot visuals, 3 collision-only proxies.
VISUAL_GROUP = 0
COLLISION_ONLY_GROUP = 3
FLOOR_Z = -0.75
#: thickness (m) of a fiducial tag's geom, below its printed surface
MARKER_THICKNESS = 0.0004
#: texture pixels per tag bit
MARKER_PIXELS_PER_BIT = 16


@dataclass
class CompiledScene:
    scene: SceneCfg
    spec: mujoco.MjSpec
    model: mujoco.MjModel


def camera_quat(cam: CameraCfg) -> np.ndarray:
    """MuJoCo camera orientation (looks along -z, y up) from pos/target/up."""
    f = np.subtract(cam.target, cam.pos).astype(float)
    f /= np.linalg.norm(f)
    up = np.asarray(cam.up, dtype=float)
    right = np.cross(f, up)
    if np.linalg.norm(right) < 1e-6:  # looking straight along up: pick any right vector
        right = np.cross(f, np.array([1.0, 0.0, 0.0]))
    right /= np.linalg.norm(right)
    y = np.cross(right, f)
    mat = np.stack([right, y, -f], axis=1)
    quat = np.zeros(4)
    mujoco.mju_mat2Quat(quat, mat.reshape(-1))
    return quat


def build_spec(scene: SceneCfg) -> mujoco.MjSpec:
    """Author the whole world (robot, fixtures, objects, cameras, lights, sites) in MjSpec."""
    validate_scene(scene)
    spec = build_robot_spec(scene.robot)
    spec.modelname = scene.name
    spec.compiler.degree = False
    spec.option.timestep = scene.physics.timestep
    spec.option.integrator = _INTEGRATORS[scene.physics.integrator]
    spec.option.gravity = list(scene.physics.gravity)
    spec.option.noslip_iterations = scene.physics.noslip_iterations
    spec.option.cone = mujoco.mjtCone.mjCONE_ELLIPTIC
    spec.option.impratio = 10.0
    width = max([c.width for c in scene.cameras] + [640])
    height = max([c.height for c in scene.cameras] + [480])
    spec.visual.global_.offwidth = width
    spec.visual.global_.offheight = height
    spec.visual.quality.shadowsize = 2048
    spec.visual.headlight.ambient = list(scene.headlight_ambient)
    spec.visual.headlight.diffuse = list(scene.headlight_diffuse)
    spec.stat.center = [0.4, 0.0, 0.2]
    spec.stat.extent = 1.5
    _add_skybox(spec, scene)
    _add_floor(spec, scene)
    for light in scene.lights:
        lt = spec.worldbody.add_light(name=light.name, pos=list(light.pos), dir=list(light.dir))
        lt.diffuse = list(light.diffuse)
        lt.ambient = list(light.ambient)
        lt.specular = list(light.specular)
        lt.type = mujoco.mjtLightType.mjLIGHT_DIRECTIONAL if light.directional else mujoco.mjtLightType.mjLIGHT_SPOT
        lt.castshadow = light.castshadow
    for cam in scene.cameras:
        _add_camera(spec, cam)
    for body in sorted(scene.bodies, key=lambda b: bool(b.parent)):  # world bodies first: parents exist
        _add_body(spec, _parent_body(spec, body), body)
    timeconst = max(scene.physics.contact_timeconst, 2.0 * scene.physics.timestep)
    for geom in spec.geoms:
        geom.solref = [timeconst, 1.0]
    for marker in scene.markers:
        _add_marker(spec, marker)
    for site in scene.sites:
        parent = spec.body(site.body) if site.body else spec.worldbody
        s = parent.add_site(name=site.name, pos=list(site.pos), size=list(site.half_extents))
        s.type = mujoco.mjtGeom.mjGEOM_BOX
        s.rgba = [0.0, 0.0, 0.0, 0.0]
        s.group = 4
    return spec


def compile_scene(scene: SceneCfg) -> CompiledScene:
    spec = build_spec(scene)
    try:
        model = spec.compile()
    except ValueError as exc:
        raise SceneError(f"scene {scene.name!r} does not compile in MuJoCo: {exc}") from exc
    return CompiledScene(scene=scene, spec=spec, model=model)


# ---- pieces ----------------------------------------------------------------------------------


def _add_skybox(spec: mujoco.MjSpec, scene: SceneCfg) -> None:
    rgb = np.clip(np.asarray(scene.background_rgb), 0, 1)
    tex = spec.add_texture(
        name="skybox",
        type=mujoco.mjtTexture.mjTEXTURE_SKYBOX,
        builtin=mujoco.mjtBuiltin.mjBUILTIN_GRADIENT,
        width=64,
        height=64,
    )
    tex.rgb1 = list(rgb)
    tex.rgb2 = list(rgb * 0.4)


def _add_floor(spec: mujoco.MjSpec, scene: SceneCfg) -> None:
    floor = spec.worldbody.add_geom(
        name="floor", type=mujoco.mjtGeom.mjGEOM_PLANE, size=[3.0, 3.0, 0.05], pos=[0.0, 0.0, FLOOR_Z]
    )
    floor.rgba = list(scene.floor_rgba)
    if scene.floor_texture is not None:
        floor.material = _add_material(spec, "floor", scene.floor_texture, scene.floor_rgba)


def _add_material(spec: mujoco.MjSpec, name: str, tex: TextureCfg, rgba: tuple[float, ...]) -> str:
    builtin = {
        "checker": mujoco.mjtBuiltin.mjBUILTIN_CHECKER,
        "gradient": mujoco.mjtBuiltin.mjBUILTIN_GRADIENT,
        "flat": mujoco.mjtBuiltin.mjBUILTIN_FLAT,
    }
    t = spec.add_texture(name=f"tex_{name}", type=mujoco.mjtTexture.mjTEXTURE_2D)
    if tex.builtin == "file":
        if not tex.file or not Path(tex.file).is_file():
            raise SceneError(f"texture of {name!r}: image file {tex.file!r} not found; give an existing PNG path")
        t.file = str(Path(tex.file).resolve())
    else:
        t.builtin = builtin[tex.builtin]
        t.width = 256
        t.height = 256
        t.rgb1 = list(tex.rgb1)
        t.rgb2 = list(tex.rgb2)
    mat = spec.add_material(name=f"mat_{name}")
    mat.textures[mujoco.mjtTextureRole.mjTEXROLE_RGB] = f"tex_{name}"
    mat.texrepeat = list(tex.repeat)
    mat.texuniform = True
    mat.rgba = [1.0, 1.0, 1.0, float(rgba[3])]
    return f"mat_{name}"


def _add_marker(spec: mujoco.MjSpec, m: MarkerCfg) -> None:
    """A fiducial tag: a thin, visual-only, massless box on its body whose top face shows the
    printed tag (black square ``m.size`` plus the white quiet zone) at ``m.pose``.

    MuJoCo maps a 2D texture (texrepeat 1, not uniform) onto a box's +z face with image
    columns along +x and row 0 at +y: the tag frame's axes. The texture's pixels are passed
    in directly (no image files).
    """
    from twin.fiducials import printed_size, tag_image  # OpenCV: only scenes with markers need it

    img = tag_image(m.id, m.family, MARKER_PIXELS_PER_BIT)
    name = f"fiducial_{m.family}_{m.id}"
    tex = spec.add_texture(
        name=f"tex_{name}",
        type=mujoco.mjtTexture.mjTEXTURE_2D,
        width=img.shape[1],
        height=img.shape[0],
        nchannel=3,
    )
    tex.data = np.repeat(img[:, :, None], 3, axis=2).tobytes()
    mat = spec.add_material(name=f"mat_{name}")
    mat.textures[mujoco.mjtTextureRole.mjTEXROLE_RGB] = f"tex_{name}"
    mat.texrepeat = [1.0, 1.0]
    mat.texuniform = False
    mat.specular = 0.0  # matte paper: no highlight washing the bits out
    mat.shininess = 0.0
    rot = np.zeros(9)
    mujoco.mju_quat2Mat(rot, np.asarray(m.pose.quat, float) / np.linalg.norm(m.pose.quat))
    normal = rot.reshape(3, 3)[:, 2]
    half = printed_size(m.size) / 2.0
    geom = spec.body(m.body).add_geom(
        name=name,
        type=mujoco.mjtGeom.mjGEOM_BOX,
        size=[half, half, MARKER_THICKNESS / 2.0],
        pos=list(np.asarray(m.pose.pos, float) - normal * MARKER_THICKNESS / 2.0),
        quat=list(m.pose.quat),
    )
    geom.material = f"mat_{name}"
    geom.rgba = [1.0, 1.0, 1.0, 1.0]
    geom.contype = 0
    geom.conaffinity = 0
    geom.mass = 0.0
    geom.density = 0.0
    geom.group = VISUAL_GROUP


def _add_camera(spec: mujoco.MjSpec, cam: CameraCfg) -> None:
    c = spec.worldbody.add_camera(name=cam.name, pos=list(cam.pos), quat=list(camera_quat(cam)))
    c.fovy = cam.fovy_deg
    pixel = 3e-6  # only the ratio focal/sensor matters; 3 um is a D435i-like pixel
    c.resolution = [cam.width, cam.height]
    c.sensor_size = [cam.width * pixel, cam.height * pixel]
    c.focal_pixel = [cam.fx, cam.fy]
    c.principal_pixel = [cam.cx - cam.width / 2.0, cam.cy - cam.height / 2.0]


def _parent_body(spec: mujoco.MjSpec, cfg: BodyCfg) -> mujoco.MjsBody:
    """The body a top-level scene body hangs from: the world, or ``cfg.parent`` (a robot link
    or a world-attached scene body)."""
    if not cfg.parent:
        return spec.worldbody
    parent = spec.body(cfg.parent)
    if parent is None:
        links = [b.name for b in spec.bodies if b.name.startswith("panda_")]
        raise SceneError(
            f"body {cfg.name!r}.parent = {cfg.parent!r}: no such robot link or scene body (robot links: {links})"
        )
    if cfg.joint is not None and cfg.joint.type == "free":
        raise SceneError(f"body {cfg.name!r}: a free-joint body cannot have a parent; remove the joint or the parent")
    return parent


def _add_body(spec: mujoco.MjSpec, parent: mujoco.MjsBody, cfg: BodyCfg) -> None:
    body = parent.add_body(name=cfg.name, pos=list(cfg.pose.pos), quat=list(cfg.pose.quat))
    if cfg.joint is not None:
        j = cfg.joint
        if j.type == "free":
            body.add_freejoint(name=j.name or f"{cfg.name}_free")
        else:
            joint = body.add_joint(name=j.name or f"{cfg.name}_joint", axis=list(j.axis), pos=list(j.pos))
            joint.type = mujoco.mjtJoint.mjJNT_HINGE if j.type == "hinge" else mujoco.mjtJoint.mjJNT_SLIDE
            if j.range is not None:
                joint.limited = mujoco.mjtLimited.mjLIMITED_TRUE
                joint.range = list(j.range)
            set_joint_coef(joint, "damping", j.damping)
            joint.frictionloss = j.frictionloss
            set_joint_coef(joint, "stiffness", j.stiffness)
            joint.armature = 0.01
    volumes = [geom_volume(g) for g in cfg.geoms if g.collide]
    total_volume = sum(volumes)
    for i, g in enumerate(cfg.geoms):
        name = g.name or f"{cfg.name}_g{i}"
        _add_geom(spec, body, g, name, cfg, total_volume)
    for child in cfg.children:
        if child.parent:
            raise SceneError(f"body {child.name!r}.parent = {child.parent!r}: only top-level bodies can set a parent")
        _add_body(spec, body, child)


def geom_volume(g: GeomCfg) -> float:
    """Volume of a primitive geom (0 for meshes)."""
    s = g.size
    if g.type == "box":
        return 8.0 * s[0] * s[1] * s[2]
    if g.type == "sphere":
        return 4.0 / 3.0 * math.pi * s[0] ** 3
    if g.type == "cylinder":
        return math.pi * s[0] ** 2 * 2.0 * s[1]
    if g.type == "capsule":
        return math.pi * s[0] ** 2 * (2.0 * s[1] + 4.0 / 3.0 * s[0])
    return 0.0


def _add_geom(
    spec: mujoco.MjSpec, body: mujoco.MjsBody, g: GeomCfg, name: str, owner: BodyCfg, total_volume: float
) -> None:
    geom = body.add_geom(name=name, type=_GEOM_TYPES[g.type], pos=list(g.pose.pos), quat=list(g.pose.quat))
    if g.type == "mesh":
        mesh_name = f"mesh_{name}"
        verts, faces = load_mesh(g.mesh, where=f"body {owner.name!r} geom {name!r}")
        spec.add_mesh(
            name=mesh_name,
            uservert=verts.reshape(-1).tolist(),
            userface=faces.reshape(-1).tolist(),
            scale=list(g.mesh_scale),
        )
        geom.meshname = mesh_name
    else:
        size = list(g.size) + [0.0] * (3 - len(g.size))
        geom.size = size
    geom.rgba = list(g.rgba)
    if g.texture is not None:
        geom.material = _add_material(spec, name, g.texture, g.rgba)
    if g.friction is not None:
        geom.friction = [g.friction, 0.005, 0.0001]
    if not g.collide:
        geom.contype = 0
        geom.conaffinity = 0
        geom.mass = 0.0
        geom.density = 0.0
    elif owner.mass is not None:
        vol = geom_volume(g)
        if total_volume > 0 and vol > 0:
            geom.mass = owner.mass * vol / total_volume
        elif g.type == "mesh":
            geom.mass = owner.mass  # single mesh body: MuJoCo spreads it by the mesh's volume
    geom.group = VISUAL_GROUP if g.visible else COLLISION_ONLY_GROUP
    if not g.visible:
        geom.rgba = [g.rgba[0], g.rgba[1], g.rgba[2], 0.0]
