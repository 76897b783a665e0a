"""Deterministic untrained weights (the golden-data recipe of SPEC 13 / golden/make_weights.py).

Used by tests, demos and benchmarks when no trained checkpoint is available. Every tensor depends only on
(key, shape, seed, whether its BN siblings exist), so the result is independent of key order and platform.
Own implementation of the documented recipe (first matching rule wins):
  num_batches_tracked -> 0; BEVDepth BN1d(27) running stats -> fixed constants; running_mean ~ N(0, 0.05);
  running_var ~ U(0.75, 1.25); 1-D weight ~ 1 + U(-0.1, 0.1); BN bias ~ N(0, 0.05);
  center-head heatmap output bias ~ -2.19 + N(0, 0.05); other bias ~ N(0, 0.02);
  conv/linear weight ~ N(0, gain * sqrt(2 / fan_in)) with gain 0.6 for img_backbone.*, else 1.0.
Per-key generator: numpy default_rng(SeedSequence([seed, crc32(key)])), float64 draws cast to float32.
"""

from __future__ import annotations

import zlib
from collections import OrderedDict
from collections.abc import Iterable, Mapping

import numpy as np
import torch

from flashocc_ros.config import CAMERA_NAMES, IMAGE_AUG, get_variant
from flashocc_ros.network.geometry import reference_rig
from flashocc_ros.network.networks import network_class
from flashocc_ros.network.preprocess import augmentation_for

BACKBONE_GAIN = 0.6
DEFAULT_GAIN = 1.0
# BN1d(27) statistics on mlp_input (fx, fy, cx, cy, post-aug terms, bda terms, sensor2keyego[:3,:4]).
MLP_BN_MEAN = (1250.0, 1250.0, 810.0, 490.0, 0.44, 0.0, 0.0, 0.0, 0.44, -140.0, 1.0, 0.0, 0.0, 1.0, 1.0) + (0.0,) * 12
MLP_BN_VAR = (200.0**2, 200.0**2, 20.0**2, 10.0**2) + (1.0,) * 23


def _rng(seed: int, key: str) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), zlib.crc32(key.encode("utf-8"))]))


def _gain(key: str) -> float:
    return BACKBONE_GAIN if key.startswith("img_backbone.") else DEFAULT_GAIN


def deterministic_tensor(key: str, shape: Iterable[int], seed: int, keyset: set[str] | frozenset[str]) -> torch.Tensor:
    shape = tuple(int(s) for s in shape)
    head, _, last = key.rpartition(".")
    if last == "num_batches_tracked":
        return torch.zeros(shape, dtype=torch.int64)
    rng = _rng(seed, key)
    if shape == (27,) and key.endswith("depth_net.bn.running_mean"):
        values = np.array(MLP_BN_MEAN)
    elif shape == (27,) and key.endswith("depth_net.bn.running_var"):
        values = np.array(MLP_BN_VAR)
    elif last == "running_mean":
        values = rng.normal(0.0, 0.05, size=shape)
    elif last == "running_var":
        values = rng.uniform(0.75, 1.25, size=shape)
    elif last == "weight" and len(shape) == 1:
        values = 1.0 + rng.uniform(-0.1, 0.1, size=shape)
    elif last == "bias" and f"{head}.running_mean" in keyset:
        values = rng.normal(0.0, 0.05, size=shape)
    elif last == "bias" and ".heatmap." in key and head.rpartition(".")[2].isdigit():
        values = -2.19 + rng.normal(0.0, 0.05, size=shape)
    elif last == "bias":
        values = rng.normal(0.0, 0.02, size=shape)
    elif last == "weight" and len(shape) >= 2:
        fan_in = int(np.prod(shape[1:]))
        values = rng.normal(0.0, _gain(key) * np.sqrt(2.0 / fan_in), size=shape)
    else:
        values = rng.normal(0.0, 0.02, size=shape)
    return torch.from_numpy(np.asarray(values, dtype=np.float64).astype(np.float32))


def state_dict_from_manifest(manifest: Mapping[str, Iterable[int]], seed: int) -> OrderedDict:
    """Recipe applied to a {key: shape} manifest (e.g. golden keys_<config>.json), in manifest order."""
    keyset = frozenset(manifest)
    return OrderedDict((k, deterministic_tensor(k, shape, seed, keyset)) for k, shape in manifest.items())


def variant_manifest(variant_name: str) -> OrderedDict:
    """{key: shape} of the variant's state_dict, built without allocating weights."""
    variant = get_variant(variant_name)
    with torch.device("meta"):
        model = network_class(variant)(variant)
    return OrderedDict((k, tuple(v.shape)) for k, v in model.state_dict().items())


def deterministic_state_dict(variant_name: str, seed: int = 0) -> OrderedDict:
    """Deterministic untrained weights for a variant (official key names), OrderedDict key -> tensor."""
    return state_dict_from_manifest(variant_manifest(variant_name), seed)


# --------------------------------------------------------------------------------------------------------------
# Deterministic network inputs (golden make_inputs.py recipe, own implementation)
# --------------------------------------------------------------------------------------------------------------

IMAGE_SEED_SALT = 0x1A6E5
NUM_PLANE_WAVES = 12


def deterministic_images(seed: int = 0) -> np.ndarray:
    """(1, 6, 3, 256, 704) float32 already-normalised synthetic images: per camera and channel, 12 plane waves
    a*cos(2*pi*(fx*u + fy*v) + phi) (fx, fy ~ U(-0.04, 0.04), phi ~ U(0, 2*pi), a ~ U(0.2, 0.6)) plus
    0.25 * N(0, 1) noise, standardised to zero mean and unit std."""
    h, w = IMAGE_AUG.input_hw
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), IMAGE_SEED_SALT]))
    v, u = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing="ij")
    imgs = np.zeros((1, len(CAMERA_NAMES), 3, h, w), dtype=np.float32)
    for cam in range(len(CAMERA_NAMES)):
        for ch in range(3):
            field = np.zeros((h, w))
            for _ in range(NUM_PLANE_WAVES):
                fx, fy = rng.uniform(-0.04, 0.04, size=2)
                phase = rng.uniform(0, 2 * np.pi)
                amp = rng.uniform(0.2, 0.6)
                field += amp * np.cos(2 * np.pi * (fx * u + fy * v) + phase)
            field += 0.25 * rng.standard_normal((h, w))
            imgs[0, cam, ch] = ((field - field.mean()) / field.std()).astype(np.float32)
    return imgs


def deterministic_inputs(seed: int = 0) -> dict[str, np.ndarray]:
    """The seven test-time inputs in the golden IN.npz layout (batch 1): imgs, sensor2egos, ego2globals, intrins,
    post_rots, post_trans, bda — synthetic images on the reference nuScenes rig."""
    rig = reference_rig()
    aug = augmentation_for(rig.image_hw)
    n = rig.intrinsics.shape[0]
    return {
        "imgs": deterministic_images(seed),
        "sensor2egos": rig.sensor2ego.astype(np.float32)[None],
        "ego2globals": rig.ego2global.astype(np.float32)[None],
        "intrins": rig.intrinsics.astype(np.float32)[None],
        "post_rots": np.broadcast_to(aug.post_rot, (1, n, 3, 3)).astype(np.float32),
        "post_trans": np.broadcast_to(aug.post_tran, (1, n, 3)).astype(np.float32),
        "bda": np.eye(3, dtype=np.float32)[None],
    }
