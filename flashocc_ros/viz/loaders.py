"""Load occupancy grids to look at: prediction files, Occ3D ground truth, folders of them, and recorded bags.

File layouts (SPEC section 11 and the prediction layout of the eval tools):
  prediction   `<sample_token>.npz`: `pred` (200,200,16) uint8 class indices, optional `inst` (200,200,16) int32
               panoptic ids (>= 18 instance id, < 18 class index);
  ground truth Occ3D `gts/<scene>/<sample_token>/labels.npz`: `semantics` (200,200,16) uint8, `mask_camera`,
               `mask_lidar` (200,200,16) 0/1, optional panoptic `instances`.
A corrupt file, a missing key, a wrong shape or an out-of-range label raises `OccupancyFileError` naming the file,
the key and the problem.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from flashocc_ros import grids
from flashocc_ros.config import CAMERA_NAMES, OCC_GRID
from flashocc_ros.dataset.devkit import load_nuscenes
from flashocc_ros.ros import messages as ros_convert

PRED_KEY, INST_KEY = "pred", "inst"
GT_KEY, GT_INST_KEY = "semantics", "instances"
MASK_KEYS = ("mask_camera", "mask_lidar")


class OccupancyFileError(ValueError):
    """An occupancy input (file, folder or bag) cannot be used; the message names the input and the problem."""


@dataclass
class OccupancyFrame:
    """One occupancy grid with what belongs to it."""

    semantic: np.ndarray  # (X,Y,Z) uint8 class indices [ix, iy, iz]
    name: str  # sample token, file stem or bag frame name (used to pair predictions with ground truth)
    source: str  # where it came from (file path or bag:topic#index)
    kind: str = "prediction"  # "prediction" or "ground_truth"
    panoptic: np.ndarray | None = None  # (X,Y,Z) int32 panoptic ids, or None
    mask_camera: np.ndarray | None = None  # (X,Y,Z) bool, or None
    mask_lidar: np.ndarray | None = None  # (X,Y,Z) bool, or None
    stamp_ns: int | None = None  # message stamp for bag frames
    images: list[np.ndarray] | None = field(default=None, repr=False)  # six RGB uint8 in CAMERA_NAMES order
    jpegs: list[bytes | None] | None = field(default=None, repr=False)  # undecoded camera images (bags)

    def camera_images(self) -> list[np.ndarray | None] | None:
        """The six camera images (decoding attached JPEGs on demand), or None."""
        if self.images is None and self.jpegs is not None:
            return decode_jpegs(self.jpegs)
        return self.images


# ----------------------------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------------------------


def check_labels(array: np.ndarray, where: str, shape: tuple[int, ...] = OCC_GRID.shape) -> np.ndarray:
    """A class-index grid as uint8, or OccupancyFileError naming `where` (e.g. 'file.npz: key pred')."""
    return grids.check_labels(array, where, shape, error=OccupancyFileError)


def check_panoptic(array: np.ndarray, where: str, shape: tuple[int, ...] = OCC_GRID.shape) -> np.ndarray:
    return grids.check_panoptic(array, where, shape, error=OccupancyFileError)


def check_mask(array: np.ndarray, where: str, shape: tuple[int, ...] = OCC_GRID.shape) -> np.ndarray:
    return grids.check_mask(array, where, shape, error=OccupancyFileError)


# ----------------------------------------------------------------------------------------------------------------
# Files and folders
# ----------------------------------------------------------------------------------------------------------------


def frame_name(path: Path) -> str:
    """Sample token of an occupancy file: the folder name for Occ3D `<token>/labels.npz`, else the file stem."""
    return path.parent.name if path.name == "labels.npz" else path.stem


def load_occupancy_file(path: str | Path) -> OccupancyFrame:
    """Load a prediction `.npz` (`pred`, optional `inst`) or an Occ3D `labels.npz` (`semantics`, masks)."""
    path = Path(path)
    if not path.is_file():
        raise OccupancyFileError(f"{path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as exc:
        raise OccupancyFileError(f"{path}: not a readable .npz file ({type(exc).__name__}: {exc})") from None
    if PRED_KEY in arrays:
        kind, sem_key, inst_key = "prediction", PRED_KEY, INST_KEY
    elif GT_KEY in arrays:
        kind, sem_key, inst_key = "ground_truth", GT_KEY, GT_INST_KEY
    else:
        raise OccupancyFileError(
            f"{path}: has keys {sorted(arrays)}, expected '{PRED_KEY}' (prediction) or '{GT_KEY}' (Occ3D labels)"
        )
    semantic = check_labels(arrays[sem_key], f"{path}: key {sem_key}")
    panoptic = check_panoptic(arrays[inst_key], f"{path}: key {inst_key}") if inst_key in arrays else None
    masks = {k: check_mask(arrays[k], f"{path}: key {k}") if k in arrays else None for k in MASK_KEYS}
    return OccupancyFrame(
        semantic=semantic,
        name=frame_name(path),
        source=str(path),
        kind=kind,
        panoptic=panoptic,
        mask_camera=masks["mask_camera"],
        mask_lidar=masks["mask_lidar"],
    )


def find_occupancy_files(folder: str | Path) -> list[Path]:
    """All `.npz` files under `folder` (recursively), sorted by path."""
    folder = Path(folder)
    if not folder.is_dir():
        raise OccupancyFileError(f"{folder}: not a folder")
    files = sorted(p for p in folder.rglob("*.npz") if p.is_file())
    if not files:
        raise OccupancyFileError(f"{folder}: no .npz occupancy files found")
    return files


def is_bag(path: str | Path) -> bool:
    """A ROS 2 bag: a folder with metadata.yaml, or a single .mcap / .db3 file."""
    path = Path(path)
    return (path.is_dir() and (path / "metadata.yaml").is_file()) or path.suffix in (".mcap", ".db3")


class OccupancySequence(Sequence[OccupancyFrame]):
    """Frames from a file, a folder of files (loaded lazily, one at a time) or a bag topic (loaded when opened)."""

    def __init__(self, names: list[str], loader, description: str):
        self._names = names
        self._loader = loader
        self.description = description

    @classmethod
    def open(cls, path: str | Path, topic: str | None = None) -> OccupancySequence:
        """`path`: an .npz file, a folder of them, or a bag (then `topic` selects the occupancy topic)."""
        path = Path(path)
        if is_bag(path):
            frames = read_bag_occupancy(path, topic)
            return cls([f.name for f in frames], frames.__getitem__, f"{path}:{topic}")
        if path.is_dir():
            files = find_occupancy_files(path)
            return cls([frame_name(p) for p in files], lambda i: load_occupancy_file(files[i]), str(path))
        if path.suffix == ".npz" or path.is_file():
            frame = load_occupancy_file(path)
            return cls([frame.name], lambda i: frame, str(path))
        raise OccupancyFileError(f"{path}: no such file, folder or bag")

    @property
    def names(self) -> list[str]:
        return list(self._names)

    def __len__(self) -> int:
        return len(self._names)

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if not -len(self) <= index < len(self):
            raise IndexError(f"frame {index} out of range (0..{len(self) - 1})")
        return self._loader(index % len(self))

    def __iter__(self) -> Iterator[OccupancyFrame]:
        for i in range(len(self)):
            yield self[i]

    def find(self, name: str) -> OccupancyFrame | None:
        """The frame with this name (sample token), or None."""
        try:
            return self[self._names.index(name)]
        except ValueError:
            return None


def pair_frames(
    predictions: OccupancySequence, ground_truth: OccupancySequence | None, max_stamp_diff_ns: int = 100_000_000
) -> list[tuple[OccupancyFrame, OccupancyFrame | None]]:
    """Pair each prediction with its ground truth: by name (sample token), else by nearest stamp (bags)."""
    if ground_truth is None:
        return [(p, None) for p in predictions]
    gt_names = ground_truth.names
    by_name = {n: i for i, n in enumerate(gt_names)}
    gt_frames: list[OccupancyFrame] | None = None
    pairs = []
    for pred in predictions:
        if pred.name in by_name:
            pairs.append((pred, ground_truth[by_name[pred.name]]))
            continue
        if len(ground_truth) == 1 and len(predictions) == 1:
            pairs.append((pred, ground_truth[0]))
            continue
        match = None
        if pred.stamp_ns is not None:
            if gt_frames is None:
                gt_frames = list(ground_truth)
            stamped = [g for g in gt_frames if g.stamp_ns is not None]
            if stamped:
                best = min(stamped, key=lambda g: abs(g.stamp_ns - pred.stamp_ns))
                if abs(best.stamp_ns - pred.stamp_ns) <= max_stamp_diff_ns:
                    match = best
        pairs.append((pred, match))
    return pairs


# ----------------------------------------------------------------------------------------------------------------
# Camera images of a nuScenes sample (for the videos)
# ----------------------------------------------------------------------------------------------------------------


class NuScenesImages:
    """The six keyframe camera images of a sample token, read with nuscenes-devkit from a dataroot."""

    def __init__(self, dataroot: str | Path, version: str = "v1.0-mini"):
        self.dataroot = Path(dataroot)
        self._nusc = load_nuscenes(dataroot, version, OccupancyFileError)

    def images(self, sample_token: str) -> list[np.ndarray] | None:
        """Six RGB uint8 images in CAMERA_NAMES order, or None when the token is not a sample of this dataset."""
        from PIL import Image

        try:
            sample = self._nusc.get("sample", sample_token)
        except KeyError:
            return None
        out = []
        for cam in CAMERA_NAMES:
            record = self._nusc.get("sample_data", sample["data"][cam])
            with Image.open(self.dataroot / record["filename"]) as im:
                out.append(np.asarray(im.convert("RGB")))
        return out


# ----------------------------------------------------------------------------------------------------------------
# Bags (read through flashocc_ros.dataset.bagio: the rosbags typestore with our messages)
# ----------------------------------------------------------------------------------------------------------------

SAME_FRAME_NS = 100_000_000  # stamps within 100 ms belong to the same keyframe (cameras of a sweep span ~50 ms)


def _bagio():
    try:
        from flashocc_ros.dataset import bagio
    except ImportError as exc:  # pragma: no cover - bagio is part of the package
        raise OccupancyFileError(f"reading bags needs flashocc_ros.dataset.bagio ({exc})") from None
    return bagio


def read_bag_occupancy(path: str | Path, topic: str | None = None, *, with_images: bool = True) -> list[OccupancyFrame]:
    """Occupancy frames of one topic of a bag (SemanticOccupancy or PanopticOccupancy messages).

    Frames are named by sample token when the bag has /nuscenes/sample (a converter bag, matched by stamp), else
    `<topic>#<index>`. With `with_images`, the bag's keyframe JPEGs (six cameras, nearest stamp within 100 ms)
    are attached undecoded (`OccupancyFrame.jpegs`)."""
    bagio = _bagio()
    topic = topic or bagio.SEMANTIC_TOPIC
    path = Path(path)
    try:
        counts = bagio.topic_counts(path)
    except Exception as exc:
        raise OccupancyFileError(f"{path}: not a readable bag ({type(exc).__name__}: {exc})") from None
    occupancy_types = (bagio.SEMANTIC_OCCUPANCY, bagio.PANOPTIC_OCCUPANCY)
    if topic not in counts or counts[topic][0] not in occupancy_types:
        usable = sorted(t for t, (mt, _) in counts.items() if mt in occupancy_types)
        raise OccupancyFileError(f"{path}: no occupancy topic {topic!r}; occupancy topics in this bag: {usable}")
    frames: list[OccupancyFrame] = []
    try:
        for i, m in enumerate(bagio.iter_messages(path, [topic])):
            where = f"{path}: {topic} message {i}"
            if m.msgtype == bagio.PANOPTIC_OCCUPANCY:
                grid, panoptic = ros_convert.panoptic_from_msg(m.msg)
                panoptic = check_panoptic(panoptic, where)
            else:
                grid, panoptic = ros_convert.occupancy_from_msg(m.msg), None
            kind = "ground_truth" if grid.source == "ground_truth" else "prediction"
            masks = [check_mask(x, where) if x is not None else None for x in (grid.mask_camera, grid.mask_lidar)]
            frames.append(
                OccupancyFrame(
                    semantic=check_labels(grid.labels, where),
                    name=f"{topic}#{i}",
                    source=f"{path}:{topic}#{i}",
                    kind=kind,
                    panoptic=panoptic,
                    mask_camera=masks[0],
                    mask_lidar=masks[1],
                    stamp_ns=grid.stamp_ns,
                )
            )
    except OccupancyFileError:
        raise
    except Exception as exc:
        raise OccupancyFileError(f"{path}: cannot read {topic} ({type(exc).__name__}: {exc})") from None
    if not frames:
        raise OccupancyFileError(f"{path}: topic {topic} has no messages")
    if bagio.SAMPLE_TOPIC in counts:
        _name_by_samples(frames, bagio.read_samples(path))
    if with_images:
        attach_bag_images(frames, path)
    return frames


def _name_by_samples(frames: list[OccupancyFrame], samples) -> None:
    """Name frames by the sample whose timestamp or key-camera keyframe stamp is nearest (within 100 ms)."""
    if not samples:
        return
    key = CAMERA_NAMES[0]
    for frame in frames:
        best, best_diff = None, SAME_FRAME_NS + 1
        for s in samples:
            for stamp in (s.stamp_ns, s.camera_stamps_ns.get(key)):
                if stamp is not None and abs(stamp - frame.stamp_ns) < best_diff:
                    best, best_diff = s, abs(stamp - frame.stamp_ns)
        if best is not None:
            frame.name = best.sample_token


def attach_bag_images(frames: list[OccupancyFrame], path: str | Path) -> None:
    """Attach, per frame without images, the JPEG of each camera nearest to the frame's stamp (within 100 ms)."""
    bagio = _bagio()
    topics = {bagio.image_topic(c): k for k, c in enumerate(CAMERA_NAMES)}
    if not set(topics) & set(bagio.topic_counts(path)):
        return
    wanted = [f for f in frames if f.jpegs is None and f.stamp_ns is not None]
    if not wanted:
        return
    stamps = np.array([f.stamp_ns for f in wanted], dtype=np.int64)
    best: list[list[tuple[int, bytes] | None]] = [[None] * len(CAMERA_NAMES) for _ in wanted]
    for m in bagio.iter_messages(path, list(topics)):
        cam = topics[m.topic]
        stamp = bagio.stamp_ns(m.msg.header)
        diff = np.abs(stamps - stamp)
        for j in np.nonzero(diff <= SAME_FRAME_NS)[0]:
            current = best[j][cam]
            if current is None or diff[j] < current[0]:
                best[j][cam] = (int(diff[j]), bytes(np.asarray(m.msg.data, np.uint8)))
    for frame, found in zip(wanted, best):
        if any(x is not None for x in found):
            frame.jpegs = [x[1] if x is not None else None for x in found]


def decode_jpegs(jpegs: list[bytes | None], max_size: tuple[int, int] = (800, 450)) -> list[np.ndarray | None]:
    """JPEG bytes -> RGB arrays, decoded at a reduced scale (Pillow draft mode) since they are shown as tiles."""
    import io

    from PIL import Image

    out: list[np.ndarray | None] = []
    for data in jpegs:
        if data is None:
            out.append(None)
            continue
        with Image.open(io.BytesIO(data)) as im:
            im.draft("RGB", max_size)
            out.append(np.asarray(im.convert("RGB")))
    return out
