"""ONNX export of every variant with standard ONNX operators only (opset 17, TorchScript-based exporter).

Graph inputs: ``img`` (6, 3, 256, 704) float32, the four pooling tables of ``backends.pooling`` (int32, dynamic
rows/cells so one file serves any rig) and, for BEVDepth variants (PT, PF), ``mlp_input`` (1, 6, 27) float32.
Outputs: ``occ_labels`` (1, 200, 200, 16) int32 (argmax in the graph), optionally ``occ_logits``
(1, 200, 200, 16, 18) float32, and for PT/PF the raw center maps ``center_heatmap`` (1, 10, 200, 200),
``center_reg`` (1, 2, 200, 200), ``center_height`` (1, 1, 200, 200). Center decoding and panoptic assignment run
outside the graph (as in the official TensorRT path).

The file carries metadata (variant, outputs, pooling slot width, weights digest) that the runners check.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from flashocc_ros.atomic import atomic_write_bytes
from flashocc_ros.backends.base import EXPORT_FORMAT, IMAGE_SHAPE, BackendError, input_names, output_names
from flashocc_ros.backends.pooling import POOL_INPUTS, SLOT_WIDTH, gather_pool, pool_tables_from_indices
from flashocc_ros.config import ModelVariant, get_variant

OPSET = 17
STANDARD_DOMAINS = {"", "ai.onnx"}


class ExportGraph(nn.Module):
    """The deployed graph: image encoder -> depth/context -> gather pooling -> BEV encoder -> heads."""

    def __init__(self, model: nn.Module, with_logits: bool = False) -> None:
        super().__init__()
        self.model = model
        self.with_logits = with_logits
        self.panoptic = bool(model.variant.panoptic)
        self.needs_mlp = model.variant.depth_net == "bevdepth"

    def forward(self, img, depth_index, feat_index, cell_rows, bev_cell, mlp_input=None):
        m = self.model
        feat = m.image_features(img)
        _, depth, context = m.depth_and_context(feat, mlp_input if self.needs_mlp else None)
        bev = gather_pool(depth, context, depth_index, feat_index, cell_rows, bev_cell).contiguous()
        return head_outputs(m, bev, self.with_logits, self.panoptic)


def head_outputs(model, bev: torch.Tensor, with_logits: bool, panoptic: bool) -> tuple:
    """BEV encoder + heads -> the graph outputs in ``output_names`` order (labels, [logits], [centre maps])."""
    bev_enc = model.bev_encoder(bev)
    logits = model.occ_head(bev_enc)
    outs = [logits.argmax(-1).to(torch.int32)]
    if with_logits:
        outs.append(logits)
    if panoptic:
        maps = model.aux_centerness_head(bev_enc)
        outs += [maps["heatmap"], maps["reg"], maps["height"]]
    return tuple(outs)


@dataclass(frozen=True)
class ExportReport:
    path: Path
    variant: str
    seconds: float
    num_nodes: int
    op_types: tuple[str, ...]
    size_bytes: int
    sha256: str


def weights_digest(state_dict: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over key names and raw tensor bytes (identifies the weights an ONNX file was made from)."""
    h = hashlib.sha256()
    for k in sorted(state_dict):
        t = state_dict[k]
        h.update(k.encode())
        if isinstance(t, torch.Tensor):
            h.update(str(t.dtype).encode())
            h.update(repr(tuple(t.shape)).encode())
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def example_inputs(variant: ModelVariant, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Tracing inputs on the reference nuScenes rig (values only shape the trace; all index dims are dynamic)."""
    from flashocc_ros.network.geometry import prepare_geometry, reference_rig

    geo = prepare_geometry(variant, reference_rig())
    tables = pool_tables_from_indices(geo.pool, variant.depth_bins)
    img = torch.from_numpy(np.random.default_rng(seed).standard_normal(IMAGE_SHAPE).astype(np.float32))
    args = [img, *(torch.from_numpy(a) for a in tables.as_inputs().values())]
    if variant.depth_net == "bevdepth":
        args.append(geo.mlp_input.float())
    return tuple(args)


def trace_to_proto(module, args, input_names, output_names, dynamic_axes, opset: int = OPSET):
    """Trace ``module`` on ``args`` into an in-memory ONNX ModelProto (graphs here are < 2 GB: exported, annotated
    and checked in memory, then written once)."""
    import onnx

    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # legacy-exporter deprecation notice and tracer warnings
        torch.onnx.export(
            module,
            args,
            buffer,
            dynamo=False,
            opset_version=opset,
            input_names=list(input_names),
            output_names=list(output_names),
            dynamic_axes=dynamic_axes,
            do_constant_folding=True,
        )
    return onnx.load_from_string(buffer.getvalue())


def export_onnx(
    variant: ModelVariant | str,
    state_dict: Mapping[str, torch.Tensor],
    out_path: str | Path,
    *,
    with_logits: bool = False,
    opset: int = OPSET,
    check: bool = True,
) -> ExportReport:
    """Export ``variant`` with ``state_dict`` to ``out_path`` (written atomically), validate it, return a report."""
    from flashocc_ros.network.networks import build_model

    v = get_variant(variant) if isinstance(variant, str) else variant
    if v.temporal:
        raise BackendError(
            f"{v.name} is temporal: it exports as an encoder and a fusion graph (onnx_export4d.export_temporal_onnx)"
        )
    out_path = Path(out_path)
    t0 = time.perf_counter()
    model = build_model(v.name, "cpu")  # eval mode
    # channels_last weights and activations (build_model default on CPU) make tracing ~2x faster; ONNX is NCHW anyway
    model.load_state_dict(state_dict, strict=True)  # refolds conv+BN for eval
    graph = ExportGraph(model, with_logits).eval()
    args = example_inputs(v)
    ins, outs = input_names(v), output_names(v, with_logits)
    dynamic_axes = {
        POOL_INPUTS[0]: {0: "rows"},
        POOL_INPUTS[1]: {0: "rows"},
        POOL_INPUTS[2]: {0: "cells", 1: "rows_per_cell"},
    }
    proto = trace_to_proto(graph, args, ins, outs, dynamic_axes, opset)
    meta = {
        "flashocc_format": EXPORT_FORMAT,
        "flashocc_variant": v.name,
        "flashocc_outputs": json.dumps(outs),
        "flashocc_pool_slot_width": str(SLOT_WIDTH),
        "flashocc_weights_sha256": weights_digest(state_dict),
    }
    del proto.metadata_props[:]
    for k, val in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, val
    proto.producer_name = "flashocc_ros"
    if check:
        validate_proto(proto, out_path, v, with_logits)
    op_types = tuple(sorted({n.op_type for n in proto.graph.node}))
    num_nodes = len(proto.graph.node)
    data = proto.SerializeToString()
    del proto
    atomic_write_bytes(out_path, data)
    return ExportReport(
        path=out_path,
        variant=v.name,
        seconds=time.perf_counter() - t0,
        num_nodes=num_nodes,
        op_types=op_types,
        size_bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
    )


def read_metadata(path: str | Path) -> dict[str, str]:
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in proto.metadata_props}


def validate_onnx(path: str | Path, variant: ModelVariant | str, with_logits: bool | None = None) -> None:
    """onnx.checker (full, with shape inference) + standard-domain-only operators + expected inputs/outputs."""
    import onnx

    validate_proto(onnx.load(str(path)), path, variant, with_logits)


def validate_proto(proto, path, variant: ModelVariant | str, with_logits: bool | None = None) -> None:
    v = get_variant(variant) if isinstance(variant, str) else variant
    validate_standard_proto(proto, path)
    check_interface(proto, path, v, with_logits)


def validate_standard_proto(proto, path) -> None:
    """onnx.checker (full, with shape inference) and standard-domain operators only (no plugins)."""
    import onnx

    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as exc:  # onnx raises ValidationError / InferenceError
        raise BackendError(f"{path}: ONNX checker failed: {exc}") from exc
    custom = sorted({f"{n.domain}::{n.op_type}" for n in proto.graph.node if n.domain not in STANDARD_DOMAINS})
    if custom:
        raise BackendError(f"{path}: non-standard operators {custom} (this package exports standard ONNX only)")


def check_interface(proto, path, variant: ModelVariant, with_logits: bool | None = None) -> None:
    meta = {p.key: p.value for p in proto.metadata_props}
    if meta.get("flashocc_format") != EXPORT_FORMAT:
        raise BackendError(
            f"{path}: not an ONNX file exported by this package's format {EXPORT_FORMAT} "
            f"(found {meta.get('flashocc_format')!r}); re-export with `flashocc-export onnx`"
        )
    if meta.get("flashocc_variant") != variant.name:
        raise BackendError(
            f"{path}: exported for variant {meta.get('flashocc_variant')!r}, config wants {variant.name!r}"
        )
    graph_inputs = [i.name for i in proto.graph.input]
    if graph_inputs != input_names(variant):
        raise BackendError(f"{path}: graph inputs {graph_inputs} != expected {input_names(variant)}")
    graph_outputs = [o.name for o in proto.graph.output]
    need = output_names(variant, bool(with_logits))
    missing = [n for n in need if n not in graph_outputs]
    if missing:
        raise BackendError(
            f"{path}: missing outputs {missing} (has {graph_outputs}); re-export with the needed outputs"
        )


__all__ = [
    "EXPORT_FORMAT",
    "ExportGraph",
    "ExportReport",
    "export_onnx",
    "input_names",
    "output_names",
    "read_metadata",
    "validate_onnx",
    "weights_digest",
]
