"""nuScenes -> rosbag2, one bag per scene (nuscenes-devkit for the tables, rosbags for writing; no ROS needed).

Two steps so that parallel workers never need the (large) devkit object: `plan_scene` turns a scene's tables into
a small picklable `ScenePlan` (file names, stamps, poses, calibration, sample identity), and `write_scene_bag`
streams the plan into a bag, reading JPEG / .pcd.bin / labels.npz files as it goes. JPEG bytes are copied, never
re-encoded. Each bag is written under a temporary directory in the output folder and renamed into place only
when complete; an existing finished bag is skipped.

Bag content and conventions are described in `flashocc_ros.bagio` and docs/converter.md.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from flashocc_ros import bagio
from flashocc_ros.config import CAMERA_NAMES, OCC_GRID

LIDAR_CHANNEL = "LIDAR_TOP"
PARTIAL_PREFIX = ".partial-"
GT_KEYS = ("semantics", "mask_camera", "mask_lidar")


class ConversionError(Exception):
    """Bad input for one scene (or the whole run); the message names the scene and the file / key / value."""


@dataclass(frozen=True)
class ConvertOptions:
    storage: str = "mcap"  # mcap | sqlite3
    distro: str = "kilted"  # humble | jazzy | kilted
    keyframes_only: bool = False
    lidar: bool = False
    occ3d_gts: Path | None = None  # folder holding gts/<scene>/<token>/labels.npz layouts: <G>/<scene>/...
    overwrite: bool = False


@dataclass(frozen=True)
class SensorFrame:
    """One sample_data record to convert (camera image or lidar sweep) with its ego pose."""

    timestamp_us: int
    channel: str
    filename: str  # relative to the dataroot
    is_key_frame: bool
    ego_translation: tuple[float, float, float]
    ego_rotation: tuple[float, float, float, float]  # (w, x, y, z)


@dataclass(frozen=True)
class ScenePlan:
    scene_name: str
    scene_token: str
    dataroot: Path
    sensors: dict[str, tuple[tuple[float, ...], tuple[float, ...]]]  # channel -> (translation, rotation wxyz)
    intrinsics: dict[str, tuple[tuple[float, ...], ...]]  # camera -> K
    image_size: dict[str, tuple[int, int]]  # camera -> (width, height)
    frames: tuple[SensorFrame, ...]  # time order
    samples: tuple[bagio.SampleRecord, ...]
    lidar_keyframes: tuple[SensorFrame, ...]  # pose at every sample timestamp (also when lidar is not converted)


@dataclass
class SceneResult:
    scene_name: str
    status: str  # written | skipped | failed
    path: Path | None = None
    messages: int = 0
    input_bytes: int = 0
    seconds: float = 0.0
    error: str = ""
    topic_counts: dict[str, int] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------------------------
# Planning (needs the devkit object, runs in the main process)
# ----------------------------------------------------------------------------------------------------------------


def load_nuscenes(dataroot: str | Path, version: str):
    """The devkit's NuScenes, with one clear error for a wrong dataroot or version."""
    root = Path(dataroot)
    if not root.is_dir():
        raise ConversionError(f"--dataroot {root}: no such directory")
    if not (root / version).is_dir():
        found = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name.startswith("v1.0"))
        raise ConversionError(f"--version {version}: {root / version} does not exist (found: {found or 'none'})")
    from nuscenes.nuscenes import NuScenes

    try:
        return NuScenes(version=version, dataroot=str(root), verbose=False)
    except (AssertionError, FileNotFoundError, KeyError, ValueError) as exc:
        raise ConversionError(f"{root / version}: cannot load the nuScenes tables ({exc})") from exc


