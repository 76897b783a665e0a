"""Pre-processing: bit-exact official path (golden Pillow reference), size rule, fast JPEG path."""

from __future__ import annotations

import numpy as np
import pytest

from flashocc_ros.preprocess import (
    augmentation_for,
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
