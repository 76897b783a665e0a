"""Benchmark: panoptic assignment (flashocc_ros.network.panoptic) against a per-class loop transcription of Algorithm 1.

Both run in the same process on the same inputs:
  * "PT seed 0": the semantic grid and the 363 decoded centres of the Panoptic-FlashOcc tiny golden reference
    (untrained deterministic weights: noisy labels, ~180k thing voxels, 198 centres of one class);
  * "street": a synthetic street scene with ~50 objects (boxes of thing voxels around their centres).
The baseline loops over classes: voxels of the class x centres of the class, full distance matrix, argmin (the
straightforward transcription of the paper's Algorithm 1; the official python branch has the same structure).
Each case prints the median of --repeats runs per implementation, the ratio, and whether the outputs agree, plus
the "floor": the full-grid work alone (validate, find the thing voxels, allocate the output; `full_grid_floor`),
so loop / floor is the best ratio any implementation built on these torch primitives could reach on that case.

    .venv/bin/python benchmarks/bench_panoptic.py [--repeats 7] [--threads 2] [--device cpu|cuda] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from flashocc_ros.config import HEAD_TO_OCC, OCC_GRID
from flashocc_ros.network.panoptic import OFFICIAL_HEAD_TO_OCC, OFFICIAL_OCC_TO_HEAD, assign_instances

REPO = Path(__file__).resolve().parents[1]
PT_GOLDEN = REPO / "test" / "data" / "golden" / "panoptic-flashocc-r50-depth-tiny-pano_seed0.npz"


# ---------------------------------------------------------------------------------------------------------------
# Baseline: per-class loop (Algorithm 1), one variant per mode
# ---------------------------------------------------------------------------------------------------------------


def loop_official(sem: torch.Tensor, xyz: torch.Tensor, score: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """Official semantics: centres truncated to voxel indices, hard-coded class tables, ids 18 + argsort."""
    lower = torch.tensor(OCC_GRID.lower, dtype=torch.float32)
    size = torch.full((3,), OCC_GRID.voxel_size, dtype=torch.float32)
    center_vox = ((xyz - lower) / size).int()
    ids = torch.sort(label.int()).indices + 18
    out = sem.clone()
    for occ in sorted({OFFICIAL_HEAD_TO_OCC[int(c)] for c in torch.unique(label)}):
        mask = sem == occ
        out[mask] = 0
        head = OFFICIAL_OCC_TO_HEAD[occ]
        if head < 0:
            continue
        cls_centers = torch.nonzero(label == head).flatten()
        vox = torch.nonzero(mask)
        dist = ((vox[:, None, :] - center_vox[cls_centers][None]) ** 2).sum(-1)
        out[vox[:, 0], vox[:, 1], vox[:, 2]] = ids[cls_centers[dist.argmin(1)]].int()
    return out


def loop_corrected(sem: torch.Tensor, xyz: torch.Tensor, score: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """Corrected semantics: same-name class pairing, metres, ids 18.. in score order."""
    order = torch.sort(score, descending=True, stable=True).indices
    xyz, label = xyz[order], label[order]
    ids = 18 + torch.arange(len(label))
    lower = torch.tensor(OCC_GRID.lower, dtype=torch.float32)
    out = sem.clone()
    for head, occ in enumerate(HEAD_TO_OCC):
        cls_centers = torch.nonzero(label == head).flatten()
        if len(cls_centers) == 0:
            continue
        vox = torch.nonzero(sem == occ)
        if len(vox) == 0:
            continue
        pos = lower + OCC_GRID.voxel_size * (vox.float() + 0.5)
        dist = ((pos[:, None, :] - xyz[cls_centers][None]) ** 2).sum(-1)
        out[vox[:, 0], vox[:, 1], vox[:, 2]] = ids[cls_centers[dist.argmin(1)]].int()
    return out


# ---------------------------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------------------------


def pt_golden_case():
    with np.load(PT_GOLDEN) as d:
        return d["occ_label"], d["centers_xyz"], d["centers_score"], d["centers_label"].astype(np.int64)


def street_case(num_objects: int = 50, seed: int = 0):
    """Road + sidewalks + buildings and `num_objects` box-shaped things with their (slightly noisy) centres."""
    rng = np.random.default_rng(seed)
    sem = np.full(OCC_GRID.shape, 17, np.uint8)
    sem[:, :, 0] = 11  # driveable surface
    sem[:, :60, 0] = 13
    sem[:, 140:, 0] = 13  # sidewalks
    sem[:, :20, 1:12] = 15
    sem[:, 180:, 1:12] = 15  # buildings
    # (head class, size in voxels x, y, z)
    kinds = [(0, (11, 5, 4)), (1, (18, 6, 7)), (3, (28, 7, 8)), (8, (2, 2, 4)), (9, (1, 1, 2)), (5, (4, 1, 3)),
             (6, (5, 2, 4)), (7, (5, 2, 4)), (4, (25, 6, 8)), (2, (15, 7, 8))]  # fmt: skip
    weights = np.array([0.45, 0.08, 0.03, 0.15, 0.08, 0.08, 0.04, 0.04, 0.02, 0.03])
    xyz, label = [], []
    for _ in range(num_objects):
        head, (sx, sy, sz) = kinds[rng.choice(len(kinds), p=weights)]
        x0 = int(rng.integers(0, 200 - sx))
        y0 = int(rng.integers(20, 180 - sy))
        sem[x0 : x0 + sx, y0 : y0 + sy, 1 : 1 + sz] = HEAD_TO_OCC[head]
        center = np.array(OCC_GRID.voxel_center(x0 + sx / 2 - 0.5, y0 + sy / 2 - 0.5, 1 + sz / 2 - 0.5))
        xyz.append(center + rng.normal(0, 0.3, 3))
        label.append(head)
    score = np.sort(rng.uniform(0.31, 0.95, num_objects))[::-1].copy()
    return sem, np.asarray(xyz, np.float32), score.astype(np.float32), np.asarray(label, np.int64)


def full_grid_floor(sem: torch.Tensor) -> torch.Tensor:
    """The full-grid work any implementation with this API does, with the primitives ours uses: validate the
    labels (aminmax), mark the voxels with labels <= 10 (uint8 add + shift), scan them as 8-voxel words (nonzero)
    and allocate the int32 output (clone). No centre is looked at. loop / floor bounds the achievable ratio."""
    flat = sem.reshape(-1)
    lo, hi = torch.aminmax(flat)
    if int(lo) < 0 or int(hi) > 17:
        raise ValueError("labels out of range")
    low = torch.add(flat.to(torch.uint8), 245).bitwise_right_shift_(7)
    torch.nonzero(low.view(torch.int64))
    return flat.clone()


# ---------------------------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------------------------


def median_seconds(fn, repeats: int, sync=None) -> float:
    fn()  # warm-up
    if sync:
        sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        if sync:
            sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def run_case(name, case, repeats: int, device: str) -> list[dict]:
    sem_np, xyz, score, label = case
    sem_cpu = torch.from_numpy(sem_np.astype(np.int32))
    centers = (torch.from_numpy(xyz), torch.from_numpy(score), torch.from_numpy(label))
    sem_dev = sem_cpu.to(device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else None
    floor_s = median_seconds(lambda: full_grid_floor(sem_dev), max(repeats, 51), sync)  # cheap: more runs
    rows = []
    for mode, loop in (("official", loop_official), ("corrected", loop_corrected)):
        ref = loop(sem_cpu, *centers)
        ours = assign_instances(sem_dev, centers, mode).panoptic.cpu()
        loop_s = median_seconds(lambda loop=loop: loop(sem_cpu, *centers), repeats)
        ours_s = median_seconds(lambda mode=mode: assign_instances(sem_dev, centers, mode), repeats, sync)
        dense_s = median_seconds(
            lambda mode=mode: assign_instances(sem_dev, centers, mode, strategy="dense"), repeats, sync
        )
        row = {
            "case": name,
            "mode": mode,
            "device": device,
            "num_centers": int(len(label)),
            "thing_voxels_claimed": int((ours >= 18).sum()),
            "loop_median_ms": loop_s * 1e3,
            "ours_median_ms": ours_s * 1e3,
            "ours_dense_median_ms": dense_s * 1e3,
            "speedup_vs_loop": loop_s / ours_s,
            "full_grid_floor_ms": floor_s * 1e3,
            "ceiling_ratio_vs_loop": loop_s / floor_s,
            "voxels_differing_from_loop": int((ours != ref).sum()),
        }
        rows.append(row)
        print(
            f"{name:10s} {mode:9s} K={row['num_centers']:3d} voxels={row['thing_voxels_claimed']:6d}  "
            f"loop {row['loop_median_ms']:8.1f} ms   ours({device}) {row['ours_median_ms']:7.2f} ms   "
            f"ours-dense {row['ours_dense_median_ms']:7.2f} ms   ratio {row['speedup_vs_loop']:6.1f}x   "
            f"floor {row['full_grid_floor_ms']:5.2f} ms (ceiling {row['ceiling_ratio_vs_loop']:5.1f}x)   "
            f"differing voxels {row['voxels_differing_from_loop']}"
        )
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=7, help="timed runs per implementation (median; >= 5)")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--device", default="cpu", help="device for our implementation (the loop always runs on CPU)")
    ap.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = ap.parse_args(argv)
    if args.repeats < 5:
        ap.error("--repeats must be >= 5")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        ap.error(f"--device {args.device}: CUDA is not available")
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} CPU thread(s), median of {args.repeats} runs")
    rows = run_case("PT seed 0", pt_golden_case(), args.repeats, args.device)
    rows += run_case("street", street_case(), args.repeats, args.device)
    if args.json:
        tmp = args.json.with_suffix(args.json.suffix + ".tmp")
        tmp.write_text(json.dumps(rows, indent=1))
        tmp.replace(args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
