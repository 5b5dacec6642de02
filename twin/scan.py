"""Scanned scenes: turn a room/table-top scan (Polycam-style OBJ, GLB/GLTF, PLY, STL export)
into a static twin body, and add it with named task sites to a scene.

MuJoCo collides a mesh geom as its convex hull, which fills in a sink, a shelf or a room.
:func:`scan_body` therefore keeps the scan mesh as a visual-only geom and, in the default
``"voxel"`` collision mode, builds the collision geometry from invisible boxes: the scaled
mesh surface is voxelized with trimesh at ``voxel_pitch`` and runs of adjacent voxels are
merged along x, then y, then z into larger boxes to keep the geom count low. ``"hull"``
collides the mesh itself (its convex hull): fine for convex scans, wrong for concave ones.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Literal

import numpy as np

from twin.scene import BodyCfg, GeomCfg, Pose, SceneCfg, SceneError, SiteCfg

SCAN_SUFFIXES = (".obj", ".glb", ".gltf", ".ply", ".stl")
CollisionMode = Literal["voxel", "hull"]
# +90 degrees about x: maps a Y-up scan (glTF, Polycam GLB) onto the twin's Z-up world.
_Y_UP_TO_Z_UP = (math.cos(math.pi / 4), math.sin(math.pi / 4), 0.0, 0.0)
_DEFAULT_RGBA = (0.7, 0.7, 0.7, 1.0)


def load_scan(mesh_path: str | os.PathLike[str]) -> Any:
    """The scan as one ``trimesh.Trimesh`` (scene nodes merged); SceneError if unusable."""
    import trimesh

    p = Path(mesh_path)
    where = f"scan {str(p)!r}"
    if not p.is_file():
        raise SceneError(f"{where}: file not found; check the path to the exported scan")
    if p.suffix.lower() not in SCAN_SUFFIXES:
        raise SceneError(f"{where}: unsupported file type {p.suffix!r}; export the scan as {', '.join(SCAN_SUFFIXES)}")
    try:
        # process=False keeps the vertices exactly as twin.meshes.load_mesh (the compiler) sees them.
        mesh = trimesh.load(str(p), force="mesh", process=False)
    except Exception as exc:  # trimesh raises many types for broken files
        raise SceneError(f"{where}: could not be read as a mesh ({type(exc).__name__}: {exc}); re-export it") from exc
    if not isinstance(mesh, trimesh.Trimesh) or len(mesh.faces) == 0 or len(mesh.vertices) < 3:
        raise SceneError(f"{where}: the file holds no triangles (empty mesh); re-export the scan with its geometry")
    if not np.isfinite(mesh.vertices).all():
        raise SceneError(f"{where}: has non-finite vertex coordinates; re-export the scan")
    return mesh


def mean_color(mesh: Any) -> tuple[float, float, float, float]:
    """Mean vertex (or face) colour of a trimesh mesh as RGBA in [0, 1]; grey if it has none.

    Textured scans (Polycam GLB) are sampled at their vertices' texture coordinates.
    """
    visual = getattr(mesh, "visual", None)
    kind = getattr(visual, "kind", None)
    colors = None
    if kind == "texture":
        try:
            visual = visual.to_color()
            kind = visual.kind
        except Exception:  # no image/UVs to sample: fall back to grey
            kind = None
    if kind == "vertex":
        colors = np.asarray(visual.vertex_colors)
    elif kind == "face":
        colors = np.asarray(visual.face_colors)
    if colors is None or colors.size == 0:
        return _DEFAULT_RGBA
    rgba = colors[:, :4].astype(float).mean(axis=0) / 255.0
    return tuple(float(np.clip(c, 0.0, 1.0)) for c in rgba)  # type: ignore[return-value]


def scan_body(
    mesh_path: str | os.PathLike[str],
    name: str = "scan",
    pose: Pose | None = None,
    scale: float = 1.0,
    collision: CollisionMode = "voxel",
    voxel_pitch: float = 0.02,
    up_axis: Literal["z", "y"] = "z",
) -> BodyCfg:
    """A static body (kind ``"scan"``, no joint) showing the scan mesh and colliding with it.

    ``pose`` places the scan's own frame in the world; ``scale`` converts its units to
    metres. ``up_axis="y"`` rotates a Y-up export (glTF/GLB from Polycam) upright first.
    The visual geom is the mesh (``collide=False``) coloured by the mean vertex colour.
    Collision: ``"voxel"`` (default) adds invisible boxes from the voxelized surface (merged
    runs of ``voxel_pitch`` cubes, so thin walls get about one pitch thick); ``"hull"``
    makes the visual mesh collide as well (MuJoCo uses its convex hull).
    """
    if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
        raise SceneError(f"scan {name!r}: scale = {scale}; use a positive factor (scan units to metres)")
    if collision not in ("voxel", "hull"):
        raise SceneError(f"scan {name!r}: collision = {collision!r}; use 'voxel' (concave scans) or 'hull'")
    if not (math.isfinite(voxel_pitch) and voxel_pitch > 0):
        raise SceneError(f"scan {name!r}: voxel_pitch = {voxel_pitch}; use a positive size in metres, e.g. 0.02")
    if up_axis not in ("z", "y"):
        raise SceneError(f"scan {name!r}: up_axis = {up_axis!r}; use 'z' or 'y'")
    mesh = load_scan(mesh_path)
    path = str(Path(mesh_path).resolve())
    rgba = mean_color(mesh)
    pose = Pose() if pose is None else Pose(pos=tuple(pose.pos), quat=tuple(pose.quat))
    if up_axis == "y":
        pose.quat = _mul_quat(pose.quat, _Y_UP_TO_Z_UP)
    visual = GeomCfg(
        type="mesh",
        name=f"{name}_visual",
        mesh=path,
        mesh_scale=(float(scale),) * 3,
        rgba=rgba,
        collide=(collision == "hull"),
    )
    geoms = [visual]
    if collision == "voxel":
        scaled = mesh.copy()
        scaled.apply_scale(float(scale))
        for i, (center, half) in enumerate(voxel_boxes(scaled, voxel_pitch)):
            geoms.append(
                GeomCfg(
                    type="box",
                    name=f"{name}_vox{i}",
                    size=tuple(half),
                    pose=Pose(pos=tuple(center)),
                    rgba=(rgba[0], rgba[1], rgba[2], 0.0),
                    visible=False,
                )
            )
    return BodyCfg(name=name, kind="scan", pose=pose, geoms=geoms)


def voxel_boxes(mesh: Any, pitch: float) -> list[tuple[tuple[float, float, float], tuple[float, float, float]]]:
    """Surface voxels of a trimesh mesh merged into boxes: [(centre, half-extents)], mesh frame."""
    grid = mesh.voxelized(pitch)
    filled = np.asarray(grid.matrix, dtype=bool)
    boxes = _runs_along_x(filled)
    boxes = _merge(boxes, axis=1)
    boxes = _merge(boxes, axis=2)
    transform = np.asarray(grid.transform, dtype=float)  # voxel index -> centre point
    rot_scale, offset = transform[:3, :3], transform[:3, 3]
    cell = np.abs(np.diag(rot_scale))
    out = []
    for lo, hi in boxes:
        center_idx = (np.asarray(lo, dtype=float) + np.asarray(hi, dtype=float) - 1.0) / 2.0
        center = rot_scale @ center_idx + offset
        half = (np.asarray(hi) - np.asarray(lo)) * cell / 2.0
        out.append((tuple(float(v) for v in center), tuple(float(v) for v in half)))
    return out


Box = tuple[tuple[int, int, int], tuple[int, int, int]]  # voxel index range [lo, hi) per axis


def _runs_along_x(filled: np.ndarray) -> list[Box]:
    """Maximal runs of filled voxels along x, one box per run."""
    padded = np.zeros((filled.shape[0] + 2, *filled.shape[1:]), dtype=np.int8)
    padded[1:-1] = filled
    edges = np.diff(padded, axis=0)  # +1 where a run starts, -1 one past its end
    starts = np.argwhere(edges == 1)
    ends = np.argwhere(edges == -1)
    # argwhere orders by (x, y, z); reorder both by (y, z, x) so starts and ends pair up.
    starts = starts[np.lexsort((starts[:, 0], starts[:, 2], starts[:, 1]))]
    ends = ends[np.lexsort((ends[:, 0], ends[:, 2], ends[:, 1]))]
    return [
        ((int(s[0]), int(s[1]), int(s[2])), (int(e[0]), int(s[1]) + 1, int(s[2]) + 1)) for s, e in zip(starts, ends)
    ]


def _merge(boxes: list[Box], axis: int) -> list[Box]:
    """Join boxes that touch along ``axis`` and have identical extents on the other axes."""
    others = [a for a in range(3) if a != axis]
    key = lambda b: (*(b[0][a] for a in others), *(b[1][a] for a in others), b[0][axis])  # noqa: E731
    merged: list[Box] = []
    for box in sorted(boxes, key=key):
        if merged:
            lo, hi = merged[-1]
            if all(lo[a] == box[0][a] and hi[a] == box[1][a] for a in others) and hi[axis] == box[0][axis]:
                new_hi = list(hi)
                new_hi[axis] = box[1][axis]
                merged[-1] = (lo, (new_hi[0], new_hi[1], new_hi[2]))
                continue
        merged.append(box)
    return merged


def add_scan(
    scene: SceneCfg,
    mesh_path: str | os.PathLike[str],
    pose: Pose | None = None,
    scale: float = 1.0,
    sites: dict[str, tuple[float, ...]] | None = None,
    name: str = "scan",
    collision: CollisionMode = "voxel",
    voxel_pitch: float = 0.02,
    up_axis: Literal["z", "y"] = "z",
) -> SceneCfg:
    """A copy of ``scene`` with the scan body (see :func:`scan_body`) and named task sites.

    ``sites`` maps a site name to ``(x, y, z)`` or ``(x, y, z, hx, hy, hz)`` in the world
    frame (half-extents default to 1 cm), e.g. ``{"sink": (0.5, -0.3, 0.06, 0.15, 0.17,
    0.06)}`` for the basin of a scanned sink.
    """
    out = scene.copy()
    existing = {b.name for b in out.iter_bodies()}
    if name in existing:
        raise SceneError(f"add_scan: scene {scene.name!r} already has a body {name!r}; pass another name=")
    out.bodies.append(
        scan_body(
            mesh_path, name=name, pose=pose, scale=scale, collision=collision, voxel_pitch=voxel_pitch, up_axis=up_axis
        )
    )
    site_names = {s.name for s in out.sites}
    for site_name, values in (sites or {}).items():
        where = f"add_scan site {site_name!r}"
        if site_name in site_names:
            raise SceneError(f"{where}: the scene already has a site with this name; pick another name")
        v = tuple(float(x) for x in values)
        if len(v) not in (3, 6) or not all(math.isfinite(x) for x in v):
            raise SceneError(f"{where} = {values}: give (x, y, z) or (x, y, z, hx, hy, hz) finite numbers (m)")
        half = v[3:] if len(v) == 6 else SiteCfg(name=site_name).half_extents
        if any(h <= 0 for h in half):
            raise SceneError(f"{where}: half-extents {half} must be positive (m)")
        out.sites.append(SiteCfg(name=site_name, pos=v[:3], half_extents=tuple(half)))  # type: ignore[arg-type]
        site_names.add(site_name)
    return out


def _mul_quat(a: tuple[float, ...], b: tuple[float, ...]) -> tuple[float, float, float, float]:
    import mujoco

    out = np.zeros(4)
    mujoco.mju_mulQuat(out, np.asarray(a, dtype=float), np.asarray(b, dtype=float))
    return (float(out[0]), float(out[1]), float(out[2]), float(out[3]))
