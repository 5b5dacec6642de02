"""Markerless model-based registration of the twin's objects in depth images.

The object models come from the scene description (:func:`object_model_points`: surface
samples of a body's visible geoms, in the body frame, with outward normals). Every call of
:meth:`RegistrationTracker.estimate` takes one depth image per camera and:

1. deprojects each view to the robot base frame (:class:`~twin.live.camera_model.PinholeCamera`),
   crops it to the scene's workspace, removes the support surface (points less than
   ``support_margin`` above the top of the scene's ``kind="table"`` body; without one, a
   near-horizontal RANSAC plane holding at least a fifth of the points), voxel-downsamples it
   and estimates normals oriented towards that camera; the views are fused in the base frame
   and points within ``exclude_radius`` of the caller's ``exclude`` points (the robot's links at
   the current joint state) are removed;
2. per object, tracks: point-to-plane ICP (Tukey kernel, coarse to fine) of the points near
   its last estimate, then near ``priors[name]`` (the twin's current pose of it); for a model
   that is nearly symmetric about an axis (a mug: its cylinder, the handle breaking the
   symmetry), a fit that is not clean (fitness < 0.95, contradictions, or > 5 % of the points
   near it off its surface: a handle seen where the model has none) competes with its turns about that axis (15 deg steps,
   ICP-refined): ICP from a prior 15 deg off settles with the handle ~12 deg wrong;
3. when tracking fails or there is no pose to start from, global registration collects
   hypotheses: the remaining points are split into clusters (DBSCAN); per cluster the model's
   FPFH features (computed once) are matched to the cluster's by RANSAC (``ransac_seeds``
   runs), and the scene's own orientation of the object, turned about the vertical, is set
   on the support under the cluster ("resting" hypotheses: FPFH misses some flat T poses);
   all ICP-refined; the two best distinct ones are also turned about each body axis (30 deg
   steps, lifted onto the support when a turn would reach into it) and refined. The
   hypotheses that pass the acceptance test (4.) compete by score = matched - unmatched
   expected points - 4 x contradicting points. When a distinct pose (not a model symmetry
   apart: > 1 cm or 5 deg) scores within ``ambiguity_margin`` (of the expected points) of
   the best, the one closest to the last pose / prior is reported, or with neither the
   object is reported lost ("ambiguous");
4. scores the pose against the images: the model's *expected* points are those facing a
   camera, inside its image, not hidden behind what that camera measured and not in the
   removed regions (support, robot). ``quality`` = fitness = fraction of the expected points
   with a measured point within ``inlier_distance``; ``error`` = their RMSE (m). The
   *contradicting* points are camera-facing model points in front of what a camera measured
   at their pixel (and its 8 neighbours) by more than 1 cm: the camera saw through where the
   surface would be. The pose is reported when fitness >= ``min_fitness``, RMSE <=
   ``max_rmse``, at least ``min_visible`` of the camera-facing surface is unoccluded, at most
   ``max_contradiction`` of it contradicts the images (right poses: 0 in the renders; the
   wrong ones that used to pass the other tests: 6-28 %), and the model reaches at most
   ``max_penetration`` into the support surface (a 5 x 5 x 8 cm box standing where it lies
   on its side, sunk 3 cm into the table, explained the points better than the truth by
   fitness); otherwise the object is left out of the result (never a stale pose) and
   :meth:`RegistrationTracker.status` says why. Its last pose is kept to restart ICP from
   for ``lost_after`` consecutive failures, then forgotten.

Symmetry: at construction each model is tested against the 24 rotations that map its
body axes onto themselves, about its surface centroid; those that map the sampled surface
onto itself (within ``symmetry_tolerance``) are its symmetries (a 5 x 5 x 8 cm box: the 8 of
a square prism; the T block: its half-turn about the stem; the mug: none, its handle breaks
them all). Of the equivalent poses the one closest in
rotation to the prior (else the last pose, else the scene's nominal pose) is reported.
A model without symmetries is tested for a near-symmetry axis (>= 70 % of the surface maps
onto itself under every turn about it): the mug's. Not resolved: continuous symmetries (a
plain cylinder's turn about its axis). A mug whose handle is hidden fits several turns
equally: with a prior or last pose the closest of them is reported, without the mug is
reported lost as ambiguous (the mug upside down, its handle 1 cm lower, scores 3-5 % below
the truth and is told apart).

Deterministic for a given input: Open3D's RANSAC is seeded before every call.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation

from twin.live.camera_model import PinholeCamera, base_from_world, invert, pose_matrix, rotation_angle_deg
from twin.live.native import import_open3d
from twin.live.pose_estimate import PoseEstimate
from twin.meshes import load_mesh
from twin.scene import BodyCfg, GeomCfg, SceneCfg, SceneError

View = tuple[PinholeCamera, np.ndarray]

_SEED = 0


def _geom_mesh(g: GeomCfg, where: str) -> Any:
    """The trimesh of one geom in its body's frame."""
    import trimesh

    s = tuple(float(v) for v in g.size)
    if g.type == "box":
        mesh = trimesh.creation.box(extents=[2 * s[0], 2 * s[1], 2 * s[2]])
    elif g.type == "sphere":
        mesh = trimesh.creation.icosphere(subdivisions=3, radius=s[0])
    elif g.type == "cylinder":
        mesh = trimesh.creation.cylinder(radius=s[0], height=2 * s[1], sections=96)
    elif g.type == "capsule":
        mesh = trimesh.creation.capsule(height=2 * s[1], radius=s[0], count=[48, 24])
    elif g.type == "mesh":
        verts, faces = load_mesh(g.mesh, where=where)
        mesh = trimesh.Trimesh(verts * np.asarray(g.mesh_scale, float), faces, process=False)
    else:
        raise SceneError(f"{where}: geom type {g.type!r} cannot be sampled; use box/sphere/cylinder/capsule/mesh")
    mesh.apply_transform(pose_matrix(g.pose.pos, g.pose.quat))
    return mesh


