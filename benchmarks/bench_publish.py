"""Benchmark: building the node's output messages (the "publish" stage of /occupancy/timing), per frame.

Times, in one process on the same grids, what `flashocc_node._publish` builds for a frame: SemanticOccupancy,
PanopticOccupancy (panoptic variants), the PointCloud2 of the occupied voxels and, when enabled, the MarkerArray.
The point records (`occupied_points`) are also timed against the plain field-by-field construction they replaced
(`plain_occupied_points` below, the baseline; outputs compared byte for byte), so the ratio is measured, not
remembered. DDS transport is not included (it depends on the subscribers; see bench_node.py for the whole node).

Grids: "street" = the synthetic street scene of bench_panoptic.py with its panoptic grid from `assign_instances`
(ground, buildings, 50 objects); "noisy" = untrained-weights-like labels (~95 % of the voxels occupied, the demo's
worst case).

    .venv/bin/python benchmarks/bench_publish.py [--repeats 21] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_panoptic import median_seconds, street_case  # noqa: E402

from flashocc_ros.config import FIRST_INSTANCE_ID, FREE_INDEX, OCC_GRID  # noqa: E402
from flashocc_ros.network.panoptic import assign_instances  # noqa: E402
from flashocc_ros.ros.messages import (  # noqa: E402
    OCCUPANCY_POINT_DTYPE,
    marker_array_msg,
    occupied_points,
    panoptic_to_msg,
    pointcloud2_msg,
    semantic_to_msg,
)
from flashocc_ros.viz.colors import CLASS_PALETTE, panoptic_colors  # noqa: E402


def plain_occupied_points(semantic: np.ndarray, panoptic: np.ndarray | None = None) -> np.ndarray:
    """Baseline: the point records built field by field from np.nonzero (the package's previous implementation)."""
    ix, iy, iz = np.nonzero(semantic != FREE_INDEX)
    pts = np.zeros(ix.size, dtype=OCCUPANCY_POINT_DTYPE)
    pts["x"], pts["y"], pts["z"] = OCC_GRID.voxel_center(ix, iy, iz)
    labels = semantic[ix, iy, iz]
    pts["label"] = labels
    if panoptic is None:
        rgb = CLASS_PALETTE[labels.astype(np.intp)].astype(np.uint32)
    else:
        ids = panoptic[ix, iy, iz]
        pts["instance"] = np.where(ids >= FIRST_INSTANCE_ID, ids, 0)
        rgb = panoptic_colors(ids).astype(np.uint32)
    pts["rgb"] = (rgb[:, 0] << 16) | (rgb[:, 1] << 8) | rgb[:, 2]
    return pts


def median_ms(fn, repeats: int) -> float:
    return median_seconds(fn, repeats) * 1e3  # one warm-up run first (it also fills the cached tables)


def grids() -> dict[str, tuple[np.ndarray, np.ndarray, object]]:
    sem, xyz, score, label = street_case()
    res = assign_instances(sem, (xyz, score, label), "corrected")
    street = (sem, res.panoptic.numpy(), res.instances.numpy())
    rng = np.random.default_rng(0)
    noisy_sem = np.where(rng.random(OCC_GRID.shape) < 0.95, rng.integers(0, 17, OCC_GRID.shape), FREE_INDEX)
    noisy_sem = noisy_sem.astype(np.uint8)
    k = 300
    centres = (rng.uniform(-40, 40, (k, 3)).astype(np.float32), np.linspace(0.9, 0.31, k, dtype=np.float32))
    res = assign_instances(noisy_sem, (*centres, rng.integers(0, 10, k)), "corrected")
    return {"street": street, "noisy": (noisy_sem, res.panoptic.numpy(), res.instances.numpy())}


def bench_grid(name: str, sem: np.ndarray, pano: np.ndarray, table, header, repeats: int, max_markers: int) -> list:
    rows = []
    for with_panoptic in (False, True):
        p = pano if with_panoptic else None
        if plain_occupied_points(sem, p).tobytes() != occupied_points(sem, p).tobytes():
            raise SystemExit(f"{name}: occupied_points differs from the plain construction")
        plain = median_ms(lambda p=p: plain_occupied_points(sem, p), repeats)
        ours = median_ms(lambda p=p: occupied_points(sem, p), repeats)
        cloud = median_ms(lambda p=p: pointcloud2_msg(occupied_points(sem, p), header), repeats)
        rows.append(
            {
                "grid": name,
                "occupied_voxels": int((sem != FREE_INDEX).sum()),
                "instance_voxels": int((pano >= FIRST_INSTANCE_ID).sum()) if with_panoptic else 0,
                "points_plain_ms": plain,
                "points_ms": ours,
                "points_speedup": plain / ours,
                "pointcloud2_msg_ms": cloud,
            }
        )
        r = rows[-1]
        print(
            f"{name:6s} points{' +panoptic' if with_panoptic else '          '} occupied={r['occupied_voxels']:6d} "
            f"instance voxels={r['instance_voxels']:6d}  plain {plain:6.2f} ms  ours {ours:6.2f} ms  "
            f"ratio {plain / ours:4.1f}x   PointCloud2 msg (points + message) {cloud:6.2f} ms"
        )
    sem_ms = median_ms(lambda: semantic_to_msg(sem, header, "bench"), repeats)
    pan_ms = median_ms(lambda: panoptic_to_msg(sem, pano, table, header, "bench", "corrected"), repeats)
    mk_ms = median_ms(lambda: marker_array_msg(sem, header, max_markers), max(5, repeats // 4))
    rows.append({"grid": name, "semantic_msg_ms": sem_ms, "panoptic_msg_ms": pan_ms, "markers_msg_ms": mk_ms})
    print(
        f"{name:6s} SemanticOccupancy {sem_ms:6.2f} ms   PanopticOccupancy ({len(table)} instances) "
        f"{pan_ms:6.2f} ms   MarkerArray (max {max_markers}) {mk_ms:6.1f} ms"
    )
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=21, help="timed runs per measurement (median; >= 5)")
    ap.add_argument("--max-markers", type=int, default=20000, help="outputs.max_markers for the MarkerArray")
    ap.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = ap.parse_args(argv)
    if args.repeats < 5:
        ap.error("--repeats must be >= 5")
    from std_msgs.msg import Header

    header = Header(frame_id="base_link")
    rows = []
    for name, (sem, pano, table) in grids().items():
        rows += bench_grid(name, sem, pano, table, header, args.repeats, args.max_markers)
    if args.json:
        tmp = args.json.with_suffix(args.json.suffix + ".tmp")
        tmp.write_text(json.dumps(rows, indent=1))
        tmp.replace(args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
