"""ONNX export of the temporal variants as two graphs (standard ONNX operators only, opset 17).

A temporal model keeps state (the previous frames' image features), so it does not fit one static engine. It is
split where ``temporal.TemporalPipeline`` splits it:

* **encoder** graph (per frame, pose independent): ``img`` (6, 3, 256, 704) -> ``img_feat`` (6, C_neck, 16, 44)
  and, for the 4D-stereo variant, ``stereo_feat`` (6, 256, 64, 176) (ResNet layer1, the cost-volume input). Run it
  once per camera set and keep its outputs for as long as a history slot may use them.
* **fusion** graph (per run, depends on the current ego pose): every history slot's features, the current key
  frame's camera-aware ``mlp_input`` and the BEV pooling tables of all slots -> DepthNet of every slot (with the
  CURRENT frame's mlp_input, as the official model), BEV pooling of every slot into the current key ego,
  ``pre_process_net``, fusion, BEV encoder, heads. Outputs as the single-frame export names them: ``occ_labels``
  (+ ``occ_logits`` on request) and, for the panoptic variants, ``center_heatmap`` / ``center_reg`` /
  ``center_height``. The 4D-stereo cost volumes (frame k against its previous keyframe k+1) are computed in the
  fusion graph too; they need 3x3 inverses of the camera model, which ONNX has no standard operator for, so
  ``inv_intrins`` / ``inv_post_rot`` are inputs (computed on the host, ``torch.inverse`` as the official model).

History slots: slot 0 = the current frame, slot k = the stored frame nearest ``t - k * frame_interval_s``; a
missing slot gets the CURRENT frame (official first-frame rule; 4D-stereo: no previous keyframe -> every slot the
current frame). The slots are stacked on the first axis of ``img_feats`` (F = ``variant.bev_frames``) and of
``stereo_feats`` (``variant.num_frames`` = F + 1: the last slot is only the stereo reference of slot F-1).

BEV pooling is the plugin-free gather of ``backends.pooling`` over all slots at once: ``fusion_pool_tables``
concatenates the per-slot tables (each slot lifted with its own camera -> current-key-ego transform) with slot
offsets, so the graph pools (F*6) cameras into F BEV maps with one Gather/MatMul/ReduceSum chain. Every input and
output has a static shape for the variant's F except the table lengths (rows, cells, rows per cell), which depend
on the poses as in the single-frame export (a TensorRT optimisation profile bounds them; docs/deployment.md).

Files: ``<base>.encoder.onnx``, ``<base>.fusion.onnx`` and ``<base>.temporal.json`` (roles, input order and shapes,
F, slot mapping); each ONNX file also carries its role in its metadata. All written atomically, the JSON last.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from flashocc_ros.atomic import atomic_write_bytes, atomic_write_text
from flashocc_ros.backends.base import IMAGE_INPUT, IMAGE_SHAPE, MLP_INPUT, BackendError
from flashocc_ros.backends.onnx_export import (
    OPSET,
    head_outputs,
    output_names,
    trace_to_proto,
    validate_standard_proto,
    weights_digest,
)
from flashocc_ros.backends.pooling import (
    MAX_ROWS_PER_CELL,
    NUM_BEV_CELLS,
    POOL_INPUTS,
    SLOT_WIDTH,
    PoolTables,
    depth_size,
    gather_pool,
    pool_tables_from_indices,
)
from flashocc_ros.config import ModelVariant, get_variant
from flashocc_ros.network.geometry import FEATURE_HW, NUM_CAMERAS, PoolIndices

EXPORT_FORMAT_4D = "flashocc_ros/onnx4d-v1"  # bump when a graph's inputs/outputs change
ENCODER, FUSION = "encoder", "fusion"
IMG_FEAT = "img_feat"  # encoder output (6, C_neck, 16, 44)
STEREO_FEAT = "stereo_feat"  # 4D-stereo encoder output (6, 256, 64, 176)
IMG_FEATS = "img_feats"  # fusion input (F, 6, C_neck, 16, 44), slot-major
STEREO_FEATS = "stereo_feats"  # 4D-stereo fusion input (F + 1, 6, 256, 64, 176)
CURR2ADJ = "curr2adj"  # 4D-stereo: (F, 6, 4, 4) camera of slot k -> same camera of slot k + 1
STEREO_CAMERA_INPUTS = ("intrins", "inv_intrins", "post_rot", "inv_post_rot", "post_tran")
STEREO_CHANNELS = 256
STEREO_HW = (64, 176)


def _check_temporal(variant: ModelVariant | str) -> ModelVariant:
    v = get_variant(variant) if isinstance(variant, str) else variant
    if not v.temporal:
        raise BackendError(f"{v.name} is a single-frame variant: use backends.onnx_export.export_onnx (one graph)")
    return v


# -- graph interfaces ------------------------------------------------------------------------------------------
def encoder_input_names(variant: ModelVariant) -> list[str]:
    return [IMAGE_INPUT]


def encoder_output_names(variant: ModelVariant) -> list[str]:
    return [IMG_FEAT, STEREO_FEAT] if variant.stereo else [IMG_FEAT]


def fusion_input_names(variant: ModelVariant) -> list[str]:
    names = [IMG_FEATS, *POOL_INPUTS, MLP_INPUT]
    if variant.stereo:
        names += [STEREO_FEATS, CURR2ADJ, *STEREO_CAMERA_INPUTS]
    return names


def fusion_output_names(variant: ModelVariant, with_logits: bool = False) -> list[str]:
    return output_names(variant, with_logits)


def input_shapes(variant: ModelVariant) -> dict[str, dict[str, list]]:
    """Per graph role: input name -> shape (str = a dynamic axis) and dtype, in graph input order."""
    nf, ns = variant.bev_frames, variant.num_frames
    feat = [NUM_CAMERAS, variant.neck_channels, *FEATURE_HW]
    shapes = {
        IMG_FEATS: [nf, *feat],
        POOL_INPUTS[0]: ["rows", SLOT_WIDTH],
        POOL_INPUTS[1]: ["rows", SLOT_WIDTH],
        POOL_INPUTS[2]: ["cells", "rows_per_cell"],
        POOL_INPUTS[3]: [nf * NUM_BEV_CELLS],
        MLP_INPUT: [1, NUM_CAMERAS, 27],
        STEREO_FEATS: [ns, NUM_CAMERAS, STEREO_CHANNELS, *STEREO_HW],
        CURR2ADJ: [nf, NUM_CAMERAS, 4, 4],
        "intrins": [NUM_CAMERAS, 3, 3],
        "inv_intrins": [NUM_CAMERAS, 3, 3],
        "post_rot": [NUM_CAMERAS, 3, 3],
        "inv_post_rot": [NUM_CAMERAS, 3, 3],
        "post_tran": [NUM_CAMERAS, 3],
    }
    dtype = {n: "int32" for n in POOL_INPUTS}
    return {
        ENCODER: {IMAGE_INPUT: {"shape": list(IMAGE_SHAPE), "dtype": "float32"}},
        FUSION: {n: {"shape": shapes[n], "dtype": dtype.get(n, "float32")} for n in fusion_input_names(variant)},
    }


# -- graphs ------------------------------------------------------------------------------------------------------
class EncoderGraph(nn.Module):
    """Per-frame image encoder: images -> neck features (+ layer1 stereo feature)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.stereo = bool(model.variant.stereo)

    def forward(self, img):
        if self.stereo:
            return self.model.encode_frame_stereo(img)
        return self.model.encode_frame(img)