def scenes_of_split(nusc, split: str) -> list[str]:
    """Scene names of a devkit split (train, val, test, mini_train, mini_val, ...) present in this version."""
    from nuscenes.utils.splits import create_splits_scenes

    splits = create_splits_scenes()
    if split not in splits:
        raise ConversionError(f"--split {split}: unknown split; known: {', '.join(sorted(splits))}")
    present = {s["name"] for s in nusc.scene}
    names = [s for s in splits[split] if s in present]
    if not names:
        raise ConversionError(f"--split {split}: none of its {len(splits[split])} scenes is in {nusc.version}")
    return names


def plan_scene(nusc, scene_name: str, options: ConvertOptions) -> ScenePlan:
    scene = next((s for s in nusc.scene if s["name"] == scene_name), None)
    if scene is None:
        raise ConversionError(f"{scene_name}: unknown scene in {nusc.version} ({len(nusc.scene)} scenes)")
    sample_tokens = []
    token = scene["first_sample_token"]
    while token:
        sample_tokens.append(token)
        token = nusc.get("sample", token)["next"]
    scene_sample_set = set(sample_tokens)
    first = nusc.get("sample", sample_tokens[0])

    channels = list(CAMERA_NAMES) + [LIDAR_CHANNEL]
    missing = [c for c in channels if c not in first["data"]]
    if missing:
        raise ConversionError(f"{scene_name}: sample {first['token']} has no sample_data for {missing}")

    sensors, intrinsics, image_size = {}, {}, {}
    frames: list[SensorFrame] = []
    lidar_keyframes: list[SensorFrame] = []
    for channel in channels:
        chain = _sample_data_chain(nusc, first["data"][channel], scene_sample_set)
        calib_tokens = {sd["calibrated_sensor_token"] for sd in chain}
        if len(calib_tokens) != 1:
            raise ConversionError(f"{scene_name}: {channel} uses {len(calib_tokens)} calibrated_sensor records")
        cs = nusc.get("calibrated_sensor", calib_tokens.pop())
        sensors[channel] = (tuple(cs["translation"]), tuple(cs["rotation"]))
        if channel != LIDAR_CHANNEL:
            intrinsics[channel] = tuple(tuple(float(v) for v in row) for row in cs["camera_intrinsic"])
            image_size[channel] = (int(chain[0]["width"]), int(chain[0]["height"]))
        for sd in chain:
            pose = nusc.get("ego_pose", sd["ego_pose_token"])
            frame = SensorFrame(
                int(sd["timestamp"]),
                channel,
                sd["filename"],
                bool(sd["is_key_frame"]),
                tuple(pose["translation"]),
                tuple(pose["rotation"]),
            )
            if channel == LIDAR_CHANNEL:
                if frame.is_key_frame:
                    lidar_keyframes.append(frame)
                if not options.lidar:
                    continue
            elif options.keyframes_only and not frame.is_key_frame:
                continue
            frames.append(frame)
    frames.sort(key=lambda f: (f.timestamp_us, channels.index(f.channel)))
    lidar_keyframes.sort(key=lambda f: f.timestamp_us)

    samples = []
    for index, token in enumerate(sample_tokens):
        sample = nusc.get("sample", token)
        cams = {c: bagio.ns_from_us(nusc.get("sample_data", sample["data"][c])["timestamp"]) for c in CAMERA_NAMES}
        samples.append(
            bagio.SampleRecord(bagio.ns_from_us(sample["timestamp"]), token, scene_name, scene["token"], index, cams)
        )
    return ScenePlan(
        scene_name,
        scene["token"],
        Path(nusc.dataroot),
        sensors,
        intrinsics,
        image_size,
        tuple(frames),
        tuple(samples),
        tuple(lidar_keyframes),
    )


def _sample_data_chain(nusc, keyframe_token: str, scene_samples: set[str]) -> list[dict]:
    """All sample_data of one channel in a scene: walk prev/next from a keyframe while records belong to it."""
    start = nusc.get("sample_data", keyframe_token)
    before, sd = [], start
    while sd["prev"]:
        sd = nusc.get("sample_data", sd["prev"])
        if sd["sample_token"] not in scene_samples:
            break
        before.append(sd)
    after, sd = [], start
    while sd["next"]:
        sd = nusc.get("sample_data", sd["next"])
        if sd["sample_token"] not in scene_samples:
            break
        after.append(sd)
    return before[::-1] + [start] + after


