"""Our own CPU Gaussian-splat rasterizer (vectorised torch) and a brute-force reference.

Pipeline (same maths as gsplat's "classic" rasterizer, so the two agree):

1. **Projection (EWA).** Sigma = R S S^T R^T from the unit quaternion and scales; camera-frame
   covariance W Sigma W^T; Jacobian of the pinhole projection J = [[fx/z, 0, -fx x/z^2],
   [0, fy/z, -fy y/z^2]] (x/z, y/z clamped to 1.3x the field of view as in gsplat); 2-D
   covariance J Sigma_c J^T + 0.3 I (dilation); conic = its inverse; radius per axis
   ceil(3.33 sqrt(cov_ii)); Gaussians with z <= near, z >= far or off-image are culled.
2. **Colour**: spherical harmonics of degree 0..3 evaluated along the camera-to-mean direction,
   ``max(sh . basis + 0.5, 0)``.
3. **Tile binning**: every Gaussian is paired with the 16x16 tiles (``tile_size``) its radius box
   touches, minus tiles where even the closest pixel centre has alpha < 1/255 (exact test on the
   conic and opacity; it only removes work); pairs are sorted by (tile, depth).
4. **Compositing**, front to back, per pixel: alpha = min(0.999, o exp(-q/2)); skipped when
   alpha < 1/255; stops before the Gaussian that would take transmittance to <= 1e-4. Each tile's
   depth-sorted list is processed in chunks for many tiles at once as dense (tiles, 256, chunk)
   tensors in a reused workspace (cumprod for transmittance, one batched matmul to accumulate
   colour/depth/alpha). The chunk grows (powers of 2, up to 1024 and ``max_elems`` elements)
   towards the 10th percentile of the remaining list lengths (``growth_quantile``: little padding
   for short lists, few rounds for the long ones at silhouettes / horizons); tiles whose pixels
   have all terminated are dropped early.

Outputs colour (H, W, 3) in [0, 1] (background blended with 1 - alpha), expected depth
sum(w z) / alpha (z along the optical axis; 0 where alpha < 1e-6, like MuJoCo depth is metric
along the axis), and alpha (H, W).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from twin.splats.camera import Camera
from twin.splats.ply import SH_C0, ActivatedSplats, GaussianSplats

ALPHA_MIN = 1.0 / 255.0
ALPHA_MAX = 0.999
T_MIN = 1e-4
EPS2D = 0.3
RADIUS_SIGMAS = 3.33
_ONE = torch.tensor(1.0)

_C1 = 0.4886025119029199
_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396)
_C3 = (
    -0.5900435899266435,
    2.890611442640554,
    -0.4570457994644658,
    0.3731763325901154,
    -0.4570457994644658,
    1.445305721320277,
    -0.5900435899266435,
)


@dataclass
class RenderOutput:
    rgb: np.ndarray  # (H, W, 3) float32 in [0, 1]
    depth: np.ndarray  # (H, W) float32 expected depth (m, along the optical axis), 0 where empty
    alpha: np.ndarray  # (H, W) float32 accumulated opacity

    def rgb_uint8(self) -> np.ndarray:
        return (np.clip(self.rgb, 0, 1) * 255 + 0.5).astype(np.uint8)


def _as_activated(splats: GaussianSplats | ActivatedSplats) -> ActivatedSplats:
    return splats.activated() if isinstance(splats, GaussianSplats) else splats


def quat_to_rotmat(q: torch.Tensor) -> torch.Tensor:
    """(N, 4) unit wxyz -> (N, 3, 3)."""
    w, x, y, z = q.unbind(-1)
    return torch.stack(
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
        dim=-1,
    ).reshape(q.shape[:-1] + (3, 3))


def eval_sh(degree: int, sh: torch.Tensor, dirs: torch.Tensor) -> torch.Tensor:
    """SH colour (3DGS convention) for unit-normalised ``dirs`` (N, 3); sh (N, K, 3). No +0.5."""
    dirs = dirs / dirs.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    res = SH_C0 * sh[:, 0]
    if degree > 0:
        x, y, z = (dirs[:, i : i + 1] for i in range(3))
        res = res - _C1 * y * sh[:, 1] + _C1 * z * sh[:, 2] - _C1 * x * sh[:, 3]
        if degree > 1:
            xx, yy, zz, xy, yz, xz = x * x, y * y, z * z, x * y, y * z, x * z
            res = (
                res
                + _C2[0] * xy * sh[:, 4]
                + _C2[1] * yz * sh[:, 5]
                + _C2[2] * (2 * zz - xx - yy) * sh[:, 6]
                + _C2[3] * xz * sh[:, 7]
                + _C2[4] * (xx - yy) * sh[:, 8]
            )
            if degree > 2:
                res = (
                    res
                    + _C3[0] * y * (3 * xx - yy) * sh[:, 9]
                    + _C3[1] * xy * z * sh[:, 10]
                    + _C3[2] * y * (4 * zz - xx - yy) * sh[:, 11]
                    + _C3[3] * z * (2 * zz - 3 * xx - 3 * yy) * sh[:, 12]
                    + _C3[4] * x * (4 * zz - xx - yy) * sh[:, 13]
                    + _C3[5] * z * (xx - yy) * sh[:, 14]
                    + _C3[6] * x * (xx - 3 * yy) * sh[:, 15]
                )
    return res


@dataclass
class Projected:
    means2d: torch.Tensor  # (N, 2) pixels
    conics: torch.Tensor  # (N, 3) a, b, c of the inverse 2-D covariance
    depths: torch.Tensor  # (N,)
    radii: torch.Tensor  # (N, 2) int, 0 = culled
    colors: torch.Tensor  # (N, 3)
    opacities: torch.Tensor  # (N,)


def project(
    splats: GaussianSplats | ActivatedSplats,
    cam: Camera,
    *,
    sh_degree: int | None = None,
    near: float = 0.01,
    far: float = 1e10,
    eps2d: float = EPS2D,
    dtype: torch.dtype = torch.float32,
) -> Projected:
    a = _as_activated(splats)
    means = torch.as_tensor(a.means, dtype=dtype)
    quats = torch.as_tensor(a.quats, dtype=dtype)
    scales = torch.as_tensor(a.scales, dtype=dtype)
    vm = torch.as_tensor(cam.viewmat, dtype=dtype)
    R, t = vm[:3, :3], vm[:3, 3]
    pc = means @ R.T + t
    x, y, z = pc.unbind(-1)
    rot = quat_to_rotmat(quats)
    M = R @ rot * scales[:, None, :]  # (N,3,3) camera-frame R_w R_q S
    cov_c = M @ M.transpose(1, 2)
    fx, fy, cx, cy = cam.fx, cam.fy, cam.cx, cam.cy
    tan_fovx, tan_fovy = 0.5 * cam.width / fx, 0.5 * cam.height / fy
    lim_xp, lim_xn = (cam.width - cx) / fx + 0.3 * tan_fovx, cx / fx + 0.3 * tan_fovx
    lim_yp, lim_yn = (cam.height - cy) / fy + 0.3 * tan_fovy, cy / fy + 0.3 * tan_fovy
    zs = torch.where(z.abs() < 1e-12, torch.full_like(z, 1e-12), z)
    tx = zs * (x / zs).clamp(-lim_xn, lim_xp)
    ty = zs * (y / zs).clamp(-lim_yn, lim_yp)
    zero = torch.zeros_like(z)
    J = torch.stack([fx / zs, zero, -fx * tx / (zs * zs), zero, fy / zs, -fy * ty / (zs * zs)], -1).reshape(-1, 2, 3)
    cov2 = J @ cov_c @ J.transpose(1, 2)
    c00 = cov2[:, 0, 0] + eps2d
    c11 = cov2[:, 1, 1] + eps2d
    c01 = 0.5 * (cov2[:, 0, 1] + cov2[:, 1, 0])
    det = c00 * c11 - c01 * c01
    detc = det.clamp_min(1e-10)
    conics = torch.stack([c11 / detc, -c01 / detc, c00 / detc], -1)
    means2d = torch.stack([fx * x / zs + cx, fy * y / zs + cy], -1)
    rx = torch.ceil(RADIUS_SIGMAS * c00.clamp_min(0).sqrt())
    ry = torch.ceil(RADIUS_SIGMAS * c11.clamp_min(0).sqrt())
    valid = (det > 0) & (z > near) & (z < far)
    valid &= (
        (means2d[:, 0] + rx > 0)
        & (means2d[:, 0] - rx < cam.width)
        & (means2d[:, 1] + ry > 0)
        & (means2d[:, 1] - ry < cam.height)
    )
    radii = torch.stack([rx, ry], -1) * valid[:, None]
    deg = a.sh.shape[1] and (int(math.isqrt(a.sh.shape[1])) - 1)
    deg = deg if sh_degree is None else min(sh_degree, deg)
    sh = torch.as_tensor(a.sh, dtype=dtype)
    campos = torch.as_tensor(cam.position, dtype=dtype)
    colors = (eval_sh(deg, sh, means - campos) + 0.5).clamp_min(0.0)
    return Projected(means2d, conics, z, radii.to(torch.int32), colors, torch.as_tensor(a.opacities, dtype=dtype))


def _tile_reachable(
    m2: torch.Tensor, con: torch.Tensor, opac: torch.Tensor, ptx: torch.Tensor, pty: torch.Tensor, ts: int
) -> torch.Tensor:
    """True where min over the tile's pixel centres of q = d^T conic d is <= 2 log(255 o)."""
    dt = m2.dtype
    x0 = ptx.to(dt) * ts + 0.5 - m2[:, 0]
    x1 = x0 + (ts - 1)
    y0 = pty.to(dt) * ts + 0.5 - m2[:, 1]
    y1 = y0 + (ts - 1)
    a, b, c = con.unbind(-1)
    a = a.clamp_min(1e-12)
    c = c.clamp_min(1e-12)
    inside = (x0 <= 0) & (x1 >= 0) & (y0 <= 0) & (y1 >= 0)
    q = torch.full_like(x0, math.inf)
    for x in (x0, x1):  # vertical edges: best dy for fixed dx
        y = (-b * x / c).clamp(min=y0, max=y1)
        q = torch.minimum(q, a * x * x + 2 * b * x * y + c * y * y)
    for y in (y0, y1):  # horizontal edges
        x = (-b * y / a).clamp(min=x0, max=x1)
        q = torch.minimum(q, a * x * x + 2 * b * x * y + c * y * y)
    limit = 2 * torch.log(255.0 * opac.clamp_min(1e-30)) + 1e-3  # small slack for rounding
    return inside | (q <= limit)


