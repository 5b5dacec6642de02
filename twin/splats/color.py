"""Colour alignment of twin renders to real camera images of the same view.

Fits, by least squares over (optionally masked) pixels, a transform mapping twin colours to real
colours, and reports the photometric error before and after:

* ``affine``: per channel, real_c = a_c * twin_c + b_c
* ``quadratic``: per channel, real_c = a_c * twin_c^2 + b_c * twin_c + d_c
* ``affine3``: cross-channel, real = M (3x3) @ twin + b

Images are float in [0, 1] or uint8 (converted to [0, 1]); outputs are clipped to [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

KINDS = ("affine", "quadratic", "affine3")


def _as_float(img: np.ndarray) -> np.ndarray:
    img = np.asarray(img)
    return img.astype(np.float64) / 255.0 if img.dtype == np.uint8 else img.astype(np.float64)


def _features(x: np.ndarray, kind: str) -> list[np.ndarray]:
    """Per-output-channel design matrices for (P, 3) colours."""
    one = np.ones((len(x), 1))
    if kind == "affine":
        return [np.concatenate([x[:, c : c + 1], one], 1) for c in range(3)]
    if kind == "quadratic":
        return [np.concatenate([x[:, c : c + 1] ** 2, x[:, c : c + 1], one], 1) for c in range(3)]
    if kind == "affine3":
        return [np.concatenate([x, one], 1)] * 3
    raise ValueError(f"unknown colour transform {kind!r}; expected one of {KINDS}")


@dataclass
class ColorTransform:
    kind: str
    coeffs: list[np.ndarray]  # per output channel, matching _features

    def apply(self, img: np.ndarray) -> np.ndarray:
        """Transformed image, same shape, float in [0, 1] (uint8 in -> uint8 out)."""
        is_u8 = np.asarray(img).dtype == np.uint8
        x = _as_float(img)
        flat = x.reshape(-1, 3)
        feats = _features(flat, self.kind)
        out = np.stack([f @ c for f, c in zip(feats, self.coeffs)], 1).reshape(x.shape).clip(0, 1)
        return (out * 255 + 0.5).astype(np.uint8) if is_u8 else out.astype(np.float32)


def fit_color_transform(
    twin: np.ndarray, real: np.ndarray, kind: str = "affine", mask: np.ndarray | None = None, ridge: float = 1e-6
) -> ColorTransform:
    """Least-squares transform taking ``twin`` colours to ``real`` ones (H, W, 3 each)."""
    x, y = _as_float(twin).reshape(-1, 3), _as_float(real).reshape(-1, 3)
    if x.shape != y.shape:
        raise ValueError(f"image shapes differ: {np.shape(twin)} vs {np.shape(real)}")
    if mask is not None:
        m = np.asarray(mask, bool).reshape(-1)
        x, y = x[m], y[m]
    if len(x) < 4:
        raise ValueError("too few pixels to fit a colour transform")
    coeffs = []
    for c, f in enumerate(_features(x, kind)):
        A = f.T @ f + ridge * np.eye(f.shape[1])
        coeffs.append(np.linalg.solve(A, f.T @ y[:, c]))
    return ColorTransform(kind, coeffs)


def photometric_error(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> dict[str, float]:
    """RMSE, MAE (on [0, 1] colours) and PSNR (dB) between two images."""
    d = _as_float(a) - _as_float(b)
    if mask is not None:
        d = d[np.asarray(mask, bool)]
    mse = float(np.mean(d**2))
    return {"rmse": mse**0.5, "mae": float(np.mean(np.abs(d))), "psnr": float(10 * np.log10(1.0 / max(mse, 1e-12)))}


def align_colors(twin: np.ndarray, real: np.ndarray, kind: str = "affine", mask: np.ndarray | None = None):
    """Fit + apply; returns (aligned image, transform, {"before": err, "after": err})."""
    t = fit_color_transform(twin, real, kind, mask)
    out = t.apply(twin)
    return out, t, {"before": photometric_error(twin, real, mask), "after": photometric_error(out, real, mask)}
