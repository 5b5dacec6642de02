"""Gaussian splats sampled from meshes: every twin scene gets a splat version without a scan.

Surfaces are sampled area-weighted (trimesh); each sample becomes a flat disc Gaussian lying in
the face plane (local z = face normal, thin along it) sized to the sample spacing, coloured from
(in this order) the texture at the interpolated UV, the mesh vertex colours, or the geom colour.
Colours are unlit albedo (MuJoCo's renders are shaded, so splat renders look flatter).

:func:`splats_from_model` walks a compiled MuJoCo model (e.g. ``env.sim.model`` of a ``TwinEnv``):
geom type, size, world pose, rgba / material / texture and mesh vertices; each Gaussian is labelled
with its body, or ``BACKGROUND`` (-1) for geoms welded to the world (static).
"""

from __future__ import annotations

import numpy as np
import trimesh

from twin.splats.ply import BACKGROUND, SH_C0, GaussianSplats, logit, rgb_to_sh_dc

_DEFAULT_RGBA = np.array([0.5, 0.5, 0.5, 1.0], np.float32)


def _frames_from_normals(nrm: np.ndarray) -> np.ndarray:
    """(N, 3) unit normals -> (N, 4) wxyz quaternions of rotations whose local z is the normal."""
    nrm = nrm / np.linalg.norm(nrm, axis=1, keepdims=True).clip(1e-12)
    ref = np.where(np.abs(nrm[:, :1]) < 0.9, [[1.0, 0.0, 0.0]], [[0.0, 1.0, 0.0]])
    x = np.cross(ref, nrm)
    x /= np.linalg.norm(x, axis=1, keepdims=True).clip(1e-12)
    y = np.cross(nrm, x)
    return mats_to_quats(np.stack([x, y, nrm], axis=2))


def mats_to_quats(m: np.ndarray) -> np.ndarray:
    """(N, 3, 3) rotation matrices -> (N, 4) wxyz (w >= 0)."""
    from scipy.spatial.transform import Rotation

    q = Rotation.from_matrix(m).as_quat()  # xyzw
    q = np.concatenate([q[:, 3:], q[:, :3]], axis=1)
    return np.where(q[:, :1] < 0, -q, q).astype(np.float32)