def stereo_grid_export(frustum, k2s, intrins, inv_intrins, post_rot, inv_post_rot, post_tran) -> torch.Tensor:
    """``model4d.stereo_grid`` for ``n`` cameras (any batch of frames x cameras) with the 3x3 inverses given (ONNX
    has no standard Inverse) and ``torch.where`` instead of masked assignment; same operations in the same order."""
    n = k2s.shape[0]
    d, h, w, _ = frustum.shape
    hi, wi = h * 4, w * 4
    points = frustum - post_tran.view(n, 1, 1, 1, 3)
    points = inv_post_rot.view(n, 1, 1, 1, 3, 3).matmul(points.unsqueeze(-1))
    points = torch.cat((points[..., :2, :] * points[..., 2:3, :], points[..., 2:3, :]), 4)
    rots = k2s[:, :3, :3]
    trans = k2s[:, :3, 3]
    combine = rots.matmul(inv_intrins)
    points = combine.view(n, 1, 1, 1, 3, 3).matmul(points)
    points = points + trans.view(n, 1, 1, 1, 3, 1)
    neg_mask = points[..., 2, 0] < 1e-3
    points = intrins.view(n, 1, 1, 1, 3, 3).matmul(points)
    points = points[..., :2, :] / points[..., 2:3, :]
    points = post_rot[:, :2, :2].view(n, 1, 1, 1, 2, 2).matmul(points).squeeze(-1)
    points = points + post_tran[:, :2].view(n, 1, 1, 1, 2)
    px = points[..., 0] / (wi - 1.0) * 2.0 - 1.0
    py = points[..., 1] / (hi - 1.0) * 2.0 - 1.0
    outside = torch.full_like(px, -2.0)
    px = torch.where(neg_mask, outside, px)
    py = torch.where(neg_mask, outside, py)
    return torch.stack([px, py], dim=-1).view(n, d * h, w, 2)


