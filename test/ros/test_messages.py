"""numpy <-> message conversion: occupancy grids, point cloud, markers, camera inputs."""

from __future__ import annotations

import array
from types import SimpleNamespace as NS

import numpy as np
import pytest

from benchmarks.bench_publish import plain_occupied_points  # the benchmark's baseline: the plain construction
from flashocc_ros.config import CLASS_NAMES, FREE_INDEX, OCC_GRID
from flashocc_ros.ros.messages import (
    OCCUPANCY_POINT_DTYPE,
    BadInput,
    camera_info_intrinsics,
    check_image_size,
    compressed_jpeg_bytes,
    image_to_rgb,
    jpeg_size,
    marker_voxels,
    occupied_points,
)

K_GOOD = [1266.4, 0.0, 816.3, 0.0, 1266.4, 491.5, 0.0, 0.0, 1.0]


def sample_grid(seed=0):
    rng = np.random.default_rng(seed)
    grid = np.full(OCC_GRID.shape, FREE_INDEX, dtype=np.uint8)
    n = 3000
    idx = (rng.integers(0, 200, n), rng.integers(0, 200, n), rng.integers(0, 16, n))
    grid[idx] = rng.integers(0, 17, n).astype(np.uint8)
    return grid


def test_occupied_points_positions_labels_colours():
    grid = np.full(OCC_GRID.shape, FREE_INDEX, dtype=np.uint8)
    grid[0, 0, 0] = 4  # car, min corner voxel
    grid[199, 100, 15] = 11  # driveable_surface
    pts = occupied_points(grid)
    assert pts.dtype == OCCUPANCY_POINT_DTYPE and pts.size == 2
    np.testing.assert_allclose([pts["x"][0], pts["y"][0], pts["z"][0]], [-39.8, -39.8, -0.8], atol=1e-5)
    np.testing.assert_allclose([pts["x"][1], pts["y"][1], pts["z"][1]], [39.8, 0.2, 5.2], atol=1e-5)
    assert pts["label"].tolist() == [4, 11]
    assert pts["rgb"][0] == (0 << 16) | (150 << 8) | 245  # Occ3D car colour
    assert pts["instance"].tolist() == [0, 0]


def test_occupied_points_with_instances():
    grid = np.full(OCC_GRID.shape, FREE_INDEX, dtype=np.uint8)
    grid[10, 10, 2] = 4
    grid[11, 10, 2] = 4
    grid[50, 50, 1] = 11
    pano = grid.astype(np.int32)
    pano[10, 10, 2] = 18
    pts = occupied_points(grid, pano)
    assert pts["instance"].tolist() == [18, 0, 0]
    assert pts["label"].tolist() == [4, 4, 11]


@pytest.mark.parametrize("occupied_fraction", [0.0, 0.05, 0.7, 1.0])
def test_occupied_points_match_the_plain_construction(occupied_fraction):
    """Byte-identical records to the field-by-field construction, with and without a panoptic grid (instance ids,
    an official-mode erased voxel = 0, things without an instance), on grids from empty to fully occupied."""
    rng = np.random.default_rng(7)
    occupied = rng.random(OCC_GRID.shape) < occupied_fraction
    grid = np.where(occupied, rng.integers(0, 17, OCC_GRID.shape), FREE_INDEX).astype(np.uint8)
    pano = grid.astype(np.int32)
    thing = (grid >= 1) & (grid <= 10) & (rng.random(OCC_GRID.shape) < 0.8)
    pano[thing] = rng.integers(18, 600, int(thing.sum()))
    pano[(grid == 1) & ~thing] = 0  # erased barrier voxels
    assert occupied_points(grid).tobytes() == plain_occupied_points(grid).tobytes()
    assert occupied_points(grid, pano).tobytes() == plain_occupied_points(grid, pano).tobytes()
    fortran = np.asfortranarray(grid)  # any memory layout: records stay in [ix, iy, iz] C order
    assert occupied_points(fortran).tobytes() == plain_occupied_points(grid).tobytes()


def test_occupied_points_reject_instance_ids_beyond_uint16():
    grid = np.full(OCC_GRID.shape, FREE_INDEX, dtype=np.uint8)
    grid[3, 4, 5] = 4
    pano = grid.astype(np.int32)
    pano[3, 4, 5] = 70000
    with pytest.raises(BadInput, match="instance id 70000 does not fit the uint16 point field"):
        occupied_points(grid, pano)