def rasterize(
    p: Projected,
    width: int,
    height: int,
    *,
    tile_size: int = 16,
    chunk: int = 32,
    background: np.ndarray | None = None,
    max_elems: int = 1 << 20,
    growth_quantile: float = 0.1,
) -> RenderOutput:
    """Tile-binned front-to-back compositing of projected Gaussians (see module docstring)."""
    dtype = p.means2d.dtype
    ts = tile_size
    tw, th = (width + ts - 1) // ts, (height + ts - 1) // ts
    vis = torch.nonzero((p.radii > 0).all(-1)).squeeze(1)
    rgb = torch.zeros(th, tw, ts * ts, 5, dtype=dtype)  # r, g, b, depth, alpha per tile pixel
    if len(vis):
        vis = vis[torch.argsort(p.depths[vis], stable=True)]  # front to back
        m2, r = p.means2d[vis], p.radii[vis].to(dtype)
        tx0 = torch.floor((m2[:, 0] - r[:, 0]) / ts).clamp(0, tw).long()
        tx1 = torch.floor((m2[:, 0] + r[:, 0]) / ts + 1).clamp(0, tw).long()  # exclusive
        ty0 = torch.floor((m2[:, 1] - r[:, 1]) / ts).clamp(0, th).long()
        ty1 = torch.floor((m2[:, 1] + r[:, 1]) / ts + 1).clamp(0, th).long()
        nx, ny = tx1 - tx0, ty1 - ty0
        cnt = nx * ny
        keep = cnt > 0
        vis, m2, tx0, ty0, nx, cnt = vis[keep], m2[keep], tx0[keep], ty0[keep], nx[keep], cnt[keep]
    if len(vis):
        # (tile, gaussian) pairs, sorted by tile then depth (stable sort keeps the depth order)
        g = torch.repeat_interleave(torch.arange(len(vis)), cnt)
        start = torch.cumsum(cnt, 0) - cnt
        k = torch.arange(len(g)) - start[g]
        ptx = tx0[g] + k % nx[g]
        pty = ty0[g] + torch.div(k, nx[g], rounding_mode="floor")
        # drop pairs whose tile the Gaussian cannot reach with alpha >= 1/255 (its radius box is
        # conservative: corners of the box, low opacity); results are unchanged, work shrinks
        gv = vis[g]
        keep = _tile_reachable(p.means2d[gv], p.conics[gv], p.opacities[gv], ptx, pty, ts)
        g, ptx, pty = g[keep], ptx[keep], pty[keep]
        tile = pty * tw + ptx
        tile, order = torch.sort(tile, stable=True)
        g = g[order]
        gi = vis[g]
        ptx, pty = ptx[order], pty[order]
        # per-pair tensors
        con = p.conics[gi]
        dx0 = ptx.to(dtype) * ts + 0.5 - p.means2d[gi, 0]  # pixel-centre offset of the tile's column 0
        dy0 = pty.to(dtype) * ts + 0.5 - p.means2d[gi, 1]
        logo = torch.log(p.opacities[gi].clamp_min(1e-30))
        # one gather per slice: dx0, dy0, -a/2, -b, -c/2, log(o)
        pk = torch.stack([dx0, dy0, -0.5 * con[:, 0], -con[:, 1], -0.5 * con[:, 2], logo], 1)
        feat = torch.cat([p.colors[gi], p.depths[gi, None], torch.ones(len(gi), 1, dtype=dtype)], 1)
        ntiles = tw * th
        tcount = torch.bincount(tile, minlength=ntiles)
        tstart = torch.cumsum(tcount, 0) - tcount
        lin = torch.arange(ts, dtype=dtype)
        acc = torch.zeros(ntiles, ts * ts, 5, dtype=dtype)
        T = torch.ones(ntiles, ts * ts, dtype=dtype)  # running transmittance, 0 once a pixel terminated
        active = torch.nonzero(tcount > 0).squeeze(1)
        done_n = torch.zeros(ntiles, dtype=torch.long)  # pairs already composited per tile
        npx = ts * ts
        # workspace reused by every slice (no per-op allocations: fresh big buffers page-fault)
        ws_s = torch.empty(max_elems, dtype=dtype)
        ws_w = torch.empty(max_elems, dtype=dtype)
        ws_p = torch.empty(2 * max_elems + npx, dtype=dtype)  # (C + 1) <= 2 C columns
        ws_m = torch.empty(max_elems, dtype=dtype)  # float 0/1 mask (multiplies faster than masked_fill)
        while len(active):
            # grow the chunk when few tiles remain (long lists at silhouettes / the horizon)
            rem = tcount[active] - done_n[active]
            want = int(torch.quantile(rem.float(), growth_quantile)) if len(active) > 1 else int(rem[0])
            C = chunk
            while C < min(want, 1024) and 2 * C * npx <= max_elems:
                C *= 2
            C = max(1, min(C, int(rem.max())))
            ar = torch.arange(C)
            step = max(1, max_elems // (C * npx))
            for s0 in range(0, len(active), step):
                tiles = active[s0 : s0 + step]
                A = len(tiles)
                n = A * npx * C
                base = tstart[tiles, None] + done_n[tiles, None]
                valid = ar < (tcount[tiles] - done_n[tiles]).clamp(max=C)[:, None]
                idx = torch.where(valid, base + ar, base)  # (A, C) pair indices
                g6 = pk[idx]  # (A, C, 6)
                g6[..., 5].masked_fill_(~valid, -math.inf)  # padding -> alpha 0
                dx = g6[:, None, :, 0] + lin[None, :, None]  # (A, 16 columns, C)
                dy = g6[:, None, :, 1] + lin[None, :, None]  # (A, 16 rows, C)
                qa = g6[:, None, :, 2] * dx * dx
                qc = g6[:, None, :, 4] * dy * dy + g6[:, None, :, 5]
                qb = g6[:, None, :, 3] * dy
                # -(q/2) + log(o) for pixel (row i, column j) and Gaussian k: (A, 16, 16, C)
                S4 = ws_s[:n].view(A, ts, ts, C)
                torch.mul(qb[:, :, None, :], dx[:, None, :, :], out=S4)
                S4.add_(qc[:, :, None, :]).add_(qa[:, None, :, :])
                S = S4.view(A, npx, C)
                torch.exp(S, out=S)  # alpha before clamping
                torch.nn.functional.threshold_(S, ALPHA_MIN, 0.0)  # alpha < 1/255 -> skipped
                S.clamp_(max=ALPHA_MAX)
                # P = [T, T(1-a1), T(1-a1)(1-a2), ...]: transmittance before / after each Gaussian
                P = ws_p[: A * npx * (C + 1)].view(A, npx, C + 1)
                P[:, :, 0] = T[tiles]
                torch.add(_ONE, S, alpha=-1.0, out=P[:, :, 1:])
                P.cumprod_(dim=2)
                M = ws_m[:n].view(A, npx, C)
                torch.gt(P[:, :, 1:], T_MIN, out=M)  # 1.0 on a prefix along C: stop before crossing T_MIN
                W = ws_w[:n].view(A, npx, C)
                torch.sub(P[:, :, :-1], P[:, :, 1:], out=W)
                W.mul_(M)  # alpha * T_before, 0 from the terminating Gaussian on
                acc[tiles] += torch.bmm(feat[idx].transpose(1, 2), W.transpose(1, 2)).transpose(1, 2)
                T[tiles] = P[:, :, -1] * M[:, :, -1]
            done_n[active] += C
            more = (tcount[active] > done_n[active]) & (T[active] > 0).any(dim=1)
            active = active[more]
        rgb = acc.reshape(th, tw, ts * ts, 5)
    img = rgb.reshape(th, tw, ts, ts, 5).permute(0, 2, 1, 3, 4).reshape(th * ts, tw * ts, 5)[:height, :width]
    alpha = img[..., 4]
    color = img[..., :3]
    if background is not None:
        color = color + torch.as_tensor(np.asarray(background), dtype=dtype) * (1 - alpha[..., None])
    depth = torch.where(alpha > 1e-6, img[..., 3] / alpha.clamp_min(1e-6), 0.0)
    return RenderOutput(color.float().numpy(), depth.float().numpy(), alpha.float().numpy())


def render(
    splats: GaussianSplats | ActivatedSplats,
    camera: Camera,
    *,
    sh_degree: int | None = None,
    background=None,
    near: float = 0.01,
    far: float = 1e10,
    tile_size: int = 16,
    chunk: int = 32,
) -> RenderOutput:
    """Render colour, expected depth and alpha of ``splats`` seen by ``camera`` on the CPU."""
    p = project(splats, camera, sh_degree=sh_degree, near=near, far=far)
    return rasterize(p, camera.width, camera.height, tile_size=tile_size, chunk=chunk, background=background)


def render_reference(
    splats: GaussianSplats | ActivatedSplats,
    cam: Camera,
    *,
    sh_degree: int | None = None,
    background=None,
    near: float = 0.01,
    far: float = 1e10,
) -> RenderOutput:
    """Brute-force per-pixel reference (float64 numpy, no tiles, no radius culling): slow, tiny images.

    Independent implementation of the same model: for each pixel, all Gaussians in front of the
    camera sorted by depth, each one's 2-D EWA Gaussian evaluated at the pixel centre.
    """
    a = _as_activated(splats)
    n = len(a.means)
    Rw, t = cam.viewmat[:3, :3].astype(np.float64), cam.viewmat[:3, 3].astype(np.float64)
    K = cam.K
    tan_x, tan_y = 0.5 * cam.width / cam.fx, 0.5 * cam.height / cam.fy
    deg = int(math.isqrt(a.sh.shape[1])) - 1 if sh_degree is None else sh_degree
    cols = (
        (
            eval_sh(
                deg,
                torch.as_tensor(a.sh, dtype=torch.float64),
                torch.as_tensor(a.means - cam.position, dtype=torch.float64),
            )
            + 0.5
        )
        .clamp_min(0)
        .numpy()
    )
    gs = []
    for i in range(n):
        pc = Rw @ a.means[i].astype(np.float64) + t
        if not (near < pc[2] < far):
            continue
        w, x, y, z = a.quats[i].astype(np.float64)
        Rq = np.array(
            [
                [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
            ]
        )
        S = np.diag(a.scales[i].astype(np.float64))
        cov = Rw @ Rq @ S @ S @ Rq.T @ Rw.T
        u, v = pc[0] / pc[2], pc[1] / pc[2]
        uc = np.clip(u, -(K[0, 2] / K[0, 0] + 0.3 * tan_x), (cam.width - K[0, 2]) / K[0, 0] + 0.3 * tan_x)
        vc = np.clip(v, -(K[1, 2] / K[1, 1] + 0.3 * tan_y), (cam.height - K[1, 2]) / K[1, 1] + 0.3 * tan_y)
        J = np.array([[K[0, 0] / pc[2], 0, -K[0, 0] * uc / pc[2]], [0, K[1, 1] / pc[2], -K[1, 1] * vc / pc[2]]])
        c2 = J @ cov @ J.T + EPS2D * np.eye(2)
        if np.linalg.det(c2) <= 0:
            continue
        gs.append(
            (
                pc[2],
                np.array([K[0, 0] * u + K[0, 2], K[1, 1] * v + K[1, 2]]),
                np.linalg.inv(c2),
                float(a.opacities[i]),
                cols[i],
            )
        )
    gs.sort(key=lambda g: g[0])
    H, W = cam.height, cam.width
    rgb = np.zeros((H, W, 3))
    dep = np.zeros((H, W))
    alp = np.zeros((H, W))
    for v_ in range(H):
        for u_ in range(W):
            px = np.array([u_ + 0.5, v_ + 0.5])
            T = 1.0
            c = np.zeros(3)
            d = 0.0
            for z, m, conic, o, col in gs:
                dlt = px - m
                al = min(ALPHA_MAX, o * math.exp(-0.5 * dlt @ conic @ dlt))
                if al < ALPHA_MIN:
                    continue
                nT = T * (1 - al)
                if nT <= T_MIN:
                    break
                c += al * T * col
                d += al * T * z
                T = nT
            rgb[v_, u_], alp[v_, u_] = c, 1 - T
            dep[v_, u_] = d / (1 - T) if 1 - T > 1e-6 else 0.0
    if background is not None:
        rgb = rgb + np.asarray(background) * (1 - alp[..., None])
    return RenderOutput(rgb.astype(np.float32), dep.astype(np.float32), alp.astype(np.float32))
