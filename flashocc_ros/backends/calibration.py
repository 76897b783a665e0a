"""INT8 calibration for TensorRT: six-camera image sets from a directory or a ROS 2 bag, the network inputs made
from them (``calibration_feeds``) and the entropy calibrator that feeds any such batches to TensorRT.

Directory layouts: (a) one sub-directory per camera named as in ``CAMERA_NAMES`` (e.g. nuScenes ``samples/``),
files paired by sorted order; (b) a flat directory whose sorted images are taken six at a time in camera order.
Bags: ``sensor_msgs/CompressedImage`` on the camera image topics (``topics.COMPRESSED_IMAGE_TOPIC``,
``/{camera}/image/compressed``, as the converter writes them; another pattern with ``--calib-topic``); one set
is emitted each time all six cameras have a new image. Images go through the exact test-time preprocessing.

``sha256()`` hashes the encoded bytes of exactly the images used (and their grouping), so it identifies the
calibration in the engine-cache key. ``EntropyCalibrator`` takes generic feeds (an iterable of dicts, graph input
name -> array) and knows nothing of the runners, the pipeline or where the batches came from.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flashocc_ros.backends.base import IMAGE_INPUT, IMAGE_SHAPE, MLP_INPUT, BackendError
from flashocc_ros.config import CAMERA_NAMES, ModelVariant
from flashocc_ros.topics import COMPRESSED_IMAGE_TOPIC

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp"}
DEFAULT_MAX_SETS = 64


class CalibrationError(BackendError):
    """The calibration data are missing or malformed; the message names the path."""


@dataclass
class CalibrationSource:
    """Base: ``sets()`` yields lists of six encoded images (bytes, camera order)."""

    max_sets: int = DEFAULT_MAX_SETS

    def sets(self) -> Iterator[list[bytes]]:  # pragma: no cover - abstract
        raise NotImplementedError

    def batches(self) -> Iterator[np.ndarray]:
        """Preprocessed (6, 3, 256, 704) float32 network inputs."""
        from flashocc_ros.network.preprocess import preprocess_jpeg_exact

        for images in self.sets():
            out = np.empty(IMAGE_SHAPE, dtype=np.float32)
            for i, data in enumerate(images):
                out[i] = preprocess_jpeg_exact(data)
            yield out

    def sha256(self) -> str:
        h = hashlib.sha256(type(self).__name__.encode())
        count = 0
        for images in self.sets():
            count += 1
            for data in images:
                h.update(hashlib.sha256(data).digest())
        if count == 0:
            raise CalibrationError(f"{self.describe()}: no complete six-camera image set found")
        return h.hexdigest()

    def describe(self) -> str:
        return type(self).__name__


@dataclass
class ImageDirectorySource(CalibrationSource):
    root: Path = Path(".")

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        if not self.root.is_dir():
            raise CalibrationError(f"calibration image directory not found: {self.root}")
        self._groups = self._find_groups()
        if not self._groups:
            raise CalibrationError(
                f"{self.root}: no images found (expected sub-directories {', '.join(CAMERA_NAMES)} or at least six "
                f"images with suffix {sorted(IMAGE_SUFFIXES)})"
            )

    def _images(self, d: Path) -> list[Path]:
        return sorted(p for p in d.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)

    def _find_groups(self) -> list[list[Path]]:
        cams = [self.root / c for c in CAMERA_NAMES]
        if all(c.is_dir() for c in cams):
            per_cam = [self._images(c) for c in cams]
            n = min(len(p) for p in per_cam)
            return [[p[i] for p in per_cam] for i in range(min(n, self.max_sets))]
        if any(c.is_dir() for c in cams):
            missing = [c.name for c in cams if not c.is_dir()]
            raise CalibrationError(f"{self.root}: camera sub-directories missing: {', '.join(missing)}")
        files = self._images(self.root)
        n = len(files) // len(CAMERA_NAMES)
        return [files[i * 6 : (i + 1) * 6] for i in range(min(n, self.max_sets))]

    def sets(self) -> Iterator[list[bytes]]:
        for group in self._groups:
            yield [p.read_bytes() for p in group]

    def describe(self) -> str:
        return f"{len(self._groups)} image sets from {self.root}"


@dataclass
class BagSource(CalibrationSource):
    path: Path = Path(".")
    image_topic: str = COMPRESSED_IMAGE_TOPIC  # what the converter writes and the node reads

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        if not self.path.exists():
            raise CalibrationError(f"calibration bag not found: {self.path}")
        if "{camera}" not in self.image_topic:
            raise CalibrationError(f"image_topic {self.image_topic!r} must contain '{{camera}}'")

    def sets(self) -> Iterator[list[bytes]]:
        from rosbags.highlevel import AnyReader
        from rosbags.typesys import Stores, get_typestore

        topics = {self.image_topic.format(camera=c): i for i, c in enumerate(CAMERA_NAMES)}
        typestore = get_typestore(Stores.ROS2_KILTED if hasattr(Stores, "ROS2_KILTED") else Stores.LATEST)
        emitted = 0
        with AnyReader([self.path], default_typestore=typestore) as reader:
            conns = [c for c in reader.connections if c.topic in topics]
            if not conns:
                raise CalibrationError(f"{self.path}: none of the topics {sorted(topics)} is in the bag")
            latest: list[bytes | None] = [None] * len(CAMERA_NAMES)
            for conn, _t, raw in reader.messages(connections=conns):
                if conn.msgtype != "sensor_msgs/msg/CompressedImage":
                    raise CalibrationError(
                        f"{self.path}: topic {conn.topic} has type {conn.msgtype}, not CompressedImage"
                    )
                msg = reader.deserialize(raw, conn.msgtype)
                latest[topics[conn.topic]] = bytes(msg.data)
                if all(x is not None for x in latest):
                    yield list(latest)
                    latest = [None] * len(CAMERA_NAMES)
                    emitted += 1
                    if emitted >= self.max_sets:
                        return

    def describe(self) -> str:
        return f"bag {self.path}"


def make_source(
    images: str | None = None, bag: str | None = None, max_sets: int = DEFAULT_MAX_SETS, image_topic: str | None = None
) -> CalibrationSource:
    if bool(images) == bool(bag):
        raise CalibrationError("give exactly one of --calib-images DIR or --calib-bag BAG")
    if images:
        return ImageDirectorySource(max_sets=max_sets, root=Path(images))
    kw = {"image_topic": image_topic} if image_topic else {}
    return BagSource(max_sets=max_sets, path=Path(bag), **kw)


Feed = Mapping[str, np.ndarray]  # one calibration batch: graph input name -> array


def calibration_feeds(source: CalibrationSource, variant: ModelVariant, rig=None) -> Iterator[dict[str, np.ndarray]]:
    """The network inputs of every set of ``source``: the preprocessed images plus the rig-dependent inputs
    (pooling tables, BEVDepth ``mlp_input``) of ``rig`` (default: the nuScenes reference rig), computed once."""
    from flashocc_ros.backends.pooling import pool_tables_from_indices
    from flashocc_ros.network.geometry import prepare_geometry, reference_rig

    geo = prepare_geometry(variant, rig if rig is not None else reference_rig())
    static = pool_tables_from_indices(geo.pool, variant.depth_bins).as_inputs()
    if geo.mlp_input is not None:
        static[MLP_INPUT] = geo.mlp_input.numpy().astype(np.float32)
    for batch in source.batches():
        yield {IMAGE_INPUT: batch, **static}


class DeviceFeeds:
    """Copies each feed of ``feeds`` into device tensors (allocated on first use, reused while the shape and dtype
    stay the same) and hands out their addresses in the order the calibrator asks for them."""

    def __init__(self, feeds: Iterable[Feed], device) -> None:
        import torch

        self._feeds = iter(feeds)
        self.device = torch.device(device)
        self.buffers: dict = {}
        self.count = 0

    def next_pointers(self, names: Sequence[str]) -> list[int] | None:
        """Device addresses of the next feed's ``names``; None when the feeds are exhausted."""
        import torch

        try:
            feed = next(self._feeds)
        except StopIteration:
            return None
        missing = [n for n in names if n not in feed]
        if missing:
            raise CalibrationError(f"calibration feed {self.count} lacks inputs {missing} (has {sorted(feed)})")
        for name in names:
            host = torch.from_numpy(np.ascontiguousarray(feed[name]))
            buf = self.buffers.get(name)
            if buf is None or buf.shape != host.shape or buf.dtype != host.dtype:
                buf = self.buffers[name] = torch.empty(host.shape, dtype=host.dtype, device=self.device)
            buf.copy_(host)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.count += 1
        return [int(self.buffers[n].data_ptr()) for n in names]


def EntropyCalibrator(feeds: Iterable[Feed], cache_path: str | Path, device: str = "cuda"):
    """A ``tensorrt.IInt8EntropyCalibrator2`` over ``feeds`` (batches of graph input name -> array, e.g.
    ``calibration_feeds``); its calibration cache is kept at ``cache_path``."""
    from flashocc_ros.atomic import atomic_write_bytes
    from flashocc_ros.backends.tensorrt_env import cuda_device, import_tensorrt

    trt = import_tensorrt()
    dev = cuda_device(device)
    cache_path = Path(cache_path)

    class _EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.feeds = DeviceFeeds(feeds, dev)

        def get_batch_size(self) -> int:
            return 1

        def get_batch(self, names):
            return self.feeds.next_pointers(names)

        def read_calibration_cache(self):
            return cache_path.read_bytes() if cache_path.is_file() else None

        def write_calibration_cache(self, cache) -> None:
            atomic_write_bytes(cache_path, bytes(cache))

    return _EntropyCalibrator()
