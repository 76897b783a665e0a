#!/usr/bin/env python3
"""Parity of the user path (OccupancyPipeline) with the official answers, per variant and backend, as a table.

    .venv/bin/python benchmarks/parity_report.py [--backends pytorch onnxruntime] [--variants M0 M1 PT PF]
                                                [--engine-cache DIR] [--markdown]

Same inputs and rules as test/inference/test_pipeline_parity.py: seed-0 deterministic weights, a float64 nuScenes
rig, the golden preprocessed input ("tensor") and the official raw-image run ("raw", M0 and PT), near-tie rules of
test/reference/near_ties.py. Prints, per row: labels differing from the official grid / official near-ties
(top-2 gap < 1e-3), the largest probe-logit deviation in units of the logits' std, centres (ours / official /
matched) and whether every rule holds. ONNX exports are cached in --engine-cache (exported once, ~1 min each).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from flashocc_ros.config import get_variant, load_config  # noqa: E402
from test.inference.test_pipeline_parity import LOGIT_REL_TOL, check_against_official, run_pipeline  # noqa: E402
from test.model_helpers import GOLDEN  # noqa: E402
from test.reference.raw_images import raw_images  # noqa: E402


def golden_images() -> np.ndarray:
    from flashocc_ros.network.weights import deterministic_images

    return deterministic_images(0)[0]


def row(short: str, backend: str, source: str, cache: Path) -> dict:
    name = get_variant(short).name
    model = {"variant": name, "backend": backend, "device": "cpu", "pano_mode": "official"}
    cfg = load_config(overrides={"model": {**model, "engine_cache_dir": str(cache)}})
    images = golden_images() if source == "tensor" else list(raw_images(0))
    ours = run_pipeline(cfg, images)
    path = GOLDEN / (f"{name}_seed0.npz" if source == "tensor" else f"raw_e2e_{name}_seed0.npz")
    with np.load(path) as z:
        official = {k: z[k] for k in z.files}
    ix, iy, iz = official["probe_vox_xyz"].T
    logits = ours["logits"]
    out = {
        "variant": short,
        "backend": backend,
        "input": source,
        "labels_differing": int((ours["semantic"] != official["occ_label"]).sum()),
        "official_near_ties": int(official["occ_margin_lt_1e-3"]),
        "probe_logit_dev_x_std": float(np.abs(logits[ix, iy, iz] - official["probe_logits"]).max() / logits.std()),
        "logit_tolerance_x_std": LOGIT_REL_TOL[backend],
        "centres": "-",
    }
    if "centers_xyz" in official:
        from test.reference.near_ties import check_centers

        match = check_centers(ours, official, ours["heatmap"], ours["reg"])
        out["centres"] = f"{len(ours['centers_score'])} / {len(official['centers_score'])} / {len(match.matched)}"
    try:
        check_against_official(ours, official, backend)
        out["rules"] = "pass"
    except AssertionError as exc:
        out["rules"] = f"FAIL: {str(exc).splitlines()[0]}"
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backends", nargs="+", default=["pytorch", "onnxruntime"])
    p.add_argument("--variants", nargs="+", default=["M0", "M1", "PT", "PF"])
    p.add_argument("--engine-cache", type=Path, default=Path("~/.cache/flashocc_ros/engines").expanduser())
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    rows = []
    for backend in args.backends:
        for short in args.variants:
            sources = ("tensor", "raw") if short in ("M0", "PT") else ("tensor",)
            for source in sources:
                rows.append(row(short, backend, source, args.engine_cache))
                r = rows[-1]
                print(
                    f"| {r['variant']} | {r['backend']} | {r['input']} | {r['labels_differing']} / "
                    f"{r['official_near_ties']} | {r['probe_logit_dev_x_std']:.1e} (≤ {r['logit_tolerance_x_std']:g}) "
                    f"| {r['centres']} | {r['rules']} |",
                    flush=True,
                )
    return 0 if all(r["rules"] == "pass" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