# ----------------------------------------------------------------------------------------------------------------
# Writing (a worker process per scene)
# ----------------------------------------------------------------------------------------------------------------


def bag_path(out_dir: Path, scene_name: str) -> Path:
    return Path(out_dir) / scene_name


def is_complete_bag(path: Path) -> bool:
    return (path / "metadata.yaml").is_file()


def write_scene_bag(plan: ScenePlan, out_dir: Path, options: ConvertOptions) -> SceneResult:
    """Write one scene's bag to `<out_dir>/<scene_name>` via a temporary directory; never raises for bad input."""
    start = time.perf_counter()
    final = bag_path(out_dir, plan.scene_name)
    if is_complete_bag(final) and not options.overwrite:
        return SceneResult(plan.scene_name, "skipped", final)
    tmp_parent = Path(out_dir) / f"{PARTIAL_PREFIX}{plan.scene_name}-{os.getpid()}"
    shutil.rmtree(tmp_parent, ignore_errors=True)
    tmp_parent.mkdir(parents=True)
    try:
        result = _write(plan, tmp_parent / plan.scene_name, options)
        if final.exists():  # --overwrite: swap in the new bag, then drop the old one
            old = tmp_parent / "old"
            final.rename(old)
        (tmp_parent / plan.scene_name).rename(final)
        result.path = final
    except ConversionError as exc:
        result = SceneResult(plan.scene_name, "failed", error=str(exc))
    except Exception as exc:  # a bug or an I/O failure: report it for this scene, other scenes go on
        result = SceneResult(plan.scene_name, "failed", error=f"{plan.scene_name}: {type(exc).__name__}: {exc}")
    finally:
        shutil.rmtree(tmp_parent, ignore_errors=True)
    result.seconds = time.perf_counter() - start
    return result


def _read_file(plan: ScenePlan, relative: str, what: str) -> bytes:
    path = plan.dataroot / relative
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ConversionError(f"{plan.scene_name}: missing {what} file {path}") from None


def _load_gt(plan: ScenePlan, gts_root: Path, sample: bagio.SampleRecord) -> dict[str, np.ndarray]:
    path = gts_root / plan.scene_name / sample.sample_token / "labels.npz"
    if not path.is_file():
        raise ConversionError(f"{plan.scene_name}: missing Occ3D ground truth {path}")
    try:
        with np.load(path) as data:
            arrays = {k: data[k] for k in GT_KEYS if k in data.files}
    except Exception as exc:
        raise ConversionError(f"{plan.scene_name}: cannot read {path} ({exc})") from exc
    for key in GT_KEYS:
        if key not in arrays:
            raise ConversionError(f"{plan.scene_name}: {path} has no key {key!r} (keys: {sorted(arrays)})")
        if arrays[key].shape != OCC_GRID.shape:
            raise ConversionError(
                f"{plan.scene_name}: {path}[{key!r}] has shape {arrays[key].shape}, want {OCC_GRID.shape}"
            )
    return arrays


