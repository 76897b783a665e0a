#!/usr/bin/env python3
"""CPU forward time per variant: our optimised network vs the official-equivalent graph, same run, interleaved.

    python benchmarks/bench_forward.py [--variants M0 M1 PT PF] [--repeats 5] [--threads 2] [--json out.json]

Per variant and repeat, two configurations run back to back (order alternating, so machine load hits both alike):
  * baseline  - the official op sequence on the same weights: conv -> BN unfused, NCHW, gather/scatter BEV
                pooling (the substitute used for the golden CPU run), torch.no_grad, all six centre sub-heads
                evaluated (the official head computes dim/rot/vel too);
  * optimized - what flashocc_ros runs: BN folded into convs at load time, channels_last, sparse-matrix BEV
                pooling, torch.inference_mode, only the reg/height/heatmap centre sub-heads.
Both include softmax + argmax labels and (panoptic variants) centre decoding, like the official timing.
Reported: median wall seconds of ``--repeats`` runs after one warm-up, process CPU seconds, speed-up vs the
baseline of the same run and vs the official CPU medians of golden/out/timing_forward_cpu.json (measured on this
machine type, 2 threads), and output agreement (label voxels that differ, max |logit| difference).
Deterministic untrained weights and the golden seed-0 inputs are used (the speed does not depend on the values).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flashocc_ros.config import VARIANTS, get_variant  # noqa: E402
from flashocc_ros.network.centers import decode_centers  # noqa: E402
from flashocc_ros.network.geometry import compute_pool_indices, make_mlp_input, sensor_to_key_ego  # noqa: E402
from flashocc_ros.network.model import CENTER_HEADS, occupancy_labels  # noqa: E402
from flashocc_ros.network.networks import build_model  # noqa: E402
from flashocc_ros.network.weights import deterministic_inputs, deterministic_state_dict  # noqa: E402

# Official CPU forward medians (seconds) from golden/out/timing_forward_cpu.json (official simple_test incl. centre
# decoding, 2 threads, this machine type); copied so the benchmark runs without ../shared.
OFFICIAL_CPU_MEDIAN_S = {
    "flashocc-r50-M0": 2.9132680590000746,
    "flashocc-r50": 2.9044759630000954,
    "panoptic-flashocc-r50-depth-tiny-pano": 2.3996653730000617,
    "panoptic-flashocc-r50-depth-pano": 3.5055630950000705,
}


def baseline_forward(model, img, pool, mlp):
    """Official-equivalent sequence (unfused model in NCHW, gather pooling, all centre sub-heads)."""
    with torch.no_grad():
        feat = model.image_features(img)
        _, depth, context = model.depth_and_context(feat, mlp)
        bev = model.lss_bev(depth, context, pool.as_tuple()).contiguous()
        bev_enc = model.bev_encoder(bev)
        logits = model.occ_head(bev_enc)
        labels = occupancy_labels(logits)
        centers = None
        if model.variant.panoptic:
            head = model.aux_centerness_head
            maps = head.task_heads[0](head.shared_conv(bev_enc), names=tuple(CENTER_HEADS))
            centers = decode_centers(maps["heatmap"], maps["reg"], maps["height"])
    return logits, labels, centers


def optimized_forward(model, img, pool, mlp):
    with torch.inference_mode():
        outs = model.forward_tensors(img, *pool.network_inputs(), mlp)
        labels = occupancy_labels(outs[0])
        centers = decode_centers(*outs[1:4]) if model.variant.panoptic else None
    return outs[0], labels, centers


def bench_variant(name: str, repeats: int) -> dict:
    inp = deterministic_inputs(0)
    sd = deterministic_state_dict(name, 0)
    optimized = build_model(name)
    optimized.load_state_dict(sd)
    baseline = build_model(name).to_channels_last(False)
    baseline.load_state_dict(sd)
    baseline.set_folding(False)
    baseline.bev_pool_mode = "gather"
    s2ke = sensor_to_key_ego(inp["sensor2egos"], inp["ego2globals"])
    geo = (inp["intrins"], inp["post_rots"], inp["post_trans"], inp["bda"])
    pool = compute_pool_indices(name, s2ke, *geo)
    mlp = make_mlp_input(s2ke, *geo) if get_variant(name).depth_net == "bevdepth" else None
    img = torch.from_numpy(inp["imgs"][0])

    runs = {"baseline": (baseline, baseline_forward), "optimized": (optimized, optimized_forward)}
    wall = {k: [] for k in runs}
    cpu = {k: [] for k in runs}
    outputs = {}
    for rep in range(repeats + 1):
        order = list(runs) if rep % 2 == 0 else list(reversed(runs))
        for key in order:
            model, fn = runs[key]
            c0, t0 = time.process_time(), time.perf_counter()
            outputs[key] = fn(model, img, pool, mlp)
            t1, c1 = time.perf_counter(), time.process_time()
            if rep > 0:  # rep 0 is the warm-up
                wall[key].append(t1 - t0)
                cpu[key].append(c1 - c0)
    (lb, labb, cb), (lo, labo, co) = outputs["baseline"], outputs["optimized"]
    result = {
        "variant": name,
        "wall_s": {k: v for k, v in wall.items()},
        "median_s": {k: statistics.median(v) for k, v in wall.items()},
        "median_cpu_s": {k: statistics.median(v) for k, v in cpu.items()},
        "official_median_s": OFFICIAL_CPU_MEDIAN_S[name],
        "label_voxels_differing": int((labb != labo).sum()),
        "max_abs_logit_diff": float((lb - lo).abs().max()),
        "logit_std": float(lo.std()),
    }
    if cb is not None:
        result["centers"] = {"baseline": len(cb), "optimized": len(co), "labels_equal": torch.equal(cb.label, co.label)}
    med = result["median_s"]
    result["speedup_vs_baseline"] = med["baseline"] / med["optimized"]
    result["speedup_vs_official"] = OFFICIAL_CPU_MEDIAN_S[name] / med["optimized"]
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), help="config names or M0/M1/PT/PF")
    ap.add_argument("--repeats", type=int, default=5, help="timed runs per configuration (after 1 warm-up)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, help="also write the results as JSON")
    args = ap.parse_args(argv)
    if args.repeats < 5:
        ap.error("--repeats must be >= 5 (median of at least five runs)")
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, median of {args.repeats} after 1 warm-up (seconds)")
    header = (
        f"{'variant':40s} {'official':>8s} {'baseline':>8s} {'ours':>7s} {'x off.':>6s} {'x base':>6s} "
        f"{'cpu base':>8s} {'cpu ours':>8s} {'labels!=':>8s} {'max|dlogit|/std':>15s}"
    )
    print(header)
    results = []
    for v in args.variants:
        r = bench_variant(get_variant(v).name, args.repeats)
        results.append(r)
        m, c = r["median_s"], r["median_cpu_s"]
        print(
            f"{r['variant']:40s} {r['official_median_s']:8.2f} {m['baseline']:8.2f} {m['optimized']:7.2f} "
            f"{r['speedup_vs_official']:6.2f} {r['speedup_vs_baseline']:6.2f} {c['baseline']:8.2f} "
            f"{c['optimized']:8.2f} {r['label_voxels_differing']:8d} {r['max_abs_logit_diff'] / r['logit_std']:15.2e}",
            flush=True,
        )
        if "centers" in r:
            print(f"{'':40s} centres baseline/ours: {r['centers']['baseline']}/{r['centers']['optimized']}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
