#!/usr/bin/env python3
"""Per-frame calibration cost: voxel-pooling indices of a moving rig, official-order reference vs. fast path.

    python benchmarks/bench_geometry.py [--repeats 7] [--variants M0 M1 PT] [--threads 2]

With ego-motion compensation every frame brings new key-ego poses, so ``OccupancyPipeline.set_calibration``
recomputes the pooling indices every frame. For each variant this times, interleaved in one run (median of
--repeats, each call with a new pose so no per-calibration cache helps):
  reference   geometry.compute_pool_indices_reference (the official operation order: broadcast batched torch
              matmuls, batched torch.inverse, stable torch argsort)
  fast        geometry.compute_pool_indices (same float32 arithmetic as columns, cached rays, radix sort)
  prepare     geometry.prepare_geometry (fast indices + key-ego poses + mlp_input): what set_calibration computes
  tables      backends.pooling.pool_tables_from_indices (the ONNX/TensorRT runners' per-rig tables: every frame
              with those backends on a moving vehicle)
  tables-ref  test/reference/pool_tables.slot_matrix_tables (the earlier slot-matrix construction, the baseline)
and checks that reference and fast indices, and both tables, are identical on every call. Prints the load average
with the numbers (the machine is shared). --busy N starts N CPU-spinning helper processes for the measurement, to
see the cost on a loaded machine (as inside the node, where the network's threads and other processes compete for
the cores).
--pipeline: also time ``OccupancyPipeline.set_calibration`` (ONNX Runtime, M0) right after a network run, as the
node does every frame, alternating the reference and the fast index computation (needs the cached ONNX export).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flashocc_ros.config import get_variant  # noqa: E402
from flashocc_ros.network.geometry import (  # noqa: E402
    RigCalibration,
    compute_pool_indices,
    prepare_geometry,
    reference_rig,
)
from flashocc_ros.network.preprocess import augmentation_for  # noqa: E402
from test.reference.official_geometry import compute_pool_indices_reference  # noqa: E402
from test.reference.pool_tables import slot_matrix_tables  # noqa: E402


def moving_rig(k: int) -> RigCalibration:
    """The nuScenes rig with per-camera ego poses of a vehicle at 15 m/s (cameras 0-40 ms apart), frame k."""
    rig = reference_rig()
    e2g = rig.ego2global.copy()
    for c, offset_s in enumerate((0.03, 0.0, 0.01, 0.04, 0.025, 0.015)):
        t = 0.1 * k + offset_s
        yaw = 0.3 + 0.05 * t
        e2g[c, :3, :3] = [[np.cos(yaw), -np.sin(yaw), 0], [np.sin(yaw), np.cos(yaw), 0], [0, 0, 1]]
        e2g[c, :3, 3] = [600.0 + 15.0 * t, 1600.0, 0.0]
    return RigCalibration(rig.intrinsics, rig.sensor2ego, e2g, rig.image_hw)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--variants", nargs="+", default=["M0", "M1", "PT"])
    ap.add_argument("--threads", type=int, default=2, help="torch threads (the reference uses parallel kernels)")
    ap.add_argument("--busy", type=int, default=0, help="CPU-spinning helper processes during the measurement")
    ap.add_argument("--pipeline", action="store_true", help="also time set_calibration after network runs")
    args = ap.parse_args(argv)
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.busy)]
    try:
        return measure(args)
    finally:
        for proc in spinners:
            proc.kill()
            proc.wait()


def measure(args) -> int:
    torch.set_num_threads(args.threads)
    from flashocc_ros.backends.pooling import pool_tables_from_indices

    aug = augmentation_for((900, 1600))
    post_rot = np.broadcast_to(aug.post_rot, (6, 3, 3))
    post_tran = np.broadcast_to(aug.post_tran, (6, 3))
    load_before = os.getloadavg()
    print(f"load average before: {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}")
    print(
        f"{'variant':46s} {'reference':>10s} {'fast':>8s} {'speed-up':>8s} {'prepare':>8s} {'tables':>8s} "
        f"{'tables-ref':>10s} {'speed-up':>8s}  (ms)"
    )
    for name in args.variants:
        variant = get_variant(name)
        times: dict[str, list[float]] = {"reference": [], "fast": [], "prepare": [], "tables": [], "tables_ref": []}
        for k in range(args.repeats + 1):  # call 0 is the warm-up (fills the ray cache, like the node's 1st frame)
            rig = moving_rig(k)
            s2ke = rig.sensor2keyego()
            t0 = time.perf_counter()
            old = compute_pool_indices_reference(variant, s2ke, rig.intrinsics, post_rot, post_tran)
            t1 = time.perf_counter()
            new = compute_pool_indices(variant, s2ke, rig.intrinsics, post_rot, post_tran)
            t2 = time.perf_counter()
            geo = prepare_geometry(variant, rig)
            t3 = time.perf_counter()
            tables = pool_tables_from_indices(geo.pool, variant.depth_bins)
            t4 = time.perf_counter()
            tables_ref = slot_matrix_tables(geo.pool, variant.depth_bins)
            t5 = time.perf_counter()
            if not all(torch.equal(a, b) for a, b in zip(old.as_tuple(), new.as_tuple())):
                raise SystemExit(f"{variant.name}: fast indices differ from the reference at frame {k}")
            pairs = zip(tables.as_inputs().values(), tables_ref.as_inputs().values())
            if not all(np.array_equal(a, b) for a, b in pairs):
                raise SystemExit(f"{variant.name}: pooling tables differ from the slot-matrix reference at frame {k}")
            if k:
                for key, dt in zip(times, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)):
                    times[key].append(dt * 1e3)
        med = {key: statistics.median(v) for key, v in times.items()}
        print(
            f"{variant.name:46s} {med['reference']:10.1f} {med['fast']:8.1f} "
            f"{med['reference'] / med['fast']:7.1f}x {med['prepare']:8.1f} {med['tables']:8.1f} "
            f"{med['tables_ref']:10.1f} {med['tables_ref'] / med['tables']:7.1f}x"
            f"   ({new.num_points} points, identical indices and tables)"
        )
    if args.pipeline:
        measure_pipeline(args.repeats)
    load_after = os.getloadavg()
    print(
        f"median of {args.repeats} (new pose each call), torch threads {args.threads}; load average after: "
        f"{load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}"
    )
    return 0


def measure_pipeline(repeats: int) -> None:
    """set_calibration (indices + runner tables) right after a network run, reference vs fast, interleaved."""
    from flashocc_ros.config import load_config
    from flashocc_ros.inference.pipeline import OccupancyPipeline
    from flashocc_ros.network import geometry
    from flashocc_ros.network.weights import deterministic_images

    cfg = load_config(overrides={"model": {"variant": "flashocc-r50-M0", "backend": "onnxruntime"}})
    images = deterministic_images(0)[0]
    implementations = {"reference": geometry.compute_pool_indices_reference, "fast": geometry.compute_pool_indices}
    times: dict[str, list[float]] = {name: [] for name in implementations}
    net: list[float] = []
    try:
        with OccupancyPipeline(cfg, log=lambda s: None) as pipe:
            pipe.set_calibration(moving_rig(0))
            for k in range(1, 2 * repeats + 1):
                name = "reference" if k % 2 else "fast"
                geometry.compute_pool_indices = implementations[name]  # what prepare_geometry calls
                net.append(pipe.run(images).timings_ms["inference"])
                t0 = time.perf_counter()
                pipe.set_calibration(moving_rig(k))
                times[name].append((time.perf_counter() - t0) * 1e3)
    finally:
        geometry.compute_pool_indices = implementations["fast"]
    ref, fast = (statistics.median(times[n]) for n in ("reference", "fast"))
    print(
        f"OccupancyPipeline.set_calibration after a network run (onnxruntime, M0, network {statistics.median(net):.0f}"
        f" ms): reference {ref:.1f} ms, fast {fast:.1f} ms ({ref / fast:.1f}x; both include the runner tables)"
    )


if __name__ == "__main__":
    sys.exit(main())
