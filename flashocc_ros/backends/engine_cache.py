"""TensorRT engine cache: an engine is reused only on the machine/software/precision/model it was built for.

Every engine file ``<name>.engine`` has a sidecar ``<name>.engine.json`` holding its ``EngineKey``: TensorRT
version, GPU name, compute capability, precision, SHA-256 of the ONNX file, SHA-256 of the INT8 calibration data
and the build options. A cache lookup compares the whole key; an explicitly named engine whose key differs from
this machine is refused with the list of differences (``EngineMismatchError``), a cached one is rebuilt.
Nothing here imports tensorrt: the identity of the current machine is passed in (see tensorrt_build).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from flashocc_ros.atomic import atomic_write_bytes
from flashocc_ros.backends.base import BackendError
from flashocc_ros.config import PRECISIONS

SIDECAR_SUFFIX = ".json"
KEY_SCHEMA = 1


class EngineMismatchError(BackendError):
    """An engine was built for another TensorRT version, GPU, precision, ONNX model or calibration."""


@dataclass(frozen=True)
class EngineKey:
    tensorrt_version: str
    gpu_name: str
    compute_capability: str  # "8.6"
    precision: str  # fp32 | fp16 | int8
    onnx_sha256: str
    calibration_sha256: str = ""  # INT8 only; "" otherwise
    build_options: str = ""  # canonical text of the other builder settings (profile shapes, workspace, ...)

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision: {self.precision!r} is not one of {', '.join(PRECISIONS)}")
        if self.precision == "int8" and not self.calibration_sha256:
            raise ValueError("precision int8 needs a calibration_sha256 (the calibration data identity)")
        if self.precision != "int8" and self.calibration_sha256:
            raise ValueError(f"calibration_sha256 is only meaningful for int8, not {self.precision}")
        if len(self.onnx_sha256) != 64:
            raise ValueError(f"onnx_sha256: expected a 64-hex-digit SHA-256, got {self.onnx_sha256!r}")

    def to_dict(self) -> dict:
        return {"schema": KEY_SCHEMA, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, data: dict, source: str = "engine metadata") -> EngineKey:
        if not isinstance(data, dict) or data.get("schema") != KEY_SCHEMA:
            raise EngineMismatchError(
                f"{source}: unknown metadata schema {data.get('schema') if isinstance(data, dict) else data!r}"
            )
        names = [f.name for f in dataclasses.fields(cls)]
        missing = [n for n in names if n not in data]
        if missing:
            raise EngineMismatchError(f"{source}: metadata lacks {', '.join(missing)}")
        return cls(**{n: data[n] for n in names})

    def digest(self) -> str:
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:20]

    def differences(self, other: EngineKey) -> list[str]:
        """Human-readable 'field: engine X, here Y' lines (self = the engine's key, other = the wanted key)."""
        out = []
        for f in dataclasses.fields(self):
            a, b = getattr(self, f.name), getattr(other, f.name)
            if a != b:
                out.append(f"{f.name}: engine has {_short(a)!r}, this setup needs {_short(b)!r}")
        return out


def _short(v: str) -> str:
    return v[:16] + "..." if isinstance(v, str) and len(v) == 64 else v


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sidecar_path(engine_path: str | Path) -> Path:
    p = Path(engine_path)
    return p.with_name(p.name + SIDECAR_SUFFIX)


def read_engine_key(engine_path: str | Path) -> EngineKey:
    """The key stored beside ``engine_path``; raises EngineMismatchError when it is missing or unreadable."""
    side = sidecar_path(engine_path)
    if not Path(engine_path).is_file():
        raise FileNotFoundError(f"TensorRT engine not found: {engine_path}")
    if not side.is_file():
        raise EngineMismatchError(
            f"{engine_path}: no metadata file {side.name}; its TensorRT version, GPU and model are unknown, so it is "
            "not loaded. Rebuild it with `flashocc-export engine` (or delete it to let the cache rebuild it)."
        )
    try:
        data = json.loads(side.read_text())
    except (OSError, ValueError) as exc:
        raise EngineMismatchError(f"{side}: unreadable engine metadata ({exc})") from exc
    return EngineKey.from_dict(data, str(side))


def check_engine(engine_path: str | Path, wanted: EngineKey) -> None:
    """Raise EngineMismatchError naming every difference between the engine's key and ``wanted``."""
    have = read_engine_key(engine_path)
    diffs = have.differences(wanted)
    if diffs:
        raise EngineMismatchError(
            f"{engine_path} was built for a different setup and is not loaded:\n  - "
            + "\n  - ".join(diffs)
            + "\nRebuild it (flashocc-export engine ...) or leave model.engine empty to use the engine cache."
        )


def write_engine(engine_path: str | Path, engine_bytes: bytes, key: EngineKey) -> Path:
    """Store an engine and its key (the sidecar is written first so a present engine always has its key)."""
    if not engine_bytes:
        raise ValueError("refusing to write an empty engine")
    engine_path = Path(engine_path)
    atomic_write_bytes(sidecar_path(engine_path), json.dumps(key.to_dict(), indent=2, sort_keys=True).encode())
    atomic_write_bytes(engine_path, bytes(engine_bytes))
    return engine_path


class EngineCache:
    """Directory of engines named ``<stem>-<precision>-<key digest>.engine``; one file per distinct key."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(os.path.expanduser(str(root)))

    def path_for(self, stem: str, key: EngineKey) -> Path:
        return self.root / f"{stem}-{key.precision}-{key.digest()}.engine"

    def lookup(self, stem: str, key: EngineKey) -> Path | None:
        """The cached engine for exactly this key, or None (missing, or its metadata disagrees -> stale)."""
        path = self.path_for(stem, key)
        if not path.is_file():
            return None
        try:
            check_engine(path, key)
        except EngineMismatchError:
            return None
        return path

    def store(self, stem: str, key: EngineKey, engine_bytes: bytes) -> Path:
        return write_engine(self.path_for(stem, key), engine_bytes, key)

    def entries(self) -> list[tuple[Path, EngineKey | None]]:
        out = []
        for p in sorted(self.root.glob("*.engine")):
            try:
                out.append((p, read_engine_key(p)))
            except (EngineMismatchError, FileNotFoundError):
                out.append((p, None))
        return out
