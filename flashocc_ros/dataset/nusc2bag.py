"""nuScenes -> rosbag2, one bag per scene (nuscenes-devkit for the tables, rosbags for writing; no ROS needed).

Two steps so that parallel workers never need the (large) devkit object: `plan_scene` turns a scene's tables into
a small picklable `ScenePlan` (file names, stamps, poses, calibration, sample identity), and `write_scene_bag`
streams the plan into a bag, reading JPEG / .pcd.bin / labels.npz files as it goes. JPEG bytes are copied, never
re-encoded (a JPEG without its end-of-image marker is copied with a warning naming the file). Each bag is written
under a temporary directory in the output folder and renamed into place only when complete; an existing finished
bag of ours is skipped (or replaced with --overwrite); anything else at ``<out>/<scene>`` is never touched: that
scene fails with a message. Temporary directories left by a killed run are removed by the next run (only those
carrying our marker file whose process is gone) and reported.

Bag content and conventions are described in `flashocc_ros.dataset.bagio` and docs/converter.md.
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

from flashocc_ros.atomic import process_alive
from flashocc_ros.config import CAMERA_NAMES, OCC_GRID
from flashocc_ros.dataset import bagio, devkit

LIDAR_CHANNEL = "LIDAR_TOP"
PARTIAL_PREFIX = ".partial-"
PARTIAL_MARKER = ".flashocc-nusc2bag"  # in every temporary directory we create: "<pid> <scene>"
SCENE_CUSTOM_KEY = "flashocc_ros.scene"  # custom_data key naming the scene of a bag we wrote
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
    warnings: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------------------------------------------
# Planning (needs the devkit object, runs in the main process)
# ----------------------------------------------------------------------------------------------------------------


def load_nuscenes(dataroot: str | Path, version: str):
    """The devkit's NuScenes, with one clear ConversionError for a wrong dataroot or version."""
    return devkit.load_nuscenes(dataroot, version, ConversionError)


def scenes_of_split(nusc, split: str) -> list[str]:
    """Scene names of a devkit split (train, val, test, mini_train, mini_val, ...) present in this version."""
    wanted = devkit.split_scene_names(split, ConversionError)
    present = {s["name"] for s in nusc.scene}
    names = [s for s in wanted if s in present]
    if not names:
        raise ConversionError(f"--split {split}: none of its {len(wanted)} scenes is in {nusc.version}")
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


def existing_output(path: Path, scene_name: str) -> str:
    """What is at a scene's output path: 'absent', 'ours' (a finished bag this converter wrote for the scene) or
    'foreign' (anything else: a file, a folder that is not a bag, another bag)."""
    if not path.exists() and not path.is_symlink():
        return "absent"
    if path.is_dir() and not path.is_symlink() and is_complete_bag(path):
        try:
            if bagio.bag_custom_data(path).get(SCENE_CUSTOM_KEY) == scene_name:
                return "ours"
        except Exception:  # unreadable metadata.yaml: not something we can vouch for
            pass
    return "foreign"


def _refusal(path: Path, scene_name: str) -> str:
    what = "a file" if path.is_file() else "not a bag written by flashocc-nusc2bag for this scene"
    return (
        f"{scene_name}: {path} exists and is {what}; it was left untouched "
        "(move it away or choose another --out; --overwrite only replaces our own bags)"
    )


def _pre_check(path: Path, scene_name: str, options: ConvertOptions) -> SceneResult | None:
    """Skip a finished bag of ours (unless --overwrite); refuse anything else in the way; None: go ahead."""
    state = existing_output(path, scene_name)
    if state == "ours" and not options.overwrite:
        return SceneResult(scene_name, "skipped", path)
    if state == "foreign":
        return SceneResult(scene_name, "failed", error=_refusal(path, scene_name))
    return None


