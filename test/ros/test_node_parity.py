"""flashocc_node against the official answer, not against itself: an independent publisher over DDS hands the node
the official raw-image golden run's inputs as a robot would — six raw 1600x900 ``rgb8`` images, ``CameraInfo``,
camera extrinsics on ``/tf_static`` and ``/tf`` map -> base_link at every camera's stamp with the golden sample's
*different* per-camera ego poses (float64 quaternions, as nuScenes stores them) — and the published
``/occupancy/semantic`` and ``/occupancy/panoptic`` grids are compared with the official outputs for those inputs
(``raw_e2e_*`` golden data) under the near-tie rules of ``test/reference/near_ties.py``.

The messages are decoded here from their documented layout (C order over [ix, iy, iz]), not with the package's own
decoders. The near-tie judgements need logits and head maps, which the node does not publish: they come from one
PyTorch pipeline run on the same inputs, whose own parity with the official answer is proven in
``test_pipeline_parity.py``; the labels, centres and instances under test are the node's.
"""

from __future__ import annotations

import numpy as np
import pytest

from flashocc_ros.config import CAMERA_NAMES, load_config
from flashocc_ros.network.geometry import _REFERENCE_RIG, reference_rig
from test.conftest import wait_for
from test.model_helpers import GOLDEN
from test.reference.near_ties import OFFICIAL_HEAD_TO_OCC, check_centers, check_labels, check_panoptic
from test.reference.raw_images import raw_images
from test.ros.test_node import NodeProcess, _context, _module_env, reliable_inputs

pytestmark = pytest.mark.ros

KEY_STAMP_NS = 1_533_151_603_512_404_000  # a nuScenes-like stamp (2018-08-01)
OFFSETS_MS = (0, 17, 33, 58, 42, 75)  # each camera's exposure after CAM_FRONT_LEFT's, within one sweep
H, W = 900, 1600
PYTORCH_LOGIT_REL_TOL = 1e-4
PARAMS = {
    "model.backend": "pytorch",
    "model.device": "cpu",
    "model.pano_mode": "official",
    "cameras.transport": "raw",
    "cameras.image_topic": "/{camera}/image",
    "outputs.publish_panoptic": "true",
    "outputs.publish_pointcloud": "false",
    "sync.tf_timeout_s": "5.0",
    **reliable_inputs(),
}


def camera_stamp(i: int) -> int:
    return KEY_STAMP_NS + OFFSETS_MS[i] * 1_000_000


def transform(parent: str, child: str, translation, quaternion_wxyz, stamp_ns: int):
    from geometry_msgs.msg import TransformStamped

    t = TransformStamped()
    t.header.frame_id, t.child_frame_id = parent, child
    t.header.stamp.sec, t.header.stamp.nanosec = divmod(stamp_ns, 1_000_000_000)
    t.transform.translation.x, t.transform.translation.y, t.transform.translation.z = (float(v) for v in translation)
    w, x, y, z = (float(v) for v in quaternion_wxyz)
    t.transform.rotation.x, t.transform.rotation.y, t.transform.rotation.z, t.transform.rotation.w = x, y, z, w
    return t


class RigPublisher:
    """The golden sample's rig, published the way a robot (or a nuScenes bag) does, and the node's outputs."""

    def __init__(self, context):
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import CameraInfo, Image
        from tf2_msgs.msg import TFMessage

        from flashocc_ros.msg import PanopticOccupancy, SemanticOccupancy

        self.node = rclpy.create_node("golden_rig_publisher", context=context)
        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(self.node)
        reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        latched = QoSProfile(
            depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL
        )
        self.images = [self.node.create_publisher(Image, f"/{c}/image", reliable) for c in CAMERA_NAMES]
        self.infos = [self.node.create_publisher(CameraInfo, f"/{c}/camera_info", reliable) for c in CAMERA_NAMES]
        self.tf_static = self.node.create_publisher(TFMessage, "/tf_static", latched)
        self.tf = self.node.create_publisher(
            TFMessage, "/tf", QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
        )
        self.received: dict[str, object] = {}
        for key, typ in (("semantic", SemanticOccupancy), ("panoptic", PanopticOccupancy)):
            self.node.create_subscription(typ, f"/occupancy/{key}", self._keep(key), reliable)

    def _keep(self, key):
        def callback(msg):
            self.received[key] = msg

        return callback

    def spin(self, seconds: float = 0.05) -> None:
        self.executor.spin_once(timeout_sec=seconds)

    def publish_static(self) -> None:
        from tf2_msgs.msg import TFMessage

        statics = [transform("base_link", c, _REFERENCE_RIG[c][0], _REFERENCE_RIG[c][1], 0) for c in CAMERA_NAMES]
        self.tf_static.publish(TFMessage(transforms=statics))

    def publish_sweep(self, images: np.ndarray) -> None:
        from sensor_msgs.msg import CameraInfo, Image
        from tf2_msgs.msg import TFMessage

        poses = [transform("map", "base_link", _REFERENCE_RIG[c][2], _REFERENCE_RIG[c][3], camera_stamp(i))
                 for i, c in enumerate(CAMERA_NAMES)]  # fmt: skip
        self.tf.publish(TFMessage(transforms=poses))
        for i, cam in enumerate(CAMERA_NAMES):
            fx, fy, cx, cy = _REFERENCE_RIG[cam][4]
            info = CameraInfo(width=W, height=H)
            info.header.frame_id = cam
            info.k = [fx, 0.0, cx, 0.0, fy, cy, 0.0, 0.0, 1.0]
            self.infos[i].publish(info)
        self.spin(0.2)
        for i, cam in enumerate(CAMERA_NAMES):
            msg = Image(height=H, width=W, encoding="rgb8", step=W * 3)
            msg.header.frame_id = cam
            msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(camera_stamp(i), 1_000_000_000)
            msg.data = np.ascontiguousarray(images[i]).tobytes()
            self.images[i].publish(msg)
            self.spin(0.0)

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()


