"""Pre-processing: bit-exact official path (golden Pillow reference), size rule, fast JPEG path."""

from __future__ import annotations

import numpy as np
import pytest

from flashocc_ros.network.preprocess import (
    BatchItemError,
    BatchPreprocessor,
    augmentation_for,
    auto_workers,
    decode_jpeg,
    jpeg_size,
    normalize,
    preprocess_image,
    preprocess_images,
    preprocess_jpeg,
    preprocess_jpeg_exact,
)
from test.model_helpers import GOLDEN


@pytest.fixture(scope="module")
def golden_pre():
    with np.load(GOLDEN / "preprocess_golden_subset.npz") as z:
        g = {k: z[k] for k in z.files}
    raw = np.zeros((900, 1600, 3), np.uint8)
    r0 = int(g["raw_rows_from"])
    sub = g["raw_rgb_uint8_subset"]
    raw[r0:, : sub.shape[1]] = sub  # the rest never reaches the first valid_output_cols output columns
    g["raw"] = raw
    return g


def test_nuscenes_augmentation_matches_official(golden_pre):
    aug = augmentation_for((900, 1600))
    assert aug.resize == 0.44 and aug.resized_wh == tuple(golden_pre["resize_dims"])
    assert aug.crop == tuple(golden_pre["crop"]) == (0, 140, 704, 396)
    np.testing.assert_array_equal(aug.post_rot[:2, :2], golden_pre["post_rot2"])
    np.testing.assert_array_equal(aug.post_tran[:2], golden_pre["post_tran2"])
    assert aug.post_rot[2, 2] == 1 and aug.post_tran[2] == 0


def test_exact_path_is_bit_identical_to_official(golden_pre):
    cols = int(golden_pre["valid_output_cols"])
    out = preprocess_image(golden_pre["raw"])
    assert out.shape == (3, 256, 704) and out.dtype == np.float32
    np.testing.assert_array_equal(out[:, :, :cols], golden_pre["network_input_chw"])
    # normalisation alone, from the official resized/cropped pixels: B, G, R order
    crop = golden_pre["resized_cropped_rgb_uint8"]
    np.testing.assert_array_equal(normalize(crop), golden_pre["network_input_chw"])
    assert normalize(np.full((2, 2, 3), [0, 0, 255], np.uint8))[0, 0, 0] == np.float32((255 - 123.675) / 58.395)


def test_other_source_sizes_follow_the_documented_rule():
    aug = augmentation_for((1080, 1920))
    assert aug.resized_wh == (704, 396) and aug.crop == (0, 140, 704, 396)
    np.testing.assert_allclose(aug.post_rot[0, 0], 704 / 1920, rtol=1e-6)
    aug = augmentation_for((1200, 1600))  # 4:3 -> taller resized image, still the bottom 256 rows
    assert aug.resized_wh == (704, 528) and aug.crop == (0, 272, 704, 528)
    assert aug.post_tran.tolist() == [0.0, -272.0, 0.0]
    out = preprocess_image(np.zeros((1200, 1600, 3), np.uint8))
    assert out.shape == (3, 256, 704)
    with pytest.raises(ValueError, match="smaller than the 704x256"):
        augmentation_for((400, 1600))
    with pytest.raises(ValueError, match="RGB uint8"):
        preprocess_image(np.zeros((900, 1600), np.uint8))
    with pytest.raises(ValueError, match="image 1"):
        preprocess_images([np.zeros((900, 1600, 3), np.uint8), np.zeros((900, 1600, 3), np.float32)])


def _encode(rgb: np.ndarray, quality: int = 92) -> bytes:
    import simplejpeg

    return simplejpeg.encode_jpeg(np.ascontiguousarray(rgb), quality=quality, colorspace="RGB")


def test_fast_jpeg_path_is_close_to_exact_path(golden_pre):
    jpeg = _encode(golden_pre["raw"][300:, :704].repeat(2, axis=0)[:900].repeat(3, axis=1)[:, :1600])
    assert jpeg_size(jpeg) == (900, 1600)
    exact = preprocess_jpeg_exact(jpeg)
    np.testing.assert_array_equal(exact, preprocess_image(decode_jpeg(jpeg)))
    fast = preprocess_jpeg(jpeg)
    assert fast.shape == exact.shape == (3, 256, 704) and fast.dtype == np.float32
    # deviation in 8-bit pixel levels (std ~57.5 per level unit)
    levels = np.abs(fast - exact) * 57.5
    assert levels.mean() < 3.0, f"mean deviation {levels.mean():.2f} levels"
    assert np.percentile(levels, 99) < 20.0


