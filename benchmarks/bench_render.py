"""Rendering speed: numpy rasteriser vs matplotlib's mplot3d `voxels` (baseline), same grid, same run.

  .venv/bin/python benchmarks/bench_render.py [--repeats 5]
Prints medians in milliseconds. The baseline runs on a 50x50x16 crop (mplot3d needs minutes for the full grid).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from flashocc_ros.config import FREE_INDEX, OCC_GRID
from flashocc_ros.viz.colors import class_colors
from flashocc_ros.viz.raster import fit_camera, render_bev_image, render_perspective_image
from flashocc_ros.viz.render import render_comparison


def street_scene(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    grid = np.full(OCC_GRID.shape, FREE_INDEX, np.uint8)
    grid[:, :, 2] = 14
    grid[:, 85:115, 2] = 11
    grid[:, 60:75, 3:12] = 15
    grid[:, 130:140, 3:10] = 16
    for _ in range(20):
        x, y = rng.integers(0, 190), rng.integers(87, 108)
        grid[x : x + 10, y : y + 5, 3:7] = 4
    noise = rng.random(OCC_GRID.shape) < 0.02
    grid[noise] = rng.integers(0, 17, noise.sum())
    return grid


def median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000.0)
    return statistics.median(times)


def mplot3d_voxels(grid: np.ndarray) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(8, 6), dpi=100)
    ax = fig.add_subplot(projection="3d")
    filled = grid != FREE_INDEX
    colors = np.zeros(grid.shape + (4,))
    colors[..., :3] = class_colors(grid) / 255.0
    colors[..., 3] = 1.0
    ax.voxels(filled, facecolors=colors)
    fig.canvas.draw()
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    grid = street_scene()
    rng = np.random.default_rng(1)
    dense = np.where(rng.random(OCC_GRID.shape) < 0.3, rng.integers(0, 17, OCC_GRID.shape), FREE_INDEX).astype(np.uint8)
    camera = fit_camera(width=800, height=600)
    crop = grid[75:125, 75:125].copy()
    rows = [
        ("bird's-eye view, 200x200x16 street scene", median_ms(lambda: render_bev_image(grid), args.repeats)),
        (
            "perspective 800x600, 200x200x16 street scene",
            median_ms(lambda: render_perspective_image(grid, camera=camera), args.repeats),
        ),
        (
            "perspective 800x600, 200x200x16 random 30% occupied",
            median_ms(lambda: render_perspective_image(dense, camera=camera), args.repeats),
        ),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "cmp.png"
        rows.append(
            (
                "render_comparison PNG (2 columns x BEV+3D, legend)",
                median_ms(lambda: render_comparison(grid, grid, out, renderer="raster"), args.repeats),
            )
        )
    ours = median_ms(lambda: render_perspective_image(crop, camera=camera), args.repeats)
    base = median_ms(lambda: mplot3d_voxels(crop), max(1, args.repeats // 2))
    rows.append(("perspective 800x600, 50x50x16 crop: numpy rasteriser", ours))
    rows.append(("same crop: matplotlib mplot3d ax.voxels (baseline)", base))
    for name, ms in rows:
        print(f"{name:60s} median {ms:9.1f} ms")
    print(f"speed-up over mplot3d on the crop: {base / ours:.1f}x")


if __name__ == "__main__":
    main()
