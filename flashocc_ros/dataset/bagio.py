"""rosbag2 I/O without ROS: the rosbags typestore with our messages, topic/frame/QoS conventions, numpy helpers.

Used by the nuScenes converter (writing), the player/recorder tools, evaluation and rendering (reading). Messages
built here are rosbags dataclasses (``typestore.types[...]``); the readers below also accept rclpy messages where
they only read fields (duck typing). No rclpy import.

Conventions shared by the converter and the node's default configuration:

- images ``/{camera}/image/compressed`` (sensor_msgs/CompressedImage, the original nuScenes JPEG bytes), camera
  info ``/{camera}/camera_info``, both stamped at the sample_data time, frame = the nuScenes channel name
  (e.g. ``CAM_FRONT``; nuScenes camera frames are optical frames: z forward, x right, y down);
- ``/tf_static``: ``base_link`` -> every camera and ``LIDAR_TOP`` (transient local); ``/tf``: ``map`` ->
  ``base_link`` at every converted sample_data time;
- ``/nuscenes/sample`` (flashocc_ros/SampleInfo) and ``/occupancy/ground_truth`` (flashocc_ros/SemanticOccupancy)
  stamped at the sample timestamp (the LIDAR_TOP keyframe time); ``/LIDAR_TOP/points`` (sensor_msgs/PointCloud2).
- stamps are nuScenes microseconds x 1000 exactly; the bag's log time equals the header stamp.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from rosbags.highlevel import AnyReader
from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.rosbag2.storage_sqlite3 import Sqlite3Writer
from rosbags.typesys import Stores, get_types_from_msg, get_typestore

from flashocc_ros import topics
from flashocc_ros.atomic import atomic_write_text
from flashocc_ros.config import OCC_GRID, GridSpec, OutputConfig
from flashocc_ros.ros import occupancy_codec as codec
from flashocc_ros.stamps import ns_from_us, split_ns, stamp_to_ns  # noqa: F401 (re-exported for the tools)

# ----------------------------------------------------------------------------------------------------------------
# Names
# ----------------------------------------------------------------------------------------------------------------

PACKAGE = "flashocc_ros"
OUR_MESSAGES = ("SampleInfo", "SemanticOccupancy", "OccupancyInstance", "PanopticOccupancy", "InferenceTiming")
DISTROS = {"humble": Stores.ROS2_HUMBLE, "jazzy": Stores.ROS2_JAZZY, "kilted": Stores.ROS2_KILTED}
# rosbag2 metadata version written per distro (Humble's rosbag2 predates format 9).
BAG_VERSION = {"humble": 8, "jazzy": 9, "kilted": 9}
STORAGES = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}

COMPRESSED_IMAGE = "sensor_msgs/msg/CompressedImage"
CAMERA_INFO = "sensor_msgs/msg/CameraInfo"
POINT_CLOUD2 = "sensor_msgs/msg/PointCloud2"
TF_MESSAGE = "tf2_msgs/msg/TFMessage"
CLOCK = "rosgraph_msgs/msg/Clock"
SAMPLE_INFO = f"{PACKAGE}/msg/SampleInfo"
SEMANTIC_OCCUPANCY = f"{PACKAGE}/msg/SemanticOccupancy"
PANOPTIC_OCCUPANCY = f"{PACKAGE}/msg/PanopticOccupancy"
INFERENCE_TIMING = f"{PACKAGE}/msg/InferenceTiming"

MAP_FRAME = "map"
EGO_FRAME = OutputConfig().ego_frame  # base_link
# Topic names live in flashocc_ros.topics; the ones the bag tools use are re-exported here.
TF_TOPIC = topics.TF_TOPIC
TF_STATIC_TOPIC = topics.TF_STATIC_TOPIC
CLOCK_TOPIC = topics.CLOCK_TOPIC
SAMPLE_TOPIC = topics.SAMPLE_TOPIC
GROUND_TRUTH_TOPIC = topics.GROUND_TRUTH_TOPIC
LIDAR_TOPIC = topics.LIDAR_TOPIC
SEMANTIC_TOPIC = topics.SEMANTIC_TOPIC
PANOPTIC_TOPIC = topics.PANOPTIC_TOPIC
TIMING_TOPIC = topics.TIMING_TOPIC
# Bag metadata custom_data key written by the converter: JSON list of the scene's samples (see SampleRecord).
SAMPLES_CUSTOM_KEY = "flashocc_ros.samples"


def image_topic(camera: str) -> str:
    return topics.camera_topic(topics.COMPRESSED_IMAGE_TOPIC, camera)


def camera_info_topic(camera: str) -> str:
    return topics.camera_topic(topics.CAMERA_INFO_TOPIC, camera)


def sensor_frame(channel: str) -> str:
    """TF frame of a nuScenes sensor channel (the channel name itself, e.g. CAM_FRONT, LIDAR_TOP)."""
    return channel


# ----------------------------------------------------------------------------------------------------------------
# Typestore
# ----------------------------------------------------------------------------------------------------------------


def interface_dir() -> Path:
    """The directory holding our .msg files: <repo>/msg, else <prefix>/share/flashocc_ros/msg."""
    candidates = [Path(__file__).resolve().parents[2] / "msg"]
    prefixes = [p for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p] + [sys.prefix]
    candidates += [Path(p) / "share" / PACKAGE / "msg" for p in prefixes]
    for path in candidates:
        if all((path / f"{name}.msg").is_file() for name in OUR_MESSAGES):
            return path
    raise FileNotFoundError(f"{PACKAGE} message definitions not found in any of {[str(c) for c in candidates]}")


@lru_cache(maxsize=8)
def make_typestore(distro: str = "kilted"):
    """A rosbags typestore for `distro` (humble | jazzy | kilted) with our messages registered."""
    if distro not in DISTROS:
        raise ValueError(f"unknown ROS distro {distro!r}; supported: {', '.join(DISTROS)}")
    store = get_typestore(DISTROS[distro])
    folder = interface_dir()
    types: dict = {}
    for name in OUR_MESSAGES:
        types.update(get_types_from_msg((folder / f"{name}.msg").read_text(), f"{PACKAGE}/msg/{name}"))
    store.register(types)
    return store


# ----------------------------------------------------------------------------------------------------------------
# QoS (recorded as offered_qos_profiles in metadata.yaml)
# ----------------------------------------------------------------------------------------------------------------

_DEFAULT_TIME = QosTime(0, 0)  # rmw default (infinite)


def make_qos(depth: int = 10, *, reliable: bool = True, transient_local: bool = False) -> Qos:
    return Qos(
        QosHistory.KEEP_LAST,
        depth,
        QosReliability.RELIABLE if reliable else QosReliability.BEST_EFFORT,
        QosDurability.TRANSIENT_LOCAL if transient_local else QosDurability.VOLATILE,
        _DEFAULT_TIME,
        _DEFAULT_TIME,
        QosLiveliness.AUTOMATIC,
        _DEFAULT_TIME,
        False,
    )


SENSOR_QOS = make_qos(10)  # reliable publishers match both reliable and best-effort (sensor data) subscribers
TF_QOS = make_qos(100)
STATIC_QOS = make_qos(1, transient_local=True)
LATCHED_QOS = make_qos(1, transient_local=True)


# ----------------------------------------------------------------------------------------------------------------
# Time
# ----------------------------------------------------------------------------------------------------------------


stamp_ns = stamp_to_ns  # the name the tools use


def serialize(typestore, msg: Any, msgtype: str) -> bytes:
    """CDR bytes as a ROS 2 publisher puts them on the wire: zero-padded to a multiple of 4 bytes.

    Fast DDS delivers (and rosbag2 records) small payloads padded to 4-byte alignment; rosbags' serializer does not
    pad. Padding here makes a played-and-recorded copy byte-identical; CDR readers (rclpy, rosbags) accept it."""
    raw = bytes(typestore.serialize_cdr(msg, msgtype))
    return raw + b"\0" * (-len(raw) % 4)


# ----------------------------------------------------------------------------------------------------------------
# Message builders (rosbags dataclasses)
# ----------------------------------------------------------------------------------------------------------------


class MessageFactory:
    """Builds rosbags message objects for one typestore."""

    def __init__(self, typestore=None):
        self.store = typestore or make_typestore()
        self.T = self.store.types

    def time(self, stamp: int):
        sec, nanosec = split_ns(stamp)
        return self.T["builtin_interfaces/msg/Time"](sec=sec, nanosec=nanosec)

    def header(self, stamp: int, frame_id: str):
        return self.T["std_msgs/msg/Header"](stamp=self.time(stamp), frame_id=frame_id)

    def compressed_image(self, stamp: int, frame_id: str, jpeg: bytes, fmt: str = "jpeg"):
        return self.T[COMPRESSED_IMAGE](
            header=self.header(stamp, frame_id), format=fmt, data=np.frombuffer(jpeg, np.uint8)
        )

    def camera_info(self, stamp: int, frame_id: str, intrinsic: np.ndarray, width: int, height: int):
        """Pinhole CameraInfo with zero distortion (nuScenes images are undistorted): K, R = I, P = [K | 0]."""
        k = np.asarray(intrinsic, np.float64).reshape(3, 3)
        p = np.zeros((3, 4))
        p[:, :3] = k
        roi = self.T["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)
        return self.T[CAMERA_INFO](
            header=self.header(stamp, frame_id),
            height=int(height),
            width=int(width),
            distortion_model="plumb_bob",
            d=np.zeros(5),
            k=k.ravel().copy(),
            r=np.eye(3).ravel(),
            p=p.ravel(),
            binning_x=0,
            binning_y=0,
            roi=roi,
        )

    def transform(self, stamp: int, parent: str, child: str, translation, rotation_wxyz):
        """geometry_msgs/TransformStamped from a nuScenes-style translation and (w, x, y, z) quaternion."""
        w, x, y, z = (float(v) for v in rotation_wxyz)
        tx, ty, tz = (float(v) for v in translation)
        T = self.T
        return T["geometry_msgs/msg/TransformStamped"](
            header=self.header(stamp, parent),
            child_frame_id=child,
            transform=T["geometry_msgs/msg/Transform"](
                translation=T["geometry_msgs/msg/Vector3"](x=tx, y=ty, z=tz),
                rotation=T["geometry_msgs/msg/Quaternion"](x=x, y=y, z=z, w=w),
            ),
        )

    def tf_message(self, transforms: Sequence[Any]):
        return self.T[TF_MESSAGE](transforms=list(transforms))

    def sample_info(self, stamp: int, sample_token: str, scene_name: str, scene_token: str, index: int):
        return self.T[SAMPLE_INFO](
            header=self.header(stamp, EGO_FRAME),
            sample_token=sample_token,
            scene_name=scene_name,
            scene_token=scene_token,
            sample_index=int(index),
        )

    def semantic_occupancy(
        self,
        stamp: int,
        labels: np.ndarray,
        *,
        mask_camera: np.ndarray | None = None,
        mask_lidar: np.ndarray | None = None,
        source: str = "ground_truth",
        frame_id: str = EGO_FRAME,
        grid: GridSpec = OCC_GRID,
    ):
        """flashocc_ros/SemanticOccupancy from a (200, 200, 16) uint8 [ix, iy, iz] grid (masks optional)."""
        fields = codec.semantic_fields(
            labels, self.header(stamp, frame_id), source, grid, mask_camera=mask_camera, mask_lidar=mask_lidar,
            what="labels",
        )  # fmt: skip
        return codec.build_rosbags(self.store, SEMANTIC_OCCUPANCY, fields)

    def pointcloud(self, stamp: int, frame_id: str, points: np.ndarray):
        """sensor_msgs/PointCloud2 with float32 x, y, z, intensity and uint16 ring (nuScenes .pcd.bin rows)."""
        cloud = lidar_points_to_records(points)
        fields = codec.pointcloud_fields(cloud, self.header(stamp, frame_id), LIDAR_POINT_DTYPE)
        return codec.build_rosbags(self.store, POINT_CLOUD2, fields)


LIDAR_POINT_DTYPE = np.dtype(
    {
        "names": ["x", "y", "z", "intensity", "ring"],
        "formats": [np.float32, np.float32, np.float32, np.float32, np.uint16],
        "offsets": [0, 4, 8, 12, 16],
        "itemsize": 20,
    }
)


def lidar_points_to_records(points: np.ndarray) -> np.ndarray:
    """(N, 5) float32 nuScenes lidar rows (x, y, z, intensity, ring) -> LIDAR_POINT_DTYPE records."""
    points = np.asarray(points, np.float32).reshape(-1, 5)
    rec = np.zeros(len(points), LIDAR_POINT_DTYPE)
    for i, name in enumerate(("x", "y", "z", "intensity")):
        rec[name] = points[:, i]
    rec["ring"] = points[:, 4].astype(np.uint16)
    return rec


def pointcloud_to_records(msg: Any) -> np.ndarray:
    """PointCloud2 written by `MessageFactory.pointcloud` -> LIDAR_POINT_DTYPE records."""
    return codec.points_from_msg(msg, LIDAR_POINT_DTYPE, "PointCloud2 (lidar points)")


# ----------------------------------------------------------------------------------------------------------------
# Message readers (rosbags or rclpy messages)
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SampleRecord:
    """A nuScenes keyframe in a converted bag: sample identity plus the exact keyframe camera stamps."""

    stamp_ns: int  # sample timestamp (LIDAR_TOP keyframe) in ns
    sample_token: str
    scene_name: str
    scene_token: str
    sample_index: int
    camera_stamps_ns: dict[str, int]  # keyframe image stamp per camera (empty when unknown)


def sample_from_msg(msg: Any) -> SampleRecord:
    return SampleRecord(
        stamp_ns(msg.header),
        str(msg.sample_token),
        str(msg.scene_name),
        str(msg.scene_token),
        int(msg.sample_index),
        {},
    )


# ----------------------------------------------------------------------------------------------------------------
# Bag reading
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BagMessage:
    topic: str
    msgtype: str
    log_time_ns: int
    raw: bytes
    msg: Any  # deserialized rosbags object, or None when raw-only


def open_reader(path: str | Path, distro: str = "kilted") -> AnyReader:
    """An AnyReader for a rosbag2 directory (or file) that knows our message types."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"bag not found: {path}")
    return AnyReader([path], default_typestore=make_typestore(distro))


