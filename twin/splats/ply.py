"""Standard 3D Gaussian Splatting ``.ply`` assets and the :class:`GaussianSplats` container.

File layout (as written by the reference 3DGS trainer, INRIA): one ``vertex`` element with float
properties ``x y z [nx ny nz] f_dc_0..2 f_rest_0..(3*(K-1)-1) opacity scale_0..2 rot_0..3``.
Values are stored *raw* (pre-activation): log-scales, opacity logits, unnormalised quaternions
(w, x, y, z) and SH coefficients where ``f_rest`` is channel-major (all R coefficients, then G,
then B). We keep that exact layout in memory (``sh`` is (N, K, 3) with K = (degree+1)^2), so a
read/write round trip is bit-exact. An optional integer ``body`` property carries a per-Gaussian
body label (index into ``body_names``, -1 = static background); the body names travel in a PLY
comment line ``twin_bodies <name0> <name1> ...``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

SH_C0 = 0.28209479177387814
BACKGROUND = -1


@dataclass
class ActivatedSplats:
    means: np.ndarray  # (N, 3) float32 world
    quats: np.ndarray  # (N, 4) float32 unit wxyz
    scales: np.ndarray  # (N, 3) float32 metres (exp of log-scales)
    opacities: np.ndarray  # (N,) float32 in (0, 1)
    sh: np.ndarray  # (N, K, 3) float32 SH coefficients


@dataclass
class GaussianSplats:
    """Raw (pre-activation) Gaussian parameters, float32, in the 3DGS file convention."""

    means: np.ndarray  # (N, 3)
    quats: np.ndarray  # (N, 4) wxyz, not necessarily normalised
    log_scales: np.ndarray  # (N, 3)
    opacity_logits: np.ndarray  # (N,)
    sh: np.ndarray  # (N, K, 3), K = (sh_degree + 1) ** 2; sh[:, 0] is f_dc
    normals: np.ndarray | None = None  # (N, 3) optional (3DGS writes zeros)
    labels: np.ndarray | None = None  # (N,) int32 body index, -1 = background
    body_names: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        n = len(self.means)
        self.means = np.asarray(self.means, np.float32).reshape(n, 3)
        self.quats = np.asarray(self.quats, np.float32).reshape(n, 4)
        self.log_scales = np.asarray(self.log_scales, np.float32).reshape(n, 3)
        self.opacity_logits = np.asarray(self.opacity_logits, np.float32).reshape(n)
        sh = np.asarray(self.sh, np.float32)
        if sh.ndim == 2:
            sh = sh[:, None, :]
        self.sh = sh.reshape(n, -1, 3)
        k = self.sh.shape[1]
        if int(math.isqrt(k)) ** 2 != k or k > 16:
            raise ValueError(f"sh must have (d+1)^2 coefficients with d <= 3, got {k}")
        if self.normals is not None:
            self.normals = np.asarray(self.normals, np.float32).reshape(n, 3)
        if self.labels is not None:
            self.labels = np.asarray(self.labels, np.int32).reshape(n)

    def __len__(self) -> int:
        return len(self.means)

    @property
    def sh_degree(self) -> int:
        return int(math.isqrt(self.sh.shape[1])) - 1

    def activated(self) -> ActivatedSplats:
        q = self.quats / np.linalg.norm(self.quats, axis=1, keepdims=True).clip(1e-12)
        return ActivatedSplats(
            means=self.means,
            quats=q.astype(np.float32),
            scales=np.exp(self.log_scales).astype(np.float32),
            opacities=(1.0 / (1.0 + np.exp(-self.opacity_logits))).astype(np.float32),
            sh=self.sh,
        )

    def subset(self, idx: np.ndarray) -> GaussianSplats:
        return replace(
            self,
            means=self.means[idx],
            quats=self.quats[idx],
            log_scales=self.log_scales[idx],
            opacity_logits=self.opacity_logits[idx],
            sh=self.sh[idx],
            normals=None if self.normals is None else self.normals[idx],
            labels=None if self.labels is None else self.labels[idx],
            body_names=list(self.body_names),
        )

    def with_sh_degree(self, degree: int) -> GaussianSplats:
        """Truncate or zero-pad the SH coefficients to ``degree``."""
        k = (degree + 1) ** 2
        sh = np.zeros((len(self), k, 3), np.float32)
        m = min(k, self.sh.shape[1])
        sh[:, :m] = self.sh[:, :m]
        return replace(self, sh=sh)

    @staticmethod
    def concatenate(parts: list[GaussianSplats]) -> GaussianSplats:
        names: list[str] = []
        labels = []
        deg = max(p.sh_degree for p in parts)
        parts = [p.with_sh_degree(deg) for p in parts]
        for p in parts:
            lab = p.labels if p.labels is not None else np.full(len(p), BACKGROUND, np.int32)
            remap = []
            for nm in p.body_names:
                if nm not in names:
                    names.append(nm)
                remap.append(names.index(nm))
            remap_arr = np.asarray(remap + [BACKGROUND], np.int32)  # index -1 -> background
            labels.append(np.where(lab >= 0, remap_arr[lab], BACKGROUND))
        have_n = all(p.normals is not None for p in parts)
        return GaussianSplats(
            means=np.concatenate([p.means for p in parts]),
            quats=np.concatenate([p.quats for p in parts]),
            log_scales=np.concatenate([p.log_scales for p in parts]),
            opacity_logits=np.concatenate([p.opacity_logits for p in parts]),
            sh=np.concatenate([p.sh for p in parts]),
            normals=np.concatenate([p.normals for p in parts]) if have_n else None,
            labels=np.concatenate(labels).astype(np.int32),
            body_names=names,
        )


def rgb_to_sh_dc(rgb: np.ndarray) -> np.ndarray:
    """Linear colour in [0, 1] -> degree-0 SH coefficient (3DGS convention: c = C0 * dc + 0.5)."""
    return (np.asarray(rgb, np.float32) - 0.5) / SH_C0


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, np.float64), 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p)).astype(np.float32)


def _names(k: int) -> tuple[list[str], list[str]]:
    dc = [f"f_dc_{i}" for i in range(3)]
    rest = [f"f_rest_{i}" for i in range(3 * (k - 1))]
    return dc, rest


def write_ply(path: str | Path, splats: GaussianSplats, *, binary: bool = True) -> None:
    from plyfile import PlyData, PlyElement

    s = splats
    n, k = len(s), s.sh.shape[1]
    dc_names, rest_names = _names(k)
    cols: list[tuple[str, np.ndarray]] = [("x", s.means[:, 0]), ("y", s.means[:, 1]), ("z", s.means[:, 2])]
    if s.normals is not None:
        cols += [(f"n{a}", s.normals[:, i]) for i, a in enumerate("xyz")]
    cols += [(nm, s.sh[:, 0, i]) for i, nm in enumerate(dc_names)]
    # f_rest is channel-major: index = c * (K-1) + (j-1)
    rest = s.sh[:, 1:, :].transpose(0, 2, 1).reshape(n, -1)
    cols += [(nm, rest[:, i]) for i, nm in enumerate(rest_names)]
    cols += [("opacity", s.opacity_logits)]
    cols += [(f"scale_{i}", s.log_scales[:, i]) for i in range(3)]
    cols += [(f"rot_{i}", s.quats[:, i]) for i in range(4)]
    dtype = [(nm, "f4") for nm, _ in cols]
    if s.labels is not None:
        dtype.append(("body", "i4"))
    arr = np.empty(n, dtype=dtype)
    for nm, v in cols:
        arr[nm] = v
    if s.labels is not None:
        arr["body"] = s.labels
    comments = []
    if s.body_names:
        if any((not nm) or any(ch.isspace() for ch in nm) for nm in s.body_names):
            raise ValueError("body names must be non-empty and contain no whitespace")
        comments.append("twin_bodies " + " ".join(s.body_names))
    PlyData([PlyElement.describe(arr, "vertex")], text=not binary, comments=comments).write(str(path))


def read_ply(path: str | Path) -> GaussianSplats:
    from plyfile import PlyData

    ply = PlyData.read(str(path))
    v = ply["vertex"].data
    names = set(v.dtype.names)
    n = len(v)

    def col(nm: str) -> np.ndarray:
        return np.asarray(v[nm], np.float32)

    means = np.stack([col("x"), col("y"), col("z")], axis=1)
    normals = np.stack([col("nx"), col("ny"), col("nz")], axis=1) if {"nx", "ny", "nz"} <= names else None
    n_rest = sum(1 for nm in names if nm.startswith("f_rest_"))
    if n_rest % 3:
        raise ValueError(f"{path}: f_rest_* count {n_rest} is not a multiple of 3")
    k = n_rest // 3 + 1
    sh = np.zeros((n, k, 3), np.float32)
    if "f_dc_0" in names:
        sh[:, 0] = np.stack([col(f"f_dc_{i}") for i in range(3)], axis=1)
    elif {"red", "green", "blue"} <= names:  # plain coloured point cloud
        rgb = np.stack([np.asarray(v[c], np.float32) for c in ("red", "green", "blue")], axis=1) / 255.0
        sh[:, 0] = rgb_to_sh_dc(rgb)
    if k > 1:
        rest = np.stack([col(f"f_rest_{i}") for i in range(n_rest)], axis=1)
        sh[:, 1:] = rest.reshape(n, 3, k - 1).transpose(0, 2, 1)
    opacity = col("opacity") if "opacity" in names else np.full(n, 4.0, np.float32)
    scales = (
        np.stack([col(f"scale_{i}") for i in range(3)], axis=1)
        if "scale_0" in names
        else np.full((n, 3), np.log(0.005), np.float32)
    )
    quats = (
        np.stack([col(f"rot_{i}") for i in range(4)], axis=1)
        if "rot_0" in names
        else np.tile(np.array([1, 0, 0, 0], np.float32), (n, 1))
    )
    labels = np.asarray(v["body"], np.int32) if "body" in names else None
    body_names: list[str] = []
    for c in ply.comments:
        if c.startswith("twin_bodies"):
            body_names = c.split()[1:]
    return GaussianSplats(
        means=means,
        quats=quats,
        log_scales=scales,
        opacity_logits=opacity,
        sh=sh,
        normals=normals,
        labels=labels,
        body_names=body_names,
    )
