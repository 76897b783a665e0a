"""flashocc-play / flashocc-record over real DDS: byte-identical round trip, recorded QoS, /clock, --start, --loop."""

from __future__ import annotations

import subprocess
import sys

import pytest

from flashocc_ros.dataset import bagio
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


def _start_publishers(ctx, topic: str):
    """Two publishers on one topic offering different QoS, publishing from a background executor."""
    import threading

    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from std_msgs.msg import String

    node = rclpy.create_node("two_publishers", context=ctx)
    pubs = [
        node.create_publisher(String, topic, QoSProfile(depth=7, reliability=ReliabilityPolicy.RELIABLE)),
        node.create_publisher(String, topic, QoSProfile(depth=3, reliability=ReliabilityPolicy.BEST_EFFORT)),
    ]
    node.create_timer(0.01, lambda: [p.publish(String(data="x" * 2000)) for p in pubs])
    executor = SingleThreadedExecutor(context=ctx)
    executor.add_node(node)
    thread = threading.Thread(target=executor.spin, daemon=True)
    thread.start()
    return executor, node


def _wait_for_line(proc: subprocess.Popen, text: str, timeout: float = 30.0) -> list[str]:
    import threading

    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True).start()
    wait_for(lambda: any(text in ln for ln in lines), timeout, what=f"{text!r} from {proc.args[2]}")
    return lines


@pytest.mark.ros
def test_record_survives_repeated_ctrl_c_and_sigterm_and_keeps_every_qos(rclpy_context, ros_env, tmp_path):
    import signal
    import time

    executor, node = _start_publishers(rclpy_context, "/multi")
    try:
        out = tmp_path / "run"
        rec = tool("record", "--out", out, "/multi", env=ros_env)
        lines = _wait_for_line(rec, "recording /multi")
        time.sleep(1.0)
        for _ in range(5):  # a burst of Ctrl-C, then SIGTERM, while the bag is being finalised
            rec.send_signal(signal.SIGINT)
        rec.send_signal(signal.SIGTERM)
        rec.wait(timeout=30)
        time.sleep(0.2)
        text = "".join(lines)
        assert rec.returncode == 0, text
        assert "Traceback" not in text and "signal ignored" in text
        assert bagio.check_bag(out) == []
        counts = bagio.topic_counts(out)
        assert counts["/multi"][1] > 10
        with bagio.open_reader(out) as reader:
            (conn,) = reader.connections
        offered = sorted(q.reliability.name for q in conn.ext.offered_qos_profiles)  # DDS discovery has no depth
        assert offered == ["BEST_EFFORT", "RELIABLE"], conn.ext.offered_qos_profiles
        assert not list(tmp_path.glob(".partial-*"))
    finally:
        executor.shutdown()
        node.destroy_node()


@pytest.mark.ros
def test_after_sigkill_the_recording_is_recovered_and_a_rerun_mentions_it(rclpy_context, ros_env, tmp_path):
    import signal
    import time

    executor, node = _start_publishers(rclpy_context, "/multi")
    try:
        out = tmp_path / "run"
        rec = tool("record", "--out", out, "/multi", "--flush-interval", 0.2, env=ros_env)
        _wait_for_line(rec, "recording /multi")
        time.sleep(1.5)
        rec.send_signal(signal.SIGKILL)
        rec.wait(timeout=10)
    finally:
        executor.shutdown()
        node.destroy_node()
    (partial,) = tmp_path.glob(f".partial-run-{rec.pid}/run/run.mcap")
    with pytest.raises(Exception):  # noqa: B017 - unfinished: no summary, no footer
        list(bagio.iter_messages(partial))
    rerun = tool("record", "--out", out, "/nothing", "--duration", 0.5, env=ros_env)
    assert f"{partial.parent.parent} is an unfinished recording of a killed run" in finish(rerun, 60)
    (tmp_path / "run").rename(tmp_path / "empty_rerun")
    recovered = tmp_path / "recovered"
    proc = tool("record", "--recover", partial, "--out", recovered, env=ros_env)
    text = finish(proc, 60)
    assert "recovered" in text and bagio.check_bag(recovered) == []
    assert bagio.topic_counts(recovered)["/multi"][1] > 20, text


def test_play_refuses_a_damaged_bag_naming_the_problem(scene_bag, tmp_path, capsys):
    import shutil

    from flashocc_ros.tools import play

    copy = tmp_path / "damaged"
    shutil.copytree(scene_bag, copy)
    (file,) = copy.glob("*.mcap")
    data = bytearray(file.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 4096] = bytes(4096)
    file.write_bytes(bytes(data))
    assert play.main([str(copy)]) == 2
    err = capsys.readouterr().err
    assert f"flashocc-play: error: {file}" in err and f"{copy} is damaged; not played" in err
