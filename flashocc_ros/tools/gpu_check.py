"""One prepared device check: parity, panoptic, decode, throughput, host overhead and environment -> DIR/gpu_check.json.

    bash scripts/gpu_check.sh [--device cuda|cpu] [--out DIR] [--quick] [--variants M0 PT ...]
    python -m flashocc_ros.tools.gpu_check ...   (the same)

Runs everything through the package's own code paths (``OccupancyPipeline`` with the ``pytorch`` backend on the
given device, deterministic seed-0 weights, golden seed-0 inputs on the reference nuScenes rig) and writes one JSON
section per check, each with ``ok`` and its figures. With ``--device cpu`` every step runs on the CPU and figures
that need a GPU are written as ``{"skipped": "<reason>"}``; ``ok`` then judges only what ran.

* ``parity``: each variant, fp32, against ``test/data/golden/<variant>_seed0.npz``: labels follow the label
  near-tie rule of ``flashocc_ros.metrics.parity`` (the tests' rule: differing only where the run's own top-2
  logit margin is < 1e-3 + 2 x the probe tolerance, the official label among its near-best, at most
  ``occ_margin_lt_1e-3`` of them); probe logits within 1e-4 x their std (the rule of test/network/test_model.py).
  On CUDA also fp16 (autocast) label agreement with fp32 (goal >= 99.9 %).
* ``panoptic``: centre decoding + instance assignment (both ``pano_mode`` values) of the panoptic variants on the
  device vs the CPU on the same network outputs: same partition (identical panoptic grid), same centres; median
  time on the device (goal < 1 ms for the tiny variant on a GPU).
* ``decode``: the GPU host path (``gpu_preprocess``: torchvision nvJPEG decode + resize/crop/normalise on the
  device) on six 1600x900 JPEGs against the exact CPU path (Pillow decode + Pillow bicubic), deviation in 8-bit
  levels like docs/model.md's fast path (which is measured alongside), and times.
* ``throughput``: ``run_jpeg`` end to end (decode -> network -> post-processing, outputs on the host), fp32 and
  (CUDA) fp16, median and p95, plus the network alone (``runner.infer``).
* ``host_overhead``: benchmarks/bench_host.py's measurement (M0, the network replaced by a no-op runner, six
  1600x900 4:4:4 JPEGs, a moving vehicle, so pooling indices are recomputed every frame): per-stage medians and
  the total per frame against issue 17's goals (<= 10 ms on the GPU path, <= 35 ms CPU-only); on CUDA both the
  GPU host path and the CPU-only path. ``ok`` means measured; ``goal_met`` says whether the goal was met. Without
  the ROS message packages (the device machine) no messages are built (``messages_built``).
* ``environment``: versions, GPU, which optional packages were found and what was carried.

Imports nothing from ROS (runs where only torch/torchvision/numpy/Pillow/OpenCV exist: the device machine).
Expected time on one H200 (estimate, never measured: no GPU was lent so far): start + CUDA init ~20 s; parity
~4 x (3 s weights + 2 s build + 1 s runs) x 2 precisions ~50 s; panoptic ~10 s; decode ~5 s; throughput
~2 x 2 precisions x (25 + 25 runs) ~30 s: about 2 minutes, well inside the 6-minute budget. ``--device cpu
--quick`` (PT only, 2 repeats) takes ~45 s on a 2-core CPU.

The JSON is written atomically after every section (``"complete": false`` until the end), so a run cut short
still leaves a valid file with the sections done. Exit status: 0 when every section is ok, 1 otherwise, 2 for
bad arguments.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import importlib.util
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

from flashocc_ros.atomic import atomic_write_text

REPO = Path(__file__).resolve().parents[2]
GOLDEN_DIR = REPO / "test" / "data" / "golden"
ALL_VARIANTS = ("M0", "M1", "PT", "PF")
QUICK_VARIANTS = ("PT",)  # the tiny panoptic variant: every section has something to check
PROBE_REL_TOL = 1e-4  # x std of the golden probe logits
FP16_AGREEMENT_GOAL = 0.999
PANOPTIC_GOAL_MS = 1.0
SECTIONS = ("environment", "parity", "panoptic", "decode", "throughput", "host_overhead")
HOST_OVERHEAD_VARIANT = "M0"  # issue 17's anchor: FlashOcc M0, ~5 ms on a GPU with TensorRT fp16


def skipped(reason: str) -> dict:
    return {"skipped": reason}


def stats_ms(values) -> dict:
    a = np.asarray(values, dtype=np.float64)
    return {"median": float(np.median(a)), "p95": float(np.percentile(a, 95)), "n": int(a.size)}


def synthetic_jpegs(
    width: int = 1600, height: int = 900, seed: int = 0, quality: int = 90, subsampling: str = "4:2:0"
) -> list[bytes]:
    """Six textured camera-like JPEGs (smooth colour fields + noise; Pillow encoder, no simplejpeg needed), with
    ``subsampling`` "4:2:0" (cameras' usual chroma subsampling, ~415 KB each) or "4:4:4" (the images of
    benchmarks/bench_host.py, ~665 KB each)."""
    import io

    import cv2
    from PIL import Image

    out = []
    for i in range(6):
        rng = np.random.default_rng([seed, i])
        coarse = rng.uniform(0, 255, size=(height // 25 + 2, width // 25 + 2, 3)).astype(np.float32)
        img = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC) + rng.normal(0, 6, (height, width, 3))
        buf = io.BytesIO()
        pixels = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
        pixels.save(buf, format="JPEG", quality=quality, subsampling=subsampling)
        out.append(buf.getvalue())
    return out


class Check:
    """State shared by the sections: device, variants, cached pipelines and their fp32 outputs."""

    def __init__(self, device: str, variants, quick: bool, golden_dir: Path, cache_dir: str) -> None:
        import torch

        self.torch = torch
        self.device = device
        self.cuda = device.startswith("cuda")
        self.variants = [_variant(v) for v in variants]
        self.quick = quick
        self.golden_dir = golden_dir
        self.cache_dir = cache_dir
        self.repeats = 2 if quick else 25
        self._pipes: dict = {}
        self.fp32_outputs: dict[str, dict[str, np.ndarray]] = {}

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    def pipeline(self, variant, precision: str = "fp32", with_logits: bool = False):
        """A cached pipeline; ``with_logits`` copies the full logits to the host every frame (parity only)."""
        key = (variant.name, precision, with_logits)
        if key not in self._pipes:
            from flashocc_ros.config import load_config
            from flashocc_ros.inference.pipeline import OccupancyPipeline
            from flashocc_ros.network.geometry import reference_rig

            model = {
                "variant": variant.name,
                "backend": "pytorch",
                "device": self.device,
                "precision": precision,
                "engine_cache_dir": self.cache_dir,
            }
            cfg = load_config(overrides={"model": model})
            pipe = OccupancyPipeline(cfg, with_logits=with_logits, log=lambda s: None)
            pipe.set_calibration(reference_rig())
            self._pipes[key] = pipe
        return self._pipes[key]

    def close(self) -> None:
        for pipe in self._pipes.values():
            pipe.close()
        self._pipes.clear()


def _variant(name: str):
    from flashocc_ros.config import get_variant

    return get_variant(name)


# --------------------------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------------------------


def section_environment(chk: Check | None, device: str) -> dict:
    def version(module: str) -> str | None:
        try:
            mod = importlib.import_module(module)
        except Exception as exc:  # missing or broken (e.g. torchvision built for another torch)
            return None if isinstance(exc, ImportError) else f"broken: {type(exc).__name__}: {exc}"
        return str(getattr(mod, "__version__", "present"))

    import torch

    from flashocc_ros.backends.torch_runner import fp32_precision_settings
    from flashocc_ros.network.gpu_preprocess import torchvision_decoder
    from flashocc_ros.network.preprocess import simplejpeg_available

    tv_ok, tv_why = torchvision_decoder()
    env: dict = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "numpy": np.__version__,
        "torch": torch.__version__,
        "torch_cuda_build": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "cuda_available": torch.cuda.is_available(),
        "device": device,
        "packages": {
            m: version(m) for m in ("torchvision", "onnxruntime", "onnx", "cv2", "PIL", "simplejpeg", "tensorrt")
        },
        "ros": {"rclpy_installed": importlib.util.find_spec("rclpy") is not None, "needed": False},  # not imported
        "fast_jpeg_decoder": "simplejpeg" if simplejpeg_available() else "pillow-draft (simplejpeg missing)",
        "gpu_jpeg_decoder": "torchvision"
        if torchvision_decoder()[0]
        else f"pillow + upload ({torchvision_decoder()[1]})",
        "carried": [s for s in os.environ.get("FLASHOCC_CARRIED", "").split(":") if s],
        # PyTorch's process defaults (TF32 for cuDNN float32 convolutions); fp32 forwards switch TF32 off inside
        # (backends.torch_runner.ieee_fp32), so the parity section measures IEEE float32
        "fp32_precision_defaults": fp32_precision_settings(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "cpu_count": os.cpu_count(),
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env["gpu"] = {
            "name": props.name,
            "compute_capability": f"{props.major}.{props.minor}",
            "memory_gib": round(props.total_memory / 2**30, 1),
            "count": torch.cuda.device_count(),
        }
    else:
        env["gpu"] = skipped("no CUDA GPU visible to PyTorch")
    env["ok"] = bool(torch.cuda.is_available()) if device.startswith("cuda") else True
    if not env["ok"]:
        env["error"] = f"--device {device}: no CUDA GPU visible to PyTorch {torch.__version__}"
    return env


def section_parity(chk: Check) -> dict:
    from flashocc_ros.backends import CENTER_OUTPUTS, OCC_LABELS, OCC_LOGITS
    from flashocc_ros.metrics.parity import label_parity
    from flashocc_ros.network.weights import deterministic_images

    images = deterministic_images(0)[0]
    out: dict = {"precision": "fp32", "rule": "flashocc_ros.metrics.parity: labels differ only where the top-2 "
                 "margin (own logits) < 1e-3 + 2 x the probe tolerance and the official label is among the "
                 "near-best, at most occ_margin_lt_1e-3 of them; probe logits within 1e-4 x std",
                 "variants": {}}  # fmt: skip
    ok = True
    for v in chk.variants:
        golden_file = chk.golden_dir / f"{v.name}_seed0.npz"
        r: dict = {}
        out["variants"][v.short] = r
        if not golden_file.is_file():
            r.update(ok=False, error=f"golden reference {golden_file} not found")
            ok = False
            continue
        g = np.load(golden_file)
        t0 = time.perf_counter()
        pipe = chk.pipeline(v, "fp32", with_logits=True)
        r["build_s"] = round(time.perf_counter() - t0, 2)
        t0 = time.perf_counter()
        res = pipe.run(images)
        r["run_s"] = round(time.perf_counter() - t0, 2)
        outputs = pipe.runner.outputs
        chk.fp32_outputs[v.name] = {
            k: outputs[k].copy() for k in (OCC_LABELS, OCC_LOGITS, *CENTER_OUTPUTS) if k in outputs
        }
        logits = res.logits
        labels = res.semantic
        ix, iy, iz = g["probe_vox_xyz"].T
        probe_err = float(np.abs(logits[ix, iy, iz] - g["probe_logits"]).max())
        probe_tol = PROBE_REL_TOL * float(g["probe_logits"].std())
        lp = label_parity(labels, g["occ_label"], logits, int(g["occ_margin_lt_1e-3"]), probe_tol)
        r.update(
            labels_differing=lp.flips,
            labels_allowed=lp.allowed,
            differing_away_from_near_ties=lp.not_near_ties,
            differing_not_among_near_best=lp.not_near_best,
            label_agreement=float(1.0 - lp.differ.mean()),
            probe_logits_max_abs_err=probe_err,
            probe_logits_tolerance=probe_tol,
        )
        r["ok"] = bool(lp.ok and probe_err <= probe_tol)
        if chk.cuda:
            pipe16 = chk.pipeline(v, "fp16")
            res16 = pipe16.run(images)
            agree = float((res16.semantic == labels).mean())
            r["fp16"] = {"label_agreement_with_fp32": agree, "goal": FP16_AGREEMENT_GOAL, "ok": agree >= 0.999}
            r["ok"] = bool(r["ok"] and r["fp16"]["ok"])
        else:
            r["fp16"] = skipped("fp16 (autocast) needs CUDA")
        ok = ok and r["ok"]
    out["ok"] = bool(ok)
    return out


def _postprocess(heat, reg, height, semantic, mode: str, device, score_threshold: float):
    import torch

    from flashocc_ros.network.centers import decode_centers
    from flashocc_ros.network.panoptic import assign_instances

    def t(a):
        return torch.from_numpy(a).to(device)

    centers = decode_centers(t(heat), t(reg), t(height), score_threshold=score_threshold)
    pano = assign_instances(t(semantic), centers, mode=mode)
    return centers, pano


def section_panoptic(chk: Check) -> dict:
    from flashocc_ros.backends import CENTER_HEATMAP, CENTER_HEIGHT, CENTER_REG, OCC_LABELS

    out: dict = {"variants": {}, "goal_ms_tiny_gpu": PANOPTIC_GOAL_MS}
    panoptic = [v for v in chk.variants if v.panoptic]
    if not panoptic:
        out.update(ok=True, note="no panoptic variant selected (--variants): nothing to check")
        return out
    ok = True
    for v in panoptic:
        if v.name not in chk.fp32_outputs:  # parity did not run it (e.g. missing golden file)
            from flashocc_ros.network.weights import deterministic_images

            chk.pipeline(v, "fp32", with_logits=True).run(deterministic_images(0)[0])
            outputs = chk.pipeline(v, "fp32", with_logits=True).runner.outputs
            chk.fp32_outputs[v.name] = {k: a.copy() for k, a in outputs.items()}
        o = chk.fp32_outputs[v.name]
        semantic = o[OCC_LABELS][0].astype(np.uint8)
        cfg = chk.pipeline(v, "fp32", with_logits=True).cfg.model
        args = (o[CENTER_HEATMAP], o[CENTER_REG], o[CENTER_HEIGHT], semantic)
        r: dict = {}
        out["variants"][v.short] = r
        for mode in ("official", "corrected"):
            m: dict = {}
            r[mode] = m
            c_cpu, p_cpu = _postprocess(*args, mode, "cpu", cfg.score_threshold)
            m["centers"] = len(c_cpu)
            m["instances"] = len(p_cpu.instances)
            on_cpu = functools.partial(_postprocess, *args, mode, "cpu", cfg.score_threshold)
            on_dev = functools.partial(_postprocess, *args, mode, chk.device, cfg.score_threshold)
            m["cpu_ms"] = stats_ms(_timed(on_cpu, chk, 3))
            if not chk.cuda:
                m["gpu"] = skipped("--device cpu")
                m["ok"] = True
                continue
            c_gpu, p_gpu = _postprocess(*args, mode, chk.device, cfg.score_threshold)
            same_centers = (
                len(c_gpu) == len(c_cpu)
                and np.array_equal(c_gpu.label.cpu().numpy(), c_cpu.label.numpy())
                and np.allclose(c_gpu.xyz.cpu().numpy(), c_cpu.xyz.numpy(), atol=1e-5, rtol=0)
                and np.allclose(c_gpu.score.cpu().numpy(), c_cpu.score.numpy(), atol=1e-6, rtol=0)
            )
            pano_gpu, pano_cpu = p_gpu.panoptic.cpu().numpy(), p_cpu.panoptic.numpy()
            m["gpu"] = {
                "same_centers": bool(same_centers),
                "centers_max_abs_xyz_diff": float(np.abs(c_gpu.xyz.cpu().numpy() - c_cpu.xyz.numpy()).max())
                if len(c_gpu) == len(c_cpu) and len(c_cpu)
                else None,
                "same_partition": bool(np.array_equal(pano_gpu, pano_cpu)),
                "voxels_differing": int((pano_gpu != pano_cpu).sum()),
                "ms": stats_ms(_timed(on_dev, chk, chk.repeats)),
            }
            m["ok"] = bool(same_centers and m["gpu"]["same_partition"])
            if v.short == "PT":
                m["gpu"]["meets_goal"] = m["gpu"]["ms"]["median"] < PANOPTIC_GOAL_MS
            ok = ok and m["ok"]
    out["ok"] = bool(ok)
    return out


def _timed(fn, chk: Check, repeats: int) -> list[float]:
    fn()  # warm-up
    chk.sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        chk.sync()
        times.append((time.perf_counter() - t0) * 1e3)
    return times


def section_decode(chk: Check) -> dict:
    import torch

    from flashocc_ros.network.gpu_preprocess import deviation_stats, jpegs_into
    from flashocc_ros.network.preprocess import BatchPreprocessor, preprocess_jpeg_exact

    jpegs = synthetic_jpegs()
    exact = np.stack([preprocess_jpeg_exact(j) for j in jpegs])
    out: dict = {"images": "six synthetic 1600x900 JPEGs (quality 90)", "reference": "exact CPU path (Pillow)"}
    host = np.empty_like(exact)
    with BatchPreprocessor(2) as batch:
        out["cpu_fast_path"] = {
            "deviation": deviation_stats((batch.jpegs_into(jpegs, host), host)[1], exact),
            "ms": stats_ms(_timed(lambda: batch.jpegs_into(jpegs, host), chk, max(chk.repeats // 5, 2))),
        }
    # the GPU path's code on CPU tensors (always): its resampling vs the exact path with the same decoder family
    cpu_t = torch.empty(exact.shape, dtype=torch.float32)
    info = jpegs_into(jpegs, cpu_t)
    out["torch_path_on_cpu"] = {"decoder": info["decoder"], "deviation": deviation_stats(cpu_t.numpy(), exact)}
    ok = out["torch_path_on_cpu"]["deviation"]["max_levels"] <= 2.0 + 1e-3 if info["decoder"] == "pillow" else True
    if chk.cuda:
        dev_t = torch.empty(exact.shape, dtype=torch.float32, device=chk.device)
        info = jpegs_into(jpegs, dev_t)
        dev = deviation_stats(dev_t.cpu().numpy(), exact)
        times = [jpegs_into(jpegs, dev_t) for _ in range(chk.repeats)]
        fast = out["cpu_fast_path"]["deviation"]
        out["gpu"] = {
            "decoder": info["decoder"],
            "deviation": dev,
            "decode_ms": stats_ms([t["decode"] for t in times]),
            "preprocess_ms": stats_ms([t["preprocess"] for t in times]),
            "total_ms": stats_ms([t["decode"] + t["preprocess"] for t in times]),
            "criterion": "mean and p99 deviation no worse than the CPU fast path's (+0.5 level)",
        }
        gpu_ok = dev["mean_levels"] <= fast["mean_levels"] + 0.5 and dev["p99_levels"] <= fast["p99_levels"] + 0.5
        out["gpu"]["ok"] = bool(gpu_ok)
        ok = ok and gpu_ok
    else:
        out["gpu"] = skipped("--device cpu")
    out["ok"] = bool(ok)
    return out


def section_throughput(chk: Check) -> dict:
    jpegs = synthetic_jpegs()
    variants = chk.variants if chk.quick else [v for v in chk.variants if v.short in ("M0", "PT")] or chk.variants
    precisions = ("fp32", "fp16") if chk.cuda else ("fp32",)
    out: dict = {"input": "six 1600x900 JPEGs, reference rig (static)", "variants": {}}
    for v in variants:
        r: dict = {}
        out["variants"][v.short] = r
        for precision in precisions:
            pipe = chk.pipeline(v, precision)
            pipe.run_jpeg(jpegs)  # warm-up (cudnn autotune, allocator)
            totals, stages = [], {k: [] for k in ("decode", "preprocess", "inference", "postprocess")}
            for _ in range(chk.repeats):
                t0 = time.perf_counter()
                res = pipe.run_jpeg(jpegs)
                _ = res.semantic.sum()  # the outputs are on the host
                totals.append((time.perf_counter() - t0) * 1e3)
                for k in stages:
                    stages[k].append(res.timings_ms.get(k, 0.0))
            network = []
            for _ in range(max(1, chk.repeats // 2) if chk.quick else chk.repeats):
                pipe.runner.infer()
                network.append(pipe.runner.last_infer_ms)
            r[precision] = {
                "end_to_end_ms": stats_ms(totals),
                "frames_per_s": 1e3 / float(np.median(totals)),
                "stages_median_ms": {k: float(np.median(a)) for k, a in stages.items()},
                "network_alone_ms": stats_ms(network),
                "jpeg_path": pipe.last_jpeg_path,
                "logits_copied_to_host": pipe.runner.with_logits,
            }
        if not chk.cuda:
            r["fp16"] = skipped("fp16 (autocast) needs CUDA")
    out["note"] = "as the node runs it: labels (and centre maps) copied to the host, no logits"
    out["ok"] = True
    return out


def _bench_host():
    """benchmarks/bench_host.py of this checkout as a module (None when the checkout has no benchmarks/)."""
    path = REPO / "benchmarks" / "bench_host.py"
    if not path.is_file():
        return None
    spec = importlib.util.spec_from_file_location("flashocc_bench_host", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def section_host_overhead(chk: Check) -> dict:
    bench = _bench_host()
    if bench is None:
        return {"ok": True, **skipped(f"{REPO / 'benchmarks' / 'bench_host.py'} not found")}
    jpegs = synthetic_jpegs(subsampling="4:4:4")
    frames = 5 if chk.quick else 40
    out: dict = {
        "input": "six 1600x900 4:4:4 JPEGs (~665 KB), ego 15 m/s (indices recomputed every frame), no-op network",
        "variant": HOST_OVERHEAD_VARIANT,
    }
    paths = [("gpu_path", chk.device, bench.GOAL_GPU_MS)] if chk.cuda else []
    paths.append(("cpu_only", "cpu", bench.GOAL_CPU_MS))
    for name, device, goal in paths:
        # the pooling tables per calibration, as the ONNX Runtime (CPU) and TensorRT (GPU) runners build them
        report = bench.run(_variant(HOST_OVERHEAD_VARIANT).name, frames, 3, 15.0, device, 2, True, jpegs, prep="tables")
        out[name] = {
            "stages_ms": {k: report[k] for k in bench.STAGES},
            "goal_ms": goal,
            "goal_met": report["total"]["median"] <= goal,
            "messages_built": report["details"]["messages_built"],
            "jpeg_path": report["details"]["jpeg_path"],
            "frames": frames,
            "runner_prep": report["details"]["runner_prep"],
            "pool_index_computations": report["details"]["pool_index_computations"],  # warm-up included
        }
    if not chk.cuda:
        out["gpu_path"] = skipped("--device cpu")
    out["ok"] = True
    return out


# --------------------------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------------------------


def _write_json(path: Path, data: dict) -> None:
    """Atomic write (temp file in the same directory + rename): never a half-written report."""
    atomic_write_text(path, json.dumps(data, indent=2, default=str) + "\n")


def run_check(device: str, out_dir: Path, quick: bool = False, variants=None, golden_dir: Path = GOLDEN_DIR,
              log=print) -> dict:  # fmt: skip
    """Run every section, writing ``out_dir/gpu_check.json`` after each; returns the report."""
    variants = list(variants or (QUICK_VARIANTS if quick else ALL_VARIANTS))
    path = out_dir / "gpu_check.json"
    t_start = time.perf_counter()
    report: dict = {
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "device": device,
        "quick": quick,
        "variants": variants,
        "complete": False,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "section_seconds": {},
    }
    report["environment"] = section_environment(None, device)
    _write_json(path, report)
    with tempfile.TemporaryDirectory(prefix="flashocc-gpu-check-") as cache_dir:
        chk = Check(device, variants, quick, golden_dir, cache_dir) if report["environment"]["ok"] else None
        try:
            for name, fn in (
                ("parity", section_parity),
                ("panoptic", section_panoptic),
                ("decode", section_decode),
                ("throughput", section_throughput),
                ("host_overhead", section_host_overhead),
            ):
                t0 = time.perf_counter()
                if chk is None:
                    report[name] = {"ok": False, "error": report["environment"]["error"]}
                else:
                    log(f"gpu_check: {name} ...")
                    try:
                        report[name] = fn(chk)
                    except Exception as exc:  # one failing check must not hide the others
                        report[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}",
                                        "traceback": traceback.format_exc(limit=8)}  # fmt: skip
                report["section_seconds"][name] = round(time.perf_counter() - t0, 1)
                log(f"gpu_check: {name}: {'ok' if report[name]['ok'] else 'FAILED'} "
                    f"({report['section_seconds'][name]} s)")  # fmt: skip
                _write_json(path, report)
        finally:
            if chk is not None:
                chk.close()
    report["total_seconds"] = round(time.perf_counter() - t_start, 1)
    report["ok"] = all(bool(report[s]["ok"]) for s in SECTIONS)
    report["complete"] = True
    _write_json(path, report)
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="gpu_check", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--device", default="", help="cuda[:N] or cpu (default: cuda when PyTorch sees a GPU, else cpu)")
    ap.add_argument("--out", default="gpu_check_out", help="directory for gpu_check.json")
    ap.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK_VARIANTS)}, 2 repeats per timing")
    ap.add_argument("--variants", nargs="+", default=None, help=f"subset of {' '.join(ALL_VARIANTS)}")
    ap.add_argument("--golden-dir", default=str(GOLDEN_DIR), help="where <variant>_seed0.npz live")
    args = ap.parse_args(argv)
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if not (device == "cpu" or device.startswith("cuda")):
        ap.error(f"--device: expected cuda[:N] or cpu, got {device!r}")
    try:
        variants = [_variant(v).short for v in args.variants] if args.variants else None
    except ValueError as exc:
        ap.error(f"--variants: {exc}")
    report = run_check(device, Path(args.out), args.quick, variants, Path(args.golden_dir))
    path = Path(args.out) / "gpu_check.json"
    summary = ", ".join(f"{s} {'ok' if report[s]['ok'] else 'FAILED'}" for s in SECTIONS)
    print(f"gpu_check ({device}, {report['total_seconds']} s): {summary} -> {path}")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