def write_scene_bag(plan: ScenePlan, out_dir: Path, options: ConvertOptions) -> SceneResult:
    """Write one scene's bag to `<out_dir>/<scene_name>` via a temporary directory; never raises for bad input."""
    start = time.perf_counter()
    final = bag_path(out_dir, plan.scene_name)
    early = _pre_check(final, plan.scene_name, options)
    if early is not None:
        return early
    tmp_parent = Path(out_dir) / f"{PARTIAL_PREFIX}{plan.scene_name}-{os.getpid()}"
    if tmp_parent.exists():  # our own pid: a leftover of this very process id, never someone else's live run
        if not (tmp_parent / PARTIAL_MARKER).is_file():
            return SceneResult(plan.scene_name, "failed", error=f"{plan.scene_name}: {tmp_parent} is in the way")
        shutil.rmtree(tmp_parent)
    tmp_parent.mkdir(parents=True)
    (tmp_parent / PARTIAL_MARKER).write_text(f"{os.getpid()} {plan.scene_name}\n")
    try:
        result = _write(plan, tmp_parent / plan.scene_name, options)
        state = existing_output(final, plan.scene_name)  # again: another process may have written it meanwhile
        if state == "foreign":
            raise ConversionError(_refusal(final, plan.scene_name))
        if state == "ours":  # --overwrite: swap in the new bag, then drop the old one (ours)
            final.rename(tmp_parent / "old")
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


def clean_stale_partials(out_dir: Path) -> list[str]:
    """Remove temporary directories a killed run left in `out_dir`; returns one message per directory found.

    Only directories carrying our marker whose process is gone are removed. When a run was killed while swapping
    in an --overwrite bag, the previous bag (``old``) is moved back first if the scene's path is free. Anything
    else named like a temporary directory is only reported."""
    notes = []
    for tmp in sorted(Path(out_dir).glob(f"{PARTIAL_PREFIX}*")):
        marker = tmp / PARTIAL_MARKER
        if not tmp.is_dir() or tmp.is_symlink() or not marker.is_file():
            notes.append(f"{tmp}: not created by this converter (no {PARTIAL_MARKER}); left untouched")
            continue
        try:
            pid_text, scene_name = marker.read_text().split()[:2]
            pid = int(pid_text)
        except ValueError:
            notes.append(f"{tmp}: unreadable {PARTIAL_MARKER}; left untouched")
            continue
        if pid != os.getpid() and process_alive(pid):
            notes.append(f"{tmp}: process {pid} is still running (another conversion?); left untouched")
            continue
        old, final = tmp / "old", bag_path(out_dir, scene_name)
        if old.is_dir() and not final.exists():
            old.rename(final)
            notes.append(f"{tmp}: restored the previous bag of {scene_name} to {final} (run killed mid-swap)")
        elif old.exists():
            notes.append(f"{tmp}: holds a previous bag of {scene_name} while {final} exists; left untouched")
            continue
        shutil.rmtree(tmp)
        notes.append(f"removed {tmp}: unfinished bag of {scene_name} left by a run that was killed (pid {pid})")
    return notes
    return True


def jpeg_problem(data: bytes) -> str | None:
    """Why `data` is not a complete JPEG (no start-of-image marker, or no end-of-image marker: truncated), else
    None. Trailing zero padding after the end marker is accepted."""
    if not data.startswith(b"\xff\xd8"):
        return "does not start with the JPEG start-of-image marker (FF D8)"
    if not data.rstrip(b"\0").endswith(b"\xff\xd9"):
        return "has no JPEG end-of-image marker (FF D9): the file is truncated"
    return None


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
        writer.set_custom_data(SCENE_CUSTOM_KEY, plan.scene_name)

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
                problem = jpeg_problem(data)
                if problem is not None:
                    result.warnings.append(
                        f"{plan.scene_name}: {plan.dataroot / item.filename} {problem}; copied as it is"
                    )
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
    on_note: Callable[[str], None] | None = None,
) -> list[SceneResult]:
    """Convert scenes (all of the version when neither `scene_names` nor `split` is given) into `out_dir`.

    Raises ConversionError for run-level bad input (dataroot, version, split, storage, distro, GT folder); bad input
    of one scene (unknown name, missing file, something else at its output path) is reported in that scene's
    result while the other scenes convert. `on_note` receives the stale temporary directories found (and removed).
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
    if out.exists() and not out.is_dir():
        raise ConversionError(f"--out {out}: exists and is not a directory (the output is one bag folder per scene)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConversionError(f"--out {out}: cannot create the output folder ({exc.strerror or exc})") from None
    for note in clean_stale_partials(out):
        (on_note or (lambda text: print(text, file=sys.stderr)))(note)

    results: list[SceneResult] = []

    def done(result: SceneResult) -> None:
        results.append(result)
        if on_result is not None:
            on_result(result)

    plans = []
    for name in dict.fromkeys(scene_names):  # unique, in order
        early = _pre_check(bag_path(out, name), name, options)
        if early is not None:
            done(early)
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
