"""RayIoU speed: per-sample time on this machine and the projected full Occ3D-nuScenes val time (6,019 samples).

Scenes are procedural Occ3D-like grids (ground everywhere, buildings / vegetation at the sides, parked cars,
poles), prediction = ground truth with cars shifted and some noise, 8 lidar origins spread along the road like a
real scene. Measured in the same run:

* ``fast``     : what flashocc-eval runs (lock-step numpy traversal of GT + prediction, RayIoU counts);
* ``baseline`` : a direct vectorised port of the reference kernel's loop (per-grid, coordinate bookkeeping), the
                 same exact results;
* ``jobs``     : end-to-end throughput of ``evaluation.evaluate`` with N worker processes on .npz files
                 (loading, mIoU + RayIoU), projected to 6,019 samples.

  .venv/bin/python benchmarks/bench_rayiou.py [--samples 8] [--jobs 2] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from flashocc_ros.config import FREE_INDEX, OCC_GRID
from flashocc_ros.metrics import evaluation as ev
from flashocc_ros.metrics import ray

FULL_VAL_SAMPLES = 6019


def occ3d_like_scene(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    gt = np.full(OCC_GRID.shape, FREE_INDEX, np.uint8)
    gt[:, :, 0:2] = 11  # driveable surface
    gt[:, :70, 0:2] = 13  # sidewalk
    gt[:, 130:, 0:2] = 14  # terrain
    gt[:, :40, 0 : rng.integers(8, 14)] = 15  # buildings
    gt[:, 165:, 0 : rng.integers(6, 12)] = 16  # vegetation
    for _ in range(rng.integers(15, 30)):  # parked cars / trucks
        x, y = rng.integers(5, 185), rng.choice([rng.integers(72, 80), rng.integers(120, 128)])
        gt[x : x + rng.integers(9, 20), y : y + 5, 2 : rng.integers(5, 9)] = rng.choice([4, 10, 3])
    for _ in range(20):  # poles, cones, pedestrians
        x, y = rng.integers(0, 198, 2)
        gt[x : x + 1, y : y + 1, 2 : rng.integers(3, 14)] = rng.choice([0, 8, 7])
    pred = gt.copy()
    cars = np.isin(gt, (3, 4, 10))
    pred[cars] = FREE_INDEX
    pred[np.roll(cars, rng.integers(-2, 3), axis=0)] = 4
    noise = rng.random(OCC_GRID.shape) < 0.01
    pred[noise] = rng.integers(0, 18, noise.sum())
    origins = np.stack([np.linspace(-18, 18, 8) + rng.normal(0, 1), rng.normal(0, 0.3, 8), np.full(8, 1.84)], 1)
    return pred, gt, origins


def time_it(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of one call."""
    w, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w, time.process_time() - c


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--samples", type=int, default=8, help="scenes per measurement (default 8)")
    p.add_argument("--jobs", type=int, default=2, help="worker processes for the end-to-end run (default 2)")
    p.add_argument("--device", default="cpu", help="ray casting device for the per-sample timing (cpu / cuda)")
    args = p.parse_args(argv)

    scenes = [occ3d_like_scene(s) for s in range(args.samples)]
    dirs = ray.generate_lidar_rays()

    def fast(scene):
        pred, gt, origins = scene
        ray.rayiou_counts(ray.sample_rays(pred, gt, origins, directions=dirs, device=args.device))

    def baseline(scene):
        pred, gt, origins = scene
        geometry = ray.ray_geometry(origins, dirs)
        for grid in (gt, pred):
            ray.cast_rays([grid != FREE_INDEX], geometry, "cpu", force_general=True)

    fast(scenes[0])  # warm-up (CUDA context, caches)
    print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores (other processes slow walls)")
    fast_times = [time_it(lambda s=s: fast(s)) for s in scenes]
    base_times = [time_it(lambda s=s: baseline(s)) for s in scenes[: max(2, args.samples // 4)]]
    rays = ray.sample_rays(*scenes[0], directions=dirs, device=args.device).gt_label.size
    f_wall, f_cpu = (statistics.median(t[k] for t in fast_times) for k in (0, 1))
    b_wall, b_cpu = (statistics.median(t[k] for t in base_times) for k in (0, 1))
    print(f"rays per sample: {8 * len(dirs)} cast into GT and prediction, {rays} non-free GT rays (scene 0)")
    n_fast = len(fast_times)
    print(f"per-sample RayIoU ({args.device}): median {f_wall:.3f} s wall, {f_cpu:.3f} s CPU ({n_fast} scenes)")
    print(f"baseline (reference-loop port, cpu): median {b_wall:.3f} s wall, {b_cpu:.3f} s CPU ({len(base_times)})")
    print(f"speed-up vs baseline: {b_cpu / f_cpu:.1f}x (CPU time), {b_wall / f_wall:.1f}x (wall)")
    cpu_projection = f_cpu * FULL_VAL_SAMPLES / args.jobs / 60
    print(f"projected full val from CPU time, {args.jobs} cores busy: {cpu_projection:.1f} min (ray casting only)")

    with tempfile.TemporaryDirectory() as tmp:
        gt_dir, pred_dir = Path(tmp) / "gts" / "scene-bench", Path(tmp) / "preds"
        jobs = []
        for i, (pred, gt, origins) in enumerate(scenes):
            token = f"bench{i:04d}"
            (gt_dir / token).mkdir(parents=True)
            ones = np.ones(OCC_GRID.shape, np.uint8)
            np.savez_compressed(gt_dir / token / "labels.npz", semantics=gt, mask_camera=ones, mask_lidar=ones)
            ev.write_prediction(pred_dir / f"{token}.npz", pred)
            jobs.append(ev.SampleJob(token, gt_dir / token / "labels.npz", pred_dir / f"{token}.npz", origins))
        options = ev.ScoringOptions(metrics=("miou", "rayiou"), device="cpu")
        ev.evaluate(jobs[:1], options, progress=False)  # warm-up
        t = time.perf_counter()
        ev.evaluate(jobs, options, num_workers=args.jobs, progress=False)
        wall = time.perf_counter() - t
    per_sample = wall / len(jobs)
    print(
        f"end to end (load + mIoU + RayIoU), --jobs {args.jobs}: {per_sample:.3f} s/sample wall "
        f"-> projected full val ({FULL_VAL_SAMPLES} samples): {per_sample * FULL_VAL_SAMPLES / 60:.1f} min"
    )
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
