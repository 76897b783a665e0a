"""Benchmark: PyTorch eager vs ONNX Runtime on this machine's CPU, per variant (medians measured in the same run),
plus TensorRT fp32/fp16 (engine-only and end-to-end with JPEG decode + pre/post-processing) when a GPU is present.

    .venv/bin/python benchmarks/bench_backends.py [--variants M0 PT] [--repeats 5] [--onnx-dir DIR] [--json out.json]

Inputs: the golden seed-0 images on the reference nuScenes rig, deterministic weights (speed does not depend on the
weight values). ONNX files are exported once into --onnx-dir (default: a cache directory) and reused.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from flashocc_ros.backends import OCC_LABELS, tensorrt_available
from flashocc_ros.backends.onnx_export import export_onnx
from flashocc_ros.backends.ort_runner import OnnxRuntimeRunner
from flashocc_ros.backends.torch_runner import TorchRunner
from flashocc_ros.config import get_variant
from flashocc_ros.network.geometry import prepare_geometry, reference_rig
from flashocc_ros.network.weights import deterministic_images, deterministic_state_dict


def timed(fn, repeats: int, warmup: int = 1) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def bench_runner(runner, geo, img, repeats: int) -> tuple[float, np.ndarray]:
    runner.prepare(geo.pool, None if geo.mlp_input is None else geo.mlp_input.numpy())
    np.copyto(runner.image, img)
    times = timed(runner.infer, repeats)
    return statistics.median(times), runner.outputs[OCC_LABELS].copy()


def interleaved(runners, geo, img, repeats: int) -> list[float]:
    """Median infer() time of each runner, alternating runners every repeat (after one warm-up each)."""
    mlp = None if geo.mlp_input is None else geo.mlp_input.numpy()
    times: list[list[float]] = [[] for _ in runners]
    for r in runners:
        r.prepare(geo.pool, mlp)
        np.copyto(r.image, img)
        r.infer()
    for _ in range(repeats):
        for i, r in enumerate(runners):
            t0 = time.perf_counter()
            r.infer()
            times[i].append((time.perf_counter() - t0) * 1e3)
    return [statistics.median(t) for t in times]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--variants", nargs="+", default=["M0", "M1", "PT", "PF"])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "0") or 0) or os.cpu_count())
    p.add_argument("--onnx-dir", type=Path, default=Path("~/.cache/flashocc_ros/bench_onnx").expanduser())
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    img = deterministic_images(0)[0]
    rows = []
    print(f"CPU: {os.cpu_count()} cores, {args.threads} threads; torch {torch.__version__}; {args.repeats} repeats")
    for short in args.variants:
        v = get_variant(short)
        sd = deterministic_state_dict(v.name, 0)
        geo = prepare_geometry(v, reference_rig())
        onnx_path = args.onnx_dir / f"{v.name}.onnx"
        if not onnx_path.is_file():
            print(f"exporting {v.name} -> {onnx_path}")
            export_onnx(v, sd, onnx_path)
        with TorchRunner(v, sd, "cpu") as tr, OnnxRuntimeRunner(v, onnx_path, "cpu", threads=args.threads) as orr:
            # interleaved repeats: both backends see the same machine load (medians from the same run)
            t_torch, t_ort = interleaved([tr, orr], geo, img, args.repeats)
            lab_torch, lab_ort = tr.outputs[OCC_LABELS], orr.outputs[OCC_LABELS]
        row = dict(
            variant=v.short,
            pytorch_cpu_ms=round(t_torch, 1),
            onnxruntime_cpu_ms=round(t_ort, 1),
            ort_speedup=round(t_torch / t_ort, 2),
            label_agreement=float(np.mean(lab_torch == lab_ort)),
        )
        rows.append(row)
        print(
            f"{v.short}: PyTorch eager {t_torch:8.1f} ms | ONNX Runtime {t_ort:8.1f} ms | "
            f"speedup x{t_torch / t_ort:.2f} | labels equal {row['label_agreement'] * 100:.4f} %"
        )
    trt_ok, why = tensorrt_available()
    if trt_ok:
        rows += bench_tensorrt([s for s in args.variants if get_variant(s).short in ("M0", "PT")], args, img)
    else:
        print(f"TensorRT skipped: {why}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


def bench_tensorrt(variants, args, img) -> list[dict]:  # pragma: no cover - needs a GPU
    import simplejpeg

    from flashocc_ros.backends.tensorrt_build import BuildOptions, ensure_engine
    from flashocc_ros.backends.tensorrt_runner import TensorRTRunner
    from flashocc_ros.config import load_config
    from flashocc_ros.inference.pipeline import OccupancyPipeline

    rows = []
    rng = np.random.default_rng(0)
    jpegs = [simplejpeg.encode_jpeg(rng.integers(0, 255, (900, 1600, 3), dtype=np.uint8), 90) for _ in range(6)]
    for short in variants:
        v = get_variant(short)
        sd = deterministic_state_dict(v.name, 0)
        geo = prepare_geometry(v, reference_rig())
        onnx_path = args.onnx_dir / f"{v.name}.onnx"
        with TorchRunner(v, sd, "cuda") as tr:
            t_torch, lab_torch = bench_runner(tr, geo, img, args.repeats * 4)
        for precision in ("fp32", "fp16"):
            engine, key = ensure_engine(onnx_path, v, BuildOptions(precision=precision), args.onnx_dir / "engines")
            with TensorRTRunner(v, engine, "cuda", expected_key=key) as runner:
                t_trt, lab = bench_runner(runner, geo, img, args.repeats * 20)
                cfg = load_config(overrides={"model": {"variant": v.name, "backend": "tensorrt"}})
                pipe = OccupancyPipeline(cfg, runner=runner)
                pipe.set_calibration(reference_rig())
                t_e2e = statistics.median(timed(lambda p=pipe: p.run_jpeg(jpegs), args.repeats * 4))
            row = dict(
                variant=v.short,
                precision=precision,
                pytorch_cuda_ms=round(t_torch, 2),
                tensorrt_engine_ms=round(t_trt, 2),
                tensorrt_fps=round(1000.0 / t_trt, 1),
                tensorrt_end_to_end_ms=round(t_e2e, 2),
                label_agreement_vs_pytorch=float(np.mean(lab == lab_torch)),
                gpu=key.gpu_name,
            )
            rows.append(row)
            print(row)
    return rows


if __name__ == "__main__":
    raise SystemExit(main())