def test_marker_voxels_cap_keeps_classes_in_proportion():
    grid = sample_grid()
    full = marker_voxels(grid, max_markers=10**6)
    n_full = sum(len(v) for v in full.values())
    assert n_full == int((grid != FREE_INDEX).sum())
    capped = marker_voxels(grid, max_markers=500)
    assert sum(len(v) for v in capped.values()) == 500
    assert set(capped) <= set(full)
    assert marker_voxels(grid, max_markers=0) == {}


def test_camera_info_checks():
    K = camera_info_intrinsics(K_GOOD, 1600, 900, "/CAM_FRONT/camera_info")
    assert K.shape == (3, 3) and K[0, 0] == 1266.4
    with pytest.raises(BadInput, match=r"/CAM_FRONT/camera_info: K is all zeros"):
        camera_info_intrinsics([0.0] * 9, 1600, 900, "/CAM_FRONT/camera_info")
    with pytest.raises(BadInput, match=r"NaN"):
        camera_info_intrinsics([float("nan")] + K_GOOD[1:], 1600, 900)
    with pytest.raises(BadInput, match=r"image size 0x900"):
        camera_info_intrinsics(K_GOOD, 0, 900)
    with pytest.raises(BadInput, match=r"image is 800x450 but its CameraInfo says 1600x900"):
        check_image_size("/CAM_FRONT/image", 800, 450, (1600, 900))


def raw_image(encoding, h=4, w=5, pad=0):
    rgb = np.arange(h * w * 3, dtype=np.uint8).reshape(h, w, 3)
    pixels = rgb[..., ::-1] if encoding == "bgr8" else rgb
    rows = np.concatenate([pixels, np.zeros((h, w, 0), np.uint8)], axis=2).reshape(h, w * 3)
    data = np.concatenate([rows, np.zeros((h, pad), np.uint8)], axis=1)
    return rgb, NS(encoding=encoding, height=h, width=w, step=w * 3 + pad, data=array.array("B", data.tobytes()))


@pytest.mark.parametrize("encoding, pad", [("rgb8", 0), ("bgr8", 0), ("rgb8", 3)])
def test_image_to_rgb_is_a_view_with_rgb_order(encoding, pad):
    rgb, msg = raw_image(encoding, pad=pad)
    view = image_to_rgb(msg)
    np.testing.assert_array_equal(view, rgb)
    assert not view.flags.owndata  # zero-copy view of the message buffer


def test_image_to_rgb_rejects_bad_encoding_and_size():
    _, msg = raw_image("rgb8")
    msg.encoding = "mono8"
    with pytest.raises(BadInput, match=r"/cam: encoding 'mono8' is not supported"):
        image_to_rgb(msg, "/cam")
    _, msg = raw_image("rgb8")
    msg.height = 10
    with pytest.raises(BadInput, match=r"data has 60 bytes, expected step\*height = 150"):
        image_to_rgb(msg)


def test_compressed_bytes_and_header():
    import simplejpeg

    img = np.zeros((48, 64, 3), np.uint8)
    jpeg = simplejpeg.encode_jpeg(img)
    msg = NS(format="rgb8; jpeg compressed bgr8", data=array.array("B", jpeg))
    data = compressed_jpeg_bytes(msg, "/cam")
    assert data == jpeg and jpeg_size(data) == (64, 48)
    with pytest.raises(BadInput, match=r"format 'png' is not JPEG"):
        compressed_jpeg_bytes(NS(format="png", data=array.array("B", jpeg)))
    with pytest.raises(BadInput, match=r"not a JPEG stream"):
        compressed_jpeg_bytes(NS(format="jpeg", data=array.array("B", b"garbage!")))
    with pytest.raises(BadInput, match=r"corrupt JPEG header"):
        jpeg_size(jpeg[:2] + b"\x00" * 40, "/cam")