def iter_messages(
    path: str | Path, topics: Iterable[str] | None = None, *, deserialize: bool = True, distro: str = "kilted"
) -> Iterator[BagMessage]:
    """Messages of a bag in log-time order, optionally limited to `topics`."""
    with open_reader(path, distro) as reader:
        wanted = None if topics is None else set(topics)
        conns = [c for c in reader.connections if wanted is None or c.topic in wanted]
        for conn, log_time, raw in reader.messages(connections=conns):
            msg = reader.deserialize(raw, conn.msgtype) if deserialize else None
            yield BagMessage(conn.topic, conn.msgtype, log_time, bytes(raw), msg)


def topic_counts(path: str | Path) -> dict[str, tuple[str, int]]:
    """{topic: (msgtype, message count)} from the bag's metadata."""
    with open_reader(path) as reader:
        out: dict[str, tuple[str, int]] = {}
        for c in reader.connections:
            msgtype, count = out.get(c.topic, (c.msgtype, 0))
            out[c.topic] = (msgtype, count + c.msgcount)
        return out


def bag_custom_data(path: str | Path) -> dict[str, str]:
    """The `custom_data` mapping of a rosbag2 directory's metadata.yaml (empty when there is none)."""
    meta = Path(path) / "metadata.yaml"
    if not meta.is_file():
        raise FileNotFoundError(f"not a rosbag2 directory (no metadata.yaml): {path}")
    info = yaml.safe_load(meta.read_text()).get("rosbag2_bagfile_information", {})
    return dict(info.get("custom_data") or {})