def _texture_lookup(tex: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Nearest texel of an (H, W, C) uint8 image at uv in [0, 1] (v up, OpenGL convention)."""
    h, w = tex.shape[:2]
    u = np.mod(uv[:, 0], 1.0)
    v = np.mod(uv[:, 1], 1.0)
    col = np.clip((u * w).astype(int), 0, w - 1)
    row = np.clip(((1.0 - v) * h).astype(int), 0, h - 1)
    return tex[row, col, :3].astype(np.float32) / 255.0


def sample_surface(
    vertices: np.ndarray,
    faces: np.ndarray,
    count: int,
    rng: np.random.Generator,
    *,
    rgba=None,
    vertex_colors: np.ndarray | None = None,
    uv: np.ndarray | None = None,
    texture: np.ndarray | None = None,
    face_uv: np.ndarray | None = None,
    thickness: float = 0.05,
    size_factor: float = 0.7,
    opacity: float = 0.98,
    min_scale: float = 1e-4,
) -> GaussianSplats:
    """Area-weighted disc Gaussians on a triangle mesh (in the mesh's own frame).

    ``uv`` per vertex (or ``face_uv`` (F, 3, 2) per face corner) with ``texture`` (H, W, 3|4 uint8)
    gives textured colours (multiplied by ``rgba``); else ``vertex_colors`` (V, 3|4 in [0, 1]);
    else the flat ``rgba``. Disc sigma = ``size_factor`` * sample spacing, normal sigma =
    ``thickness`` times that.
    """
    vertices = np.asarray(vertices, np.float64)
    faces = np.asarray(faces, np.int64)
    tri = vertices[faces]
    cr = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    dbl_area = np.linalg.norm(cr, axis=1)
    good = dbl_area > 1e-16
    if count <= 0 or not good.any():
        return GaussianSplats(np.zeros((0, 3)), np.zeros((0, 4)), np.zeros((0, 3)), np.zeros(0), np.zeros((0, 1, 3)))
    prob = np.where(good, dbl_area, 0.0)
    area = prob.sum() / 2
    fi = rng.choice(len(faces), size=count, p=prob / prob.sum())
    r1, r2 = rng.random(count), rng.random(count)
    s1 = np.sqrt(r1)
    bary = np.stack([1 - s1, s1 * (1 - r2), s1 * r2], axis=1)
    pts = np.einsum("nk,nkd->nd", bary, tri[fi])
    nrm = cr[fi] / dbl_area[fi, None]
    base = np.asarray(_DEFAULT_RGBA if rgba is None else rgba, np.float32)[:3]
    if texture is not None and (uv is not None or face_uv is not None):
        corner_uv = face_uv[fi] if face_uv is not None else np.asarray(uv)[faces[fi]]
        col = _texture_lookup(np.asarray(texture), np.einsum("nk,nkd->nd", bary, corner_uv)) * base
    elif vertex_colors is not None:
        vc = np.asarray(vertex_colors, np.float32)[:, :3]
        col = np.einsum("nk,nkd->nd", bary, vc[faces[fi]])
    else:
        col = np.tile(base, (count, 1))
    spacing = np.sqrt(area / count)
    sig = max(size_factor * spacing, min_scale)
    log_s = np.log(np.array([sig, sig, max(thickness * sig, min_scale * 0.1)], np.float32))
    return GaussianSplats(
        means=pts,
        quats=_frames_from_normals(nrm),
        log_scales=np.tile(log_s, (count, 1)),
        opacity_logits=np.full(count, logit(np.array(opacity))),
        sh=rgb_to_sh_dc(np.clip(col, 0, 1))[:, None, :],
        normals=nrm,
    )


def splats_from_trimesh(
    mesh: trimesh.Trimesh, count: int, rng: np.random.Generator | None = None, rgba=None, **kw
) -> GaussianSplats:
    """Splats from a trimesh, using its texture (TextureVisuals) or vertex colours when present."""
    rng = rng or np.random.default_rng(0)
    vis = getattr(mesh, "visual", None)
    uv = tex = vc = None
    if vis is not None and getattr(vis, "kind", None) == "texture" and getattr(vis, "uv", None) is not None:
        img = getattr(vis.material, "image", None) or getattr(vis.material, "baseColorTexture", None)
        if img is not None:
            uv, tex = np.asarray(vis.uv), np.asarray(img.convert("RGB"))
    elif vis is not None and getattr(vis, "kind", None) == "vertex":
        vc = np.asarray(vis.vertex_colors, np.float32) / 255.0
    return sample_surface(mesh.vertices, mesh.faces, count, rng, rgba=rgba, uv=uv, texture=tex, vertex_colors=vc, **kw)


# ---- MuJoCo models ------------------------------------------------------------------------------
def _geom_mesh(model, g: int, plane_half_extent: float):
    """Geom surface in the geom frame: (vertices, faces, per-vertex uv or None, face uv or None)."""
    import mujoco

    gt = int(model.geom_type[g])
    size = model.geom_size[g]
    T = mujoco.mjtGeom
    if gt == T.mjGEOM_MESH:
        mid = int(model.geom_dataid[g])
        va, vn = model.mesh_vertadr[mid], model.mesh_vertnum[mid]
        fa, fn = model.mesh_faceadr[mid], model.mesh_facenum[mid]
        verts = model.mesh_vert[va : va + vn]
        faces = model.mesh_face[fa : fa + fn]
        face_uv = None
        if model.mesh_texcoordnum[mid] > 0:
            ta = model.mesh_texcoordadr[mid]
            tc = model.mesh_texcoord[ta : ta + model.mesh_texcoordnum[mid]]
            face_uv = tc[model.mesh_facetexcoord[fa : fa + fn]]
        return verts, faces, face_uv
    if gt == T.mjGEOM_BOX:
        m = trimesh.creation.box(extents=2 * size)
    elif gt == T.mjGEOM_SPHERE:
        m = trimesh.creation.icosphere(subdivisions=3, radius=size[0])
    elif gt == T.mjGEOM_ELLIPSOID:
        m = trimesh.creation.icosphere(subdivisions=3, radius=1.0)
        m.apply_scale(size[:3])
    elif gt == T.mjGEOM_CAPSULE:
        m = trimesh.creation.capsule(height=2 * size[1], radius=size[0], count=[24, 12])
    elif gt == T.mjGEOM_CYLINDER:
        m = trimesh.creation.cylinder(radius=size[0], height=2 * size[1], sections=32)
    elif gt == T.mjGEOM_PLANE:
        hx = size[0] if size[0] > 0 else plane_half_extent
        hy = size[1] if size[1] > 0 else plane_half_extent
        hx, hy = min(hx, plane_half_extent), min(hy, plane_half_extent)
        verts = np.array([[-hx, -hy, 0], [hx, -hy, 0], [hx, hy, 0], [-hx, hy, 0]], float)
        return verts, np.array([[0, 1, 2], [0, 2, 3]]), None
    else:
        return None
    return np.asarray(m.vertices), np.asarray(m.faces), None


def _geom_color(model, g: int) -> tuple[np.ndarray, np.ndarray | None]:
    """MuJoCo's rule: a material's rgba replaces the geom rgba unless the geom sets a non-default one."""
    rgba = model.geom_rgba[g].astype(np.float32)
    mat = int(model.geom_matid[g])
    tex = None
    if mat >= 0:
        if np.allclose(rgba, _DEFAULT_RGBA):
            rgba = model.mat_rgba[mat].astype(np.float32)
        texids = [int(t) for t in np.atleast_1d(model.mat_texid[mat]) if t >= 0]
        tid = texids[0] if texids else -1
        if tid >= 0 and model.tex_type[tid] == 0:  # 2-D texture
            h, w, c = model.tex_height[tid], model.tex_width[tid], model.tex_nchannel[tid]
            adr = model.tex_adr[tid]
            tex = model.tex_data[adr : adr + h * w * c].reshape(h, w, c)
    return rgba, tex


def splats_from_model(
    model,
    data,
    *,
    count: int = 50_000,
    min_per_geom: int = 64,
    groups: tuple[int, ...] = (0, 1, 2),
    plane_half_extent: float = 3.0,
    movable_weight: float = 4.0,
    plane_weight: float = 0.05,
    shade: float = 0.35,
    light_dir=(0.3, -0.4, 1.0),
    seed: int = 0,
    **kw,
) -> GaussianSplats:
    """Splats for every visible geom of a compiled model, posed with ``data`` (run mj_forward first).

    ``count`` Gaussians in total, split by surface area (at least ``min_per_geom`` per geom);
    geoms outside ``groups`` (MuJoCo shows groups 0-2 by default) or with rgba alpha 0 are
    skipped; infinite planes are clipped to ``plane_half_extent``. Labels: index into
    ``body_names`` for geoms of movable bodies, ``BACKGROUND`` for bodies welded to the world.
    Textured meshes use their UVs; textured primitives use the texture's mean colour.
    ``shade`` bakes a fixed directional light into the colours (factor ``1 - shade + shade *
    max(0, n . light_dir)`` with the disc normal at the sampled pose) so faces with different
    orientations stay distinguishable without lighting at render time; 0 = pure albedo. The baked
    shading does not change when bodies move.
    """
    rng = np.random.default_rng(seed)
    items = []
    for g in range(model.ngeom):
        if int(model.geom_group[g]) not in groups:
            continue
        rgba, tex = _geom_color(model, g)
        if rgba[3] <= 0:
            continue
        geo = _geom_mesh(model, g, plane_half_extent)
        if geo is None:
            continue
        verts, faces, face_uv = geo
        tri = verts[faces]
        area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1).sum()
        movable = int(model.body_weldid[int(model.geom_bodyid[g])]) != 0
        wgt = movable_weight if movable else (plane_weight if int(model.geom_type[g]) == 0 else 1.0)
        items.append((g, rgba, tex, verts, faces, face_uv, area * wgt))
    if not items:
        raise ValueError("model has no visible geoms")
    areas = np.array([it[-1] for it in items])
    counts = np.maximum(min_per_geom, np.round(count * areas / areas.sum()).astype(int))
    body_names: list[str] = []
    parts = []
    for (g, rgba, tex, verts, faces, face_uv, _), n in zip(items, counts):
        if tex is not None and face_uv is None:  # textured primitive: mean texture colour
            rgba = rgba.copy()
            rgba[:3] *= tex[..., :3].reshape(-1, 3).mean(0) / 255.0
            tex = None
        s = sample_surface(verts, faces, int(n), rng, rgba=rgba, texture=tex, face_uv=face_uv, **kw)
        # geom frame -> world
        R = data.geom_xmat[g].reshape(3, 3).astype(np.float64)
        p = data.geom_xpos[g].astype(np.float64)
        s.means = (s.means.astype(np.float64) @ R.T + p).astype(np.float32)
        s.normals = (s.normals @ R.T).astype(np.float32)
        if shade > 0:
            ld = np.asarray(light_dir, np.float64)
            f = 1.0 - shade + shade * np.clip(s.normals @ (ld / np.linalg.norm(ld)), 0, 1)
            rgb = (s.sh[:, 0] * SH_C0 + 0.5) * f[:, None]
            s.sh[:, 0] = rgb_to_sh_dc(rgb)
        from scipy.spatial.transform import Rotation

        rq = Rotation.from_matrix(R) * Rotation.from_quat(np.concatenate([s.quats[:, 1:], s.quats[:, :1]], 1))
        q = rq.as_quat()
        s.quats = np.concatenate([q[:, 3:], q[:, :3]], 1).astype(np.float32)
        b = int(model.geom_bodyid[g])
        if int(model.body_weldid[b]) == 0:
            s.labels = np.full(len(s), BACKGROUND, np.int32)
        else:
            name = model.body(b).name or f"body{b}"
            if name not in body_names:
                body_names.append(name)
            s.labels = np.full(len(s), body_names.index(name), np.int32)
        s.body_names = list(body_names)
        parts.append(s)
    out = GaussianSplats.concatenate(parts)
    return out


def splats_from_env(env, **kw) -> GaussianSplats:
    """Splats of a :class:`twin.env.TwinEnv`'s current scene, posed at the current sim state."""
    env.sim.forward()
    return splats_from_model(env.sim.model, env.sim.data, **kw)
