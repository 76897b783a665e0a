"""flashocc-record: record ROS 2 topics into a rosbag2 bag without rosbag2 (rclpy raw subscriptions + rosbags).

Each topic is subscribed as soon as a publisher makes its type known, with a QoS that matches the publishers
(reliable / transient local only when every publisher offers it, like rosbag2); every publisher's QoS is stored as
the topic's offered_qos_profiles. Messages are stored as the received CDR bytes with the receive time as log time.
The bag is written under a temporary name and renamed to --out when recording stops (Ctrl-C, SIGTERM,
--duration, --max-messages or --idle-timeout). The first Ctrl-C / SIGTERM stops recording and finalises the bag;
further ones are ignored until it is done. Written data reaches the disk at least every --flush-interval seconds,
so after a SIGKILL or power loss `--recover` salvages the unfinished MCAP file:

  flashocc-record --out run1 /occupancy/semantic /occupancy/timing --idle-timeout 5
  flashocc-record --recover .partial-run1-1234/run1/run1.mcap --out run1_recovered
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import time
from pathlib import Path

from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime

from flashocc_ros.atomic import process_alive
from flashocc_ros.dataset import bagio
from flashocc_ros.tools.play import message_class

PARTIAL_PREFIX = ".partial-"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="flashocc-record", description=__doc__.split("\n")[0])
    p.add_argument("topics", nargs="*", help="topics to record")
    p.add_argument("--out", required=True, type=Path, help="bag directory to create (must not exist)")
    p.add_argument("--storage", default="mcap", choices=sorted(bagio.STORAGES))
    p.add_argument("--distro", default="kilted", choices=sorted(bagio.DISTROS))
    p.add_argument("--duration", type=float, default=0.0, help="stop after S seconds (0 = until interrupted)")
    p.add_argument("--max-messages", type=int, default=0, help="stop after N messages in total (0 = no limit)")
    p.add_argument(
        "--idle-timeout", type=float, default=0.0, help="stop when no message arrived for S seconds after the first"
    )
    p.add_argument("--depth", type=int, default=100, help="subscription queue depth (default 100)")
    p.add_argument(
        "--flush-interval", type=float, default=1.0, help="hand written data to the disk every S seconds (default 1)"
    )
    p.add_argument(
        "--recover",
        type=Path,
        metavar="PARTIAL.mcap",
        help="instead of recording: salvage an unfinished MCAP file (of a killed recording) into the bag --out",
    )
    return p


def bag_qos_from_endpoint(info) -> Qos:
    """rclpy TopicEndpointInfo.qos_profile -> rosbags Qos (what the publisher offered)."""
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, ReliabilityPolicy

    q = info.qos_profile
    zero = QosTime(0, 0)
    return Qos(
        QosHistory.KEEP_ALL if q.history == HistoryPolicy.KEEP_ALL else QosHistory.KEEP_LAST,
        int(q.depth),
        QosReliability.BEST_EFFORT if q.reliability == ReliabilityPolicy.BEST_EFFORT else QosReliability.RELIABLE,
        QosDurability.TRANSIENT_LOCAL if q.durability == DurabilityPolicy.TRANSIENT_LOCAL else QosDurability.VOLATILE,
        zero,
        zero,
        QosLiveliness.AUTOMATIC,
        zero,
        False,
    )


class Recorder:
    """Subscribes to the requested topics as they appear and writes every received message."""

    def __init__(self, node, writer, typestore, topics: list[str], depth: int):
        self.node, self.writer, self.store, self.depth = node, writer, typestore, depth
        self.pending = list(dict.fromkeys(topics))
        self.subscriptions = {}
        self.connections = {}
        self.counts: dict[str, int] = {}
        self.total = 0
        self.last_message = None

    def discover(self) -> None:
        """Subscribe to pending topics whose type is known by now."""
        from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

        if not self.pending:
            return
        known = dict(self.node.get_topic_names_and_types())
        for topic in list(self.pending):
            types = known.get(topic)
            if not types:
                continue
            if len(types) > 1:
                print(f"flashocc-record: {topic} has several types {types}; not recorded", file=sys.stderr)
                self.pending.remove(topic)
                continue
            msgtype = types[0]
            pubs = self.node.get_publishers_info_by_topic(topic)
            if not pubs:
                continue
            offered = [bag_qos_from_endpoint(p) for p in pubs]
            try:
                cls = message_class(msgtype)
                self.store.generate_msgdef(msgtype, ros_version=2)
            except Exception as exc:
                print(f"flashocc-record: {topic}: type {msgtype} unavailable ({exc}); not recorded", file=sys.stderr)
                self.pending.remove(topic)
                continue
            reliable = all(q.reliability == QosReliability.RELIABLE for q in offered)
            latched = all(q.durability == QosDurability.TRANSIENT_LOCAL for q in offered)
            qos = QoSProfile(
                history=HistoryPolicy.KEEP_LAST,
                depth=self.depth,
                reliability=ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT,
                durability=DurabilityPolicy.TRANSIENT_LOCAL if latched else DurabilityPolicy.VOLATILE,
            )
            self.connections[topic] = self.writer.add_connection(
                topic, msgtype, typestore=self.store, offered_qos_profiles=offered
            )
            self.subscriptions[topic] = self.node.create_subscription(
                cls, topic, lambda raw, t=topic: self.on_message(t, raw), qos, raw=True
            )
            self.pending.remove(topic)
            print(f"flashocc-record: recording {topic} ({msgtype})", flush=True)
        if not self.pending:
            print(f"flashocc-record: all {len(self.subscriptions)} topics subscribed", flush=True)

    def on_message(self, topic: str, raw: bytes) -> None:
        self.writer.write(self.connections[topic], time.time_ns(), raw)
        self.counts[topic] = self.counts.get(topic, 0) + 1
        self.total += 1
        self.last_message = time.monotonic()


class StopRequest:
    """Signal handler for SIGINT / SIGTERM: the first signal asks the loop to stop; later ones are only counted
    (and said to be ignored), so that finalising the bag is never interrupted."""

    def __init__(self) -> None:
        self.signals = 0

    def __call__(self, signum, _frame) -> None:
        self.signals += 1
        if self.signals == 1:
            print(f"flashocc-record: {signal.Signals(signum).name}: stopping, finalising the bag", flush=True)
        else:
            print("flashocc-record: already finalising the bag; signal ignored", file=sys.stderr, flush=True)

    @property
    def requested(self) -> bool:
        return self.signals > 0


def stale_partials(out: Path) -> list[Path]:
    """Unfinished recordings of --out left by killed runs (their process is gone)."""
    found = []
    for tmp in sorted(out.parent.glob(f"{PARTIAL_PREFIX}{out.name}-*")):
        pid = tmp.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not process_alive(int(pid)):
            found.append(tmp)
    return found
    return True


def recover(partial: Path, out: Path, distro: str) -> int:
    try:
        report = bagio.recover_mcap(partial, out, distro)
    except (FileNotFoundError, FileExistsError, ValueError) as exc:
        print(f"flashocc-record: error: {exc}", file=sys.stderr)
        return 2
    for problem in report.problems:
        print(f"flashocc-record: {problem}", file=sys.stderr)
    summary = ", ".join(f"{t}: {n}" for t, n in sorted(report.topics.items()))
    print(f"flashocc-record: recovered {report.messages} messages into {out} ({summary or 'none'})", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    out: Path = args.out
    if args.recover is not None:
        return recover(args.recover, out, args.distro)
    if not args.topics:
        parser.error("the following arguments are required: topics")
    if out.exists():
        print(f"flashocc-record: error: --out {out} exists already", file=sys.stderr)
        return 2
    for tmp in stale_partials(out):
        files = sorted(tmp.glob("*/*.mcap"))
        hint = f": flashocc-record --recover {files[0]} --out NEW" if files else ""
        print(f"flashocc-record: note: {tmp} is an unfinished recording of a killed run{hint}", file=sys.stderr)
    stop = StopRequest()  # before anything is created: a Ctrl-C from now on never leaves a half-written bag
    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    tmp_parent = out.parent / f"{PARTIAL_PREFIX}{out.name}-{os.getpid()}"
    tmp_parent.mkdir(parents=True)
    writer = bagio.open_writer(tmp_parent / out.name, storage=args.storage, distro=args.distro)
    writer.open()
    store = bagio.make_typestore(args.distro)

    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.signals import SignalHandlerOptions

    rclpy.init(args=None, signal_handler_options=SignalHandlerOptions.NO)
    node = rclpy.create_node("flashocc_record")
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    recorder = Recorder(node, writer, store, args.topics, args.depth)
    started = time.monotonic()
    next_discovery = 0.0
    next_flush = started + args.flush_interval
    ok = True
    try:
        while not stop.requested:
            now = time.monotonic()
            if recorder.pending and now >= next_discovery:
                recorder.discover()
                next_discovery = now + 0.1
            executor.spin_once(timeout_sec=0.05)
            if args.flush_interval > 0 and now >= next_flush:
                writer.flush()
                next_flush = now + args.flush_interval
            if args.max_messages and recorder.total >= args.max_messages:
                break
            if args.duration and now - started >= args.duration:
                break
            if args.idle_timeout and recorder.last_message and now - recorder.last_message >= args.idle_timeout:
                break
    except Exception as exc:  # keep what was recorded, but say what went wrong
        ok = False
        print(f"flashocc-record: error while recording: {exc}", file=sys.stderr)
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    writer.close()
    (tmp_parent / out.name).rename(out)
    shutil.rmtree(tmp_parent, ignore_errors=True)
    for sig, handler in previous.items():
        signal.signal(sig, handler)
    if recorder.pending:
        print(f"flashocc-record: never saw a publisher on {recorder.pending}", file=sys.stderr)
    summary = ", ".join(f"{t}: {n}" for t, n in sorted(recorder.counts.items()))
    print(f"flashocc-record: wrote {out} ({recorder.total} messages; {summary or 'none'})", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