def read_samples(path: str | Path) -> list[SampleRecord]:
    """The keyframes of a converted bag in time order, with their exact keyframe camera stamps when the converter
    recorded them (custom_data), else from the /nuscenes/sample messages only."""
    custom = bag_custom_data(path).get(SAMPLES_CUSTOM_KEY)
    if custom:
        return [
            SampleRecord(
                int(s["stamp_ns"]),
                s["sample_token"],
                s["scene_name"],
                s["scene_token"],
                int(s["sample_index"]),
                {k: int(v) for k, v in s["camera_stamps_ns"].items()},
            )
            for s in json.loads(custom)
        ]
    return [sample_from_msg(m.msg) for m in iter_messages(path, [SAMPLE_TOPIC])]


def samples_to_custom_data(samples: Sequence[SampleRecord]) -> str:
    return json.dumps(
        [
            {
                "stamp_ns": s.stamp_ns,
                "sample_token": s.sample_token,
                "scene_name": s.scene_name,
                "scene_token": s.scene_token,
                "sample_index": s.sample_index,
                "camera_stamps_ns": s.camera_stamps_ns,
            }
            for s in samples
        ]
    )


def match_to_samples(
    samples: Sequence[SampleRecord], stamps_ns: Sequence[int], key_camera: str | None = None, tolerance_ns: int = 0
) -> dict[str, int]:
    """Join outputs (by header stamp) to keyframes: {sample_token: index into stamps_ns}.

    With `key_camera` (the node stamps its outputs with the key camera's image stamp, CAM_FRONT_LEFT) a sample
    matches the output stamped exactly at its keyframe image of that camera (within `tolerance_ns`); without it,
    the output stamped at the sample timestamp. Samples without a matching output are left out."""
    by_stamp = {int(s): i for i, s in enumerate(stamps_ns)}
    sorted_stamps = np.array(sorted(by_stamp), dtype=np.int64)
    out = {}
    for s in samples:
        want = s.camera_stamps_ns.get(key_camera) if key_camera else s.stamp_ns
        if want is None:
            raise ValueError(f"sample {s.sample_token} has no recorded {key_camera} keyframe stamp")
        if want in by_stamp:
            out[s.sample_token] = by_stamp[want]
        elif tolerance_ns > 0 and sorted_stamps.size:
            j = int(np.argmin(np.abs(sorted_stamps - want)))
            if abs(int(sorted_stamps[j]) - want) <= tolerance_ns:
                out[s.sample_token] = by_stamp[int(sorted_stamps[j])]
    return out