def object_model_points(scene: SceneCfg, name: str, n: int = 4000, seed: int = 0) -> np.ndarray:
    """``(n, 6)`` surface samples of body ``name``'s visible geoms: x, y, z in the body frame
    (m) and outward unit normals, uniform by area (the body's own geoms, not its children's).
    ValueError when the scene has no such body or it has no visible geom."""
    try:
        body = scene.body(name)
    except SceneError as exc:
        raise ValueError(f"{exc}; pass one of the scene's object names") from None
    import trimesh

    geoms = [g for g in body.geoms if g.visible and g.rgba[3] > 0]
    if not geoms:
        raise ValueError(f"body {name!r} has no visible geom to build a registration model from; add one")
    mesh = trimesh.util.concatenate([_geom_mesh(g, f"body {name!r} geom {g.name!r}") for g in geoms])
    pts, face = trimesh.sample.sample_surface(mesh, int(n), seed=seed)
    return np.concatenate([np.asarray(pts, float), np.asarray(mesh.face_normals[face], float)], axis=1)


def _nominal_pose(scene: SceneCfg, name: str) -> np.ndarray:
    """T_base_body of body ``name`` as the scene description places it (parents composed)."""

    def walk(bodies: list[BodyCfg], parent: np.ndarray) -> np.ndarray | None:
        for b in bodies:
            t = parent @ pose_matrix(b.pose.pos, b.pose.quat)
            if b.name == name:
                return t
            found = walk(b.children, t)
            if found is not None:
                return found
        return None

    t = walk(scene.bodies, np.eye(4))
    return base_from_world(scene) @ (np.eye(4) if t is None else t)


def _support_top(scene: SceneCfg) -> float | None:
    """World z of the highest top face of the scene's table (its box geoms), or None."""
    tops = []
    for b in scene.iter_bodies():
        if b.kind != "table":
            continue
        tb = pose_matrix(b.pose.pos, b.pose.quat)
        for g in b.geoms:
            if g.type != "box":
                continue
            tg = tb @ pose_matrix(g.pose.pos, g.pose.quat)
            corners = np.array(list(itertools.product(*[(-s, s) for s in g.size[:3]])))
            tops.append(float((corners @ tg[:3, :3].T + tg[:3, 3])[:, 2].max()))
    return max(tops) if tops else None


def _axis_rotations() -> list[np.ndarray]:
    """The 24 proper rotations that permute the coordinate axes (with signs)."""
    out = []
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((1.0, -1.0), repeat=3):
            r = np.zeros((3, 3))
            r[range(3), perm] = signs
            if np.linalg.det(r) > 0:
                out.append(r)
    return out


@dataclass
class _Model:
    name: str
    points: np.ndarray  # (N, 3) body frame, dense (scoring)
    normals: np.ndarray  # (N, 3)
    icp_target: Any  # o3d PointCloud with normals, body frame (ICP target)
    down: Any  # o3d PointCloud at the registration voxel (RANSAC source)
    fpfh: Any  # its FPFH features
    center: np.ndarray  # surface centroid, body frame
    radius: float  # largest distance of a surface point from the centroid
    symmetries: list[np.ndarray]  # 4x4 body-frame transforms mapping the model onto itself
    tree: cKDTree  # of the dense surface samples (body frame)
    nominal: np.ndarray  # T_base_obj in the scene description
    axis: tuple[np.ndarray, np.ndarray] | None = None  # near-symmetry axis (direction, point), body frame


@dataclass
class _Scene:
    points: np.ndarray  # (M, 3) fused base-frame points
    cloud: Any  # o3d PointCloud of them, with normals
    tree: cKDTree
    views: list[View]
    cameras: tuple[str, ...]
    support_z: float | None  # world z of the removed support surface's top
    exclude_tree: cKDTree | None
    _labels: np.ndarray | None = None

    def labels(self, eps: float) -> np.ndarray:
        """DBSCAN cluster label per point (-1 = noise), computed on first use."""
        if self._labels is None:
            self._labels = (
                np.asarray(self.cloud.cluster_dbscan(eps=eps, min_points=4), dtype=np.int64)
                if len(self.points)
                else np.zeros(0, np.int64)
            )
        return self._labels


@dataclass
class _Fit:
    T: np.ndarray  # T_base_obj
    fitness: float
    rmse: float
    visible: float  # unoccluded fraction of the camera-facing surface
    n_points: int  # scene points within the model's radius of its centre
    inliers: int  # expected model points with a measured point within the inlier distance
    method: str  # "track" | "prior" | "global"
    explained: float = 1.0  # global only: fraction of its clusters' points on the model
    expected: int = 0  # model points a camera should see at this pose
    contra: int = 0  # camera-facing model points in front of what a camera measured (free space)
    facing: int = 0  # camera-facing model points (not in the removed regions)
    below: float = 0.0  # how deep the model reaches below the support surface's top (m)
    stray: float = 0.0  # fraction of the scene points near the pose that are off the model

    @property
    def score(self) -> int:
        """Agreement with the images: matched minus unmatched expected points, minus the
        points in space a camera saw through (counted four times: strong evidence)."""
        return 2 * self.inliers - self.expected - 4 * self.contra

    @property
    def contradiction(self) -> float:
        return self.contra / max(self.facing, 1)

    def ok_reason(
        self,
        min_fitness: float,
        max_rmse: float,
        min_visible: float,
        min_points: int,
        min_explained: float,
        max_contradiction: float = 1.0,
        max_penetration: float = float("inf"),
    ) -> str:
        if self.n_points < min_points:
            return f"{self.n_points} points near the pose < {min_points}"
        if self.visible < min_visible:
            return f"occluded: {self.visible:.0%} of its camera-facing surface visible < {min_visible:.0%}"
        if self.fitness < min_fitness:
            return f"fitness {self.fitness:.2f} < {min_fitness:.2f}"
        if self.rmse > max_rmse:
            return f"inlier RMSE {self.rmse * 1000:.1f} mm > {max_rmse * 1000:.1f} mm"
        if self.contradiction > max_contradiction:
            return (
                f"{self.contradiction:.0%} > {max_contradiction:.0%} of its camera-facing surface lies where a camera "
                "saw free space"
            )
        if self.below > max_penetration:
            return f"reaches {self.below * 1000:.0f} mm into the support surface > {max_penetration * 1000:.0f} mm"
        if self.explained < min_explained:
            return (
                f"the match explains {self.explained:.0%} < {min_explained:.0%} of its point cluster "
                "(part of a larger surface, or touching another object)"
            )
        return ""


