"""A tiny synthetic dataset in nuScenes format, for tests, the demo and evaluation.

It writes the real JSON tables nuscenes-devkit loads (scene, sample, sample_data with keyframes and sweeps,
ego_pose, calibrated_sensor, sensor, log, map, category, attribute, visibility, instance, sample_annotation),
1600x900 JPEGs for the six cameras (12 Hz), LIDAR_TOP sweeps as ``.pcd.bin`` (20 Hz) and Occ3D-style ground truth
``gts/<scene>/<sample_token>/labels.npz`` (semantics, mask_camera, mask_lidar), all derived from one simple world:
a flat ground (road with lane markings, sidewalks, terrain) and a few upright boxes of known classes (cars, one of
them moving, a truck, a pedestrian, traffic cones, a barrier, a building, a tree).

The camera rig and the LIDAR_TOP mount use real nuScenes calibration (sample fd8420396768425eabec9bdddf7e64b6 of the
mmdetection3d test data, and the LIDAR_TOP record of v1.0-mini). Scene names are those of the nuScenes val split
(``scene-0103``, ``scene-0916`` first: the v1.0-mini ``mini_val`` split), so ``--split mini_val`` / ``val`` work.

Ground-truth masks are simple: ``mask_camera`` marks voxels at or above the ground surface inside at least one
camera frustum, ``mask_lidar`` those inside the LIDAR_TOP vertical field of view; occlusion is not modelled.
Rendering is deliberately cheap (ground shaded at quarter resolution then upscaled, boxes drawn as flat-shaded
polygons), so the default dataset builds in a few seconds.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np
import simplejpeg
from PIL import Image
from pyquaternion import Quaternion

from flashocc_ros.config import CAMERA_NAMES, CLASS_COLORS, CLASS_NAMES, FREE_INDEX, OCC_GRID

IMAGE_HEIGHT, IMAGE_WIDTH = 900, 1600
LIDAR_CHANNEL = "LIDAR_TOP"
MANIFEST_NAME = "synthetic.json"
MINI_VAL_SCENES = ("scene-0103", "scene-0916")  # nuscenes.utils.splits.mini_val (also in the val split)

SAMPLE_INTERVAL_US = 500_000  # keyframes at 2 Hz
CAMERA_INTERVAL_US = 83_333  # cameras at 12 Hz: 6 frames per keyframe interval
LIDAR_INTERVAL_US = 50_000  # LIDAR_TOP at 20 Hz: 10 sweeps per keyframe interval
FIRST_TIMESTAMP_US = 1_533_151_603_547_590
# Camera trigger offsets after the LIDAR_TOP sweep (microseconds): the set spans ~45 ms as in nuScenes.
CAMERA_OFFSET_US = {
    "CAM_FRONT_LEFT": 2_473,
    "CAM_FRONT": 10_012,
    "CAM_FRONT_RIGHT": 17_482,
    "CAM_BACK_RIGHT": 25_893,
    "CAM_BACK": 37_517,
    "CAM_BACK_LEFT": 47_405,
}


@dataclass(frozen=True)
class SensorCalibration:
    """A nuScenes calibrated_sensor record: sensor -> ego, quaternion (w, x, y, z), K for cameras."""

    translation: tuple[float, float, float]
    rotation: tuple[float, float, float, float]
    intrinsic: tuple[tuple[float, float, float], ...] = ()


# Real nuScenes calibration (values as stored in the nuScenes tables).
CAMERA_CALIBRATION: dict[str, SensorCalibration] = {
    "CAM_FRONT_LEFT": SensorCalibration(
        (1.52387798135, 0.494631336551, 1.50932822144),
        (0.6757265034669446, -0.6736266522251881, 0.21214015046209478, -0.21122827103904068),
        ((1272.5979470598488, 0.0, 826.6154927353808), (0.0, 1272.5979470598488, 479.75165386361925), (0, 0, 1)),
    ),
    "CAM_FRONT": SensorCalibration(
        (1.70079118954, 0.0159456324149, 1.51095763913),
        (0.4998015430569128, -0.5030316162024876, 0.4997798114386805, -0.49737083824542755),
        ((1266.417203046554, 0.0, 816.2670197447984), (0.0, 1266.417203046554, 491.50706579294757), (0, 0, 1)),
    ),
    "CAM_FRONT_RIGHT": SensorCalibration(
        (1.5508477543, -0.493404796419, 1.49574800619),
        (0.2060347966337182, -0.2026940577919598, 0.6824507824531167, -0.6713610884174485),
        ((1260.8474446004698, 0.0, 807.968244525554), (0.0, 1260.8474446004698, 495.3344268742088), (0, 0, 1)),
    ),
    "CAM_BACK_LEFT": SensorCalibration(
        (1.03569100218, 0.484795032713, 1.59097014818),
        (0.6924185592174665, -0.7031619420114925, -0.11648342771943819, 0.11203317912370753),
        ((1256.7414812095406, 0.0, 792.1125740759628), (0.0, 1256.7414812095406, 492.7757465151356), (0, 0, 1)),
    ),
    "CAM_BACK": SensorCalibration(
        (0.0283260309358, 0.00345136761476, 1.57910346144),
        (0.5037872666382278, -0.49740249788611096, -0.4941850223835201, 0.5045496097725578),
        ((809.2209905677063, 0.0, 829.2196003259838), (0.0, 809.2209905677063, 481.77842384512485), (0, 0, 1)),
    ),
    "CAM_BACK_RIGHT": SensorCalibration(
        (1.0148780988, -0.480568219723, 1.56239545128),
        (0.12280980120078765, -0.132400842670559, -0.7004305821388234, 0.690496031265798),
        ((1259.5137405846733, 0.0, 807.2529053838625), (0.0, 1259.5137405846733, 501.19579884916527), (0, 0, 1)),
    ),
}
LIDAR_CALIBRATION = SensorCalibration(
    (0.943713, 0.0, 1.84023),
    (0.7077955119163518, -0.006492242056004365, 0.010646214713995808, -0.7063073142877817),
)
# HDL-32E-like scan pattern of the synthetic LIDAR_TOP.
LIDAR_ELEVATIONS_DEG = np.linspace(-30.67, 10.67, 32)
LIDAR_AZIMUTH_STEP_DEG = 1.0
LIDAR_MAX_RANGE_M = 70.0

ROAD_HALF_WIDTH_M = 5.0
SIDEWALK_OUTER_M = 7.5
GROUND_RGB = {"road": (72, 72, 78), "marking": (235, 235, 235), "sidewalk": (160, 158, 152), "terrain": (96, 128, 64)}
SKY_ZENITH_RGB, SKY_HORIZON_RGB = np.array([96, 150, 220], np.float32), np.array([205, 222, 240], np.float32)

CATEGORIES = {  # nuScenes category name -> description
    "vehicle.car": "Vehicle designed primarily for personal use.",
    "vehicle.truck": "Vehicles primarily designed to haul cargo.",
    "human.pedestrian.adult": "Adult subcategory.",
    "movable_object.trafficcone": "All types of traffic cones.",
    "movable_object.barrier": "Temporary road barrier placed in the scene in order to redirect traffic.",
}
ATTRIBUTES = (
    "vehicle.moving",
    "vehicle.stopped",
    "vehicle.parked",
    "cycle.with_rider",
    "cycle.without_rider",
    "pedestrian.sitting_lying_down",
    "pedestrian.standing",
    "pedestrian.moving",
)
VISIBILITY_LEVELS = (("1", "v0-40"), ("2", "v40-60"), ("3", "v60-80"), ("4", "v80-100"))


@dataclass(frozen=True)
class WorldBox:
    """An upright box in the global frame; `category` is the nuScenes category of annotated objects (None = stuff)."""

    occ_class: int
    category: str | None
    attribute: str | None
    center_xy: tuple[float, float]  # at the scene's first timestamp
    velocity_xy: tuple[float, float]  # m/s
    yaw: float
    size_wlh: tuple[float, float, float]  # nuScenes order: width, length, height

    def center_at(self, t_s: float) -> np.ndarray:
        w, l, h = self.size_wlh
        return np.array(
            [self.center_xy[0] + self.velocity_xy[0] * t_s, self.center_xy[1] + self.velocity_xy[1] * t_s, h / 2.0]
        )

    def rotation(self) -> np.ndarray:
        c, s = math.cos(self.yaw), math.sin(self.yaw)
        return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])

    def half_extents(self) -> np.ndarray:
        w, l, h = self.size_wlh
        return np.array([l / 2.0, w / 2.0, h / 2.0])  # along the box's x (length), y (width), z


def _ground_class_of_offset(d: np.ndarray) -> np.ndarray:
    ad = np.abs(d)
    cls = np.full(np.shape(ad), CLASS_NAMES.index("terrain"), np.uint8)
    cls[ad < SIDEWALK_OUTER_M] = CLASS_NAMES.index("sidewalk")
    cls[ad < ROAD_HALF_WIDTH_M] = CLASS_NAMES.index("driveable_surface")
    return cls


def _lane_marking(s: np.ndarray, d: np.ndarray) -> np.ndarray:
    centre = (np.abs(d) < 0.08) & (np.mod(s, 6.0) < 3.0)
    edge = np.abs(np.abs(d) - (ROAD_HALF_WIDTH_M - 0.2)) < 0.08
    return centre | edge


@dataclass(frozen=True)
class SyntheticWorld:
    """Ground (road along `road_yaw` through `road_origin`, z = 0) plus boxes; the ego drives along the road."""

    road_origin: tuple[float, float]
    road_yaw: float
    boxes: tuple[WorldBox, ...]
    t0_us: int
    ego_speed: float = 5.0
    ego_lateral: float = -1.75
    ego_yaw_amplitude: float = 0.03

    def road_coords(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Global (x, y) -> (s along the road, d to the left of its centre line)."""
        c, s = math.cos(self.road_yaw), math.sin(self.road_yaw)
        dx, dy = x - self.road_origin[0], y - self.road_origin[1]
        return dx * c + dy * s, -dx * s + dy * c

    def ground_class(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return _ground_class_of_offset(self.road_coords(x, y)[1])

    def lane_marking(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return _lane_marking(*self.road_coords(x, y))

    def ego_pose(self, timestamp_us: int) -> tuple[list[float], list[float]]:
        """(translation, rotation (w, x, y, z)) of the ego in the global frame at `timestamp_us`."""
        t = (timestamp_us - self.t0_us) * 1e-6
        c, s = math.cos(self.road_yaw), math.sin(self.road_yaw)
        along = self.ego_speed * t
        x = self.road_origin[0] + along * c - self.ego_lateral * s
        y = self.road_origin[1] + along * s + self.ego_lateral * c
        yaw = self.road_yaw + self.ego_yaw_amplitude * math.sin(2.0 * math.pi * t / 2.0)
        q = Quaternion(axis=[0.0, 0.0, 1.0], angle=yaw)
        return [x, y, 0.0], [float(v) for v in q.elements]


@dataclass(frozen=True)
class SyntheticNuScenes:
    """What `make_synthetic_nuscenes` wrote (also stored as `<dataroot>/synthetic.json`)."""

    dataroot: Path
    version: str
    scene_names: tuple[str, ...]
    sample_tokens: tuple[str, ...]  # all keyframes, scene by scene, in time order
    occ3d_gts_dir: Path  # <dataroot>/gts: gts/<scene_name>/<sample_token>/labels.npz
    scene_tokens: tuple[str, ...] = ()
    samples_by_scene: dict[str, tuple[str, ...]] = field(default_factory=dict)
    num_camera_frames: int = 0  # camera sample_data records (all six cameras, keyframes and sweeps)
    num_lidar_frames: int = 0  # LIDAR_TOP sample_data records
    parameters: dict = field(default_factory=dict)

    def gt_path(self, scene_name: str, sample_token: str) -> Path:
        return self.occ3d_gts_dir / scene_name / sample_token / "labels.npz"


def make_synthetic_nuscenes(
    root: str | Path,
    num_scenes: int = 2,
    samples_per_scene: int = 3,
    *,
    camera_sweeps: bool = True,
    lidar: bool = True,
    occ3d_gts: bool = True,
    version: str = "v1.0-mini",
    seed: int = 0,
    jpeg_quality: int = 90,
) -> SyntheticNuScenes:
    """Write a synthetic nuScenes-format dataset under `root` (the dataroot) and describe it.

    camera_sweeps: also write the 5 non-key camera frames between keyframes (12 Hz); otherwise keyframes only.
    lidar: write LIDAR_TOP .pcd.bin files (records exist either way; the tables always need LIDAR_TOP keyframes).
    Re-running with the same arguments on a finished dataset returns its description without rebuilding.
    """
    if num_scenes < 1 or samples_per_scene < 1:
        raise ValueError(f"num_scenes ({num_scenes}) and samples_per_scene ({samples_per_scene}) must be >= 1")
    scene_pool = list(MINI_VAL_SCENES)
    if num_scenes > len(scene_pool):  # importing the devkit costs seconds: only when more names are needed
        from nuscenes.utils.splits import val

        scene_pool += [s for s in val if s not in MINI_VAL_SCENES]
    if num_scenes > len(scene_pool):
        raise ValueError(f"num_scenes {num_scenes} exceeds the {len(scene_pool)} val scene names available")
    root = Path(root)
    parameters = dict(
        num_scenes=num_scenes,
        samples_per_scene=samples_per_scene,
        camera_sweeps=camera_sweeps,
        lidar=lidar,
        occ3d_gts=occ3d_gts,
        version=version,
        seed=seed,
        jpeg_quality=jpeg_quality,
    )
    manifest = root / MANIFEST_NAME
    if manifest.exists():
        existing = load_synthetic_nuscenes(root)
        if existing.parameters == parameters:
            return existing
        raise FileExistsError(f"{manifest}: a synthetic dataset with other parameters ({existing.parameters}) exists")
    if (root / version).exists():
        raise FileExistsError(f"{root / version} exists but {manifest} does not (an interrupted build?); remove it")

    writer = _DatasetWriter(root, version, seed, jpeg_quality, camera_sweeps, lidar, occ3d_gts)
    for index, name in enumerate(scene_pool[:num_scenes]):
        writer.add_scene(index, name, samples_per_scene)
    result = writer.finish(parameters)
    tmp = manifest.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(_manifest_dict(result), indent=1))
    tmp.rename(manifest)
    return result


def load_synthetic_nuscenes(root: str | Path) -> SyntheticNuScenes:
    """Describe a dataset previously written by `make_synthetic_nuscenes` (reads `<root>/synthetic.json`)."""
    root = Path(root)
    data = json.loads((root / MANIFEST_NAME).read_text())
    return SyntheticNuScenes(
        dataroot=root,
        version=data["version"],
        scene_names=tuple(data["scene_names"]),
        sample_tokens=tuple(data["sample_tokens"]),
        occ3d_gts_dir=root / "gts",
        scene_tokens=tuple(data["scene_tokens"]),
        samples_by_scene={k: tuple(v) for k, v in data["samples_by_scene"].items()},
        num_camera_frames=data["num_camera_frames"],
        num_lidar_frames=data["num_lidar_frames"],
        parameters=data["parameters"],
    )


def _manifest_dict(result: SyntheticNuScenes) -> dict:
    data = asdict(result)
    data.pop("dataroot")
    data.pop("occ3d_gts_dir")
    return data


# ----------------------------------------------------------------------------------------------------------------
# World construction
# ----------------------------------------------------------------------------------------------------------------


def make_world(scene_index: int, seed: int = 0) -> SyntheticWorld:
    """The deterministic world of one scene (box positions jittered per scene)."""
    rng = np.random.default_rng([seed, scene_index, 0x5EED])
    origin = (250.0 + 310.0 * scene_index, 917.5 - 45.0 * scene_index)
    road_yaw = -0.1103 + 0.6 * scene_index
    c, s = math.cos(road_yaw), math.sin(road_yaw)

    def box(occ_name, category, attribute, along, left, size_wlh, yaw_offset=0.0, speed=0.0):
        along += float(rng.uniform(-0.6, 0.6))
        x = origin[0] + along * c - left * s
        y = origin[1] + along * s + left * c
        yaw = road_yaw + yaw_offset
        velocity = (speed * math.cos(yaw), speed * math.sin(yaw))
        return WorldBox(CLASS_NAMES.index(occ_name), category, attribute, (x, y), velocity, yaw, size_wlh)

    boxes = (
        box("car", "vehicle.car", "vehicle.parked", 11.0, 3.6, (1.9, 4.6, 1.6)),
        box("car", "vehicle.car", "vehicle.parked", -9.0, -3.6, (1.8, 4.3, 1.5)),
        box("car", "vehicle.car", "vehicle.moving", 26.0, 1.75, (1.9, 4.7, 1.7), math.pi, 6.0),
        box("truck", "vehicle.truck", "vehicle.stopped", 22.0, -3.2, (2.5, 7.5, 3.2)),
        box("pedestrian", "human.pedestrian.adult", "pedestrian.standing", 8.0, -6.2, (0.7, 0.7, 1.8)),
        box("traffic_cone", "movable_object.trafficcone", None, 5.0, -4.6, (0.4, 0.4, 0.7)),
        box("traffic_cone", "movable_object.trafficcone", None, 7.0, -4.6, (0.4, 0.4, 0.7)),
        box("barrier", "movable_object.barrier", None, -4.0, 4.7, (0.5, 2.2, 1.0)),
        box("manmade", None, None, 4.0, 15.0, (6.0, 26.0, 8.0)),
        box("vegetation", None, None, 16.0, -11.0, (3.5, 3.5, 5.0)),
    )
    t0 = FIRST_TIMESTAMP_US + scene_index * 60_000_000
    return SyntheticWorld(origin, road_yaw, boxes, t0)


def _pose_matrix(translation, rotation) -> np.ndarray:
    """4x4 from a translation and a (w, x, y, z) quaternion, as the devkit's transform_matrix (not imported: the
    devkit package import alone takes seconds)."""
    m = np.eye(4)
    m[:3, :3] = Quaternion(rotation).rotation_matrix
    m[:3, 3] = np.asarray(translation, np.float64)
    return m


# ----------------------------------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------------------------------

# Box corners: bit 0 = +x (length), bit 1 = +y (width), bit 2 = +z; faces as corner cycles with outward normals.
_CORNER_SIGNS = np.array([[1 if i & 1 else -1, 1 if i & 2 else -1, 1 if i & 4 else -1] for i in range(8)], float)
_FACES = (
    ((1, 3, 7, 5), (1, 0, 0)),
    ((0, 4, 6, 2), (-1, 0, 0)),
    ((2, 6, 7, 3), (0, 1, 0)),
    ((0, 1, 5, 4), (0, -1, 0)),
    ((4, 5, 7, 6), (0, 0, 1)),
    ((0, 2, 3, 1), (0, 0, -1)),
)
_LIGHT = np.array([0.3, 0.5, 0.81]) / np.linalg.norm([0.3, 0.5, 0.81])
_GROUND_DOWNSCALE = 8
_NEAR_M = 0.1


@functools.lru_cache(maxsize=16)
def _ground_rays_cached(intrinsic_key: tuple) -> np.ndarray:
    return _ground_rays(np.array(intrinsic_key, float))


def _ground_rays(intrinsic: np.ndarray) -> np.ndarray:
    """Unit-less camera-frame ray directions (3, h*w) for the centres of the quarter-resolution ground pixels."""
    f = _GROUND_DOWNSCALE
    h, w = -(-IMAGE_HEIGHT // f), -(-IMAGE_WIDTH // f)
    v, u = np.meshgrid(np.arange(h) * f + (f - 1) / 2.0, np.arange(w) * f + (f - 1) / 2.0, indexing="ij")
    pix = np.stack([u.ravel(), v.ravel(), np.ones(h * w)])
    return (np.linalg.inv(intrinsic) @ pix).astype(np.float32)


def render_camera(world: SyntheticWorld, global_from_cam: np.ndarray, intrinsic: np.ndarray, t_s: float) -> np.ndarray:
    """RGB uint8 (900, 1600, 3) view of the world from a camera (optical frame: z forward, x right, y down)."""
    f = _GROUND_DOWNSCALE
    h, w = -(-IMAGE_HEIGHT // f), -(-IMAGE_WIDTH // f)
    rot, origin = global_from_cam[:3, :3], global_from_cam[:3, 3]
    rays = rot @ _ground_rays_cached(tuple(map(tuple, intrinsic)))  # (3, N) global directions
    dz = rays[2]
    elevation = dz / np.linalg.norm(rays, axis=0)
    hits = dz < -1e-6
    dist = np.where(hits, -origin[2] / np.where(hits, dz, -1.0), np.inf)
    x = origin[0] + dist * rays[0]
    y = origin[1] + dist * rays[1]
    x[~hits], y[~hits] = origin[0], origin[1]

    sky_t = np.sqrt(np.clip(elevation, 0.0, 1.0))[:, None]
    colour = SKY_HORIZON_RGB * (1 - sky_t) + SKY_ZENITH_RGB * sky_t
    along, offset = world.road_coords(x, y)
    cls = _ground_class_of_offset(offset)
    palette = np.zeros((len(CLASS_NAMES) + 1, 3), np.float32)
    palette[CLASS_NAMES.index("terrain")] = GROUND_RGB["terrain"]
    palette[CLASS_NAMES.index("sidewalk")] = GROUND_RGB["sidewalk"]
    palette[CLASS_NAMES.index("driveable_surface")] = GROUND_RGB["road"]
    palette[-1] = GROUND_RGB["marking"]
    cls[_lane_marking(along, offset) & (cls == CLASS_NAMES.index("driveable_surface"))] = len(CLASS_NAMES)
    ground = palette[cls]
    haze = np.clip((dist - 30.0) / 170.0, 0.0, 1.0)[:, None]  # fade into the horizon colour far away
    ground = ground * (1 - haze) + SKY_HORIZON_RGB * haze
    colour[hits] = ground[hits]
    small = colour.reshape(h, w, 3).astype(np.uint8)
    # Exact factor f: source pixel i maps to the centre of destination pixels f*i .. f*i+f-1, as the rays assume.
    image = np.ascontiguousarray(cv2.resize(small, (w * f, h * f), interpolation=cv2.INTER_LINEAR)[:IMAGE_HEIGHT])

    cam_from_global = np.linalg.inv(global_from_cam)
    order = sorted(world.boxes, key=lambda b: -np.linalg.norm(b.center_at(t_s) - origin))
    for box in order:  # painter's algorithm: far boxes first
        _draw_box(image, box, t_s, cam_from_global, origin, intrinsic)
    return image


def _draw_box(image, box: WorldBox, t_s, cam_from_global, cam_origin, intrinsic) -> None:
    rot = box.rotation()
    centre = box.center_at(t_s)
    corners = centre + (_CORNER_SIGNS * box.half_extents()) @ rot.T  # (8, 3) global
    corners_cam = corners @ cam_from_global[:3, :3].T + cam_from_global[:3, 3]
    if np.all(corners_cam[:, 2] < _NEAR_M):
        return
    base = np.array(CLASS_COLORS[box.occ_class], float)
    for idx, normal_local in _FACES:
        normal = rot @ np.array(normal_local, float)
        face_centre = corners[list(idx)].mean(axis=0)
        if normal @ (face_centre - cam_origin) >= 0.0:  # back face
            continue
        polygon = _clip_near(corners_cam[list(idx)])
        if len(polygon) < 3:
            continue
        uv = (polygon @ intrinsic.T)[:, :2] / polygon[:, 2:3]
        shade = 0.45 + 0.55 * max(0.0, float(normal @ _LIGHT))
        colour = tuple(int(c) for c in np.clip(base * shade + 20.0, 0, 255))
        pts = np.round(uv * 16.0).astype(np.int64)
        if np.abs(pts).max() > 2**30:
            continue
        cv2.fillConvexPoly(image, pts.astype(np.int32), colour, lineType=cv2.LINE_AA, shift=4)


def _clip_near(polygon: np.ndarray) -> np.ndarray:
    """Sutherland-Hodgman clip of a camera-frame polygon against the plane z = near (keeps z >= near)."""
    out = []
    n = len(polygon)
    for i in range(n):
        a, b = polygon[i], polygon[(i + 1) % n]
        a_in, b_in = a[2] >= _NEAR_M, b[2] >= _NEAR_M
        if a_in:
            out.append(a)
        if a_in != b_in:
            t = (_NEAR_M - a[2]) / (b[2] - a[2])
            out.append(a + t * (b - a))
    return np.array(out)


# ----------------------------------------------------------------------------------------------------------------
# LIDAR_TOP
# ----------------------------------------------------------------------------------------------------------------


def _lidar_directions() -> tuple[np.ndarray, np.ndarray]:
    elev = np.radians(LIDAR_ELEVATIONS_DEG)
    azim = np.radians(np.arange(0.0, 360.0, LIDAR_AZIMUTH_STEP_DEG))
    e, a = np.meshgrid(elev, azim, indexing="ij")
    dirs = np.stack([np.cos(e) * np.cos(a), np.cos(e) * np.sin(a), np.sin(e)], axis=-1).reshape(-1, 3)
    rings = np.repeat(np.arange(len(elev)), len(azim))
    return dirs, rings


def scan_lidar(world: SyntheticWorld, global_from_lidar: np.ndarray, t_s: float) -> tuple[np.ndarray, np.ndarray]:
    """Ray-cast one sweep. Returns (points (N, 5) float32 x, y, z, intensity, ring in the lidar frame,
    hits per world box (len(boxes),) int)."""
    dirs_l, rings = _lidar_directions()
    rot, origin = global_from_lidar[:3, :3], global_from_lidar[:3, 3]
    dirs = dirs_l @ rot.T
    best = np.full(len(dirs), np.inf)
    hit_box = np.full(len(dirs), -1)
    down = dirs[:, 2] < -1e-6
    best[down] = -origin[2] / dirs[down, 2]
    for k, box in enumerate(world.boxes):
        brot = box.rotation()
        o = brot.T @ (origin - box.center_at(t_s))
        d = dirs @ brot  # rows: box-frame directions
        d = np.where(np.abs(d) < 1e-12, 1e-12, d)
        half = box.half_extents()
        t1, t2 = (-half - o) / d, (half - o) / d
        t_near = np.minimum(t1, t2).max(axis=1)
        t_far = np.maximum(t1, t2).min(axis=1)
        hit = (t_far >= t_near) & (t_near > 0.0) & (t_near < best)
        best[hit] = t_near[hit]
        hit_box[hit] = k
    keep = best < LIDAR_MAX_RANGE_M
    pts_l = dirs_l[keep] * best[keep, None]
    pts_g = origin + dirs[keep] * best[keep, None]
    intensity = np.full(len(pts_l), 12.0)
    on_ground = hit_box[keep] < 0
    intensity[on_ground & world.lane_marking(pts_g[:, 0], pts_g[:, 1])] = 90.0
    intensity[~on_ground] = 30.0 + hit_box[keep][~on_ground]
    points = np.column_stack([pts_l, intensity, rings[keep]]).astype(np.float32)
    counts = np.bincount(hit_box[keep][~on_ground], minlength=len(world.boxes))
    return points, counts


# ----------------------------------------------------------------------------------------------------------------
# Occ3D-style ground truth
# ----------------------------------------------------------------------------------------------------------------


def _voxel_centres() -> np.ndarray:
    ix, iy, iz = np.meshgrid(*(np.arange(n) for n in OCC_GRID.shape), indexing="ij")
    return np.stack(OCC_GRID.voxel_center(ix, iy, iz), axis=-1)  # (200, 200, 16, 3) ego frame


def occupancy_ground_truth(
    world: SyntheticWorld, global_from_ego: np.ndarray, t_s: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(semantics, mask_camera, mask_lidar), each (200, 200, 16) uint8 [ix, iy, iz], in the ego frame."""
    nx, ny, nz = OCC_GRID.shape
    centres = _voxel_centres()
    column_xy = centres[:, :, 0, :2].reshape(-1, 2)
    rot, trans = global_from_ego[:3, :3], global_from_ego[:3, 3]
    global_xy = column_xy @ rot[:2, :2].T + trans[:2]  # the ego pose is a pure yaw rotation on z = 0
    z = centres[0, 0, :, 2]
    semantics = np.full(OCC_GRID.shape, FREE_INDEX, np.uint8)
    ground_layers = z <= OCC_GRID.voxel_size / 2 + 1e-9  # voxels whose extent reaches the ground surface z = 0
    semantics[:, :, ground_layers] = world.ground_class(global_xy[:, 0], global_xy[:, 1]).reshape(nx, ny, 1)
    for box in world.boxes:
        local = (global_xy - box.center_at(t_s)[:2]) @ box.rotation()[:2, :2]
        half = box.half_extents()
        inside = (np.abs(local[:, 0]) < half[0]) & (np.abs(local[:, 1]) < half[1])
        layers = (z > 1e-6) & (z < box.size_wlh[2])
        semantics[inside.reshape(nx, ny)[:, :, None] & layers[None, None, :]] = box.occ_class

    surface_iz = int(np.nonzero(ground_layers)[0].max())  # the layer containing z = 0
    above = centres[:, :, surface_iz:, :].reshape(-1, 3).astype(np.float32)
    seen = np.zeros(len(above), bool)
    for cam in CAMERA_NAMES:
        calib = CAMERA_CALIBRATION[cam]
        ego_from_cam = _pose_matrix(calib.translation, calib.rotation)
        p = (above - ego_from_cam[:3, 3].astype(np.float32)) @ ego_from_cam[:3, :3].astype(np.float32)
        k = np.asarray(calib.intrinsic, np.float32)
        depth = p[:, 2]
        front = depth > _NEAR_M
        u = k[0, 0] * p[:, 0] / np.where(front, depth, 1) + k[0, 2]
        v = k[1, 1] * p[:, 1] / np.where(front, depth, 1) + k[1, 2]
        seen |= front & (u >= 0) & (u < IMAGE_WIDTH) & (v >= 0) & (v < IMAGE_HEIGHT)
    mask_camera = np.zeros(OCC_GRID.shape, np.uint8)
    mask_camera[:, :, surface_iz:] = seen.reshape(nx, ny, nz - surface_iz)

    lidar_pos = np.asarray(LIDAR_CALIBRATION.translation, np.float32)
    rel = above - lidar_pos
    elevation = np.degrees(np.arctan2(rel[:, 2], np.hypot(rel[:, 0], rel[:, 1])))
    in_fov = (elevation >= LIDAR_ELEVATIONS_DEG[0]) & (elevation <= LIDAR_ELEVATIONS_DEG[-1])
    mask_lidar = np.zeros(OCC_GRID.shape, np.uint8)
    mask_lidar[:, :, surface_iz:] = in_fov.reshape(nx, ny, nz - surface_iz)
    return semantics, mask_camera, mask_lidar


# ----------------------------------------------------------------------------------------------------------------
# Tables and files
# ----------------------------------------------------------------------------------------------------------------


def _token(*parts) -> str:
    return hashlib.md5("/".join(str(p) for p in parts).encode()).hexdigest()


def _link(records: list[dict]) -> None:
    for prev, nxt in zip(records, records[1:]):
        prev["next"], nxt["prev"] = nxt["token"], prev["token"]


class _DatasetWriter:
    """Accumulates the tables scene by scene and writes the data files as it goes."""

    def __init__(self, root: Path, version, seed, jpeg_quality, camera_sweeps, lidar, occ3d_gts):
        self.root, self.version, self.seed = root, version, seed
        self.jpeg_quality, self.camera_sweeps, self.lidar, self.occ3d_gts = (
            jpeg_quality,
            camera_sweeps,
            lidar,
            occ3d_gts,
        )
        self.tables: dict[str, list[dict]] = {
            name: []
            for name in (
                "category",
                "attribute",
                "visibility",
                "instance",
                "sensor",
                "calibrated_sensor",
                "ego_pose",
                "log",
                "scene",
                "sample",
                "sample_data",
                "sample_annotation",
                "map",
            )
        }
        self.category_tokens = {name: _token(seed, "category", name) for name in CATEGORIES}
        for name, description in CATEGORIES.items():
            self.tables["category"].append(
                {"token": self.category_tokens[name], "name": name, "description": description}
            )
        self.attribute_tokens = {name: _token(seed, "attribute", name) for name in ATTRIBUTES}
        for name in ATTRIBUTES:
            self.tables["attribute"].append({"token": self.attribute_tokens[name], "name": name, "description": ""})
        for token, level in VISIBILITY_LEVELS:
            self.tables["visibility"].append({"token": token, "level": level, "description": f"visibility {level}"})
        self.sensor_tokens = {}
        for channel in (*CAMERA_NAMES, LIDAR_CHANNEL):
            token = _token(seed, "sensor", channel)
            self.sensor_tokens[channel] = token
            modality = "lidar" if channel == LIDAR_CHANNEL else "camera"
            self.tables["sensor"].append({"token": token, "channel": channel, "modality": modality})
        self.scene_names: list[str] = []
        self.scene_tokens: list[str] = []
        self.samples_by_scene: dict[str, tuple[str, ...]] = {}
        self.num_camera_frames = 0
        self.num_lidar_frames = 0
        (root / version).mkdir(parents=True, exist_ok=True)

    def add_scene(self, index: int, name: str, num_samples: int) -> None:
        seed, tables = self.seed, self.tables
        world = make_world(index, seed)
        log_token = _token(seed, "log", index)
        logfile = f"n015-2018-07-{24 + index % 5:02d}-11-{22 + index % 30:02d}-45+0800"
        tables["log"].append(
            {
                "token": log_token,
                "logfile": logfile,
                "vehicle": "n015",
                "date_captured": f"2018-07-{24 + index % 5:02d}",
                "location": "singapore-onenorth",
            }
        )
        calib_tokens = {}
        calibrations = {**CAMERA_CALIBRATION, LIDAR_CHANNEL: LIDAR_CALIBRATION}
        for channel, calib in calibrations.items():
            token = _token(seed, "calibrated_sensor", index, channel)
            calib_tokens[channel] = token
            tables["calibrated_sensor"].append(
                {
                    "token": token,
                    "sensor_token": self.sensor_tokens[channel],
                    "translation": list(calib.translation),
                    "rotation": list(calib.rotation),
                    "camera_intrinsic": [list(map(float, row)) for row in calib.intrinsic],
                }
            )

        scene_token = _token(seed, "scene", index)
        sample_times = [world.t0_us + i * SAMPLE_INTERVAL_US + 13 * i for i in range(num_samples)]
        samples = [
            {
                "token": _token(seed, "sample", index, i),
                "timestamp": ts,
                "prev": "",
                "next": "",
                "scene_token": scene_token,
            }
            for i, ts in enumerate(sample_times)
        ]
        _link(samples)
        tables["sample"].extend(samples)

        # LIDAR_TOP: 10 sweeps per keyframe interval, keyframe exactly at the sample timestamp.
        lidar_records = []
        keyframe_counts = {}
        for i, sample in enumerate(samples):
            steps = range(10) if i + 1 < num_samples else range(1)
            for j in steps:
                ts = sample["timestamp"] + j * LIDAR_INTERVAL_US
                record, counts = self._lidar_frame(world, index, logfile, calib_tokens, sample["token"], ts, j == 0)
                lidar_records.append(record)
                if j == 0:
                    keyframe_counts[sample["token"]] = counts
        _link(lidar_records)
        tables["sample_data"].extend(lidar_records)
        self.num_lidar_frames += len(lidar_records)

        # Cameras: 6 frames per keyframe interval (12 Hz), the first one is the keyframe.
        for cam in CAMERA_NAMES:
            cam_records = []
            for i, sample in enumerate(samples):
                steps = range(6) if (i + 1 < num_samples and self.camera_sweeps) else range(1)
                for j in steps:
                    ts = sample["timestamp"] + CAMERA_OFFSET_US[cam] + j * CAMERA_INTERVAL_US
                    cam_records.append(
                        self._camera_frame(world, index, logfile, cam, calib_tokens[cam], sample["token"], ts, j == 0)
                    )
            _link(cam_records)
            tables["sample_data"].extend(cam_records)
            self.num_camera_frames += len(cam_records)

        self._annotations(world, index, samples, keyframe_counts)
        if self.occ3d_gts:
            for sample in samples:
                self._ground_truth(world, name, sample)

        tables["scene"].append(
            {
                "token": scene_token,
                "log_token": log_token,
                "nbr_samples": num_samples,
                "first_sample_token": samples[0]["token"],
                "last_sample_token": samples[-1]["token"],
                "name": name,
                "description": "synthetic: road, parked and moving cars, truck, pedestrian, cones, barrier",
            }
        )
        self.scene_names.append(name)
        self.scene_tokens.append(scene_token)
        self.samples_by_scene[name] = tuple(s["token"] for s in samples)

    def _ego_pose(self, world: SyntheticWorld, token: str, ts: int) -> np.ndarray:
        translation, rotation = world.ego_pose(ts)
        self.tables["ego_pose"].append(
            {"token": token, "timestamp": ts, "rotation": rotation, "translation": translation}
        )
        return _pose_matrix(translation, rotation)

    def _sample_data(self, token, sample_token, ts, calib_token, filename, fileformat, key, hw) -> dict:
        return {
            "token": token,
            "sample_token": sample_token,
            "ego_pose_token": token,
            "calibrated_sensor_token": calib_token,
            "timestamp": ts,
            "fileformat": fileformat,
            "is_key_frame": key,
            "height": hw[0],
            "width": hw[1],
            "filename": filename,
            "prev": "",
            "next": "",
        }

    def _lidar_frame(self, world, index, logfile, calib_tokens, sample_token, ts, key):
        token = _token(self.seed, "sample_data", index, LIDAR_CHANNEL, ts)
        global_from_ego = self._ego_pose(world, token, ts)
        filename = f"{'samples' if key else 'sweeps'}/{LIDAR_CHANNEL}/{logfile}__{LIDAR_CHANNEL}__{ts}.pcd.bin"
        counts = None
        if self.lidar or key:
            ego_from_lidar = _pose_matrix(LIDAR_CALIBRATION.translation, LIDAR_CALIBRATION.rotation)
            points, counts = scan_lidar(world, global_from_ego @ ego_from_lidar, (ts - world.t0_us) * 1e-6)
            if self.lidar:
                path = self.root / filename
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(points.tobytes())
        record = self._sample_data(token, sample_token, ts, calib_tokens[LIDAR_CHANNEL], filename, "pcd", key, (0, 0))
        return record, counts

    def _camera_frame(self, world, index, logfile, cam, calib_token, sample_token, ts, key):
        token = _token(self.seed, "sample_data", index, cam, ts)
        global_from_ego = self._ego_pose(world, token, ts)
        calib = CAMERA_CALIBRATION[cam]
        global_from_cam = global_from_ego @ _pose_matrix(calib.translation, calib.rotation)
        image = render_camera(world, global_from_cam, np.asarray(calib.intrinsic, float), (ts - world.t0_us) * 1e-6)
        filename = f"{'samples' if key else 'sweeps'}/{cam}/{logfile}__{cam}__{ts}.jpg"
        path = self.root / filename
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(simplejpeg.encode_jpeg(image, quality=self.jpeg_quality, colorspace="RGB"))
        return self._sample_data(
            token, sample_token, ts, calib_token, filename, "jpg", key, (IMAGE_HEIGHT, IMAGE_WIDTH)
        )

    def _annotations(self, world: SyntheticWorld, index: int, samples: list[dict], keyframe_counts: dict) -> None:
        for k, box in enumerate(world.boxes):
            if box.category is None:
                continue
            instance_token = _token(self.seed, "instance", index, k)
            anns = []
            for sample in samples:
                t_s = (sample["timestamp"] - world.t0_us) * 1e-6
                centre = box.center_at(t_s)
                w, l, h = box.size_wlh
                anns.append(
                    {
                        "token": _token(self.seed, "sample_annotation", index, k, sample["token"]),
                        "sample_token": sample["token"],
                        "instance_token": instance_token,
                        "visibility_token": "4",
                        "attribute_tokens": [self.attribute_tokens[box.attribute]] if box.attribute else [],
                        "translation": [float(v) for v in centre],
                        "size": [w, l, h],
                        "rotation": [float(v) for v in Quaternion(axis=[0, 0, 1], angle=box.yaw).elements],
                        "prev": "",
                        "next": "",
                        "num_lidar_pts": int(keyframe_counts[sample["token"]][k]),
                        "num_radar_pts": 0,
                    }
                )
            _link(anns)
            self.tables["sample_annotation"].extend(anns)
            self.tables["instance"].append(
                {
                    "token": instance_token,
                    "category_token": self.category_tokens[box.category],
                    "nbr_annotations": len(anns),
                    "first_annotation_token": anns[0]["token"],
                    "last_annotation_token": anns[-1]["token"],
                }
            )

    def _ground_truth(self, world: SyntheticWorld, scene_name: str, sample: dict) -> None:
        ts = sample["timestamp"]
        translation, rotation = world.ego_pose(ts)
        semantics, mask_camera, mask_lidar = occupancy_ground_truth(
            world, _pose_matrix(translation, rotation), (ts - world.t0_us) * 1e-6
        )
        folder = self.root / "gts" / scene_name / sample["token"]
        folder.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(folder / "labels.npz", semantics=semantics, mask_camera=mask_camera, mask_lidar=mask_lidar)

    def finish(self, parameters: dict) -> SyntheticNuScenes:
        map_token = _token(self.seed, "map")
        map_file = f"maps/{map_token}.png"
        (self.root / "maps").mkdir(exist_ok=True)
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(self.root / map_file)
        self.tables["map"].append(
            {
                "token": map_token,
                "log_tokens": [log["token"] for log in self.tables["log"]],
                "category": "semantic_prior",
                "filename": map_file,
            }
        )
        for name, records in self.tables.items():
            (self.root / self.version / f"{name}.json").write_text(json.dumps(records, indent=0))
        return SyntheticNuScenes(
            dataroot=self.root,
            version=self.version,
            scene_names=tuple(self.scene_names),
            sample_tokens=tuple(t for name in self.scene_names for t in self.samples_by_scene[name]),
            occ3d_gts_dir=self.root / "gts",
            scene_tokens=tuple(self.scene_tokens),
            samples_by_scene=dict(self.samples_by_scene),
            num_camera_frames=self.num_camera_frames,
            num_lidar_frames=self.num_lidar_frames,
            parameters=parameters,
        )