# ----------------------------------------------------------------------------------------------------------------
# Bag writing
# ----------------------------------------------------------------------------------------------------------------


class McapStorage:
    """rosbags' storage-writer interface over the `mcap` library, writing what rosbag2's MCAP plugin writes plus CRCs.

    Every chunk carries the CRC of its records, the data-end record the CRC of the data section and the footer the
    CRC of the summary, so a reader that checks them (``check_bag``, the mcap tools) detects corrupted bytes. Channels
    carry ``offered_qos_profiles`` and ``topic_type_hash`` (rosbag2_storage_mcap's keys); the rosbag2 metadata is
    stored as the ``rosbag2`` metadata record, like rosbags does. Chunks are not compressed (rosbag2's default)."""

    def __init__(self, path: Path, compression: Any) -> None:
        from importlib.metadata import version

        from mcap.writer import CompressionType
        from mcap.writer import Writer as McapWriter

        _ = compression  # only CompressionMode.NONE is used by our tools
        self.path = path / f"{path.name}.mcap"
        self.distro = "rosbags"
        self._file = self.path.open("xb")
        self._mcap = McapWriter(self._file, compression=CompressionType.NONE, enable_crcs=True, enable_data_crcs=True)
        self._mcap.start(profile="ros2", library=f"flashocc_ros (mcap {version('mcap')})")
        self._schemas: dict[str, int] = {}
        self._channels: dict[int, int] = {}

    def add_msgtype(self, connection: Any) -> None:
        encoding = "ros2idl" if connection.msgdef.format.name == "IDL" else "ros2msg"
        data = connection.msgdef.data.encode()
        self._schemas[connection.msgtype] = self._mcap.register_schema(connection.msgtype, encoding, data)

    def add_connection(self, connection: Any, offered_qos_profiles: str) -> None:
        metadata = {"offered_qos_profiles": offered_qos_profiles, "topic_type_hash": connection.digest or ""}
        self._channels[connection.id] = self._mcap.register_channel(
            connection.topic, connection.ext.serialization_format, self._schemas[connection.msgtype], metadata
        )

    def write(self, connection: Any, timestamp: int, data: bytes | memoryview) -> None:
        self._mcap.add_message(self._channels[connection.id], timestamp, bytes(data), timestamp)

    def flush(self) -> None:
        """Finish the current chunk and hand it to the OS: a process killed later loses nothing written so far
        (``recover_mcap`` salvages it)."""
        self._mcap.flush()
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self, version: int, metadata: str) -> None:
        _ = version
        self._mcap.add_metadata("rosbag2", {"serialized_metadata": _with_distro(metadata, self.distro)})
        self._mcap.finish()
        self._file.close()

    def abort(self) -> None:
        self._file.close()


