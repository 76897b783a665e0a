"""flashocc-play: replay a rosbag2 bag into a live ROS 2 graph without rosbag2 (rosbags reader + rclpy).

Messages are published as the recorded CDR bytes (no deserialization) on publishers created with each topic's
recorded QoS (reliability, durability, history, depth), paced by the bag's log times. The bag is checked first
(MCAP chunk and data-section CRCs, sqlite integrity): a damaged bag is refused (exit 2) naming the problem.

  flashocc-play bags/scene-0103 --rate 0.5 --clock --wait-for-subscribers

--clock publishes rosgraph_msgs/Clock on /clock with the bag time (run the node with use_sim_time:=true).
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from flashocc_ros.dataset import bagio


@dataclass(frozen=True)
class PlayTopic:
    topic: str
    msgtype: str
    qos: object | None  # rosbags Qos recorded for the topic (first offered profile), None when absent
    count: int


def bag_topics(path: Path) -> list[PlayTopic]:
    """Topics of a bag with their recorded QoS (pure rosbags, no ROS)."""
    with bagio.open_reader(path) as reader:
        topics: dict[str, PlayTopic] = {}
        for c in reader.connections:
            profiles = list(getattr(c.ext, "offered_qos_profiles", []) or [])
            # Prefer a transient-local profile so that late joiners still get latched data (e.g. /tf_static).
            profiles.sort(key=lambda q: q.durability.name != "TRANSIENT_LOCAL")
            prev = topics.get(c.topic)
            count = c.msgcount + (prev.count if prev else 0)
            topics[c.topic] = PlayTopic(c.topic, c.msgtype, profiles[0] if profiles else None, count)
        return list(topics.values())


@dataclass(frozen=True)
class Scheduled:
    offset_s: float  # wall seconds after playback start
    topic: str
    log_time_ns: int
    raw: bytes
    preroll: bool  # a latched message from before --start, published first


def schedule(
    path: Path, topics: set[str] | None, start_s: float, rate: float, latched: set[str] = frozenset()
) -> Iterator[Scheduled]:
    """Messages in log-time order from `start_s` into the bag, with their playback offsets at `rate`.

    Messages of `latched` (transient-local) topics recorded before the start point are sent first (offset 0), so
    that a playback started mid-bag still delivers e.g. /tf_static."""
    if rate <= 0:
        raise ValueError(f"--rate must be > 0, got {rate}")
    with bagio.open_reader(path) as reader:
        conns = [c for c in reader.connections if topics is None or c.topic in topics]
        begin = reader.start_time + int(round(start_s * 1e9))
        first = None
        for conn, log_time, raw in reader.messages(connections=conns):
            if log_time < begin:
                if conn.topic in latched:
                    yield Scheduled(0.0, conn.topic, log_time, bytes(raw), True)
                continue
            if first is None:
                first = log_time
            yield Scheduled((log_time - first) / 1e9 / rate, conn.topic, log_time, bytes(raw), False)


def message_class(msgtype: str):
    """rclpy message class for 'pkg/msg/Name'."""
    package, _, name = msgtype.split("/")
    return getattr(importlib.import_module(f"{package}.msg"), name)


def rclpy_qos(qos, topic: str):
    """rosbags Qos -> rclpy QoSProfile (deadline/lifespan/liveliness left at their defaults)."""
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

    if qos is None:
        latched = topic == bagio.TF_STATIC_TOPIC
        return QoSProfile(
            depth=1 if latched else 10,
            durability=DurabilityPolicy.TRANSIENT_LOCAL if latched else DurabilityPolicy.VOLATILE,
            reliability=ReliabilityPolicy.RELIABLE,
        )
    history = HistoryPolicy.KEEP_ALL if qos.history.name == "KEEP_ALL" else HistoryPolicy.KEEP_LAST
    reliability = ReliabilityPolicy.BEST_EFFORT if qos.reliability.name == "BEST_EFFORT" else ReliabilityPolicy.RELIABLE
    durability = (
        DurabilityPolicy.TRANSIENT_LOCAL if qos.durability.name == "TRANSIENT_LOCAL" else DurabilityPolicy.VOLATILE
    )
    return QoSProfile(history=history, depth=max(1, int(qos.depth)), reliability=reliability, durability=durability)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="flashocc-play", description=__doc__.split("\n")[0])
    p.add_argument("bag", type=Path, help="rosbag2 directory (or .mcap / .db3 file)")
    p.add_argument("--rate", type=float, default=1.0, help="playback speed factor (default 1.0)")
    p.add_argument("--loop", action="store_true", help="play again from --start when the end is reached")
    p.add_argument("--start", type=float, default=0.0, help="skip the first S seconds of the bag")
    p.add_argument("--clock", action="store_true", help="publish /clock (rosgraph_msgs/Clock) with the bag time")
    p.add_argument("--clock-hz", type=float, default=100.0, help="/clock publishing frequency (default 100)")
    p.add_argument("--topics", nargs="+", help="play only these topics")
    p.add_argument(
        "--wait-for-subscribers",
        action="store_true",
        help="before playing, wait until every topic has a subscriber (at most --wait-timeout seconds)",
    )
    p.add_argument("--wait-timeout", type=float, default=20.0)
    p.add_argument(
        "--no-check", action="store_true", help="skip the integrity check (MCAP CRCs, sqlite integrity) before playing"
    )
    p.add_argument("--loops", type=int, default=0, help=argparse.SUPPRESS)  # with --loop: stop after N passes
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.rate <= 0:
        print(f"flashocc-play: error: --rate must be > 0, got {args.rate}", file=sys.stderr)
        return 2
    try:
        topics = bag_topics(args.bag)
        problems = [] if args.no_check else bagio.check_bag(args.bag)
    except Exception as exc:
        print(f"flashocc-play: error: cannot open bag {args.bag}: {exc}", file=sys.stderr)
        return 2
    damaged = [p for p in problems if "carries no CRCs" not in p]
    for problem in problems:
        print(f"flashocc-play: {'error' if problem in damaged else 'warning'}: {problem}", file=sys.stderr)
    if damaged:
        print(
            f"flashocc-play: error: {args.bag} is damaged; not played (--no-check plays the readable part, "
            "flashocc-record --recover FILE.mcap --out NEW salvages the intact chunks)",
            file=sys.stderr,
        )
        return 2
    if args.topics:
        unknown = sorted(set(args.topics) - {t.topic for t in topics})
        if unknown:
            print(f"flashocc-play: error: topics not in {args.bag}: {unknown}", file=sys.stderr)
            return 2
        topics = [t for t in topics if t.topic in set(args.topics)]

    import rclpy
    from rclpy.duration import Duration
    from rclpy.executors import SingleThreadedExecutor

    rclpy.init(args=None)
    signal.signal(signal.SIGTERM, _interrupt)
    node = rclpy.create_node("flashocc_play")
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    published = 0
    try:
        publishers = {}
        for t in topics:
            try:
                cls = message_class(t.msgtype)
            except (ImportError, AttributeError):
                print(f"flashocc-play: skipping {t.topic}: message type {t.msgtype} is not installed", file=sys.stderr)
                continue
            publishers[t.topic] = node.create_publisher(cls, t.topic, rclpy_qos(t.qos, t.topic))
        clock_pub = None
        if args.clock:
            from rclpy.qos import QoSProfile
            from rosgraph_msgs.msg import Clock

            clock_pub = node.create_publisher(Clock, bagio.CLOCK_TOPIC, QoSProfile(depth=1))
        total = sum(t.count for t in topics if t.topic in publishers)
        print(f"flashocc-play: {args.bag}: {total} messages on {len(publishers)} topics, rate {args.rate}", flush=True)

        if args.wait_for_subscribers:
            deadline = time.monotonic() + args.wait_timeout
            while time.monotonic() < deadline and any(p.get_subscription_count() == 0 for p in publishers.values()):
                executor.spin_once(timeout_sec=0.05)
            lonely = [t for t, p in publishers.items() if p.get_subscription_count() == 0]
            if lonely:
                print(f"flashocc-play: no subscriber after {args.wait_timeout} s on {lonely}", file=sys.stderr)

        passes = 0
        while True:
            published += _play_once(args, publishers, clock_pub, executor)
            passes += 1
            if not args.loop or (args.loops and passes >= args.loops):
                break
        for pub in publishers.values():  # reliable subscribers get everything before we leave the graph
            pub.wait_for_all_acked(Duration(seconds=5))
        print(f"flashocc-play: done, {published} messages published", flush=True)
        return 0
    except KeyboardInterrupt:
        print(f"flashocc-play: interrupted after {published} messages", file=sys.stderr)
        return 0
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


def _interrupt(*_args) -> None:
    raise KeyboardInterrupt


def _play_once(args, publishers, clock_pub, executor) -> int:
    from builtin_interfaces.msg import Time
    from rclpy.qos import DurabilityPolicy
    from rosgraph_msgs.msg import Clock

    clock_period = 1.0 / args.clock_hz if args.clock_hz > 0 else float("inf")
    last_clock = -float("inf")
    wall0 = time.monotonic()
    count = 0
    bag_first = None

    def publish_clock(bag_ns: int) -> None:
        sec, nanosec = bagio.split_ns(bag_ns)
        clock_pub.publish(Clock(clock=Time(sec=sec, nanosec=nanosec)))

    latched = {t for t, p in publishers.items() if p.qos_profile.durability == DurabilityPolicy.TRANSIENT_LOCAL}
    for item in schedule(args.bag, set(publishers), args.start, args.rate, latched):
        if not item.preroll:
            if bag_first is None:
                bag_first = item.log_time_ns
            while True:
                now = time.monotonic() - wall0
                remaining = item.offset_s - now
                if clock_pub is not None and now - last_clock >= clock_period:
                    publish_clock(bag_first + int(min(now, item.offset_s) * args.rate * 1e9))
                    last_clock = now
                if remaining <= 0:
                    break
                time.sleep(min(remaining, clock_period))
            if clock_pub is not None:
                publish_clock(item.log_time_ns)
        publishers[item.topic].publish(item.raw)
        count += 1
        executor.spin_once(timeout_sec=0)
    return count


if __name__ == "__main__":
    sys.exit(main())
