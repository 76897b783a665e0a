"""Shared, cached temporal-model runs (one model build and one run per variant and mode per test session)."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch

from flashocc_ros.config import load_config
from flashocc_ros.network.loading import load_model as _real_load_model
from test.model_helpers import golden, manifest
from test.reference.inputs_4d import inputs_4d

GOLDEN4D = Path(__file__).resolve().parent / "data" / "golden4d"
M2 = "flashocc-r50-4d-stereo"
P2 = "panoptic-flashocc-r50-depth4d-pano"
P9 = "panoptic-flashocc-r50-depth4d-longterm8f-pano"
TEMPORAL_VARIANTS = (M2, P2, P9)


def golden4d(variant: str) -> dict[str, np.ndarray]:
    return golden(variant, GOLDEN4D)


def manifest4d(variant: str) -> dict[str, list[int]]:
    return manifest(variant, GOLDEN4D)


@functools.cache
def seed0_inputs_4d(num_frames: int) -> dict[str, np.ndarray]:
    return inputs_4d(0, num_frames)


@functools.cache
def seed0_model_4d(variant: str):
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    return _real_load_model(variant, seed=0)


def pipeline(variant: str, **kw):
    from flashocc_ros.inference.temporal import TemporalPipeline

    cfg = load_config(overrides={"model": {"variant": variant, "device": "cpu", "pano_mode": "official"}})
    return TemporalPipeline(cfg, model=seed0_model_4d(variant), with_logits=True, keep_stages=True, **kw)


def _snapshot(pipe, result) -> dict:
    st = pipe.last_stages
    out = {
        "semantic": result.semantic.copy(),
        "logits": result.logits,
        "bev_fused": st["bev_fused"][0].numpy().copy(),
        "bev_encoder": st["bev_encoder"][0].numpy().copy(),
        "img_neck": [t.numpy().copy() for t in st["img_neck"]],
        "depth_net_out": [t.numpy().copy() for t in st["depth_net_out"]],
        "depth_prob": [t.numpy().copy() for t in st["depth_prob"]],
        "lss_bev": [t[0].numpy().copy() for t in st["lss_bev"]],
        "sensor2keyego": np.stack(st["sensor2keyego"]),
        "num_points": list(st["num_points"]),
        "encoder_passes": pipe.encoder_passes,
        "cost_volume_passes": pipe.cost_volume_passes,
        "history_depth": pipe.last_history_depth,
    }
    if pipe.variant.panoptic:
        out.update(result.centers.numpy(), panoptic=result.panoptic)
        out.update(heatmap=st["heatmap"][0].numpy().copy(), reg=st["reg"][0].numpy().copy())
    for name in ("stereo_feat", "cost_volume", "cv_features"):
        if name in st:
            out[name] = [None if t is None else t.numpy().copy() for t in st[name]]
    return out


@functools.cache
def all_at_once(variant: str) -> dict:
    """The official path: every frame encoded from its images (run_frames on the IN.npz layout)."""
    pipe = pipeline(variant)
    result = pipe.run_frames(seed0_inputs_4d(pipe.variant.num_frames))
    return _snapshot(pipe, result)


@functools.cache
def streamed(variant: str, observe_history: bool, observe_first: bool = False) -> dict:
    """The golden frames fed one by one, oldest first, at their keyframe times; ``observe_history``: the earlier
    frames only join the history (observe), else each gets its own occupancy (run). Returns the last frame's."""
    from flashocc_ros.inference.temporal import frames_of

    pipe = pipeline(variant)
    inputs = seed0_inputs_4d(pipe.variant.num_frames)
    frames = frames_of(inputs, pipe.variant.num_frames)
    depths = []
    for i, fr in enumerate(frames[:-1]):
        stamp = float(inputs["frame_times"][fr["index"]])
        if observe_history or (observe_first and i == 0):
            pipe.observe(fr["images"], fr["calib"], stamp)
        else:
            pipe.run(fr["images"], fr["calib"], stamp, fr["post_rot"], fr["post_tran"], fr["bda"])
            depths.append(pipe.last_history_depth)
    last = frames[-1]
    result = pipe.run(last["images"], last["calib"], 0.0, last["post_rot"], last["post_tran"], last["bda"])
    out = _snapshot(pipe, result)
    out["earlier_history_depths"] = depths
    out["history_bytes"] = pipe.history.nbytes
    return out