def _with_distro(metadata_yaml: str, distro: str) -> str:
    """rosbags writes ``ros_distro: rosbags``; we record the distro whose format was written."""
    return re.sub(r"^(\s*ros_distro:) rosbags$", rf"\1 {distro}", metadata_yaml, flags=re.MULTILINE)


class Sqlite3Storage(Sqlite3Writer):
    """rosbags' sqlite3 writer that records the distro in the ``schema`` table instead of ``rosbags``."""

    distro = "rosbags"

    def close(self, version: int, metadata: str) -> None:
        self.cursor.execute("UPDATE schema SET ros_distro = ?", (self.distro,))
        super().close(version, _with_distro(metadata, self.distro))

    def flush(self) -> None:
        self.conn.commit()


class BagWriter(Writer):
    """rosbags Writer with our storages (MCAP with CRCs via the `mcap` library) and the real distro recorded."""

    STORAGE_PLUGINS = {StoragePlugin.SQLITE3: Sqlite3Storage, StoragePlugin.MCAP: McapStorage}

    def __init__(self, path: Path, *, version: int, storage_plugin: StoragePlugin, distro: str) -> None:
        super().__init__(path, version=version, storage_plugin=storage_plugin)
        self.distro = distro

    def open(self) -> None:
        super().open()
        self.storage.distro = self.distro

    def flush(self) -> None:
        """Make everything written so far durable (MCAP: finish the chunk; sqlite3: commit)."""
        if self.storage is not None:
            self.storage.flush()

    def close(self) -> None:
        super().close()
        text = self.metapath.read_text()
        atomic_write_text(self.metapath, _with_distro(text, self.distro))


