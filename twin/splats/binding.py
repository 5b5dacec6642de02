"""Gaussians bound to simulated rigid bodies (Embodied-Gaussians style).

At bind time every labelled Gaussian's mean and rotation are expressed in its body's frame
(from the body's world pose then); :meth:`SplatBinding.posed` re-applies the bodies' current world
poses (``data.xpos`` / ``data.xquat``, i.e. ``TwinSim.body_pose``) each step:

    mean_w = R_b @ mean_b + p_b,   quat_w = q_b * quat_b   (wxyz Hamilton product)

Background Gaussians (label -1) stay where they are.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from twin.splats.ply import GaussianSplats


def quat_mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamilton product of wxyz quaternions (broadcasting)."""
    aw, ax, ay, az = np.moveaxis(a, -1, 0)
    bw, bx, by, bz = np.moveaxis(b, -1, 0)
    return np.stack(
        [
            aw * bw - ax * bx - ay * by - az * bz,
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
        ],
        axis=-1,
    )


def quat_conj(q: np.ndarray) -> np.ndarray:
    return q * np.array([1.0, -1.0, -1.0, -1.0])


def quat_to_mat(q: np.ndarray) -> np.ndarray:
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    w, x, y, z = np.moveaxis(q, -1, 0)
    return np.stack(
        [
            1 - 2 * (y * y + z * z),
            2 * (x * y - w * z),
            2 * (x * z + w * y),
            2 * (x * y + w * z),
            1 - 2 * (x * x + z * z),
            2 * (y * z - w * x),
            2 * (x * z - w * y),
            2 * (y * z + w * x),
            1 - 2 * (x * x + y * y),
        ],
        axis=-1,
    ).reshape(q.shape[:-1] + (3, 3))


class SplatBinding:
    """Splats whose labelled Gaussians follow MuJoCo bodies.

    ``splats.labels[i]`` indexes ``splats.body_names`` (-1 = static background). ``data`` gives the
    bodies' poses at which ``splats`` are expressed (world frame).
    """

    def __init__(self, splats: GaussianSplats, model, data) -> None:
        if splats.labels is None:
            raise ValueError("splats have no body labels; nothing to bind")
        self.splats = splats
        self._model = model
        self.body_ids = np.array([model.body(n).id for n in splats.body_names], dtype=np.int64)
        lab = splats.labels
        self.bound = np.flatnonzero(lab >= 0)
        self._gbody = self.body_ids[lab[self.bound]]  # MuJoCo body id per bound Gaussian
        p, q = self._poses(data)
        R = quat_to_mat(q)
        rel = splats.means[self.bound].astype(np.float64) - p
        self.local_means = np.einsum("nji,nj->ni", R, rel)  # R^T (m - p)
        self.local_quats = quat_mul(quat_conj(q), splats.quats[self.bound].astype(np.float64))

    def _poses(self, data) -> tuple[np.ndarray, np.ndarray]:
        return (np.asarray(data.xpos, np.float64)[self._gbody], np.asarray(data.xquat, np.float64)[self._gbody])

    def use_model(self, model) -> None:
        """Follow the same-named bodies of another compiled model (e.g. a perturbed scene's)."""
        if model is not self._model:
            self.body_ids = np.array([model.body(n).id for n in self.splats.body_names], dtype=np.int64)
            self._gbody = self.body_ids[self.splats.labels[self.bound]]
            self._model = model

    def posed(self, data, model=None) -> GaussianSplats:
        """Splats at the bodies' poses in ``data`` (call after mj_step / mj_forward).

        Pass ``model`` when ``data`` belongs to a different model than the one bound.
        """
        if model is not None:
            self.use_model(model)
        p, q = self._poses(data)
        means = self.splats.means.copy()
        quats = self.splats.quats.copy()
        means[self.bound] = (np.einsum("nij,nj->ni", quat_to_mat(q), self.local_means) + p).astype(np.float32)
        quats[self.bound] = quat_mul(q, self.local_quats).astype(np.float32)
        normals = None
        if self.splats.normals is not None:
            # normals are the discs' local z axes
            normals = self.splats.normals.copy()
            normals[self.bound] = quat_to_mat(quats[self.bound].astype(np.float64))[:, :, 2].astype(np.float32)
        return replace(self.splats, means=means, quats=quats, normals=normals)


def label_by_proximity(
    splats: GaussianSplats, model, data, *, max_dist: float = 0.01, samples: int = 40_000, seed: int = 0
) -> GaussianSplats:
    """Assign body labels to unlabelled splats (e.g. a scan) from the twin's geometry.

    Each Gaussian takes the body of the nearest surface sample of the posed model (``data``)
    within ``max_dist`` metres, if that body is movable; otherwise it is background.
    """
    from scipy.spatial import cKDTree

    from twin.splats.from_mesh import splats_from_model

    ref = splats_from_model(model, data, count=samples, seed=seed, shade=0.0)
    dist, nn = cKDTree(ref.means).query(splats.means, k=1)
    lab = np.where(dist <= max_dist, ref.labels[nn], -1).astype(np.int32)
    return replace(splats, labels=lab, body_names=list(ref.body_names))