# ---------------------------------------------------------------------------------------------------------------
# Message round trips (need the generated message classes)
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.ros
def test_semantic_and_panoptic_roundtrip():
    from std_msgs.msg import Header

    from flashocc_ros.ros.messages import occupancy_from_msg, panoptic_from_msg, panoptic_to_msg, semantic_to_msg

    grid = sample_grid()
    header = Header(frame_id="base_link")
    header.stamp.sec, header.stamp.nanosec = 12, 34
    msg = semantic_to_msg(grid, header, "flashocc-r50-M0")
    assert (msg.size_x, msg.size_y, msg.size_z) == (200, 200, 16)
    assert list(msg.class_names) == list(CLASS_NAMES) and msg.free_index == FREE_INDEX
    assert (msg.origin.x, msg.origin.y, msg.origin.z) == (-40.0, -40.0, -1.0)
    np.testing.assert_array_equal(occupancy_from_msg(msg).labels, grid)
    # Layout promised by the .msg: labels[(ix * size_y + iy) * size_z + iz].
    assert msg.labels[(5 * 200 + 7) * 16 + 3] == grid[5, 7, 3]

    pano = grid.astype(np.int32)
    pano[grid == 4] = 18
    instances = NS(
        id=np.array([18]),
        occ_class=np.array([4]),
        center_xyz=np.array([[1.0, 2.0, 0.5]]),
        score=np.array([0.9]),
        voxel_count=np.array([int((grid == 4).sum())]),
    )
    pmsg = panoptic_to_msg(grid, pano, instances, header, "panoptic-flashocc-r50-depth-tiny-pano", "corrected")
    sem2, pano2 = panoptic_from_msg(pmsg)
    np.testing.assert_array_equal(sem2.labels, grid)
    np.testing.assert_array_equal(pano2, pano)
    assert pmsg.mode == "corrected" and pmsg.semantic.header.frame_id == "base_link"
    (inst,) = pmsg.instances
    assert (inst.id, inst.class_index, inst.center.y, inst.voxel_count) == (18, 4, 2.0, int((grid == 4).sum()))
    with pytest.raises(ValueError, match="panoptic grid: negative panoptic id -100"):
        panoptic_to_msg(grid, pano - 100, None, header, "x", "corrected")
    with pytest.raises(ValueError, match=r"panoptic ids must lie in \[0, 65535\]"):
        panoptic_to_msg(grid, pano + 70000, None, header, "x", "corrected")
    with pytest.raises(ValueError, match=r"semantic grid: class index 18 is outside 0..17"):
        semantic_to_msg(np.full_like(grid, 18), header, "x")


@pytest.mark.ros
def test_pointcloud_and_markers_messages():
    from rclpy.serialization import deserialize_message, serialize_message
    from sensor_msgs.msg import PointCloud2
    from std_msgs.msg import Header
    from visualization_msgs.msg import Marker

    from flashocc_ros.ros.messages import marker_array_msg, pointcloud2_msg, pointcloud2_to_points

    grid = sample_grid(1)
    header = Header(frame_id="base_link")
    pts = occupied_points(grid)
    msg = deserialize_message(serialize_message(pointcloud2_msg(pts, header)), PointCloud2)
    assert msg.width == pts.size and msg.point_step == 20
    assert [f.name for f in msg.fields] == ["x", "y", "z", "rgb", "label", "instance"]
    np.testing.assert_array_equal(pointcloud2_to_points(msg), pts)

    markers = marker_array_msg(grid, header, max_markers=1000).markers
    assert markers[0].action == Marker.DELETEALL
    assert all(m.type == Marker.CUBE_LIST for m in markers[1:])
    assert sum(len(m.points) for m in markers[1:]) == 1000
    assert len({m.id for m in markers[1:]}) == len(markers) - 1


