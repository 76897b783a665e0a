"""flashocc-nusc2bag: convert nuScenes scenes to rosbag2 bags (one per scene) that play straight into flashocc_node.

Example:
  flashocc-nusc2bag --dataroot /data/nuscenes --version v1.0-mini --split mini_val --out bags/ --occ3d-gts gts/
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from tqdm import tqdm

from flashocc_ros.dataset import bagio
from flashocc_ros.dataset.nusc2bag import ConversionError, ConvertOptions, SceneResult, convert


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="flashocc-nusc2bag", description=__doc__.split("\n")[0])
    p.add_argument("--dataroot", required=True, help="nuScenes root (holds samples/, sweeps/, <version>/)")
    p.add_argument("--version", default="v1.0-mini", help="table version, e.g. v1.0-mini or v1.0-trainval")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--scenes", help="comma-separated scene names, e.g. scene-0061,scene-0103 (default: all)")
    which.add_argument("--split", help="a devkit split: train, val, test, mini_train, mini_val, ...")
    p.add_argument("--out", required=True, help="output folder (created); one bag directory per scene")
    p.add_argument("--storage", default="mcap", choices=sorted(bagio.STORAGES))
    p.add_argument("--distro", default="kilted", choices=sorted(bagio.DISTROS), help="ROS 2 type store / bag format")
    p.add_argument("--keyframes-only", action="store_true", help="keyframe images only (2 Hz) instead of 12 Hz")
    p.add_argument("--lidar", action="store_true", help="add LIDAR_TOP point clouds (all 20 Hz sweeps)")
    p.add_argument("--occ3d-gts", type=Path, help="Occ3D gts folder (<scene>/<sample_token>/labels.npz)")
    p.add_argument("--jobs", type=int, default=1, help="scenes converted in parallel processes")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="rewrite finished bags this converter wrote instead of skipping them (nothing else is ever replaced)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    scenes = [s.strip() for s in args.scenes.split(",") if s.strip()] if args.scenes else None
    options = ConvertOptions(
        storage=args.storage,
        distro=args.distro,
        keyframes_only=args.keyframes_only,
        lidar=args.lidar,
        occ3d_gts=args.occ3d_gts,
        overwrite=args.overwrite,
    )
    start = time.perf_counter()
    bar = tqdm(total=None, unit="scene", desc="nusc2bag", file=sys.stderr, dynamic_ncols=True)

    def report(result: SceneResult) -> None:
        bar.update(1)
        for warning in result.warnings:
            tqdm.write(f"warning: {warning}", file=sys.stderr)
        if result.status == "failed":
            tqdm.write(f"FAILED  {result.error}", file=sys.stderr)
        elif result.status == "skipped":
            tqdm.write(f"skipped {result.scene_name}: {result.path} is already complete", file=sys.stderr)
        else:
            mb = result.input_bytes / 1e6
            tqdm.write(
                f"wrote   {result.path} ({result.messages} messages, {mb:.1f} MB in, {result.seconds:.1f} s)",
                file=sys.stderr,
            )

    try:
        results = convert(
            args.dataroot,
            args.version,
            scenes,
            args.out,
            options,
            split=args.split,
            jobs=args.jobs,
            on_result=report,
            on_note=lambda text: tqdm.write(f"note: {text}", file=sys.stderr),
        )
    except ConversionError as exc:
        bar.close()
        print(f"flashocc-nusc2bag: error: {exc}", file=sys.stderr)
        return 2
    bar.close()
    elapsed = time.perf_counter() - start
    written = [r for r in results if r.status == "written"]
    failed = [r for r in results if r.status == "failed"]
    mb = sum(r.input_bytes for r in written) / 1e6
    print(
        f"{len(written)} written, {len(results) - len(written) - len(failed)} skipped, {len(failed)} failed; "
        f"{mb:.1f} MB in {elapsed:.1f} s ({mb / max(elapsed, 1e-9):.1f} MB/s) -> {args.out}"
    )
    for r in failed:
        print(f"failed: {r.error}", file=sys.stderr)
    warnings = sum(len(r.warnings) for r in results)
    if warnings:
        print(f"{warnings} warnings (see above): the bags hold the input as it is", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
