"""Multi-frame golden inputs (golden4d/make_inputs_4d.py recipe, restated; README4D / SPEC4D).

Frame 0 is the single-frame golden input of the same seed (``weights.deterministic_images``); frame k >= 1 is the
k-th previous keyframe (t = -0.5 k s): the same 12 plane waves per camera/channel with drifted phases plus fresh
noise, and ego poses on a seeded constant-speed / yaw-rate trajectory. Laid out as the official test pipeline
emits them: imgs CAMERA-major (index n*F + k), matrices FRAME-major (index k*6 + n); intrinsics and post-aug of the
current frame repeated.
"""

from __future__ import annotations

import numpy as np

from flashocc_ros.network.geometry import reference_rig
from flashocc_ros.network.preprocess import augmentation_for

FRAME_DT = 0.5
IMAGE_SALT = 0x1A6E5
PHASE_SALT = 0xD1F7
MOTION_SALT = 0x4D7A
H, W = 256, 704


def ego_motion(seed: int, num_frames: int) -> np.ndarray:
    """(F, 4, 4) float64: ego at t_k = -0.5 k -> ego at t = 0, planar constant speed v and yaw rate w."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), MOTION_SALT]))
    v = float(rng.uniform(5.0, 10.0))
    w = float(rng.uniform(-0.1, 0.1))
    mats = np.tile(np.eye(4), (num_frames, 1, 1))
    for k in range(num_frames):
        t = -FRAME_DT * k
        th = w * t
        mats[k, :2, :2] = [[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]]
        mats[k, 0, 3] = (v / w) * np.sin(w * t)
        mats[k, 1, 3] = (v / w) * (1.0 - np.cos(w * t))
    return mats


def images_4d(seed: int, num_frames: int) -> np.ndarray:
    """(F, 6, 3, H, W) float32, frame-major."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), IMAGE_SALT]))
    rd = np.random.default_rng(np.random.SeedSequence([int(seed), IMAGE_SALT, PHASE_SALT]))
    rks = [np.random.default_rng(np.random.SeedSequence([int(seed), IMAGE_SALT, k])) for k in range(num_frames)]
    v, u = np.meshgrid(np.arange(H, dtype=np.float64), np.arange(W, dtype=np.float64), indexing="ij")
    out = np.zeros((num_frames, 6, 3, H, W), dtype=np.float32)
    for n in range(6):
        for c in range(3):
            waves, field = [], np.zeros((H, W))
            for _ in range(12):
                fx, fy = rng.uniform(-0.04, 0.04, size=2)
                phi = rng.uniform(0, 2 * np.pi)
                a = rng.uniform(0.2, 0.6)
                waves.append((fx, fy, phi, a))
                field += a * np.cos(2 * np.pi * (fx * u + fy * v) + phi)
            field += 0.25 * rng.standard_normal((H, W))
            out[0, n, c] = ((field - field.mean()) / field.std()).astype(np.float32)
            dphi = rd.uniform(-0.6, 0.6, size=12)
            for k in range(1, num_frames):
                g = np.zeros((H, W))
                for j, (fx, fy, phi, a) in enumerate(waves):
                    g += a * np.cos(2 * np.pi * (fx * u + fy * v) + phi + k * dphi[j])
                g += 0.25 * rks[k].standard_normal((H, W))
                out[k, n, c] = ((g - g.mean()) / g.std()).astype(np.float32)
    return out


def inputs_4d(seed: int, num_frames: int) -> dict[str, np.ndarray]:
    """The seven tensors in the IN.npz layout of make_inputs_4d (batch 1, 6F cameras) plus ``frame_times``."""
    f = int(num_frames)
    rig = reference_rig(float32=False)
    aug = augmentation_for(rig.image_hw)
    motion = ego_motion(seed, f)
    e2g = np.stack([np.stack([rig.ego2global[n] @ motion[k] for n in range(6)]) for k in range(f)])
    frames = images_4d(seed, f)
    return {
        "imgs": np.ascontiguousarray(frames.transpose(1, 0, 2, 3, 4)).reshape(1, 6 * f, 3, H, W),
        "sensor2egos": np.broadcast_to(rig.sensor2ego.astype(np.float32), (f, 6, 4, 4)).reshape(1, 6 * f, 4, 4),
        "ego2globals": e2g.astype(np.float32).reshape(1, 6 * f, 4, 4),
        "intrins": np.broadcast_to(rig.intrinsics.astype(np.float32), (f, 6, 3, 3)).reshape(1, 6 * f, 3, 3),
        "post_rots": np.broadcast_to(aug.post_rot.astype(np.float32), (1, 6 * f, 3, 3)).copy(),
        "post_trans": np.broadcast_to(aug.post_tran.astype(np.float32), (1, 6 * f, 3)).copy(),
        "bda": np.eye(3, dtype=np.float32)[None],
        "frame_times": -FRAME_DT * np.arange(f),
    }
