"""flashocc-play / flashocc-record over real DDS: byte-identical round trip, recorded QoS, /clock, --start, --loop."""

from __future__ import annotations

import subprocess
import sys

import pytest

from flashocc_ros import bagio
from flashocc_ros.dataset.nusc2bag import ConvertOptions, convert
from flashocc_ros.tools.play import schedule

from ..conftest import REPO_ROOT, wait_for

SCENE = "scene-0103"


@pytest.fixture(scope="module")
def scene_bag(synthetic_nuscenes, tmp_path_factory):
    out = tmp_path_factory.mktemp("play_bags")
    options = ConvertOptions(lidar=True, occ3d_gts=synthetic_nuscenes.occ3d_gts_dir)
    (result,) = convert(synthetic_nuscenes.dataroot, synthetic_nuscenes.version, [SCENE], out, options)
    assert result.status == "written", result.error
    return out / SCENE


def tool(name: str, *args, env) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", f"flashocc_ros.tools.{name}", *map(str, args)],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finish(proc: subprocess.Popen, timeout: float) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        raise AssertionError(f"{proc.args[2]} did not finish in {timeout} s:\n{out}") from None
    assert proc.returncode == 0, out
    return out


def raw_by_topic(path) -> dict[str, list[bytes]]:
    out: dict[str, list[bytes]] = {}
    for m in bagio.iter_messages(path, deserialize=False):
        out.setdefault(m.topic, []).append(m.raw)
    return out


def test_schedule_honours_start_rate_and_latched_preroll(scene_bag):
    full = list(schedule(scene_bag, None, 0.0, 1.0))
    assert full[0].offset_s == 0.0 and [m.log_time_ns for m in full] == sorted(m.log_time_ns for m in full)
    assert not any(m.preroll for m in full)
    assert full[-1].offset_s == pytest.approx((full[-1].log_time_ns - full[0].log_time_ns) / 1e9)
    begin = full[0].log_time_ns + 500_000_000
    topics = {bagio.TF_TOPIC, bagio.TF_STATIC_TOPIC}
    late = list(schedule(scene_bag, topics, 0.5, 4.0, latched={bagio.TF_STATIC_TOPIC}))
    assert late[0].topic == bagio.TF_STATIC_TOPIC and late[0].preroll and late[0].offset_s == 0.0
    rest = late[1:]
    assert all(m.topic == bagio.TF_TOPIC and m.log_time_ns >= begin and not m.preroll for m in rest)
    assert rest[0].offset_s == 0.0
    assert rest[-1].offset_s == pytest.approx((rest[-1].log_time_ns - rest[0].log_time_ns) / 1e9 / 4.0)
    assert len(rest) == sum(1 for m in full if m.topic == bagio.TF_TOPIC and m.log_time_ns >= begin)
    with pytest.raises(ValueError, match="rate"):
        next(schedule(scene_bag, None, 0.0, 0.0))


@pytest.mark.ros
def test_play_record_round_trip_is_byte_identical_per_message(scene_bag, ros_env, tmp_path):
    counts = bagio.topic_counts(scene_bag)
    total = sum(n for _, n in counts.values())
    recorded = tmp_path / "recorded"
    rec = tool("record", "--out", recorded, *counts, "--max-messages", total, "--duration", 90, env=ros_env)
    play = tool("play", scene_bag, "--rate", 2, "--wait-for-subscribers", "--wait-timeout", 60, env=ros_env)
    play_out = finish(play, 120)
    rec_out = finish(rec, 60)
    assert f"done, {total} messages published" in play_out
    assert f"({total} messages;" in rec_out, rec_out

    assert {t: c for t, (c, _) in bagio.topic_counts(recorded).items()} == {t: c for t, (c, _) in counts.items()}
    original, copy = raw_by_topic(scene_bag), raw_by_topic(recorded)
    assert set(copy) == set(original)
    for topic, messages in original.items():
        assert copy[topic] == messages, topic  # same bytes, same order, nothing lost
    with bagio.open_reader(recorded) as reader:
        qos = {c.topic: c.ext.offered_qos_profiles[0] for c in reader.connections}
    assert qos[bagio.TF_STATIC_TOPIC].durability.name == "TRANSIENT_LOCAL"
    assert qos[bagio.image_topic("CAM_FRONT")].durability.name == "VOLATILE"
    assert all(q.reliability.name == "RELIABLE" for q in qos.values())
    assert not list(tmp_path.glob(".partial-*"))


@pytest.mark.ros
def test_live_subscriber_gets_images_clock_and_latched_tf_static(scene_bag, synthetic_nuscenes, rclpy_context, ros_env):
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from rosgraph_msgs.msg import Clock
    from sensor_msgs.msg import CompressedImage
    from tf2_msgs.msg import TFMessage

    node = rclpy.create_node("play_test_subscriber", context=rclpy_context)
    executor = SingleThreadedExecutor(context=rclpy_context)
    executor.add_node(node)
    images, clocks, statics = [], [], []
    topic = bagio.image_topic("CAM_FRONT")
    node.create_subscription(CompressedImage, topic, images.append, 100)  # reliable: no drops under CI load
    node.create_subscription(Clock, "/clock", lambda m: clocks.append(bagio.stamp_ns(m.clock)), 1000)
    latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
    node.create_subscription(TFMessage, bagio.TF_STATIC_TOPIC, statics.append, latched)

    play = tool(
        "play",
        scene_bag,
        "--start",
        0.5,
        "--rate",
        2,
        "--clock",
        "--loop",
        "--loops",
        2,
        "--topics",
        topic,
        bagio.TF_STATIC_TOPIC,
        "--wait-for-subscribers",
        env=ros_env,
    )
    try:
        wait_for(lambda: play.poll() is not None, 60, lambda: executor.spin_once(0.05), "flashocc-play to finish")
        for _ in range(20):  # drain what is already delivered
            executor.spin_once(0.02)
    finally:
        out = finish(play, 10)

    bag = [m for m in bagio.iter_messages(scene_bag, [topic])]
    start_ns = min(m.log_time_ns for m in bagio.iter_messages(scene_bag, deserialize=False))
    expected = [m for m in bag if m.log_time_ns >= start_ns + 500_000_000]
    assert 0 < len(expected) < len(bag), out
    got = [(bagio.stamp_ns(m.header), bytes(m.data)) for m in images]
    want = [(m.log_time_ns, m.msg.data.tobytes()) for m in expected] * 2  # two passes with --loop --loops 2
    assert got == want
    assert clocks and min(clocks) >= start_ns + 500_000_000 and max(clocks) == expected[-1].log_time_ns
    first_pass = clocks[: clocks.index(max(clocks)) + 1]
    assert first_pass == sorted(first_pass)
    assert statics, "no /tf_static from the player"
    assert {t.child_frame_id for t in statics[0].transforms} >= {"CAM_FRONT", "LIDAR_TOP"}
