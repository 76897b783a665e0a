"""Benchmark: nuScenes -> rosbag2 conversion throughput (MB of input files per second).

Baseline, measured in the same run on the same files: a plain copy of every input file the converter reads
(JPEGs, .pcd.bin, labels.npz) into one output file, i.e. the I/O floor. The converter's goal is to stay close to
it (no decode / re-encode). Uses the synthetic dataset unless --dataroot points at real nuScenes.

  .venv/bin/python benchmarks/bench_nusc2bag.py                       # synthetic, 2 scenes x 10 samples
  .venv/bin/python benchmarks/bench_nusc2bag.py --dataroot /data/nuscenes --version v1.0-mini --scenes scene-0061
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from flashocc_ros.dataset.nusc2bag import ConvertOptions, convert, load_nuscenes, plan_scene
from flashocc_ros.dataset.synthetic import make_synthetic_nuscenes


def input_files(dataroot: Path, version: str, scenes: list[str] | None, options: ConvertOptions) -> list[Path]:
    nusc = load_nuscenes(dataroot, version)
    names = scenes or [s["name"] for s in nusc.scene]
    files = []
    for name in names:
        plan = plan_scene(nusc, name, options)
        files += [dataroot / f.filename for f in plan.frames]
        if options.occ3d_gts is not None:
            files += [Path(options.occ3d_gts) / name / s.sample_token / "labels.npz" for s in plan.samples]
    return files


def copy_baseline(files: list[Path], target: Path) -> float:
    start = time.perf_counter()
    with target.open("wb") as out:
        for f in files:
            out.write(f.read_bytes())
    elapsed = time.perf_counter() - start
    target.unlink()
    return elapsed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataroot", type=Path)
    p.add_argument("--version", default="v1.0-mini")
    p.add_argument("--scenes", help="comma-separated (default: all scenes of the version)")
    p.add_argument("--occ3d-gts", type=Path)
    p.add_argument("--lidar", action="store_true")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument("--storage", default="mcap")
    args = p.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench_nusc2bag_"))
    try:
        if args.dataroot is None:
            t0 = time.perf_counter()
            ds = make_synthetic_nuscenes(work / "nuscenes", num_scenes=2, samples_per_scene=10)
            print(
                f"synthetic dataset: {len(ds.scene_names)} scenes, {ds.num_camera_frames} images, "
                f"built in {time.perf_counter() - t0:.1f} s"
            )
            dataroot, version, gts = ds.dataroot, ds.version, ds.occ3d_gts_dir
        else:
            dataroot, version, gts = args.dataroot, args.version, args.occ3d_gts
        scenes = args.scenes.split(",") if args.scenes else None
        options = ConvertOptions(storage=args.storage, lidar=args.lidar, occ3d_gts=gts)
        files = input_files(dataroot, version, scenes, options)
        mb = sum(f.stat().st_size for f in files) / 1e6
        copy_baseline(files, work / "warm.bin")  # warm the page cache for both measurements

        convert_s, copy_s, out_mb = [], [], 0.0
        for i in range(args.repeats):
            out = work / f"bags{i}"
            t0 = time.perf_counter()
            results = convert(dataroot, version, scenes, out, options, jobs=args.jobs)
            convert_s.append(time.perf_counter() - t0)
            failed = [r.error for r in results if r.status != "written"]
            if failed:
                raise SystemExit(f"conversion failed: {failed}")
            out_mb = sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) / 1e6
            shutil.rmtree(out)
            copy_s.append(copy_baseline(files, work / "copy.bin"))

        conv, copy = statistics.median(convert_s), statistics.median(copy_s)
        print(f"input: {len(files)} files, {mb:.1f} MB; bags: {out_mb:.1f} MB ({args.storage}, jobs={args.jobs})")
        print(f"convert (incl. table loading): median {conv:.3f} s = {mb / conv:.1f} MB/s over {args.repeats} runs")
        print(f"baseline plain copy:           median {copy:.3f} s = {mb / copy:.1f} MB/s")
        print(f"ratio converter / copy throughput: {copy / conv:.2f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