def decode_semantic(msg) -> np.ndarray:
    assert (msg.size_x, msg.size_y, msg.size_z) == (200, 200, 16) and msg.free_index == 17
    assert msg.header.frame_id == "base_link"
    assert int(msg.header.stamp.sec) * 1_000_000_000 + int(msg.header.stamp.nanosec) == KEY_STAMP_NS
    return np.frombuffer(bytes(msg.labels), dtype=np.uint8).reshape(200, 200, 16)


def reference_maps(variant: str) -> dict:
    """Logits and centre-head maps for the near-tie judgements (see the module docstring)."""
    from flashocc_ros.inference.pipeline import OccupancyPipeline

    cfg = load_config(overrides={"model": {"variant": variant, "backend": "pytorch", "device": "cpu"}})
    with OccupancyPipeline(cfg, with_logits=True, log=lambda s: None) as pipe:
        pipe.set_calibration(reference_rig(float32=False))
        result = pipe.run(list(raw_images(0)))
    return {"logits": result.logits, **(result.center_maps or {})}


@pytest.mark.parametrize("variant", ["flashocc-r50-M0", "panoptic-flashocc-r50-depth-tiny-pano"])
def test_node_gives_the_official_answer_for_a_published_rig(variant, tmp_path_factory):
    env = _module_env(tmp_path_factory)
    node = NodeProcess(env, {**PARAMS, "model.variant": variant})
    ctx = _context(env)
    rig = RigPublisher(ctx)
    try:
        rig.publish_static()
        wait_for(lambda: all(p.get_subscription_count() >= 1 for p in rig.images), 120.0, rig.spin,
                 f"flashocc_node subscriptions; node log:\n{node.log()[-2000:]}")  # fmt: skip
        wait_for(lambda: rig.node.count_publishers("/occupancy/semantic") >= 1, 60.0, rig.spin, "node publishers")
        from rclpy.qos import ReliabilityPolicy

        for topic in ("/CAM_BACK/image", "/CAM_BACK/camera_info"):  # qos_overrides took effect
            (sub,) = rig.node.get_subscriptions_info_by_topic(topic)
            assert sub.qos_profile.reliability == ReliabilityPolicy.RELIABLE, topic
        rig.publish_sweep(raw_images(0))
        panoptic = variant.startswith("panoptic")
        wanted = ("semantic", "panoptic") if panoptic else ("semantic",)
        wait_for(lambda: all(k in rig.received for k in wanted), 120.0, rig.spin,
                 f"occupancy output; node log:\n{node.log()[-3000:]}")  # fmt: skip
        semantic = decode_semantic(rig.received["semantic"])
        pano_msg = rig.received.get("panoptic")
    finally:
        rig.close()
        ctx.try_shutdown()
        node.stop()
    assert "WITHOUT ego-motion" not in node.log() and "processing failed" not in node.log(), node.log()[-3000:]

    maps = reference_maps(variant)
    tolerance = PYTORCH_LOGIT_REL_TOL * float(maps["logits"].std())
    with np.load(GOLDEN / f"raw_e2e_{variant}_seed0.npz") as official:
        official = {k: official[k] for k in official.files}
    check_labels(semantic, official["occ_label"], maps["logits"], int(official["occ_margin_lt_1e-3"]), tolerance)
    if pano_msg is None:
        return
    pano_sem = decode_semantic(pano_msg.semantic)
    np.testing.assert_array_equal(pano_sem, semantic)
    assert pano_msg.mode == "official"
    pano = np.asarray(pano_msg.panoptic, dtype=np.int64).reshape(200, 200, 16)
    # The instance table has one row per decoded centre (official pairing: head class -> occupancy class).
    rows = sorted(pano_msg.instances, key=lambda i: -i.score)
    assert rows and all(i.id >= 18 for i in rows)
    assert set(np.unique(pano[pano >= 18]).tolist()) <= {int(i.id) for i in rows}
    ours = {
        "centers_xyz": np.array([[i.center.x, i.center.y, i.center.z] for i in rows], np.float32),
        "centers_score": np.array([i.score for i in rows], np.float32),
        "centers_label": np.array([OFFICIAL_HEAD_TO_OCC.index(int(i.class_index)) for i in rows], np.int64),
    }
    match = check_centers(ours, official, maps["center_heatmap"], maps["center_reg"])
    check_panoptic(pano, official["pano_inst"], semantic, official["occ_label"], ours, official, match)
