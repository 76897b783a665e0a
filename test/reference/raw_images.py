"""Deterministic raw 900x1600 RGB camera images of the official raw-image golden run (``raw_e2e_*`` references),
restated from the recipe documented with the golden data: per camera a smooth background (gradient + radial blob),
250-400 alpha-blended rectangles / ellipses, N(0, 4^2) noise, rounded to uint8. Seed 0 has sha256[:16]
``6748e4e537e059bf`` over the (1, 6, 900, 1600, 3) array."""

from __future__ import annotations

import functools

import numpy as np

H, W = 900, 1600
SEED0_SHA256_16 = "6748e4e537e059bf"


def _camera(rng: np.random.Generator) -> np.ndarray:
    v, u = np.meshgrid(np.arange(H, dtype=np.float64), np.arange(W, dtype=np.float64), indexing="ij")
    base = rng.uniform(60, 190, size=3)
    grad_u = rng.uniform(-70, 70, size=3)
    grad_v = rng.uniform(-70, 70, size=3)
    blob_amp = rng.uniform(-50, 50, size=3)
    blob_u, blob_v, blob_sigma = rng.uniform(0, W), rng.uniform(0, H), rng.uniform(150, 450)
    blob = np.exp(-((u - blob_u) ** 2 + (v - blob_v) ** 2) / (2 * blob_sigma * blob_sigma))
    un, vn = u / (W - 1) - 0.5, v / (H - 1) - 0.5
    img = np.empty((H, W, 3), dtype=np.float64)
    for c in range(3):
        img[..., c] = base[c] + grad_u[c] * un + grad_v[c] * vn + blob_amp[c] * blob
    for _ in range(int(rng.integers(250, 400))):
        ellipse = int(rng.integers(0, 2)) == 1
        x0, y0 = rng.uniform(-50, W), rng.uniform(-50, H)
        w, h = rng.uniform(8, 220), rng.uniform(8, 160)
        colour = rng.uniform(0, 255, size=3)
        alpha = rng.uniform(0.55, 1.0)
        r0, r1 = max(0, int(np.floor(y0))), min(H, int(np.ceil(y0 + h)) + 1)
        c0, c1 = max(0, int(np.floor(x0))), min(W, int(np.ceil(x0 + w)) + 1)
        if r0 >= r1 or c0 >= c1:
            continue
        uu, vv = u[r0:r1, c0:c1], v[r0:r1, c0:c1]
        if ellipse:
            inside = ((uu - (x0 + w / 2)) / (w / 2)) ** 2 + ((vv - (y0 + h / 2)) / (h / 2)) ** 2 <= 1.0
        else:
            inside = (uu >= x0) & (uu < x0 + w) & (vv >= y0) & (vv < y0 + h)
        patch = img[r0:r1, c0:c1]
        patch[inside] = (1 - alpha) * patch[inside] + alpha * colour
    img += 4.0 * rng.standard_normal((H, W, 3))
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


@functools.cache
def raw_images(seed: int = 0) -> np.ndarray:
    """(6, 900, 1600, 3) uint8 RGB, camera order CAM_FRONT_LEFT ... CAM_BACK_RIGHT (read-only)."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x5A11F, 0xCA4E5]))
    out = np.stack([_camera(rng) for _ in range(6)])
    out.setflags(write=False)
    return out
