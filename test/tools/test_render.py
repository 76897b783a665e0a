"""flashocc-render and flashocc-view (--check) command lines."""

import importlib.util

import numpy as np
import pytest
from PIL import Image

from flashocc_ros.config import FREE_INDEX, OCC_GRID
from flashocc_ros.tools import render as render_tool
from flashocc_ros.tools import view as view_tool

HAS_OPEN3D = importlib.util.find_spec("open3d") is not None


def write_pred(path, value):
    g = np.full(OCC_GRID.shape, FREE_INDEX, np.uint8)
    g[:, :, 2] = value
    np.savez_compressed(path, pred=g)
    return path


def test_render_one_prediction_against_synthetic_ground_truth(synthetic_nuscenes, tmp_path, capsys):
    token = synthetic_nuscenes.sample_tokens[0]
    scene = synthetic_nuscenes.scene_names[0]
    pred = write_pred(tmp_path / f"{token}.npz", 11)
    out = tmp_path / "cmp.png"
    gt = synthetic_nuscenes.gt_path(scene, token)
    rc = render_tool.main([str(pred), "--gt", str(gt), "-o", str(out), "--mask-camera", "--renderer", "raster"])
    stdout = capsys.readouterr().out
    assert rc == 0, stdout
    assert "numpy raster renderer" in stdout and f"wrote {out}" in stdout
    image = np.asarray(Image.open(out))
    assert image.shape[0] > 1000 and image.shape[1] > 1400  # two columns, two views, legend
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_render_folder_to_images_and_video(synthetic_nuscenes, tmp_path, capsys):
    preds = tmp_path / "preds"
    preds.mkdir()
    tokens = synthetic_nuscenes.sample_tokens[:2]
    for t in tokens:
        write_pred(preds / f"{t}.npz", 11)
    gts = synthetic_nuscenes.occ3d_gts_dir
    rc = render_tool.main([str(preds), "--gt", str(gts), "-o", str(tmp_path / "pngs"), "--views", "bev"])
    assert rc == 0
    assert sorted(p.stem for p in (tmp_path / "pngs").iterdir()) == sorted(tokens)

    video = tmp_path / "v.gif"
    argv = [str(preds), "--gt", str(gts), "-o", str(video), "--views", "bev", "--nusc-root"]
    rc = render_tool.main(argv + [str(synthetic_nuscenes.dataroot), "--nusc-version", synthetic_nuscenes.version])
    assert rc == 0, capsys.readouterr()
    import imageio.v3 as iio

    frames = iio.imread(video, index=None)
    assert frames.shape[0] == 2
    # The camera mosaic on top holds the real synthetic images, not the grey placeholder tiles.
    top = frames[0, 40:200, 40:300].reshape(-1, 3).astype(int)
    assert top.std(axis=0).max() > 10 and not (np.abs(top - 60).max(axis=1) == 0).all()


def test_render_errors_are_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.npz"
    np.savez(bad, pred=np.zeros((200, 200, 8), np.uint8))
    assert render_tool.main([str(bad), "-o", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(bad) in err and "shape (200, 200, 8)" in err
    assert not (tmp_path / "x.png").exists()

    corrupt = tmp_path / "corrupt.npz"
    corrupt.write_bytes(b"\x00" * 100)
    assert render_tool.main([str(corrupt), "-o", str(tmp_path / "x.png")]) == 2
    assert "not a readable .npz file" in capsys.readouterr().err

    folder = tmp_path / "two"
    folder.mkdir()
    write_pred(folder / "a.npz", 11)
    write_pred(folder / "b.npz", 11)
    assert render_tool.main([str(folder), "-o", str(tmp_path / "one.png")]) == 2
    assert "has 2 frames" in capsys.readouterr().err
    assert render_tool.main([str(folder / "a.npz"), "--views", "side"]) == 2


def test_view_check_without_window(tmp_path, capsys):
    preds = tmp_path / "preds"
    preds.mkdir()
    write_pred(preds / "a.npz", 11)
    write_pred(preds / "b.npz", 14)
    assert view_tool.main([str(preds), "--check", "--color-by", "instance"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("[1/2] a - prediction") and "40000 voxels, colour class" in lines[0]
    assert view_tool.main([str(preds), "--start", "5"]) == 2
    assert "--start 5" in capsys.readouterr().err


@pytest.mark.skipif(HAS_OPEN3D, reason="open3d is installed: the window path would open")
def test_view_without_open3d(tmp_path, capsys):
    assert view_tool.main([str(write_pred(tmp_path / "a.npz", 11))]) == 2
    assert "pip install 'flashocc_ros[view]'" in capsys.readouterr().err


@pytest.mark.skipif(not HAS_OPEN3D, reason="open3d not installed (optional `view` extra)")
def test_render_command_with_open3d_installed(tmp_path):
    """The real command in a fresh process: probes Open3D, draws the 3D view with it or falls back, exits cleanly
    (Open3D's renderer is torn down at interpreter exit)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    pred = write_pred(tmp_path / "tok.npz", 11)
    out = tmp_path / "cmp.png"
    repo = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([repo, os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "flashocc_ros.tools.render", str(pred), "-o", str(out), "--renderer", "auto"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    said = [line for line in proc.stdout.splitlines() if line.startswith("flashocc-render: 3D view:")]
    assert len(said) == 1
    assert "Open3D off-screen renderer" in said[0] or "numpy raster renderer (fallback: open3d" in said[0]
    image = np.asarray(Image.open(out))
    assert image.shape[1] > 800 and sorted(p.name for p in tmp_path.iterdir()) == ["cmp.png", "tok.npz"]


@pytest.mark.skipif(not HAS_OPEN3D, reason="open3d not installed (optional `view` extra)")
def test_view_without_display(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.setattr("sys.platform", "linux")
    assert view_tool.main([str(write_pred(tmp_path / "a.npz", 11))]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no display" in err and "flashocc-render" in err
