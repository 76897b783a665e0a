"""scripts/gpu_check.sh: the CPU dry run (--quick) writes every section with its figures; argument errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from test.conftest import REPO_ROOT

SECTIONS = ("environment", "parity", "panoptic", "decode", "throughput", "host_overhead")


def run_script(*args, tmp_path):
    env = dict(os.environ, FLASHOCC_PYTHON=sys.executable, OMP_NUM_THREADS="1", FLASHOCC_CARRY_DIR=str(tmp_path / "c"))
    return subprocess.run(
        ["bash", str(REPO_ROOT / "scripts" / "gpu_check.sh"), *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_cpu_dry_run_writes_every_section(tmp_path):
    carried = tmp_path / "c"
    (carried / "somewheel").mkdir(parents=True)  # a carried package is recorded in the environment section
    proc = run_script("--device", "cpu", "--quick", "--out", str(tmp_path / "out"), tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert report["complete"] is True and report["ok"] is True and report["device"] == "cpu"
    for name in SECTIONS:
        assert report[name]["ok"] is True, (name, report[name])
    env = report["environment"]
    assert env["carried"] == ["somewheel"] and env["ros"]["needed"] is False and env["gpu"]["skipped"]
    assert env["fp32_precision_defaults"]["cudnn_conv"] == "tf32"  # why fp32 forwards switch TF32 off
    pt = report["parity"]["variants"]["PT"]
    assert pt["labels_differing"] <= pt["labels_allowed"] and pt["differing_away_from_near_ties"] == 0
    assert pt["probe_logits_max_abs_err"] <= pt["probe_logits_tolerance"]
    assert pt["fp16"] == {"skipped": "fp16 (autocast) needs CUDA"}
    for mode in ("official", "corrected"):
        m = report["panoptic"]["variants"]["PT"][mode]
        assert m["centers"] > 0 and m["cpu_ms"]["median"] > 0 and "skipped" in m["gpu"]
    dec = report["decode"]
    assert dec["torch_path_on_cpu"]["deviation"]["max_levels"] <= 2.001  # same decoded pixels: resampler rounding
    assert dec["cpu_fast_path"]["deviation"]["mean_levels"] > dec["torch_path_on_cpu"]["deviation"]["mean_levels"]
    assert "skipped" in dec["gpu"]
    tp = report["throughput"]["variants"]["PT"]
    assert tp["fp32"]["end_to_end_ms"]["n"] == 2 and tp["fp32"]["network_alone_ms"]["median"] > 0
    assert tp["fp32"]["jpeg_path"] == "cpu" and tp["fp32"]["logits_copied_to_host"] is False
    assert "skipped" in tp["fp16"]
    host = report["host_overhead"]
    cpu = host["cpu_only"]
    assert host["variant"] == "M0" and "skipped" in host["gpu_path"] and cpu["goal_ms"] == 35.0
    assert cpu["frames"] == 5 and cpu["pool_index_computations"] == 5 + 3  # a moving vehicle: every frame
    assert cpu["jpeg_path"] == "cpu" and cpu["goal_met"] == (cpu["stages_ms"]["total"]["median"] <= 35.0)
    assert 0 < cpu["stages_ms"]["decode_preprocess"]["median"] < cpu["stages_ms"]["total"]["median"]
    assert not [p.name for p in (tmp_path / "out").iterdir() if p.name != "gpu_check.json"]  # no temp files left


def test_bad_arguments_and_a_missing_gpu_are_reported(tmp_path):
    from flashocc_ros.tools.gpu_check import main

    proc = run_script("--device", "tpu", "--out", str(tmp_path / "o"), tmp_path=tmp_path)
    assert proc.returncode == 2 and "--device: expected cuda[:N] or cpu" in proc.stderr
    assert not (tmp_path / "o").exists()
    proc = run_script("--device", "cpu", "--variants", "M7", "--out", str(tmp_path / "o"), tmp_path=tmp_path)
    assert proc.returncode == 2 and "unknown model variant 'M7'" in proc.stderr
    # no GPU here: --device cuda fails every section with the reason instead of crashing
    import torch

    if not torch.cuda.is_available():
        assert main(["--device", "cuda", "--quick", "--out", str(tmp_path / "cuda")]) == 1
        report = json.loads((tmp_path / "cuda" / "gpu_check.json").read_text())
        assert report["complete"] and not report["ok"]
        assert all("no CUDA GPU" in report[s]["error"] for s in SECTIONS)


def test_wheels_carried_for_another_python_are_not_used(tmp_path):
    carried = tmp_path / "c"
    (carried / "simplejpeg").mkdir(parents=True)
    (carried / ".python_version").write_text("2.7\n")  # as scripts/gpu_carry.sh writes it
    proc = run_script("--device", "tpu", tmp_path=tmp_path)  # the shell part runs, then argparse refuses
    assert proc.returncode == 2
    assert f"not using {carried} (wheels for Python 2.7, this is Python {sys.version_info[0]}." in proc.stderr