class RegistrationTracker:
    """Pose tracker of the scene's objects in fused depth point clouds (see the module doc).

    ``objects``: body names to track (default: every body of kind ``"object"``). ``voxel``:
    registration voxel (m); the scoring and ICP tolerances scale with it.
    """

    def __init__(
        self,
        scene: SceneCfg,
        objects: list[str] | None = None,
        voxel: float = 0.004,
        min_fitness: float = 0.5,
        max_rmse: float = 0.004,
        *,
        min_visible: float = 0.3,
        min_points: int = 40,
        min_explained: float = 0.6,
        lost_after: int = 3,
        exclude_radius: float = 0.012,
        support_margin: float = 0.006,
        search_margin: float = 0.05,
        symmetry_tolerance: float = 0.003,
        max_clusters: int = 6,
        max_contradiction: float = 0.05,
        max_penetration: float = 0.01,
        ambiguity_margin: float = 0.02,
        ransac_seeds: int = 2,
    ) -> None:
        self.o3d = import_open3d()
        self.scene = scene
        names = [b.name for b in scene.iter_bodies() if b.kind == "object"] if objects is None else list(objects)
        for n in names:
            self._check_name(n)
        if not names:
            raise ValueError(f"scene {scene.name!r} has no body of kind 'object'; pass objects=[...] to track")
        if voxel <= 0:
            raise ValueError(f"voxel = {voxel}; give a positive voxel size in metres (e.g. 0.004)")
        self.voxel = float(voxel)
        self.min_fitness = float(min_fitness)
        self.max_rmse = float(max_rmse)
        self.min_visible = float(min_visible)
        self.min_points = int(min_points)
        self.min_explained = float(min_explained)
        self.lost_after = int(lost_after)
        self.exclude_radius = float(exclude_radius)
        self.support_margin = float(support_margin)
        self.search_margin = float(search_margin)
        self.symmetry_tolerance = float(symmetry_tolerance)
        self.max_clusters = int(max_clusters)
        self.max_contradiction = float(max_contradiction)
        self.max_penetration = float(max_penetration)
        self.ambiguity_margin = float(ambiguity_margin)
        self.ransac_seeds = max(1, int(ransac_seeds))
        self.inlier_distance = 1.5 * self.voxel
        self._T_world_base = invert(base_from_world(scene))
        self._support_top = _support_top(scene)
        self.models = {n: self._build_model(n) for n in names}
        self._last: dict[str, np.ndarray] = {}
        self._fails: dict[str, int] = {}
        self._status: dict[str, str] = {n: "not seen yet" for n in names}

    # ---- models ------------------------------------------------------------------------------
    def _check_name(self, name: str) -> None:
        known = [b.name for b in self.scene.iter_bodies()]
        if name not in known:
            raise ValueError(f"object {name!r} is not a body of scene {self.scene.name!r}; use one of {known}")

    def _build_model(self, name: str) -> _Model:
        o3d = self.o3d
        dense = object_model_points(self.scene, name, n=6000, seed=0)
        pts, nrm = dense[:, :3], dense[:, 3:]
        center = pts.mean(axis=0)
        radius = float(np.linalg.norm(pts - center, axis=1).max())
        cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(pts))
        cloud.normals = o3d.utility.Vector3dVector(nrm)
        target = cloud.voxel_down_sample(0.5 * self.voxel)
        down = cloud.voxel_down_sample(self.voxel)
        _normalize_normals(target)
        _normalize_normals(down)
        fpfh = self._fpfh(down)
        tree = cKDTree(pts)
        syms = []
        # the tolerance allows for the sampling spacing of the dense model
        spacing = float(np.median(tree.query(pts, k=2)[0][:, 1]))
        for r in _axis_rotations():
            moved = (pts - center) @ r.T + center
            d = tree.query(moved)[0]
            if float(np.quantile(d, 0.99)) <= self.symmetry_tolerance + 2.0 * spacing:
                s = np.eye(4)
                s[:3, :3] = r
                s[:3, 3] = center - r @ center
                syms.append(s)
        axis = None
        if not any(rotation_angle_deg(sym, np.eye(4)) > 1.0 for sym in syms):
            axis = _near_symmetry_axis(pts, tree, self.symmetry_tolerance + 2.0 * spacing)
        return _Model(
            axis=axis,
            name=name,
            points=pts[::3],
            normals=nrm[::3],
            icp_target=target,
            down=down,
            fpfh=fpfh,
            center=center,
            radius=radius,
            symmetries=syms,
            tree=tree,
            nominal=_nominal_pose(self.scene, name),
        )

    def _fpfh(self, cloud: Any) -> Any:
        reg = self.o3d.pipelines.registration
        param = self.o3d.geometry.KDTreeSearchParamHybrid(radius=5.0 * self.voxel, max_nn=100)
        return reg.compute_fpfh_feature(cloud, param)

    # ---- public ------------------------------------------------------------------------------
    def status(self) -> dict[str, str]:
        """Per tracked object: how the last estimate went ("icp from last pose", "global
        registration", ...) or why it is lost ("fitness 0.12 < 0.50", "no points near ...")."""
        return dict(self._status)

    def symmetries(self, name: str) -> list[np.ndarray]:
        """The body-frame transforms that map ``name``'s model onto itself (identity included):
        poses ``T @ S`` look the same to registration."""
        self._check_name(name)
        return [np.asarray(s, float) for s in self.models[name].symmetries] or [np.eye(4)]

    def reset(self, name: str | None = None) -> None:
        """Forget the last pose of ``name`` (default: every object)."""
        for n in [name] if name else list(self.models):
            self._last.pop(n, None)
            self._fails[n] = 0

    def estimate(
        self,
        views: dict[str, View],
        priors: dict[str, np.ndarray] | None = None,
        exclude: np.ndarray | None = None,
        objects: Sequence[str] | None = None,
    ) -> dict[str, PoseEstimate]:
        """Poses (robot base frame) of the objects found in ``views`` (camera name ->
        (camera, depth HxW float metres, 0 = no data)). ``priors``: object name -> 4x4
        T_base_obj to start from (the twin's current pose). ``exclude``: (K, 3) base-frame
        points whose neighbourhood is not the objects (the robot's surface now). ``objects``:
        only these (default all tracked). Objects not found are absent; :meth:`status` names why."""
        priors = dict(priors or {})
        for n, t in priors.items():
            if n not in self.models:
                raise ValueError(f"prior for {n!r}, which this tracker does not track; tracked: {sorted(self.models)}")
            if np.shape(t) != (4, 4):
                raise ValueError(f"prior for {n!r} has shape {np.shape(t)}; give a 4x4 T_base_obj")
        self._check_views(views)
        unknown = sorted(set(objects or ()) - set(self.models))
        if unknown:
            raise ValueError(f"objects {unknown} are not tracked by registration; tracked: {sorted(self.models)}")
        models = {n: m for n, m in self.models.items() if objects is None or n in objects}
        if not models:
            return {}
        starts = {n: self._starts(n, priors.get(n)) for n in models}
        rois = [
            (t[:3, :3] @ m.center + t[:3, 3], m.radius + self.search_margin)
            for n, m in models.items()
            for _, t in starts[n]
        ]
        full: list[_Scene] = []

        def full_scene() -> _Scene:
            if not full:
                full.append(self._prepare(views, exclude, None))
            return full[0]

        roi_scene = self._prepare(views, exclude, rois) if all(starts.values()) else full_scene()
        out: dict[str, PoseEstimate] = {}
        for name, model in models.items():
            prior = priors.get(name)
            fit, reason = self._estimate_one(model, roi_scene, full_scene, starts[name])
            if fit is None:
                self._fails[name] = self._fails.get(name, 0) + 1
                if self._fails[name] >= self.lost_after:
                    self._last.pop(name, None)
                self._status[name] = f"lost: {reason}"
                continue
            ref = prior if prior is not None else self._last.get(name, model.nominal)
            T = _closest_equivalent(fit.T, model.symmetries, ref)
            self._last[name] = T
            self._fails[name] = 0
            how = {"track": "icp from last pose", "prior": "icp from prior", "global": "global registration + icp"}
            self._status[name] = f"tracked: {how[fit.method]}, fitness {fit.fitness:.2f}"
            out[name] = PoseEstimate(
                name=name,
                T_base_obj=T,
                quality=float(np.clip(fit.fitness, 0.0, 1.0)),
                error=fit.rmse,
                error_unit="m",
                method="icp",
                cameras=roi_scene.cameras,
                detail={
                    "start": fit.method,
                    "visible": fit.visible,
                    "points": fit.n_points,
                    "contradiction": fit.contradiction,
                },
            )
        return out

    # ---- scene -------------------------------------------------------------------------------
    def _check_views(self, views: dict[str, View]) -> None:
        if not views:
            raise ValueError("estimate() got no views; pass {camera name: (PinholeCamera, depth image)}")
        any_depth = False
        for key, (cam, depth) in views.items():
            d = np.asarray(depth)
            if d.ndim != 2 or d.shape != (cam.height, cam.width):
                raise ValueError(
                    f"view {key!r}: depth image shape {d.shape} does not match camera {cam.name!r}'s "
                    f"{cam.width}x{cam.height} intrinsics; scale the intrinsics to the image "
                    "(PinholeCamera.from_scene(scene, name, width, height))"
                )
            any_depth = any_depth or bool(np.any(np.isfinite(d) & (d > 0)))
        if not any_depth:
            raise ValueError(
                f"no valid depth (> 0, finite) in any of the views {sorted(views)}; check the depth streams (0 = no data)"
            )

    def _prepare(
        self, views: dict[str, View], exclude: np.ndarray | None, rois: list[tuple[np.ndarray, float]] | None
    ) -> _Scene:
        """The fused, cropped, cleaned cloud; with ``rois`` (base-frame centre, radius) only
        the points inside those spheres (tracking: only the pixels they project to are read)."""
        o3d = self.o3d
        t_wb = self._T_world_base
        lo, hi = (np.asarray(v, float) for v in self.scene.workspace)
        clouds = []
        support = self._support_top
        for cam, depth in views.values():
            d = np.asarray(depth, dtype=np.float32)
            if rois is not None:
                d = _roi_depth(cam, d, rois)
            pts, _ = cam.deproject(d)
            if len(pts) == 0:
                continue
            world = pts @ t_wb[:3, :3].T + t_wb[:3, 3]
            keep = np.all((world >= lo) & (world <= hi), axis=1)
            if support is None:
                support = self._fit_support(world[keep])
            if support is not None:
                keep &= world[:, 2] > support + self.support_margin
            if rois is not None:
                inside = np.zeros(len(pts), bool)
                for c, r in rois:
                    inside |= np.einsum("ij,ij->i", pts - c, pts - c) <= r * r
                keep &= inside
            pts = pts[keep]
            if len(pts) == 0:
                continue
            pc = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(pts)).voxel_down_sample(self.voxel)
            pc.estimate_normals(o3d.geometry.KDTreeSearchParamHybrid(radius=3.0 * self.voxel, max_nn=20))
            pc.orient_normals_towards_camera_location(cam.T_base_cam[:3, 3])
            clouds.append(pc)
        merged = o3d.geometry.PointCloud()
        for pc in clouds:
            merged += pc
        if len(clouds) > 1:
            merged = merged.voxel_down_sample(self.voxel)
            _normalize_normals(merged)
        ex_tree = None
        if exclude is not None and len(exclude):
            ex = np.asarray(exclude, float).reshape(-1, 3)
            if rois is not None:
                near = np.zeros(len(ex), bool)
                for c, r in rois:
                    near |= np.linalg.norm(ex - c, axis=1) <= r + self.exclude_radius
                ex = ex[near]
            if len(ex):
                ex_tree = cKDTree(ex)
                pts = np.asarray(merged.points)
                if len(pts):
                    far = ex_tree.query(pts, distance_upper_bound=self.exclude_radius)[0] > self.exclude_radius
                    merged = merged.select_by_index(np.flatnonzero(far).tolist())
        pts = np.asarray(merged.points).copy()
        return _Scene(
            points=pts,
            cloud=merged,
            tree=cKDTree(pts if len(pts) else np.full((1, 3), 1e9)),
            views=list(views.values()),
            cameras=tuple(cam.name for cam, _ in views.values()),
            support_z=support,
            exclude_tree=ex_tree,
        )

    def _fit_support(self, world: np.ndarray) -> float | None:
        """World z of a near-horizontal plane holding >= 20 % of the points (RANSAC), or None."""
        o3d = self.o3d
        if len(world) < 100:
            return None
        sub = world[:: max(1, len(world) // 20000)]
        o3d.utility.random.seed(_SEED)
        pc = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(sub))
        plane, inl = pc.segment_plane(distance_threshold=0.005, ransac_n=3, num_iterations=200)
        n = np.asarray(plane[:3], float)
        if len(inl) < 0.2 * len(sub) or abs(n[2]) / np.linalg.norm(n) < np.cos(np.radians(15)):
            return None
        return float(np.median(sub[inl, 2]))

    # ---- registration ------------------------------------------------------------------------
    def _starts(self, name: str, prior: np.ndarray | None) -> list[tuple[str, np.ndarray]]:
        """Poses to start ICP from: the last estimate, then the prior."""
        out: list[tuple[str, np.ndarray]] = []
        if name in self._last:
            out.append(("track", self._last[name]))
        if prior is not None:
            out.append(("prior", np.asarray(prior, float)))
        return out

    def _estimate_one(
        self,
        model: _Model,
        scene: _Scene,
        full_scene: Callable[[], _Scene],
        starts: list[tuple[str, np.ndarray]],
    ) -> tuple[_Fit | None, str]:
        reasons: list[str] = []
        for method, init in starts:
            what = "last pose" if method == "track" else "prior"
            fit = self._icp(model, scene, init, method)
            if fit is None:
                reasons.append(f"no points near its {what}")
                continue
            if model.axis is not None and (fit.contradiction > 0.005 or fit.fitness < 0.95 or fit.stray > 0.05):
                # ICP settles on a nearly symmetric body with its distinguishing part (a mug's
                # handle) a few degrees off: the turns about that axis, refined, compete
                for t in self._axis_turns(model, scene, fit, 2):
                    cand = self._icp(model, scene, t, method)
                    if cand is not None:
                        fit = _better(fit, cand)
            if model.axis is not None:
                # and upside down (a mug's handle 1 cm off vertically is a clean fit too)
                axis, centre = model.axis
                flip = np.eye(4)
                flip[:3, :3] = Rotation.from_rotvec(np.pi * np.roll(axis, 1)).as_matrix()
                flip[:3, 3] = centre - flip[:3, :3] @ centre
                if _rank(self._score(model, scene, fit.T @ flip, method)) > fit.score - 0.1 * max(fit.expected, 1):
                    cand = self._icp(model, scene, fit.T @ flip, method)
                    if cand is not None:
                        fit = _better(fit, cand)
            why = self._why_not(fit)
            if not why:
                return fit, ""
            reasons.append(f"icp from {what}: {why}")
        ref = starts[0][1] if starts else None
        fit, why = self._global(model, full_scene(), ref)
        if fit is not None:
            return fit, ""
        reasons.append(why)
        return None, "; ".join(reasons)

    def _why_not(self, fit: _Fit) -> str:
        return fit.ok_reason(
            self.min_fitness,
            self.max_rmse,
            self.min_visible,
            self.min_points,
            self.min_explained,
            self.max_contradiction,
            self.max_penetration,
        )

    def _near(self, model: _Model, scene: _Scene, T: np.ndarray, margin: float) -> np.ndarray:
        c = T[:3, :3] @ model.center + T[:3, 3]
        return np.asarray(scene.tree.query_ball_point(c, model.radius + margin), dtype=np.int64)

    def _icp(self, model: _Model, scene: _Scene, init: np.ndarray, method: str) -> _Fit | None:
        """Point-to-plane ICP of the scene points near ``init`` onto the model (coarse to fine)."""
        o3d = self.o3d
        reg = o3d.pipelines.registration
        idx = self._near(model, scene, init, self.search_margin)
        if len(idx) < self.min_points:
            return None
        src = scene.cloud.select_by_index(np.sort(idx).tolist())
        t_obj_base = invert(init)
        for dist in (4.0 * self.voxel, 2.0 * self.voxel, 1.0 * self.voxel):
            est = reg.TransformationEstimationPointToPlane(reg.TukeyLoss(k=dist))
            res = reg.registration_icp(
                src, model.icp_target, dist, t_obj_base, est, reg.ICPConvergenceCriteria(max_iteration=30)
            )
            t_obj_base = np.asarray(res.transformation)
        return self._score(model, scene, invert(t_obj_base), method)

    def _global(self, model: _Model, scene: _Scene, ref: np.ndarray | None) -> tuple[_Fit | None, str]:
        """FPFH + RANSAC of the model against each candidate cluster (``ransac_seeds`` runs),
        each ICP-refined, the best ones also turned about the body axes and refined; the
        hypotheses that pass the acceptance test compete by :attr:`_Fit.score`. When a
        distinct pose (not a model symmetry apart) scores within ``ambiguity_margin`` of the
        best, the one closest to ``ref`` (the last pose or the prior) is reported, or with no
        ``ref`` none is. Returns (fit, "") or (None, why)."""
        o3d = self.o3d
        reg = o3d.pipelines.registration
        labels = scene.labels(2.5 * self.voxel)
        if len(labels) == 0 or labels.max() < 0:
            return None, "no candidate cluster of points"
        diameter = 2.0 * model.radius
        cands = []
        for k in range(int(labels.max()) + 1):
            idx = np.flatnonzero(labels == k)
            if len(idx) < self.min_points:
                continue
            p = scene.points[idx]
            extent = float(np.linalg.norm(p.max(axis=0) - p.min(axis=0)))
            if extent > 2.0 * diameter + 0.05:
                continue  # a fixture or the robot, not this object alone
            # the object around the cluster: its parts may fall apart into several clusters
            # (a mug's handle, seen past the hidden side of its body)
            idx = np.asarray(scene.tree.query_ball_point(p.mean(axis=0), model.radius + 2.0 * self.voxel), np.int64)
            cands.append((abs(extent - diameter), k, np.sort(idx)))
        cands.sort(key=lambda c: (c[0], c[1]))
        fits: list[_Fit] = []
        dist = 1.5 * self.voxel
        for _, _, idx in cands[: self.max_clusters]:
            target = scene.cloud.select_by_index(idx.tolist())
            feat = self._fpfh(target)
            for seed in range(self.ransac_seeds):
                o3d.utility.random.seed(_SEED + seed)
                res = reg.registration_ransac_based_on_feature_matching(
                    model.down,
                    target,
                    model.fpfh,
                    feat,
                    False,
                    dist,
                    reg.TransformationEstimationPointToPoint(False),
                    3,
                    [
                        reg.CorrespondenceCheckerBasedOnEdgeLength(0.9),
                        reg.CorrespondenceCheckerBasedOnDistance(dist),
                    ],
                    reg.RANSACConvergenceCriteria(50000, 0.999),
                )
                fit = self._icp(model, scene, np.asarray(res.transformation), "global")
                if fit is not None:
                    fits.append(fit)
            # resting hypotheses: the scene's own orientation of the object turned about the
            # vertical, on the support under the cluster (FPFH misses some flat poses)
            for t in self._resting_poses(model, scene, scene.points[idx].mean(axis=0)):
                fit = self._icp(model, scene, t, "global")
                if fit is not None:
                    fits.append(fit)
        if not fits:
            return None, "no candidate cluster of points"
        fits.sort(key=_rank, reverse=True)
        for fit in self._distinct(model, fits)[:2]:
            for t in self._turn_poses(model, scene, fit):
                cand = self._icp(model, scene, t, "global")
                if cand is not None:
                    fits.append(cand)
        fits.sort(key=_rank, reverse=True)
        ok: list[_Fit] = []
        first_why = ""
        for fit in self._distinct(model, fits):
            fit.explained = self._explained(model, scene, fit.T)
            why = self._why_not(fit)
            if why:
                first_why = first_why or why
            else:
                ok.append(fit)
        if not ok:
            return None, f"global registration: {first_why}"
        best = ok[0]
        rivals = [f for f in ok if best.score - f.score <= self.ambiguity_margin * max(best.expected, 1)]
        if len(rivals) == 1:
            return best, ""
        if ref is None:
            gap = best.score - rivals[1].score
            return None, (
                f"global registration: ambiguous, {len(rivals)} distinct poses fit about equally "
                f"(score gap {gap} <= {self.ambiguity_margin:.0%} of {best.expected}); give a prior"
            )
        return min(rivals, key=lambda f: self._pose_distance(model, f.T, ref)), ""

    def _pose_distance(self, model: _Model, a: np.ndarray, b: np.ndarray) -> float:
        """Distance of two poses modulo the model's symmetries: the largest displacement of
        its surface points (m), approximated by centre offset + radius x rotation angle."""
        out = float("inf")
        for s in model.symmetries or [np.eye(4)]:
            t = a @ s
            d = float(np.linalg.norm((t[:3, :3] - b[:3, :3]) @ model.center + t[:3, 3] - b[:3, 3]))
            out = min(out, d + model.radius * np.radians(rotation_angle_deg(t, b)))
        return out

    def _distinct(self, model: _Model, fits: list[_Fit]) -> list[_Fit]:
        """``fits`` (best first) without those within 1 cm / 5 deg (modulo symmetry) of a better one."""
        out: list[_Fit] = []
        for f in fits:
            if all(not self._same_pose(model, f.T, g.T) for g in out):
                out.append(f)
        return out

    def _same_pose(self, model: _Model, a: np.ndarray, b: np.ndarray) -> bool:
        for s in model.symmetries or [np.eye(4)]:
            t = a @ s
            if np.linalg.norm(t[:3, 3] - b[:3, 3]) <= 0.01 and rotation_angle_deg(t, b) <= 5.0:
                return True
        return False

    def _explained(self, model: _Model, scene: _Scene, T: np.ndarray) -> float:
        """Fraction of the points of the clusters the model touches that lie on the model: low
        when a global match is a piece of a larger surface (a shelf's panel), or when the
        object touches another (then only tracking finds it)."""
        labels = scene.labels(2.5 * self.voxel)
        idx = self._near(model, scene, T, self.inlier_distance)
        if len(idx) == 0:
            return 0.0
        t = invert(T)
        on = model.tree.query(scene.points[idx] @ t[:3, :3].T + t[:3, 3])[0] <= self.inlier_distance
        touched, counts = np.unique(labels[idx[on]], return_counts=True)
        touched = touched[(touched >= 0) & (counts >= 5)]
        members = np.flatnonzero(np.isin(labels, touched))
        if len(members) == 0:
            return 0.0
        d = model.tree.query(scene.points[members] @ t[:3, :3].T + t[:3, 3])[0]
        return float(np.mean(d <= self.inlier_distance))

    def _turn_poses(self, model: _Model, scene: _Scene, fit: _Fit, keep: int = 3) -> list[np.ndarray]:
        """The ``keep`` best-scoring turns of ``fit`` about a body axis through the centroid
        (30 deg steps; 15 about a near-symmetry axis): FPFH matches a mug's body but not always
        its handle, and a box's long side for its short one."""
        turns = []
        for axis in np.eye(3):
            for k in range(1, 12):
                s = np.eye(4)
                s[:3, :3] = Rotation.from_rotvec(axis * np.radians(30.0 * k)).as_matrix()
                s[:3, 3] = model.center - s[:3, :3] @ model.center
                t = self._onto_support(model, scene, fit.T @ s)
                turns.append((_rank(self._score(model, scene, t, "global")), len(turns), t))
        turns.sort(key=lambda c: (-c[0], c[1]))
        out = [t for _, _, t in turns[:keep]]
        if model.axis is not None:
            out += self._axis_turns(model, scene, fit, 2)
        return out

    def _resting_poses(self, model: _Model, scene: _Scene, centre: np.ndarray, keep: int = 2) -> list[np.ndarray]:
        """The ``keep`` best-scoring poses with the scene description's orientation of the
        object turned about the vertical (30 deg steps), its centroid over ``centre`` and
        resting on the support (none without a known support)."""
        if scene.support_z is None:
            return []
        up = invert(self._T_world_base)[:3, 2]
        poses = []
        for k in range(12):
            t = np.eye(4)
            t[:3, :3] = Rotation.from_rotvec(up * np.radians(30.0 * k)).as_matrix() @ model.nominal[:3, :3]
            t[:3, 3] = centre - t[:3, :3] @ model.center
            t[:3, 3] -= 0.1 * up  # below the support, then lifted onto it
            t = self._onto_support(model, scene, t)
            poses.append((_rank(self._score(model, scene, t, "global")), k, t))
        poses.sort(key=lambda c: (-c[0], c[1]))
        return [t for _, _, t in poses[:keep]]

    def _onto_support(self, model: _Model, scene: _Scene, T: np.ndarray) -> np.ndarray:
        """``T`` lifted straight up until the model's lowest point is on the support surface,
        when it reaches into it (a turned hypothesis of an object resting on the table)."""
        if scene.support_z is None:
            return T
        t_wb = self._T_world_base
        zw = (model.points @ T[:3, :3].T + T[:3, 3]) @ t_wb[2, :3] + t_wb[2, 3]
        below = scene.support_z - float(zw.min())
        if below <= 0.0:
            return T
        out = T.copy()
        out[:3, 3] += below * invert(t_wb)[:3, 2]
        return out

    def _axis_turns(self, model: _Model, scene: _Scene, fit: _Fit, keep: int) -> list[np.ndarray]:
        """The ``keep`` best-scoring turns of ``fit`` about the model's near-symmetry axis
        (15 deg steps) that score better than ``fit`` itself."""
        assert model.axis is not None
        axis, centre = model.axis
        turns = []
        for k in range(1, 24):
            s = np.eye(4)
            s[:3, :3] = Rotation.from_rotvec(axis * np.radians(15.0 * k)).as_matrix()
            s[:3, 3] = centre - s[:3, :3] @ centre
            t = fit.T @ s
            sc = _rank(self._score(model, scene, t, fit.method))
            if sc > fit.score:
                turns.append((sc, k, t))
        turns.sort(key=lambda c: (-c[0], c[1]))
        return [t for _, _, t in turns[:keep]]

    def _score(self, model: _Model, scene: _Scene, T: np.ndarray, method: str) -> _Fit:
        """Fitness, inlier RMSE and visible fraction of the model at pose ``T`` (module doc)."""
        p = model.points @ T[:3, :3].T + T[:3, 3]
        nrm = model.normals @ T[:3, :3].T
        t_wb = self._T_world_base
        removed = np.zeros(len(p), bool)
        zw = p @ t_wb[2, :3] + t_wb[2, 3]
        if scene.support_z is not None:
            removed |= zw <= scene.support_z + self.support_margin
        if scene.exclude_tree is not None:
            removed |= scene.exclude_tree.query(p, distance_upper_bound=self.exclude_radius)[0] <= self.exclude_radius
        facing = np.zeros(len(p), bool)
        expected = np.zeros(len(p), bool)
        contra = np.zeros(len(p), bool)
        tol = max(0.01, 3.0 * self.voxel)
        for cam, depth in scene.views:
            cpos = cam.T_base_cam[:3, 3]
            uv, z = cam.project(p)
            u, v = np.rint(uv[:, 0]).astype(np.int64), np.rint(uv[:, 1]).astype(np.int64)
            inside = (z > 0.05) & (u >= 0) & (u < cam.width) & (v >= 0) & (v < cam.height)
            faces = inside & (np.einsum("ij,ij->i", cpos - p, nrm) > 0.0)
            obs = np.zeros(len(p))
            obs[inside] = np.asarray(depth)[v[inside], u[inside]]
            valid = faces & np.isfinite(obs) & (obs > 0)
            seen = valid & (obs > z - tol)
            # the camera saw past this surface point: nothing can be there
            contra |= valid & (obs > z + tol) & ~_near_pixel_edge(depth, u, v, z + tol, valid)
            facing |= faces
            expected |= seen
        facing &= ~removed
        expected &= ~removed
        contra &= ~removed
        below = 0.0
        if scene.support_z is not None:
            below = float(max(0.0, scene.support_z - float(zw.min())))
        n_face, n_exp = int(facing.sum()), int(expected.sum())
        near = self._near(model, scene, T, 0.0)
        n_points = len(near)
        stray = 0.0
        if n_points:
            ti = invert(T)
            off = model.tree.query(scene.points[near] @ ti[:3, :3].T + ti[:3, 3], distance_upper_bound=0.01)[0]
            stray = float(np.mean(off > 2.0 * self.inlier_distance))
        extra = {"expected": n_exp, "contra": int(contra.sum()), "facing": n_face, "below": below, "stray": stray}
        if n_exp == 0:
            return _Fit(T, 0.0, float("inf"), 0.0, n_points, 0, method, **extra)
        d = scene.tree.query(p[expected], distance_upper_bound=self.inlier_distance)[0]
        inl = d <= self.inlier_distance
        rmse = float(np.sqrt(np.mean(d[inl] ** 2))) if inl.any() else float("inf")
        return _Fit(T, float(inl.mean()), rmse, n_exp / max(n_face, 1), n_points, int(inl.sum()), method, **extra)


def _near_pixel_edge(depth: np.ndarray, u: np.ndarray, v: np.ndarray, zmax: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per point: whether a pixel within one of (u, v) measured a depth <= ``zmax`` (a silhouette
    edge: the projected model point may fall a pixel off the object's image)."""
    out = np.zeros(len(u), bool)
    if not mask.any():
        return out
    d = np.asarray(depth)
    h, w = d.shape
    idx = np.flatnonzero(mask)
    for du in (-1, 0, 1):
        for dv in (-1, 0, 1):
            if du == 0 and dv == 0:
                continue
            uu, vv = np.clip(u[idx] + du, 0, w - 1), np.clip(v[idx] + dv, 0, h - 1)
            o = d[vv, uu]
            out[idx] |= np.isfinite(o) & (o > 0) & (o <= zmax[idx])
    return out


def _near_symmetry_axis(pts: np.ndarray, tree: cKDTree, tol: float) -> tuple[np.ndarray, np.ndarray] | None:
    """A body axis about which every turn maps most (>= 70 %) of the surface onto itself but
    no turn is an exact symmetry (a mug's cylinder with its handle), with a point it passes
    through (searched coarse to fine around the centroid); None when there is none."""
    sub = pts[:: max(1, len(pts) // 400)]
    degs = (45.0, 90.0, 180.0)

    def matched(axis: np.ndarray, centre: np.ndarray) -> float:
        out = 1.0
        for deg in degs:
            r = Rotation.from_rotvec(axis * np.radians(deg)).as_matrix()
            d = tree.query((sub - centre) @ r.T + centre, distance_upper_bound=tol)[0]
            out = min(out, float(np.mean(d <= tol)))
        return out

    for axis in np.eye(3):
        e1, e2 = (v for v in np.eye(3) if abs(v @ axis) < 0.5)
        centre, best = pts.mean(axis=0), -1.0
        for step in (0.008, 0.002, 0.0005):
            grid = [centre + i * step * e1 + j * step * e2 for i in range(-2, 3) for j in range(-2, 3)]
            scores = [matched(axis, c) for c in grid]
            k = int(np.argmax(scores))
            centre, best = grid[k], scores[k]
        if 0.7 <= best < 0.99:
            return axis, centre
    return None


def _roi_depth(cam: PinholeCamera, depth: np.ndarray, rois: list[tuple[np.ndarray, float]]) -> np.ndarray:
    """``depth`` with zeros outside the image windows the spheres ``rois`` project to."""
    out = np.zeros_like(depth)
    for c, r in rois:
        uv, z = cam.project(np.asarray(c, float)[None])
        if z[0] <= r:  # the sphere reaches the camera: keep all
            return depth
        pr = max(cam.K[0, 0], cam.K[1, 1]) * r / (z[0] - r) + 2
        u0, u1 = int(max(0, np.floor(uv[0, 0] - pr))), int(min(cam.width, np.ceil(uv[0, 0] + pr) + 1))
        v0, v1 = int(max(0, np.floor(uv[0, 1] - pr))), int(min(cam.height, np.ceil(uv[0, 1] + pr) + 1))
        if u1 > u0 and v1 > v0:
            out[v0:v1, u0:u1] = depth[v0:v1, u0:u1]
    return out


def _rank(fit: _Fit) -> int:
    """Candidates compare by their agreement with the images (:attr:`_Fit.score`)."""
    return fit.score


def _better(a: _Fit | None, b: _Fit) -> _Fit:
    if a is None:
        return b
    return b if _rank(b) > _rank(a) else a


def _closest_equivalent(T: np.ndarray, symmetries: list[np.ndarray], ref: np.ndarray) -> np.ndarray:
    """Of the poses T @ S (S a model symmetry), the one closest in rotation to ``ref``."""
    if not symmetries:
        return T
    cands = [T @ s for s in symmetries]
    errs = [rotation_angle_deg(c, ref) for c in cands]
    return cands[int(np.argmin(errs))]


def _normalize_normals(cloud: Any) -> None:
    n = np.asarray(cloud.normals)
    if len(n):
        n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)


__all__ = ["RegistrationTracker", "View", "object_model_points"]
