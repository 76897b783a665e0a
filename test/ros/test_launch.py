"""Launch support: the launch file's node invocation, params files, RViz layout (pip-only parts here)."""

from __future__ import annotations

import importlib.util
import runpy

import pytest
import yaml

from flashocc_ros import config as C
from flashocc_ros.ros import launch_support as L

from ..conftest import REPO_ROOT


@pytest.mark.parametrize("variant", sorted(C.VARIANTS))
def test_every_variant_has_a_valid_params_file(variant):
    path = L.params_file_for(variant)
    assert path == REPO_ROOT / "config" / f"{variant}.yaml"
    cfg = C.load_config(path)
    assert cfg.model.variant == variant
    assert cfg.outputs.publish_panoptic == C.VARIANTS[variant].panoptic


def test_params_file_errors_are_clear(tmp_path):
    with pytest.raises(ValueError, match="unknown variant 'flashocc-r18'"):
        L.params_file_for("flashocc-r18")
    with pytest.raises(FileNotFoundError, match="parameters file not found: .*missing.yaml"):
        L.params_file_for(C.DEFAULT_VARIANT, str(tmp_path / "missing.yaml"))


def test_node_command_line_carries_launch_arguments():
    cmd = L.node_command("flashocc-r50", checkpoint="/m/w.pth", backend="onnxruntime", use_sim_time=True)
    assert cmd[1:4] == ["-m", "flashocc_ros.node", "--ros-args"]
    assert cmd[cmd.index("--params-file") + 1] == str(REPO_ROOT / "config" / "flashocc-r50.yaml")
    params = [cmd[i + 1] for i, a in enumerate(cmd) if a == "-p"]
    assert params == [
        "model.variant:=flashocc-r50",
        "model.checkpoint:=/m/w.pth",
        "model.backend:=onnxruntime",
        "use_sim_time:=true",
    ]


def test_player_falls_back_to_own_player_without_rosbag2(monkeypatch):
    monkeypatch.setenv("FLASHOCC_FORCE_OWN_PLAYER", "1")
    cmd = L.player_command("/bags/scene-0061", use_sim_time=True, rate=0.5)
    assert cmd[1:] == ["-m", "flashocc_ros.tools.play", "/bags/scene-0061", "--rate", "0.5", "--clock"]


def test_rviz_layout_matches_default_topics():
    rviz = yaml.safe_load((REPO_ROOT / "config" / "flashocc.rviz").read_text())
    manager = rviz["Visualization Manager"]
    assert manager["Global Options"]["Fixed Frame"] == C.OutputConfig().ego_frame

    def walk(displays):
        for d in displays:
            yield d
            yield from walk(d.get("Displays", []))

    displays = list(walk(manager["Displays"]))
    cloud = next(d for d in displays if d["Class"] == "rviz_default_plugins/PointCloud2")
    assert cloud["Topic"]["Value"] == "/occupancy/points" and cloud["Color Transformer"] == "RGB8"
    assert cloud["Size (m)"] == pytest.approx(C.OCC_GRID.voxel_size)
    images = [d["Topic"]["Value"] for d in displays if d["Class"] == "rviz_default_plugins/Image"]
    # image_transport base topics of the configured compressed topics
    assert images == [t.removesuffix("/compressed") for _, t, _ in C.CameraConfig().topics()]


def test_fastdds_profile_is_shipped():
    text = L.fastdds_profile().read_text()
    assert "<segment_size>67108864</segment_size>" in text and "useBuiltinTransports" in text


@pytest.mark.skipif(importlib.util.find_spec("launch_ros") is None, reason="ROS 'launch' package not installed")
def test_launch_description_builds():  # pragma: no cover - needs a ROS install
    module = runpy.run_path(str(REPO_ROOT / "launch" / "flashocc.launch.py"))
    description = module["generate_launch_description"]()
    names = {a.name for a in description.get_launch_arguments()}
    assert {"variant", "checkpoint", "backend", "params_file", "transport", "use_sim_time", "rviz", "bag"} <= names


@pytest.mark.ros
def test_launch_node_command_line_runs_the_node(rclpy_context, ros_env, tmp_path):
    """Without the ROS `launch` package, the launch file's node invocation (same params file and overrides) starts
    a node that joins the graph under its launch name and shuts down cleanly on SIGINT."""
    import signal
    import subprocess

    import rclpy

    from ..conftest import wait_for

    cmd = L.node_command(C.DEFAULT_VARIANT, backend="pytorch")
    log = tmp_path / "node.log"
    with open(log, "w") as handle:
        proc = subprocess.Popen(cmd, env=ros_env, cwd=REPO_ROOT, stdout=handle, stderr=subprocess.STDOUT)
    try:
        node = rclpy.create_node("launch_probe", context=rclpy_context)
        wait_for(
            lambda: proc.poll() is not None or "flashocc_node" in node.get_node_names(),
            120,
            what="flashocc_node in the ROS graph",
        )
        assert proc.poll() is None, log.read_text()[-3000:]
        wait_for(lambda: proc.poll() is not None or "listening to" in log.read_text(), 120, what="node start-up")
        assert proc.poll() is None, log.read_text()[-3000:]
        wait_for(lambda: "/occupancy/semantic" in dict(node.get_topic_names_and_types()), 30, what="outputs")
        topics = dict(node.get_topic_names_and_types())
        assert topics["/occupancy/semantic"] == ["flashocc_ros/msg/SemanticOccupancy"]
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            code = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = None
    assert code == 0, log.read_text()[-3000:]
    assert "ready on cpu (backend pytorch)" in log.read_text()
