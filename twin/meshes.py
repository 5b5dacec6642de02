"""Mesh files (OBJ, STL, GLB/GLTF, PLY) loaded with trimesh into vertex/face arrays."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from twin.scene import SceneError

MESH_SUFFIXES = (".obj", ".stl", ".glb", ".gltf", ".ply", ".off")


@functools.lru_cache(maxsize=64)
def _load(path: str, mtime: float) -> tuple[np.ndarray, np.ndarray]:
    import trimesh

    loaded = trimesh.load(path, force="mesh", process=False)
    verts = np.asarray(loaded.vertices, dtype=np.float64)
    faces = np.asarray(loaded.faces, dtype=np.int32)
    return verts, faces


def load_mesh(path: str | None, where: str = "mesh") -> tuple[np.ndarray, np.ndarray]:
    """Vertices (N, 3) and triangle faces (M, 3) of a mesh file; SceneError if unusable."""
    if not path:
        raise SceneError(f"{where}: no mesh file given; set GeomCfg.mesh to an OBJ/GLB/PLY/STL path")
    p = Path(path)
    if not p.is_file():
        raise SceneError(
            f"{where}: mesh file {str(p)!r} not found; check the path (relative paths "
            "are resolved against the scene file's folder)"
        )
    if p.suffix.lower() not in MESH_SUFFIXES:
        raise SceneError(f"{where}: {p.name!r} is not a supported mesh ({', '.join(MESH_SUFFIXES)})")
    try:
        verts, faces = _load(str(p.resolve()), p.stat().st_mtime)
    except Exception as exc:  # trimesh raises many types for broken files
        raise SceneError(f"{where}: mesh file {str(p)!r} could not be read ({exc}); re-export it") from exc
    if len(verts) < 4 or len(faces) < 1 or not np.isfinite(verts).all():
        raise SceneError(f"{where}: mesh file {str(p)!r} has no usable triangles or non-finite vertices")
    return verts, faces