def _previous_fast_path(jpeg: bytes) -> np.ndarray:
    """The sequential fast path as it was before the batch preprocessor (restated): DCT-scaled decode, OpenCV
    bilinear resize, crop, normalise."""
    import cv2
    import simplejpeg

    aug = augmentation_for(jpeg_size(jpeg))
    small = simplejpeg.decode_jpeg(jpeg, colorspace="RGB", min_width=aug.resized_wh[0], min_height=aug.resized_wh[1])
    small = cv2.resize(small, aug.resized_wh, interpolation=cv2.INTER_LINEAR)
    left, top, right, bottom = aug.crop
    return normalize(small[top:bottom, left:right])


@pytest.fixture(scope="module")
def six_jpegs(golden_pre):
    base = golden_pre["raw"][300:, :704].repeat(2, axis=0)[:900].repeat(3, axis=1)[:, :1600]
    return [_encode(np.roll(base, 97 * i, axis=1), quality=85 + i) for i in range(6)]


def test_batch_preprocessor_equals_the_sequential_paths(six_jpegs):
    expected_fast = np.stack([_previous_fast_path(j) for j in six_jpegs])
    np.testing.assert_array_equal(np.stack([preprocess_jpeg(j) for j in six_jpegs]), expected_fast)
    expected_exact = np.stack([preprocess_jpeg_exact(j) for j in six_jpegs])
    for workers in (2, 1, 3):
        batch = BatchPreprocessor(workers)
        out = np.full((6, 3, 256, 704), np.nan, np.float32)
        times = batch.jpegs_into(six_jpegs, out)
        np.testing.assert_array_equal(out, expected_fast)
        assert set(times) == {"decode", "preprocess"} and times["decode"] > 0 and times["preprocess"] > 0
        out[:] = np.nan
        pending = batch.start_jpegs(six_jpegs, out)  # handed to the threads; the caller may work meanwhile
        times = pending.wait()
        np.testing.assert_array_equal(out, expected_fast)
        assert times["decode"] > 0 and times["preprocess"] > 0
        out[:] = np.nan
        batch.jpegs_into(six_jpegs, out, exact=True)
        np.testing.assert_array_equal(out, expected_exact)
        batch.close()
    rgbs = [decode_jpeg(j) for j in six_jpegs[:2]]
    out = np.empty((2, 3, 256, 704), np.float32)
    with BatchPreprocessor(2) as batch:
        times = batch.images_into(rgbs, out)
    np.testing.assert_array_equal(out, expected_exact[:2])
    assert times["decode"] == 0 and times["preprocess"] > 0


def test_batch_preprocessor_names_the_first_failing_image(six_jpegs):
    jpegs = list(six_jpegs)
    jpegs[4] = jpegs[4][: len(jpegs[4]) // 2]  # valid header, truncated data
    jpegs[1] = b"\xff\xd8 not a jpeg"
    with BatchPreprocessor(2) as batch:
        with pytest.raises(BatchItemError) as info:
            batch.jpegs_into(jpegs, np.empty((6, 3, 256, 704), np.float32))
        assert info.value.index == 1
        jpegs[1] = six_jpegs[1]
        with pytest.raises(BatchItemError, match="image 4") as info:
            batch.jpegs_into(jpegs, np.empty((6, 3, 256, 704), np.float32))
        assert info.value.index == 4
    with pytest.raises(ValueError, match="workers: expected >= 1, or 0 for auto, got -1"):
        BatchPreprocessor(-1)


@pytest.mark.parametrize("cores, threads", [(1, 1), (2, 2), (4, 4), (6, 6), (64, 6)])
def test_auto_threads_are_one_per_image_up_to_the_usable_cores(monkeypatch, cores, threads):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(100, 100 + cores)), raising=False)
    assert auto_workers() == threads and BatchPreprocessor(0).workers == threads
    assert BatchPreprocessor(3).workers == 3  # a configured count is taken as given