def cost_volume_export(curr: torch.Tensor, prev: torch.Tensor, grid: torch.Tensor, group: int = 4) -> torch.Tensor:
    """softmax(-cost) over depth bins (the official cost volume, SPEC4D 5): per group of ``group`` channels
    |curr - prev warped to each depth| summed over the group, groups summed in order, +5 where the warped (last
    group, channel 0) feature is exactly 0. Written with out-of-place operators for export."""
    n, c, h, w = curr.shape
    d = grid.shape[1] // h
    cost = warped = None
    for g in range(c // group):
        sl = slice(g * group, (g + 1) * group)
        warped = F.grid_sample(prev[:, sl], grid, align_corners=True, padding_mode="zeros").view(n, group, d, h, w)
        part = (curr[:, sl].unsqueeze(2) - warped).abs().sum(dim=1)
        cost = part if cost is None else cost + part
    cost = torch.where(warped[:, 0] == 0, cost + 5.0, cost)
    return (-cost).softmax(dim=1)


class FusionGraph(nn.Module):
    """All slots' features + the current pose's inputs -> occupancy (see the module docstring)."""

    def __init__(self, model: nn.Module, with_logits: bool = False) -> None:
        super().__init__()
        self.model = model
        self.with_logits = with_logits
        v = model.variant
        self.panoptic = bool(v.panoptic)
        self.stereo = bool(v.stereo)
        self.frames = v.bev_frames
        if self.stereo:
            self.register_buffer("cv_frustum", model.cv_frustum.clone(), persistent=False)

    def forward(self, img_feats, depth_index, feat_index, cell_rows, bev_cell, mlp_input, *stereo):
        m = self.model
        vt = m.img_view_transformer
        nf, n = self.frames, NUM_CAMERAS
        feats = img_feats.reshape(nf * n, *img_feats.shape[2:])
        mlp = mlp_input.reshape(1, n, -1).expand(nf, n, -1).reshape(nf * n, -1)  # the current frame's, every slot
        if self.stereo:
            stereo_feats, curr2adj, intrins, inv_intrins, post_rot, inv_post_rot, post_tran = stereo
            curr = stereo_feats[:nf].reshape(nf * n, *stereo_feats.shape[2:])
            prev = stereo_feats[1 : nf + 1].reshape(nf * n, *stereo_feats.shape[2:])

            def rep(t):  # the current frame's camera model for every slot (the official pipeline repeats it)
                return t.unsqueeze(0).expand(nf, *t.shape).reshape(nf * n, *t.shape[1:])

            grid = stereo_grid_export(
                self.cv_frustum,
                curr2adj.reshape(nf * n, 4, 4),
                rep(intrins),
                rep(inv_intrins),
                rep(post_rot),
                rep(inv_post_rot),
                rep(post_tran),
            )
            cvf = vt.depth_net.cost_volume_features(cost_volume_export(curr, prev, grid))
            out = vt.depth_net(feats, mlp, cvf)
        else:
            out = vt.depth_context(feats, mlp)
        depth = out[:, : vt.num_depth].softmax(dim=1)
        context = out[:, vt.num_depth : vt.num_depth + vt.context_ch]
        bev = gather_pool(depth, context, depth_index, feat_index, cell_rows, bev_cell, frames=nf).contiguous()
        pre = m.pre_process_net(bev)  # (F, C, 200, 200), slot order
        if self.stereo:
            pre = torch.flip(pre, dims=[0])  # BEVStereo4D fuses oldest first: [prev1, cur]
        fused = pre.reshape(1, -1, *pre.shape[2:])  # channel concatenation of the slots
        return head_outputs(m, fused, self.with_logits, self.panoptic)


# -- host-side inputs ---------------------------------------------------------------------------------------------
def fusion_pool_tables(pools: Sequence[PoolIndices], depth_bins: int) -> PoolTables:
    """The pooling tables of every slot (``pools[k]``: slot k lifted into the current key ego) concatenated for
    the fusion graph: slot k's depth / feature indices are offset by k slots of depth probabilities / feature
    pixels, its rows and cells follow the earlier slots', ``bev_cell`` is (F * 40000,) slot-major. Sentinels
    (padding) point at the appended zero entries of the concatenation, as in ``pool_tables_from_indices``."""
    tables = [pool_tables_from_indices(p, depth_bins) for p in pools]
    n_depth = depth_size(depth_bins)
    n_pix = NUM_CAMERAS * FEATURE_HW[0] * FEATURE_HW[1]
    nf = len(tables)
    total_rows = sum(t.num_rows for t in tables)
    total_cells = sum(t.num_cells for t in tables)
    j = max(t.rows_per_cell for t in tables)
    di, fi, cr, bc = [], [], [], []
    row0 = cell0 = 0
    for k, t in enumerate(tables):
        d = t.depth_index.astype(np.int64)
        di.append(np.where(d == n_depth, nf * n_depth, d + k * n_depth))
        fi.append(t.feat_index.astype(np.int64) + k * n_pix)
        rows = t.cell_rows.astype(np.int64)
        rows = np.where(rows == t.num_rows, total_rows, rows + row0)
        cr.append(np.pad(rows, ((0, 0), (0, j - rows.shape[1])), constant_values=total_rows))
        cells = t.bev_cell.astype(np.int64)
        bc.append(np.where(cells == t.num_cells, total_cells, cells + cell0))
        row0 += t.num_rows
        cell0 += t.num_cells
    return PoolTables(*(np.ascontiguousarray(np.concatenate(a), dtype=np.int32) for a in (di, fi, cr, bc)))


def fusion_inputs(
    variant: ModelVariant | str,
    img_feats: Sequence[np.ndarray],
    pools: Sequence[PoolIndices],
    mlp_input,
    stereo_feats: Sequence[np.ndarray] | None = None,
    curr2adj: np.ndarray | None = None,
    intrins: np.ndarray | None = None,
    post_rot: np.ndarray | None = None,
    post_tran: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """The fusion graph's feeds (name -> array, graph input order) for slots [current, prev1, ...]:
    ``img_feats`` / ``pools`` per slot (F), ``mlp_input`` (1, 6, 27) of the current frame; 4D-stereo also
    ``stereo_feats`` (F + 1 slots), ``curr2adj`` (F, 6, 4, 4) and the current frame's intrins / post_rot /
    post_tran (6, ...)."""
    v = _check_temporal(variant)
    nf = v.bev_frames
    if len(img_feats) != nf or len(pools) != nf:
        raise ValueError(f"{v.name}: the fusion graph takes {nf} slots, got {len(img_feats)} features / {len(pools)}")
    tables = fusion_pool_tables(pools, v.depth_bins)
    mlp = mlp_input.detach().cpu().numpy() if isinstance(mlp_input, torch.Tensor) else np.asarray(mlp_input)
    feeds = {IMG_FEATS: np.stack([np.asarray(f, dtype=np.float32) for f in img_feats])}
    feeds.update(tables.as_inputs())
    feeds[MLP_INPUT] = mlp.astype(np.float32).reshape(1, NUM_CAMERAS, -1)
    if v.stereo:
        if stereo_feats is None or len(stereo_feats) != v.num_frames or curr2adj is None or intrins is None:
            raise ValueError(f"{v.name}: needs {v.num_frames} stereo features, curr2adj and the camera model")
        k = torch.from_numpy(np.array(intrins, dtype=np.float32).reshape(NUM_CAMERAS, 3, 3))
        r = torch.from_numpy(np.array(post_rot, dtype=np.float32).reshape(NUM_CAMERAS, 3, 3))
        feeds[STEREO_FEATS] = np.stack([np.asarray(f, dtype=np.float32) for f in stereo_feats])
        feeds[CURR2ADJ] = np.asarray(curr2adj, dtype=np.float32).reshape(nf, NUM_CAMERAS, 4, 4)
        feeds["intrins"] = k.numpy()
        feeds["inv_intrins"] = torch.inverse(k).numpy()
        feeds["post_rot"] = r.numpy()
        feeds["inv_post_rot"] = torch.inverse(r).numpy()
        feeds["post_tran"] = np.asarray(post_tran, dtype=np.float32).reshape(NUM_CAMERAS, 3)
    want = input_shapes(v)[FUSION]
    for name, spec in want.items():
        shape = feeds[name].shape
        if len(shape) != len(spec["shape"]) or any(isinstance(s, int) and s != d for s, d in zip(spec["shape"], shape)):
            raise ValueError(f"{name}: expected shape {spec['shape']}, got {shape}")
    return {name: np.ascontiguousarray(feeds[name]) for name in want}


# -- export -------------------------------------------------------------------------------------------------------
def pool_profile(variant: ModelVariant, opt_shapes: Mapping[str, tuple[int, ...]]) -> dict[str, dict[str, list]]:
    """TensorRT optimisation profile of the fusion graph's pooling tables: min 1 row / cell, opt ``opt_shapes``
    (export: the reference nuScenes rig in every slot), max = every frustum point of every slot its own row, every
    BEV cell of every slot non-empty, ``MAX_ROWS_PER_CELL`` rows (1,024 points) per cell as the single-frame
    engines, or the reference rig's fullest cell when that needs more)."""
    nf = variant.bev_frames
    max_rows, max_cells = nf * depth_size(variant.depth_bins), nf * NUM_BEV_CELLS
    out = {}
    for name, mx in zip(POOL_INPUTS[:3], ((max_rows, SLOT_WIDTH), (max_rows, SLOT_WIDTH), (max_cells, None))):
        opt = list(opt_shapes[name])
        if mx[1] is None:  # M2's reference rig already needs 87 rows in its fullest cell
            mx = (mx[0], max(MAX_ROWS_PER_CELL, opt[1]))
        out[name] = {"min": [1, opt[1] if name != POOL_INPUTS[2] else 1], "opt": opt, "max": list(mx)}
    return out


def trtexec_commands(meta: Mapping, precision: str = "fp16") -> dict[str, str]:
    """trtexec command lines building one engine per graph from a ``.temporal.json`` sidecar (not run here)."""
    flag = {"fp32": "", "fp16": " --fp16", "int8": " --int8 --fp16"}[precision]
    cmds = {}
    for role in (ENCODER, FUSION):
        onnx_file = meta["graphs"][role]["file"]
        engine = onnx_file.removesuffix(".onnx") + f".{precision}.engine"
        cmd = f"trtexec --onnx={onnx_file} --saveEngine={engine}{flag}"
        if role == FUSION:
            for key in ("min", "opt", "max"):
                shapes = ",".join(
                    f"{name}:{'x'.join(str(d) for d in prof[key])}" for name, prof in meta["pool_profile"].items()
                )
                cmd += f" --{key}Shapes={shapes}"
        cmds[role] = cmd
    return cmds


def output_paths(out: str | Path) -> dict[str, Path]:
    """``-o base.onnx`` (or ``base``) -> base.encoder.onnx, base.fusion.onnx, base.temporal.json."""
    out = Path(out)
    base = out.with_suffix("") if out.suffix == ".onnx" else out
    return {
        ENCODER: base.with_name(base.name + ".encoder.onnx"),
        FUSION: base.with_name(base.name + ".fusion.onnx"),
        "metadata": base.with_name(base.name + ".temporal.json"),
    }


@dataclass(frozen=True)
class TemporalExportReport:
    paths: dict[str, Path]
    variant: str
    seconds: float
    op_types: dict[str, tuple[str, ...]]
    size_bytes: dict[str, int]
    metadata: dict


def _example_inputs(model, variant: ModelVariant) -> tuple[tuple, tuple]:
    """Tracing inputs (values only shape the trace; the pooling tables' lengths are dynamic)."""
    from flashocc_ros.network.geometry import prepare_geometry, reference_rig

    rng = np.random.default_rng(0)
    img = torch.from_numpy(rng.standard_normal(IMAGE_SHAPE).astype(np.float32))
    geo = prepare_geometry(variant, reference_rig())
    nf = variant.bev_frames
    feats = [rng.standard_normal((NUM_CAMERAS, variant.neck_channels, *FEATURE_HW)).astype(np.float32)] * nf
    kw = {}
    if variant.stereo:
        rig = reference_rig()
        from flashocc_ros.network.preprocess import augmentation_for

        aug = augmentation_for(rig.image_hw)
        eye = np.broadcast_to(np.eye(4, dtype=np.float32), (nf, NUM_CAMERAS, 4, 4))
        shape = (NUM_CAMERAS, STEREO_CHANNELS, *STEREO_HW)
        kw = dict(
            stereo_feats=[rng.standard_normal(shape).astype(np.float32)] * variant.num_frames,
            curr2adj=eye,
            intrins=rig.intrinsics,
            post_rot=np.broadcast_to(aug.post_rot, (NUM_CAMERAS, 3, 3)),
            post_tran=np.broadcast_to(aug.post_tran, (NUM_CAMERAS, 3)),
        )
    feeds = fusion_inputs(variant, feats, [geo.pool] * nf, geo.mlp_input, **kw)
    return (img,), tuple(torch.from_numpy(a) for a in feeds.values())


def export_temporal_onnx(
    variant: ModelVariant | str,
    state_dict: Mapping[str, torch.Tensor],
    out: str | Path,
    *,
    with_logits: bool = False,
    opset: int = OPSET,
    check: bool = True,
) -> TemporalExportReport:
    """Export a temporal variant as the encoder and fusion graphs + the JSON sidecar (see ``output_paths``)."""
    from flashocc_ros.network.networks import build_model

    v = _check_temporal(variant)
    paths = output_paths(out)
    t0 = time.perf_counter()
    model = build_model(v.name, "cpu")
    model.load_state_dict(state_dict, strict=True)
    digest = weights_digest(state_dict)
    enc_args, fus_args = _example_inputs(model, v)
    shapes = input_shapes(v)
    interfaces = {
        ENCODER: (EncoderGraph(model).eval(), enc_args, encoder_input_names(v), encoder_output_names(v), {}),
        FUSION: (
            FusionGraph(model, with_logits).eval(),
            fus_args,
            fusion_input_names(v),
            fusion_output_names(v, with_logits),
            {
                POOL_INPUTS[0]: {0: "rows"},
                POOL_INPUTS[1]: {0: "rows"},
                POOL_INPUTS[2]: {0: "cells", 1: "rows_per_cell"},
            },
        ),
    }
    common = {
        "format": EXPORT_FORMAT_4D,
        "variant": v.name,
        "frames": v.bev_frames,
        "stereo_frames": v.num_frames if v.stereo else v.bev_frames,
        "frame_interval_s": v.frame_interval_s,
        "pool_slot_width": SLOT_WIDTH,
        "weights_sha256": digest,
    }
    data: dict[str, bytes] = {}
    op_types: dict[str, tuple[str, ...]] = {}
    graphs: dict[str, dict] = {}
    for role, (module, args, ins, outs, dyn) in interfaces.items():
        proto = trace_to_proto(module, args, ins, outs, dyn, opset)
        meta = {
            "flashocc_format": EXPORT_FORMAT_4D,
            "flashocc_variant": v.name,
            "flashocc_role": role,
            "flashocc_frames": str(v.bev_frames),
            "flashocc_inputs": json.dumps(ins),
            "flashocc_outputs": json.dumps(outs),
            "flashocc_pool_slot_width": str(SLOT_WIDTH),
            "flashocc_weights_sha256": digest,
        }
        del proto.metadata_props[:]
        for key, val in meta.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, val
        proto.producer_name = "flashocc_ros"
        if check:
            validate_temporal_proto(proto, paths[role], v, role, with_logits)
        op_types[role] = tuple(sorted({nd.op_type for nd in proto.graph.node}))
        data[role] = proto.SerializeToString()
        graphs[role] = {
            "file": paths[role].name,
            "inputs": [{"name": n, **shapes[role][n]} for n in ins],
            "outputs": _output_specs(proto),
            "sha256": hashlib.sha256(data[role]).hexdigest(),
        }
        del proto
    metadata = {
        **common,
        "graphs": graphs,
        "slots": (
            f"{IMG_FEATS}[k] = {IMG_FEAT} of history slot k: k = 0 the current frame, k >= 1 the frame nearest "
            f"t - k * frame_interval_s; a missing slot gets the current frame (official first-frame rule)"
            + (
                f"; {STEREO_FEATS}[k] = {STEREO_FEAT} of slot k (slot F only as the stereo reference of slot F-1; "
                f"no slot 1 -> every slot the current frame); {CURR2ADJ}[k] = camera of slot k -> the same camera "
                f"of slot k+1 (model4d.curr_to_adj_sensor)"
                if v.stereo
                else ""
            )
        ),
        "pooling": "pool_* = fusion_pool_tables(per-slot pool indices, each slot lifted into the current key ego)",
        "mlp_input": "the current frame's camera-aware input (geometry.make_mlp_input), shared by every slot",
        "pool_profile": pool_profile(v, {n: tuple(a.shape) for n, a in zip(fusion_input_names(v), fus_args)}),
    }
    for role in (ENCODER, FUSION):
        atomic_write_bytes(paths[role], data[role])
    atomic_write_text(paths["metadata"], json.dumps(metadata, indent=2) + "\n")
    return TemporalExportReport(
        paths=paths,
        variant=v.name,
        seconds=time.perf_counter() - t0,
        op_types=op_types,
        size_bytes={r: len(b) for r, b in data.items()},
        metadata=metadata,
    )


def _output_specs(proto) -> list[dict]:
    elem = {1: "float32", 6: "int32", 7: "int64"}
    out = []
    for o in proto.graph.output:
        t = o.type.tensor_type
        out.append(
            {
                "name": o.name,
                "shape": [d.dim_param or d.dim_value for d in t.shape.dim],
                "dtype": elem.get(t.elem_type, str(t.elem_type)),
            }
        )
    return out


def validate_temporal_proto(proto, path, variant: ModelVariant, role: str, with_logits: bool | None = None) -> None:
    """onnx.checker + standard operators only + this package's format, variant, role and interface."""
    validate_standard_proto(proto, path)
    meta = {p.key: p.value for p in proto.metadata_props}
    if meta.get("flashocc_format") != EXPORT_FORMAT_4D:
        found = meta.get("flashocc_format")
        raise BackendError(f"{path}: not a temporal graph of format {EXPORT_FORMAT_4D} (found {found!r})")
    if meta.get("flashocc_variant") != variant.name or meta.get("flashocc_role") != role:
        raise BackendError(
            f"{path}: the {meta.get('flashocc_role')!r} graph of {meta.get('flashocc_variant')!r}, "
            f"wanted the {role!r} graph of {variant.name!r}"
        )
    ins = [i.name for i in proto.graph.input]
    want = encoder_input_names(variant) if role == ENCODER else fusion_input_names(variant)
    if ins != want:
        raise BackendError(f"{path}: graph inputs {ins} != expected {want}")
    outs = [o.name for o in proto.graph.output]
    need = encoder_output_names(variant) if role == ENCODER else fusion_output_names(variant, bool(with_logits))
    missing = [n for n in need if n not in outs]
    if missing:
        raise BackendError(f"{path}: missing outputs {missing} (has {outs})")


def validate_temporal_onnx(path: str | Path, variant: ModelVariant | str, role: str, with_logits=None) -> None:
    import onnx

    validate_temporal_proto(onnx.load(str(path)), path, _check_temporal(variant), role, with_logits)


def read_temporal_metadata(out: str | Path) -> dict:
    """The JSON sidecar of an export (``-o`` path or the .temporal.json itself)."""
    p = Path(out)
    p = p if p.name.endswith(".temporal.json") else output_paths(p)["metadata"]
    meta = json.loads(p.read_text())
    if meta.get("format") != EXPORT_FORMAT_4D:
        raise BackendError(f"{p}: not a temporal export of format {EXPORT_FORMAT_4D} ({meta.get('format')!r})")
    return meta
