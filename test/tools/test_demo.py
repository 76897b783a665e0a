"""The README's main job end to end on a reduced synthetic scene: dataset -> bag -> node (real DDS) -> record ->
evaluate -> render -> report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ..conftest import REPO_ROOT

pytestmark = [pytest.mark.ros, pytest.mark.slow]


def restated_miou(out, info) -> float:
    """Occ3D mIoU of the recorded predictions, restated here: camera-masked voxels, one confusion matrix over all
    samples, IoU = TP / (TP + FP + FN) per non-free class, mean over the classes that occur (percent)."""
    from flashocc_ros.tools.evaluate import bag_predictions

    _, predictions, *_ = bag_predictions(Path(info["recorded"]), Path(info["bag"]), None, 40.0, need_instances=False)
    gts = {p.parent.name: p for p in out.rglob("labels.npz")}
    hist = np.zeros((18, 18), np.int64)
    for token, pred in predictions:
        with np.load(gts[token]) as gt:
            mask = gt["mask_camera"].astype(bool)
            hist += np.bincount(
                18 * gt["semantics"][mask].astype(np.int64) + pred.semantic[mask], minlength=324
            ).reshape(18, 18)
    tp = np.diag(hist)[:17].astype(np.float64)
    denom = hist.sum(0)[:17] + hist.sum(1)[:17] - tp
    return float(100.0 * np.mean(tp[denom > 0] / denom[denom > 0]))


def test_demo_produces_the_report(ros_env, tmp_path):
    out = tmp_path / "demo"
    cmd = [sys.executable, "-m", "flashocc_ros.tools.demo", "--out", str(out), "--frames", "2"]
    cmd += ["--backend", "pytorch", "--seconds-per-frame", "6"]
    res = subprocess.run(cmd, env=ros_env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=400)
    assert res.returncode == 0, f"{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    assert "UNTRAINED weights" in res.stdout  # no checkpoint in models/: the loud warning
    assert f"report at {out / 'report.md'}" in res.stdout
    files = ("report.md", "summary.json", "eval.json", "eval_table.txt", "eval_per_class.png", "bev_comparison.png")
    for name in files:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["timing"]["frames"] == 2  # both keyframes processed, none replaced
    assert summary["timing"]["sets_replaced"] == 0
    assert summary["timing"]["inference_ms"]["median"] > 0
    evaluation = summary["evaluation"]
    assert evaluation["num_samples"] == 2
    assert evaluation["summary"]["mIoU"] == pytest.approx(restated_miou(out, summary["info"]), abs=1e-6)
    assert 0.0 <= evaluation["summary"]["RayIoU"] <= 100.0
    report = (out / "report.md").read_text()
    assert "UNTRAINED WEIGHTS" in report and "bev/000_" in report
    assert len(list((out / "bev").glob("*.png"))) == 2