def _write(plan: ScenePlan, path: Path, options: ConvertOptions) -> SceneResult:
    store = bagio.make_typestore(options.distro)
    make = bagio.MessageFactory(store)
    gts_root = None
    if options.occ3d_gts is not None:
        gts_root = Path(options.occ3d_gts)
        if not (gts_root / plan.scene_name).is_dir():
            raise ConversionError(f"{plan.scene_name}: Occ3D ground-truth folder {gts_root} has no {plan.scene_name}/")

    result = SceneResult(plan.scene_name, "written")
    counts: dict[str, int] = {}
    writer = bagio.open_writer(path, storage=options.storage, distro=options.distro)
    writer.open()
    try:
        conns = {}

        def connection(topic: str, msgtype: str, qos) -> object:
            if topic not in conns:
                conns[topic] = writer.add_connection(topic, msgtype, typestore=store, offered_qos_profiles=[qos])
            return conns[topic]

        def write(topic: str, msgtype: str, qos, stamp: int, msg) -> None:
            writer.write(connection(topic, msgtype, qos), stamp, bagio.serialize(store, msg, msgtype))
            counts[topic] = counts.get(topic, 0) + 1

        writer.set_custom_data(bagio.SAMPLES_CUSTOM_KEY, bagio.samples_to_custom_data(plan.samples))
        writer.set_custom_data("flashocc_ros.scene", plan.scene_name)

        first_ns = min(
            [bagio.ns_from_us(f.timestamp_us) for f in plan.frames[:1]] + [s.stamp_ns for s in plan.samples[:1]]
        )
        statics = [
            make.transform(first_ns, bagio.EGO_FRAME, bagio.sensor_frame(ch), t, r)
            for ch, (t, r) in plan.sensors.items()
        ]
        write(bagio.TF_STATIC_TOPIC, bagio.TF_MESSAGE, bagio.STATIC_QOS, first_ns, make.tf_message(statics))

        # Merge sensor frames and keyframe identities in time order; poses go out before the data they belong to.
        events: list[tuple[int, int, object]] = [(bagio.ns_from_us(f.timestamp_us), 0, f) for f in plan.frames]
        events += [(bagio.ns_from_us(f.timestamp_us), 0, f) for f in plan.lidar_keyframes if not options.lidar]
        events += [(s.stamp_ns, 1, s) for s in plan.samples]
        events.sort(key=lambda e: (e[0], e[1]))
        posed: set[int] = set()
        for stamp, _, item in events:
            if isinstance(item, SensorFrame):
                if stamp not in posed:
                    posed.add(stamp)
                    tf = make.transform(
                        stamp, bagio.MAP_FRAME, bagio.EGO_FRAME, item.ego_translation, item.ego_rotation
                    )
                    write(bagio.TF_TOPIC, bagio.TF_MESSAGE, bagio.TF_QOS, stamp, make.tf_message([tf]))
                if item.channel == LIDAR_CHANNEL:
                    if options.lidar:
                        _write_lidar(plan, item, stamp, make, write, result)
                    continue
                data = _read_file(plan, item.filename, "image")
                result.input_bytes += len(data)
                frame = bagio.sensor_frame(item.channel)
                width, height = plan.image_size[item.channel]
                write(
                    bagio.image_topic(item.channel),
                    bagio.COMPRESSED_IMAGE,
                    bagio.SENSOR_QOS,
                    stamp,
                    make.compressed_image(stamp, frame, data),
                )
                write(
                    bagio.camera_info_topic(item.channel),
                    bagio.CAMERA_INFO,
                    bagio.SENSOR_QOS,
                    stamp,
                    make.camera_info(stamp, frame, np.array(plan.intrinsics[item.channel]), width, height),
                )
            else:
                sample: bagio.SampleRecord = item
                info = make.sample_info(
                    stamp, sample.sample_token, sample.scene_name, sample.scene_token, sample.sample_index
                )
                write(bagio.SAMPLE_TOPIC, bagio.SAMPLE_INFO, bagio.SENSOR_QOS, stamp, info)
                if gts_root is not None:
                    gt = _load_gt(plan, gts_root, sample)
                    msg = make.semantic_occupancy(
                        stamp, gt["semantics"], mask_camera=gt["mask_camera"], mask_lidar=gt["mask_lidar"]
                    )
                    write(bagio.GROUND_TRUTH_TOPIC, bagio.SEMANTIC_OCCUPANCY, bagio.SENSOR_QOS, stamp, msg)
        writer.close()
    except BaseException:
        if writer.storage is not None:  # release the storage file; the caller removes the temporary directory
            writer.storage.abort()
        raise
    result.messages = sum(counts.values())
    result.topic_counts = counts
    return result


