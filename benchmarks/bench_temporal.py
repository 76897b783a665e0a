"""Benchmark: temporal variants streamed (one image-encoder pass per frame, history kept) vs the official
re-encoding of every frame, same run, plus the memory held by the history and a single-frame reference.

    .venv/bin/python benchmarks/bench_temporal.py [--variants P2 P9 M2] [--stream 4] [--single PT] [--json out.json]

Inputs: synthetic images (deterministic_images of a few seeds; speed does not depend on content) on the reference
nuScenes rig moving at 8 m/s, keyframes 0.5 s apart; deterministic weights. Per variant: the median wall time of
``TemporalPipeline.run`` once the history is full (streamed), of ``run_frames`` on the same F frames (re-encoding,
the official test path) and the bytes held by the history after the stream.
``--reuse-history-depth`` times the approximate mode (one DepthNet pass per frame). ``no history`` times the current
frame alone (history reset before each run: encoder, one DepthNet, the BEV encoder on the fused input), the floor
that no way of keeping history can go below.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch

from flashocc_ros.config import get_variant, load_config
from flashocc_ros.inference.temporal import TemporalPipeline
from flashocc_ros.network.geometry import reference_rig
from flashocc_ros.network.loading import load_model
from flashocc_ros.network.preprocess import augmentation_for
from flashocc_ros.network.weights import deterministic_images

SPEED_MPS = 8.0


def frame_inputs(num: int):
    """``num`` frames oldest first: (images (6,3,256,704), RigCalibration with the ego moved, stamp)."""
    rig = reference_rig()
    imgs = [deterministic_images(seed)[0] for seed in range(3)]
    out = []
    for i in range(num):
        stamp = 0.5 * i
        motion = np.eye(4)
        motion[0, 3] = SPEED_MPS * stamp
        calib = reference_rig()
        calib.ego2global = np.stack([motion @ e for e in rig.ego2global])
        out.append((imgs[i % len(imgs)], calib, stamp))
    return out


def as_in_npz(frames, num_frames: int) -> dict[str, np.ndarray]:
    """The last ``num_frames`` of ``frames`` in the make_inputs_4d layout (frame 0 = newest)."""
    sel = list(reversed(frames[-num_frames:]))
    f = len(sel)
    aug = augmentation_for(sel[0][1].image_hw)
    imgs = np.stack([s[0] for s in sel])  # (F, 6, 3, H, W)
    return {
        "imgs": np.ascontiguousarray(imgs.transpose(1, 0, 2, 3, 4)).reshape(1, 6 * f, *imgs.shape[2:]),
        "sensor2egos": np.stack([s[1].sensor2ego for s in sel]).reshape(1, 6 * f, 4, 4).astype(np.float32),
        "ego2globals": np.stack([s[1].ego2global for s in sel]).reshape(1, 6 * f, 4, 4).astype(np.float32),
        "intrins": np.broadcast_to(sel[0][1].intrinsics, (f, 6, 3, 3)).reshape(1, 6 * f, 3, 3).astype(np.float32),
        "post_rots": np.broadcast_to(aug.post_rot, (1, 6 * f, 3, 3)).astype(np.float32),
        "post_trans": np.broadcast_to(aug.post_tran, (1, 6 * f, 3)).astype(np.float32),
        "bda": np.eye(3, dtype=np.float32)[None],
    }


def bench_variant(name: str, stream: int, reuse_history_depth: bool = False) -> dict:
    v = get_variant(name)
    cfg = load_config(overrides={"model": {"variant": v.name, "device": "cpu"}})
    pipe = TemporalPipeline(cfg, model=load_model(v.name, seed=0), reuse_history_depth=reuse_history_depth)
    frames = frame_inputs(v.num_frames - 1 + stream)
    for img, calib, stamp in frames[: v.num_frames - 1]:
        if reuse_history_depth:  # the history keeps the DepthNet output each frame got as the current one
            pipe.run(img, calib, stamp)
        else:
            pipe.observe(img, calib, stamp)
    streamed = []
    for img, calib, stamp in frames[v.num_frames - 1 :]:
        t0 = time.perf_counter()
        pipe.run(img, calib, stamp)
        streamed.append(time.perf_counter() - t0)
        assert pipe.last_history_depth == v.num_frames - 1
    inputs = as_in_npz(frames, v.num_frames)
    t0 = time.perf_counter()
    pipe.run_frames(inputs)
    reencode = time.perf_counter() - t0
    history_frames, history_bytes = len(pipe.history), pipe.history.nbytes
    # The floor of any streaming scheme: the current frame alone (encoder, one DepthNet, one pooling, the fusion
    # input built from it and the BEV encoder + heads); the official first-frame rule gives exactly that work.
    floor = []
    for img, calib, stamp in frames[-stream:]:
        pipe.reset()
        t0 = time.perf_counter()
        pipe.run(img, calib, stamp)
        floor.append(time.perf_counter() - t0)
        assert pipe.last_history_depth == 0
    return {
        "variant": v.name,
        "reuse_history_depth": reuse_history_depth,
        "frames": v.num_frames,
        "streamed_s": streamed,
        "streamed_median_s": statistics.median(streamed),
        "reencode_s": reencode,
        "no_history_s": floor,
        "no_history_median_s": statistics.median(floor),
        "history_frames": history_frames,
        "history_mb": history_bytes / 2**20,
    }


def bench_single(name: str, repeats: int = 2) -> float:
    from flashocc_ros.network.geometry import prepare_geometry

    v = get_variant(name)
    model = load_model(v.name, seed=0)
    geo = prepare_geometry(v, reference_rig())
    img = torch.from_numpy(deterministic_images(0)[0])
    times = []
    with torch.inference_mode():
        for _ in range(repeats + 1):
            t0 = time.perf_counter()
            model.forward_tensors(img, *geo.pool.network_inputs(), geo.mlp_input)
            times.append(time.perf_counter() - t0)
    return statistics.median(times[1:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variants", nargs="+", default=["P2"])
    ap.add_argument("--stream", type=int, default=2, help="streamed frames timed after the history is full")
    ap.add_argument("--single", default="PT", help="single-frame variant timed for reference ('' = none)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reuse-history-depth", action="store_true", help="the approximate mode (see docs/model.md)")
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    results = {"threads": args.threads, "variants": []}
    if args.single:
        results["single_frame"] = {"variant": get_variant(args.single).name, "forward_s": bench_single(args.single)}
        print(f"single-frame {args.single}: {results['single_frame']['forward_s']:.2f} s")
    for name in args.variants:
        r = bench_variant(name, args.stream, args.reuse_history_depth)
        results["variants"].append(r)
        print(
            f"{name}: streamed {r['streamed_median_s']:.2f} s/frame, re-encoding {r['reencode_s']:.2f} s "
            f"({r['reencode_s'] / r['streamed_median_s']:.2f}x), no history {r['no_history_median_s']:.2f} s, "
            f"history {r['history_frames']} frames {r['history_mb']:.0f} MB"
        )
        if args.single:
            base = results["single_frame"]["forward_s"]
            print(
                f"  vs single-frame {args.single}: streamed {r['streamed_median_s'] / base:.1f}x, "
                f"no history {r['no_history_median_s'] / base:.1f}x"
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