@pytest.mark.parametrize(
    "source_hw, band",
    [
        ((900, 1600), (150, 450, 8)),  # nuScenes: decoded 800x450, resized 704x396, crop rows 140:396
        ((1080, 1920), (135, 405, 8)),  # decoded at 3/8: 720x405
        ((1200, 1600), None),  # 4:3: the band (rows 300:600) differs in the last bit from the whole resize: unused
        ((903, 1600), None),  # decoded 452 rows -> 397: no smaller band exists, the whole image is resized
    ],
)
def test_fast_path_resizes_only_the_cropped_rows_with_the_same_values(source_hw, band):
    """The fast path resizes only the rows the crop keeps, normalises by table lookup and decodes BGR into a reused
    buffer: the values stay those of the previous fast path (whole-image resize, crop, ``normalize``), bit for
    bit, for every source size, whether or not a band is used."""
    from flashocc_ros.network.preprocess import _resize_band

    rng = np.random.default_rng(source_hw)
    h, w = source_hw
    coarse = rng.uniform(0, 255, (h // 20 + 2, w // 20 + 2, 3)).astype(np.float32)
    import cv2

    img = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC) + rng.normal(0, 8, (h, w, 3))
    jpeg = _encode(np.clip(img, 0, 255).astype(np.uint8), quality=90)
    expected = _previous_fast_path(jpeg)
    decoded_hw = _decode_reduced_shape(jpeg)
    assert _resize_band(decoded_hw, source_hw) == band
    np.testing.assert_array_equal(preprocess_jpeg(jpeg), expected)
    out = np.full((2, 3, 256, 704), np.nan, np.float32)
    preprocess_jpeg(jpeg, out[1])  # a contiguous slice of the batch buffer: written in place
    np.testing.assert_array_equal(out[1], expected)
    assert np.isnan(out[0]).all()
    strided = np.full((3, 704, 256), np.nan, np.float32).transpose(0, 2, 1)  # not contiguous: copied in
    assert preprocess_jpeg(jpeg, strided) is strided
    np.testing.assert_array_equal(strided, expected)


def _decode_reduced_shape(jpeg: bytes) -> tuple[int, int]:
    import simplejpeg

    aug = augmentation_for(jpeg_size(jpeg))
    small = simplejpeg.decode_jpeg(jpeg, colorspace="RGB", min_width=aug.resized_wh[0], min_height=aug.resized_wh[1])
    return small.shape[:2]


def test_normalisation_tables_equal_normalize_for_every_value():
    from flashocc_ros.network.preprocess import _normalize_tables

    values = np.arange(256)
    rgb = np.stack([values, (values * 7 + 3) % 256, (values * 13 + 5) % 256], -1).astype(np.uint8)[None]
    want = normalize(rgb)  # (3, 1, 256): B, G, R; every value of every channel (7 and 13 are odd: permutations)
    b, g, r = _normalize_tables()
    np.testing.assert_array_equal(b[rgb[0, :, 2]], want[0, 0])
    np.testing.assert_array_equal(g[rgb[0, :, 1]], want[1, 0])
    np.testing.assert_array_equal(r[rgb[0, :, 0]], want[2, 0])


def test_reduced_decode_into_a_buffer_falls_back_only_when_the_buffer_is_small(six_jpegs):
    from flashocc_ros.network.preprocess import decode_jpeg_reduced

    want, _ = decode_jpeg_reduced(six_jpegs[0], bgr=True)
    small_buffer, aug = decode_jpeg_reduced(six_jpegs[0], bgr=True, buffer=np.empty(10, np.uint8))
    np.testing.assert_array_equal(small_buffer, want)
    assert aug.source_hw == (900, 1600)
    rgb, _ = decode_jpeg_reduced(six_jpegs[0])
    np.testing.assert_array_equal(rgb, want[..., ::-1])
    truncated = six_jpegs[0][: len(six_jpegs[0]) // 2]
    with pytest.raises(ValueError) as info:
        decode_jpeg_reduced(truncated, bgr=True, buffer=np.empty(4_000_000, np.uint8))
    assert "buffer" not in str(info.value)