def open_writer(path: str | Path, *, storage: str = "mcap", distro: str = "kilted") -> BagWriter:
    """A Writer (not yet opened) for `distro`'s rosbag2 format; `path` must not exist."""
    if storage not in STORAGES:
        raise ValueError(f"unknown storage {storage!r}; supported: {', '.join(STORAGES)}")
    if distro not in DISTROS:
        raise ValueError(f"unknown ROS distro {distro!r}; supported: {', '.join(DISTROS)}")
    return BagWriter(Path(path), version=BAG_VERSION[distro], storage_plugin=STORAGES[storage], distro=distro)


# ----------------------------------------------------------------------------------------------------------------
# Integrity check and recovery (MCAP)
# ----------------------------------------------------------------------------------------------------------------


def _scan_mcap(path: Path, on_record=None) -> list[str]:
    """Read every record of an MCAP file checking chunk and data-section CRCs; problems as messages naming the
    file and the offset. A damaged chunk is skipped, reading goes on; a truncated file stops the scan.
    ``on_record(record)`` receives the records (schemas, channels, messages) of the readable part in file order."""
    from mcap.records import Chunk, DataEnd, Footer
    from mcap.stream_reader import StreamReader, breakup_chunk

    problems: list[str] = []
    crc_seen = False
    with open(path, "rb") as f:
        reader = StreamReader(f, emit_chunks=True, validate_crcs=True)
        records = reader.records
        while True:
            offset = f.tell()
            try:
                record = next(records)
            except StopIteration:
                break
            except Exception as exc:  # truncated record, bad magic, data-section CRC mismatch
                problems.append(f"{path}: unreadable from about byte {offset} ({type(exc).__name__}: {exc})")
                break
            if isinstance(record, Chunk):
                crc_seen = crc_seen or record.uncompressed_crc != 0
                try:
                    inner = breakup_chunk(record, validate_crc=True)
                except Exception as exc:
                    problems.append(f"{path}: chunk before byte {f.tell()} is damaged ({exc}); its messages are lost")
                    continue
                for item in inner:
                    if on_record is not None:
                        on_record(item)
            elif isinstance(record, DataEnd):
                crc_seen = crc_seen or record.data_section_crc != 0
            elif isinstance(record, Footer):
                break
            elif on_record is not None:
                on_record(record)
    if not problems and not crc_seen:
        problems.append(f"{path}: carries no CRCs (written by an older tool): damage cannot be detected")
    return problems


