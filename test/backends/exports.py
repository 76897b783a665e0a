"""Session-wide ONNX exports and PyTorch references shared by the backend and pipeline tests (each variant is
exported at most once per test session: ~25-80 s each on 2 cores)."""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

import numpy as np

from flashocc_ros.config import get_variant

_ROOT: Path | None = None


def export_dir() -> Path:
    global _ROOT
    if _ROOT is None:
        _ROOT = Path(tempfile.mkdtemp(prefix="flashocc-onnx-"))
        atexit.register(shutil.rmtree, _ROOT, True)
    return _ROOT


@functools.cache
def state_dict(short: str):
    from flashocc_ros.network.weights import deterministic_state_dict

    return deterministic_state_dict(get_variant(short).name, 0)


@functools.cache
def exported_onnx(short: str):
    """(path, sorted operator types) of the variant exported with logits and deterministic seed-0 weights, made
    through the `flashocc-export onnx` command line (so the CLI is exercised without another export)."""
    import onnx

    from flashocc_ros.tools.export import main

    v = get_variant(short)
    path = export_dir() / f"{v.name}.onnx"
    assert main(["onnx", "--variant", short, "--logits", "-o", str(path)]) == 0
    proto = onnx.load(str(path), load_external_data=False)
    return path, tuple(sorted({n.op_type for n in proto.graph.node}))


@functools.cache
def reference_geometry(short: str):
    from flashocc_ros.network.geometry import prepare_geometry, reference_rig

    return prepare_geometry(get_variant(short), reference_rig())


@functools.cache
def golden_images() -> np.ndarray:
    from flashocc_ros.network.weights import deterministic_images

    return deterministic_images(0)[0]


@functools.cache
def torch_reference(short: str) -> dict[str, np.ndarray]:
    """PyTorch eager outputs (labels, logits, center maps) on the golden seed-0 inputs."""
    from flashocc_ros.backends.torch_runner import TorchRunner

    geo = reference_geometry(short)
    with TorchRunner(get_variant(short), state_dict(short), "cpu", with_logits=True) as runner:
        runner.prepare(geo.pool, geo.mlp_input)
        out = runner.infer(golden_images())
        return {k: v.copy() for k, v in out.items()}


@functools.cache
def exported_temporal(short: str) -> dict[str, Path]:
    """Encoder + fusion graphs and JSON sidecar of a temporal variant (with logits, deterministic seed-0 weights),
    made once per session through the `flashocc-export onnx` command line (~15 s P2, ~25 s P9 on 2 cores)."""
    from flashocc_ros.backends.onnx_export4d import output_paths
    from flashocc_ros.tools.export import main

    v = get_variant(short)
    folder = export_dir() / f"{v.name}-4d"
    base = folder / f"{v.name}.onnx"
    assert main(["onnx", "--variant", short, "--logits", "-o", str(base)]) == 0
    return output_paths(base)
