"""Shared, cached model runs for the model tests (one build + forward per variant per test session)."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import torch

# Bound at import: tests may monkeypatch flashocc_ros.network.loading.load_model to serve these cached models, and
# the cache must still build with the real loader (a late import would find the patched one and recurse).
from flashocc_ros.network.loading import load_model as _real_load_model

GOLDEN = Path(__file__).resolve().parent / "data" / "golden"
VARIANT_NAMES = (
    "flashocc-r50-M0",
    "flashocc-r50",
    "panoptic-flashocc-r50-depth-tiny-pano",
    "panoptic-flashocc-r50-depth-pano",
)


def golden(variant: str, folder: Path = GOLDEN) -> dict[str, np.ndarray]:
    with np.load(folder / f"{variant}_seed0.npz") as z:
        return {k: z[k] for k in z.files}


def manifest(variant: str, folder: Path = GOLDEN) -> dict[str, list[int]]:
    return json.loads((folder / f"keys_{variant}.json").read_text())


def assert_layout_matches_manifest(ours: dict[str, tuple[int, ...]], official: dict[str, list[int]]) -> None:
    """Our state_dict layout {key: shape} equals the official manifest: same keys, same order, same shapes."""
    assert list(ours) == list(official), "key names or order differ from the official state_dict"
    assert all(tuple(official[k]) == ours[k] for k in official)


@functools.cache
def seed0_inputs() -> dict[str, np.ndarray]:
    from flashocc_ros.network.weights import deterministic_inputs

    return deterministic_inputs(0)


@functools.cache
def seed0_model(variant: str):
    """(model with seed-0 weights, pool indices, mlp_input or None) on the seed-0 rig; cached per session."""
    from flashocc_ros.network.geometry import compute_pool_indices, make_mlp_input, sensor_to_key_ego

    inp = seed0_inputs()
    model = _real_load_model(variant, seed=0)
    s2ke = sensor_to_key_ego(inp["sensor2egos"], inp["ego2globals"])
    geo = (inp["intrins"], inp["post_rots"], inp["post_trans"], inp["bda"])
    pool = compute_pool_indices(variant, s2ke, *geo)
    mlp = make_mlp_input(s2ke, *geo) if model.variant.depth_net == "bevdepth" else None
    return model, pool, mlp, s2ke


@functools.cache
def seed0_run(variant: str) -> dict:
    """Our network on the seed-0 golden recipe (weights + inputs): stages as numpy, pool counts, centers."""
    from flashocc_ros.network.centers import decode_centers
    from flashocc_ros.network.model import occupancy_labels

    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    model, pool, mlp, s2ke = seed0_model(variant)
    with torch.inference_mode():
        st = model.forward_stages(torch.from_numpy(seed0_inputs()["imgs"][0]), *pool.network_inputs(), mlp)
        out = {
            "depth_prob": st["depth_prob"].numpy().copy(),
            "lss_bev": st["lss_bev"][0].numpy().copy(),
            "bev_encoder": st["bev_encoder"][0].numpy().copy(),
            "occ_logits": st["occ_logits"][0].numpy().copy(),
            "occ_label": occupancy_labels(st["occ_logits"]).numpy(),
            "num_points": pool.num_points,
            "num_cells": pool.num_cells,
            "sensor2keyego": s2ke,
            "mlp_input": None if mlp is None else mlp.numpy(),
        }
        if model.variant.panoptic:
            out["centers"] = decode_centers(st["heatmap"], st["reg"], st["height"])
            out["heatmap"] = st["heatmap"].numpy().copy()
            out["reg"] = st["reg"].numpy().copy()
    return out