def _write_lidar(plan: ScenePlan, frame: SensorFrame, stamp: int, make, write, result: SceneResult) -> None:
    data = _read_file(plan, frame.filename, "lidar")
    result.input_bytes += len(data)
    if len(data) % 20:
        raise ConversionError(f"{plan.scene_name}: {plan.dataroot / frame.filename} is not float32 x 5 rows")
    points = np.frombuffer(data, np.float32).reshape(-1, 5)
    msg = make.pointcloud(stamp, bagio.sensor_frame(LIDAR_CHANNEL), points)
    write(bagio.LIDAR_TOPIC, bagio.POINT_CLOUD2, bagio.SENSOR_QOS, stamp, msg)


# ----------------------------------------------------------------------------------------------------------------
# Whole runs
# ----------------------------------------------------------------------------------------------------------------


def _start_method() -> str:
    """fork (instant workers, copy-on-write) unless rclpy is loaded in this process: forking while DDS threads run
    can deadlock the child, so then forkserver/spawn."""
    methods = multiprocessing.get_all_start_methods()
    if "fork" in methods and "rclpy" not in sys.modules:
        return "fork"
    return "forkserver" if "forkserver" in methods else "spawn"


def convert(
    dataroot: str | Path,
    version: str,
    scene_names: Sequence[str] | None,
    out_dir: str | Path,
    options: ConvertOptions = ConvertOptions(),
    *,
    split: str | None = None,
    jobs: int = 1,
    on_result: Callable[[SceneResult], None] | None = None,
) -> list[SceneResult]:
    """Convert scenes (all of the version when neither `scene_names` nor `split` is given) into `out_dir`.

    Raises ConversionError for run-level bad input (dataroot, version, split, storage, distro, GT folder); bad input
    of one scene (unknown name, missing file) is reported in that scene's result while the other scenes convert.
    """
    if options.storage not in bagio.STORAGES:
        raise ConversionError(f"--storage {options.storage}: not one of {', '.join(bagio.STORAGES)}")
    if options.distro not in bagio.DISTROS:
        raise ConversionError(f"--distro {options.distro}: not one of {', '.join(bagio.DISTROS)}")
    if options.occ3d_gts is not None and not Path(options.occ3d_gts).is_dir():
        raise ConversionError(f"--occ3d-gts {options.occ3d_gts}: no such directory")
    nusc = load_nuscenes(dataroot, version)
    if split is not None:
        scene_names = scenes_of_split(nusc, split)
    elif scene_names is None:
        scene_names = [s["name"] for s in nusc.scene]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    results: list[SceneResult] = []

    def done(result: SceneResult) -> None:
        results.append(result)
        if on_result is not None:
            on_result(result)

    plans = []
    for name in dict.fromkeys(scene_names):  # unique, in order
        if is_complete_bag(bag_path(out, name)) and not options.overwrite:
            done(SceneResult(name, "skipped", bag_path(out, name)))
            continue
        try:
            plans.append(plan_scene(nusc, name, options))
        except ConversionError as exc:
            done(SceneResult(name, "failed", error=str(exc)))
    if jobs <= 1 or len(plans) <= 1:
        for plan in plans:
            done(write_scene_bag(plan, out, options))
    else:
        ctx = multiprocessing.get_context(_start_method())
        with ProcessPoolExecutor(max_workers=min(jobs, len(plans)), mp_context=ctx) as pool:
            futures = [pool.submit(write_scene_bag, plan, out, options) for plan in plans]
            for future in as_completed(futures):
                done(future.result())
    order = {name: i for i, name in enumerate(scene_names)}
    results.sort(key=lambda r: order.get(r.scene_name, len(order)))
    return results