def check_bag(path: str | Path) -> list[str]:
    """Integrity problems of a bag (directory or file): MCAP CRCs of every chunk and of the data section, sqlite3
    ``PRAGMA integrity_check``. Empty when the bag is sound."""
    path = Path(path)
    files = [path] if path.is_file() else sorted(path.glob("*.mcap")) + sorted(path.glob("*.db3"))
    problems: list[str] = []
    for file in files:
        if file.suffix == ".mcap":
            problems += _scan_mcap(file)
        elif file.suffix == ".db3":
            import sqlite3

            try:
                with sqlite3.connect(f"file:{file}?mode=ro", uri=True) as db:
                    rows = [r[0] for r in db.execute("PRAGMA integrity_check").fetchall()]
            except sqlite3.DatabaseError as exc:
                rows = [str(exc)]
            if rows != ["ok"]:
                problems.append(f"{file}: sqlite integrity check failed: {'; '.join(rows[:3])}")
    return problems


@dataclass
class RecoveryReport:
    messages: int
    topics: dict[str, int]
    problems: list[str]


def recover_mcap(partial: str | Path, out: str | Path, distro: str = "kilted") -> RecoveryReport:
    """Salvage an unfinished or damaged MCAP file (a recording killed before it was finalised) into a new, complete
    bag directory ``out``: every message of every intact chunk, with its channel's type, definition, type hash and
    QoS. ``out`` must not exist; it is written under a temporary name and renamed when complete."""
    from mcap.records import Channel, Message, Schema
    from rosbags.rosbag2.metadata import parse_qos

    partial, out = Path(partial), Path(out)
    if not partial.is_file():
        raise FileNotFoundError(f"no such MCAP file: {partial}")
    if out.exists():
        raise FileExistsError(f"{out} exists already")
    tmp = out.parent / f".recovering-{out.name}-{os.getpid()}"
    writer = open_writer(tmp / out.name, distro=distro)
    writer.open()
    schemas: dict[int, Any] = {}
    channels: dict[int, Any] = {}
    connections: dict[int, Any] = {}
    counts: dict[str, int] = {}

    def on_record(record) -> None:
        if isinstance(record, Schema):
            schemas[record.id] = record
        elif isinstance(record, Channel):
            channels[record.id] = record
        elif isinstance(record, Message):
            channel = channels.get(record.channel_id)
            schema = schemas.get(channel.schema_id) if channel is not None else None
            if schema is None:
                return
            if record.channel_id not in connections:
                qos_text = channel.metadata.get("offered_qos_profiles", "")
                connections[record.channel_id] = writer.add_connection(
                    channel.topic,
                    schema.name,
                    msgdef=schema.data.decode(),
                    rihs01=channel.metadata.get("topic_type_hash") or "RIHS01_" + "0" * 64,
                    serialization_format=channel.message_encoding,
                    offered_qos_profiles=parse_qos(qos_text) if qos_text else [],
                )
            writer.write(connections[record.channel_id], record.log_time, record.data)
            counts[channel.topic] = counts.get(channel.topic, 0) + 1

    try:
        problems = _scan_mcap(partial, on_record)
        writer.close()
        (tmp / out.name).rename(out)
    except BaseException:
        writer.abort()
        raise
    finally:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return RecoveryReport(sum(counts.values()), counts, problems)
