"""Engine-cache key, metadata sidecar, lookup and refusal logic (no GPU, no tensorrt needed)."""

from __future__ import annotations

import dataclasses
import json

import pytest

from flashocc_ros.backends.engine_cache import (
    EngineCache,
    EngineKey,
    EngineMismatchError,
    check_engine,
    file_sha256,
    read_engine_key,
    sidecar_path,
    write_engine,
)

ONNX_HASH = "a" * 64
CALIB_HASH = "c" * 64


def make_key(**changes) -> EngineKey:
    base = dict(
        tensorrt_version="10.13.0.35",
        gpu_name="NVIDIA GeForce RTX 3090",
        compute_capability="8.6",
        precision="fp16",
        onnx_sha256=ONNX_HASH,
        calibration_sha256="",
        build_options='{"workspace_mib":4096}',
    )
    base.update(changes)
    return EngineKey(**base)


def test_digest_is_stable_and_covers_every_field():
    key = make_key()
    assert key.digest() == make_key().digest()
    variants = {
        "tensorrt_version": "10.14.1",
        "gpu_name": "NVIDIA A100",
        "compute_capability": "8.0",
        "precision": "fp32",
        "onnx_sha256": "b" * 64,
        "build_options": '{"workspace_mib":2048}',
    }
    digests = {key.digest()}
    for field, value in variants.items():
        changed = make_key(**{field: value})
        digests.add(changed.digest())
        assert changed.differences(key) and changed.differences(key)[0].startswith(field)
    int8 = make_key(precision="int8", calibration_sha256=CALIB_HASH)
    digests.add(int8.digest())
    digests.add(make_key(precision="int8", calibration_sha256="d" * 64).digest())
    assert len(digests) == len(variants) + 3


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(precision="bf16"), "precision"),
        (dict(precision="int8"), "calibration_sha256"),
        (dict(precision="fp16", calibration_sha256=CALIB_HASH), "only meaningful for int8"),
        (dict(onnx_sha256="abc"), "onnx_sha256"),
    ],
)
def test_invalid_keys_are_rejected(changes, message):
    with pytest.raises(ValueError, match=message):
        make_key(**changes)


def test_write_read_roundtrip_and_atomic_files(tmp_path):
    key = make_key()
    path = write_engine(tmp_path / "m0.engine", b"\x01\x02engine", key)
    assert path.read_bytes() == b"\x01\x02engine"
    assert read_engine_key(path) == key
    assert json.loads(sidecar_path(path).read_text())["gpu_name"] == key.gpu_name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m0.engine", "m0.engine.json"]  # no temporaries left
    with pytest.raises(ValueError, match="empty"):
        write_engine(tmp_path / "empty.engine", b"", key)
    assert not (tmp_path / "empty.engine").exists()


def test_explicit_engine_for_another_gpu_is_refused_with_the_differences(tmp_path):
    built = make_key(gpu_name="NVIDIA GeForce RTX 3090", compute_capability="8.6", tensorrt_version="10.3.0")
    path = write_engine(tmp_path / "pt.engine", b"x", built)
    here = make_key(gpu_name="NVIDIA H100", compute_capability="9.0", tensorrt_version="10.3.0")
    with pytest.raises(EngineMismatchError) as err:
        check_engine(path, here)
    text = str(err.value)
    assert "gpu_name: engine has 'NVIDIA GeForce RTX 3090', this setup needs 'NVIDIA H100'" in text
    assert "compute_capability" in text and "tensorrt_version" not in text
    check_engine(path, built)  # same setup: accepted


def test_engine_without_metadata_is_refused(tmp_path):
    (tmp_path / "foreign.engine").write_bytes(b"x")
    with pytest.raises(EngineMismatchError, match="no metadata file foreign.engine.json"):
        check_engine(tmp_path / "foreign.engine", make_key())
    with pytest.raises(FileNotFoundError, match="not found"):
        read_engine_key(tmp_path / "missing.engine")
    sidecar_path(tmp_path / "foreign.engine").write_text("{not json")
    with pytest.raises(EngineMismatchError, match="unreadable"):
        read_engine_key(tmp_path / "foreign.engine")
    sidecar_path(tmp_path / "foreign.engine").write_text(json.dumps({"schema": 99}))
    with pytest.raises(EngineMismatchError, match="schema"):
        read_engine_key(tmp_path / "foreign.engine")


def test_cache_lookup_hits_only_the_exact_key_and_treats_tampered_metadata_as_stale(tmp_path):
    cache = EngineCache(tmp_path / "cache")
    key = make_key()
    assert cache.lookup("M0", key) is None
    stored = cache.store("M0", key, b"engine-bytes")
    assert stored.parent == cache.root and key.digest() in stored.name and "fp16" in stored.name
    assert cache.lookup("M0", key) == stored
    assert cache.lookup("M0", make_key(precision="fp32")) is None  # different key -> different file
    assert cache.lookup("M0", make_key(tensorrt_version="10.14")) is None
    # metadata edited so it no longer matches the file name's key -> not used (rebuild)
    meta = json.loads(sidecar_path(stored).read_text())
    meta["gpu_name"] = "other"
    sidecar_path(stored).write_text(json.dumps(meta))
    assert cache.lookup("M0", key) is None
    assert [k is None or dataclasses.is_dataclass(k) for _, k in cache.entries()] == [True]


def test_file_sha256(tmp_path):
    p = tmp_path / "f.bin"
    p.write_bytes(b"abc")
    assert file_sha256(p) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
