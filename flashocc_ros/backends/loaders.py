"""Artefact loaders: weights -> ONNX file -> TensorRT engine, each built or loaded once and cached by its key.

Modelled on Polygraphy's lazy loaders: a loader is a small callable object; constructing it does nothing, calling
it returns its artefact, building it from the previous loader's artefact when it is not cached yet. A chain is
assembled first (``LoadWeights`` -> ``OnnxFile`` -> ``CachedEngine``) and runs when its last loader is called.

Caches (keys in brackets):

* weights: in memory, per ``LoadWeights`` [``model.checkpoint`` or the deterministic seed-0 weights];
* ONNX: ``<engine_cache_dir>/onnx/<variant>-<weights id>-<format id>[-logits].onnx`` [weights digest, export
  format]; an explicit ``model.engine: x.onnx`` is used as it is;
* engines: ``<engine_cache_dir>/<variant>-<onnx stem>-<precision>-<key digest>.engine`` [``engine_cache.EngineKey``:
  TensorRT, GPU, precision, ONNX hash, calibration hash, build options]; an explicit ``model.engine: x.engine`` is
  checked against this machine and precision (``EngineFile``).

No runner is imported here: runners take the artefacts (``backends.make_runner``).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flashocc_ros.backends.engine_cache import EngineKey
from flashocc_ros.config import ConfigError, ModelConfig, get_variant

DETERMINISTIC_SEED = 0
ENGINE_SUFFIXES = (".engine", ".plan", ".trt")


def engine_cache_root(model_cfg: ModelConfig) -> Path:
    return Path(os.path.expanduser(model_cfg.engine_cache_dir))


def is_engine_file(name: str) -> bool:
    """Whether ``model.engine`` names a serialized TensorRT engine (rather than an ONNX file or nothing)."""
    return bool(name) and name.endswith(ENGINE_SUFFIXES)


@dataclass(frozen=True)
class Weights:
    state_dict: Mapping[str, Any]
    id: str  # SHA-256 prefix of the tensors (onnx_export.weights_digest)


@dataclass(frozen=True)
class EngineArtefact:
    path: Path
    key: EngineKey  # what the engine's metadata must match on this machine


class LoadWeights:
    """``model.checkpoint`` if set, else the deterministic untrained weights (seed 0); loaded once."""

    def __init__(self, model_cfg: ModelConfig) -> None:
        self.model_cfg = model_cfg
        self._weights: Weights | None = None

    def __call__(self) -> Weights:
        if self._weights is None:
            self._weights = self._load()
        return self._weights

    def _load(self) -> Weights:
        from flashocc_ros.backends.onnx_export import weights_digest
        from flashocc_ros.network.loading import load_state_dict

        variant = get_variant(self.model_cfg.variant)
        path = None
        if self.model_cfg.checkpoint:
            path = Path(os.path.expanduser(self.model_cfg.checkpoint))
            if not path.is_file():
                raise FileNotFoundError(f"model.checkpoint: file not found: {path}")
        state_dict, name = load_state_dict(variant.name, path, DETERMINISTIC_SEED)
        if get_variant(name).name != variant.name:
            raise ConfigError(f"model.checkpoint: {path} holds variant {name!r}, model.variant is {variant.name!r}")
        return Weights(state_dict, weights_digest(state_dict)[:16])


class OnnxFile:
    """The ONNX file to run: ``model.engine`` if it is an .onnx file, else an export of ``weights`` cached under
    ``<engine_cache_dir>/onnx/`` (exported once per weights, export format and output set)."""

    def __init__(
        self,
        model_cfg: ModelConfig,
        weights: Callable[[], Weights] | None = None,
        with_logits: bool = False,
        log: Callable[[str], None] = print,
    ) -> None:
        self.model_cfg = model_cfg
        self.weights = weights if weights is not None else LoadWeights(model_cfg)
        self.with_logits = with_logits
        self.log = log

    def __call__(self) -> Path:
        import flashocc_ros.backends.onnx_export as onnx_export  # attribute lookup: tests stand a fake exporter in

        engine = self.model_cfg.engine
        if engine and engine.endswith(".onnx"):
            path = Path(os.path.expanduser(engine))
            if not path.is_file():
                raise FileNotFoundError(f"model.engine: ONNX file not found: {path}")
            return path
        variant = get_variant(self.model_cfg.variant)
        weights = self.weights()
        fmt = hashlib.sha256(onnx_export.EXPORT_FORMAT.encode()).hexdigest()[:6]
        name = f"{variant.name}-{weights.id}-{fmt}{'-logits' if self.with_logits else ''}.onnx"
        path = engine_cache_root(self.model_cfg) / "onnx" / name
        if not path.is_file():
            self.log(f"exporting {variant.name} to {path} (once; about a minute on CPU)")
            onnx_export.export_onnx(variant, weights.state_dict, path, with_logits=self.with_logits)
        return path


class CachedEngine:
    """A TensorRT engine for the ONNX file of ``onnx``, found in or built into the engine cache at ``cache_dir``
    (``tensorrt_build.ensure_engine``); ``calibration`` (int8) is a ``calibration.CalibrationSource``."""

    def __init__(
        self,
        onnx: Callable[[], Path],
        variant,
        options,
        cache_dir: str | Path,
        device: str = "cuda",
        calibration=None,
        log: Callable[[str], None] = print,
    ) -> None:
        self.onnx, self.variant, self.options = onnx, variant, options
        self.cache_dir, self.device, self.calibration, self.log = cache_dir, device, calibration, log

    def __call__(self) -> EngineArtefact:
        from flashocc_ros.backends.tensorrt_build import ensure_engine

        path, key = ensure_engine(
            self.onnx(), self.variant, self.options, self.cache_dir, self.device, self.calibration, log=self.log
        )
        return EngineArtefact(path, key)


class EngineFile:
    """An explicit engine file (``model.engine``); its key is what this machine and ``precision`` require (the
    ONNX hash and build options are taken from the engine's own metadata: they are not needed at run time)."""

    def __init__(self, path: str | Path, precision: str, device: str = "cuda") -> None:
        self.path = Path(os.path.expanduser(str(path)))
        self.precision = precision
        self.device = device

    def __call__(self) -> EngineArtefact:
        from flashocc_ros.backends.engine_cache import read_engine_key
        from flashocc_ros.backends.tensorrt_build import machine_identity

        ident = machine_identity(self.device)
        have = read_engine_key(self.path)
        wanted = EngineKey(
            tensorrt_version=ident.tensorrt_version,
            gpu_name=ident.gpu_name,
            compute_capability=ident.compute_capability,
            precision=self.precision,
            onnx_sha256=have.onnx_sha256,
            calibration_sha256=have.calibration_sha256 if self.precision == "int8" else "",
            build_options=have.build_options,
        )
        return EngineArtefact(self.path, wanted)