@pytest.mark.ros
def test_both_message_flavours_serialize_to_the_same_cdr_bytes():
    """One codec, two message libraries: the node's rclpy messages and the bag writer's rosbags messages of the same
    grids are the same CDR bytes (semantic, panoptic with instances, occupancy point cloud, an empty cloud)."""
    from rclpy.serialization import serialize_message
    from std_msgs.msg import Header

    from flashocc_ros.dataset import bagio
    from flashocc_ros.ros import occupancy_codec as codec
    from flashocc_ros.ros.messages import OCCUPANCY_POINT_DTYPE, panoptic_to_msg, pointcloud2_msg, semantic_to_msg

    store = bagio.make_typestore()
    make = bagio.MessageFactory(store)
    stamp = 1_533_151_603_547_590_000
    header = Header(frame_id="base_link")
    header.stamp.sec, header.stamp.nanosec = divmod(stamp, 1_000_000_000)
    grid = sample_grid(2)

    def same(rclpy_msg, rosbags_msg, msgtype):
        wire = bytes(serialize_message(rclpy_msg))
        theirs = bytes(store.serialize_cdr(rosbags_msg, msgtype))
        assert len(wire) == len(theirs) > 180, msgtype
        # rclpy leaves the CDR alignment padding bytes uninitialised (they vary from run to run): every other byte
        # must agree, which a rosbags round trip of the rclpy bytes (same fields, zero padding) shows.
        assert bytes(store.serialize_cdr(store.deserialize_cdr(wire, msgtype), msgtype)) == theirs, msgtype

    sem_bag = make.semantic_occupancy(stamp, grid, source="flashocc-r50-M0")
    same(semantic_to_msg(grid, header, "flashocc-r50-M0"), sem_bag, bagio.SEMANTIC_OCCUPANCY)

    pano = grid.astype(np.int32)
    pano[grid == 4] = 18
    pano[grid == 10] = 19
    instances = NS(
        id=np.array([18, 19]),
        occ_class=np.array([4, 10]),
        center_xyz=np.array([[1.0, 2.0, 0.5], [-3.25, 4.0, 1.0]]),
        score=np.array([0.9, 0.45]),
        voxel_count=np.array([int((grid == 4).sum()), int((grid == 10).sum())]),
    )
    mode, source = "corrected", "panoptic-flashocc-r50-depth-tiny-pano"
    fields = codec.panoptic_fields(grid, pano, instances, make.header(stamp, "base_link"), source, mode)
    same(
        panoptic_to_msg(grid, pano, instances, header, source, mode),
        codec.build_rosbags(store, bagio.PANOPTIC_OCCUPANCY, fields),
        bagio.PANOPTIC_OCCUPANCY,
    )

    points = occupied_points(grid, pano)
    cloud = codec.pointcloud_fields(points, make.header(stamp, "base_link"), OCCUPANCY_POINT_DTYPE)
    same(pointcloud2_msg(points, header), codec.build_rosbags(store, bagio.POINT_CLOUD2, cloud), bagio.POINT_CLOUD2)
    empty = points[:0]
    cloud = codec.pointcloud_fields(empty, make.header(stamp, "base_link"), OCCUPANCY_POINT_DTYPE)
    same(pointcloud2_msg(empty, header), codec.build_rosbags(store, bagio.POINT_CLOUD2, cloud), bagio.POINT_CLOUD2)


def test_image_inputs_and_run_on_jpegs_name_the_bad_topic():
    import simplejpeg

    from flashocc_ros.ros.messages import image_inputs, run_on_jpegs

    rgb = np.zeros((90, 160, 3), np.uint8)
    jpeg = simplejpeg.encode_jpeg(rgb, colorspace="RGB")
    good = NS(format="jpeg", data=jpeg)
    inputs, sizes = image_inputs([good, good], ["/a", "/b"], compressed=True)
    assert inputs == [jpeg, jpeg] and sizes == [(160, 90), (160, 90)]
    raw = NS(encoding="rgb8", width=160, height=90, step=480, data=rgb.tobytes(), is_bigendian=0)
    inputs, sizes = image_inputs([raw], ["/a"], compressed=False)
    assert sizes == [(160, 90)] and inputs[0].shape == (90, 160, 3)
    with pytest.raises(BadInput, match="/b"):
        image_inputs([good, NS(format="png", data=b"x")], ["/a", "/b"], compressed=True)
    broken = jpeg[: len(jpeg) // 3]  # header intact, entropy data cut

    def run(jpegs):
        for j in jpegs:
            simplejpeg.decode_jpeg(j)

    with pytest.raises(BadInput, match="/b"):
        run_on_jpegs(run, [jpeg, broken], ["/a", "/b"])

    def failing(jpegs):
        raise RuntimeError("network failed")

    with pytest.raises(RuntimeError, match="network failed"):  # all JPEGs decode: the error itself
        run_on_jpegs(failing, [jpeg, jpeg], ["/a", "/b"])
