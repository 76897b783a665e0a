"""Load official FlashOcc / Panoptic-FlashOcc checkpoints safely and check them against a variant.

Accepted layouts (SPEC 1): mmcv checkpoints ``{'meta', 'state_dict', 'optimizer'}``, MEGVII EMA files
``{'epoch', 'state_dict', 'updates'}``, our converted files ``{'state_dict', 'flashocc_variant', 'meta'}``,
bare state dicts, and keys carrying a ``module.`` prefix (DataParallel). Files are read with
``torch.load(weights_only=True)``: a pickle that would construct arbitrary objects (and so could run code) is
refused before anything is executed.
"""

from __future__ import annotations

import pickle
from collections import OrderedDict
from collections.abc import Mapping
from functools import cache
from pathlib import Path

import torch

from flashocc_ros.atomic import atomic_write
from flashocc_ros.config import VARIANTS, get_variant
from flashocc_ros.network.weights import variant_manifest

WRAPPER_KEYS = ("state_dict", "model", "module")
VARIANT_META_KEY = "flashocc_variant"
MAX_LISTED_KEYS = 8


class CheckpointError(ValueError):
    """The checkpoint cannot be read, is unsafe, or does not match the requested variant."""


@cache
def variant_shapes(variant_name: str) -> dict[str, tuple[int, ...]]:
    """{key: shape} of a variant's state_dict (built on the meta device, no weights allocated)."""
    return dict(variant_manifest(variant_name))


def _numpy_safe_globals() -> list:
    """numpy array/scalar reconstruction (mmcv metadata may hold numpy values); no callables beyond these."""
    import numpy as np

    try:
        from numpy._core import multiarray
    except ImportError:  # numpy < 2
        from numpy.core import multiarray
    found = [np.ndarray, np.dtype, multiarray._reconstruct, multiarray.scalar]
    found += [type(np.dtype(t)) for t in ("float32", "float64", "int32", "int64", "bool", "uint8")]
    return found


def _detail(text: str) -> str:
    """The informative line of torch's weights-only error (it starts with generic advice)."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in lines:
        if "GLOBAL" in ln or "Unsupported" in ln or ("error" in ln.lower() and "WeightsUnpickler" not in ln):
            return ln
    return lines[-1] if lines else text


def read_checkpoint_file(path: str | Path) -> object:
    """torch.load with weights_only=True; unsafe or unreadable files raise CheckpointError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path}: no such file")
    _check_torch_format(path)
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        if "GLOBAL" not in text and "global" not in text:
            raise CheckpointError(f"checkpoint {path}: not a readable torch file ({_detail(text)})") from exc
        raise CheckpointError(
            f"checkpoint {path}: refused to load: it holds pickled objects other than tensors and plain containers "
            f"(loading it would execute code). Re-save only the state_dict. Details: {_detail(text)}"
        ) from exc
    except Exception as exc:  # torch's unpickler fails in many ways on damaged files (KeyError, IndexError, ...)
        raise CheckpointError(f"checkpoint {path}: not a readable torch file ({type(exc).__name__}: {exc})") from exc


def _check_torch_format(path: Path) -> None:
    """A PyTorch checkpoint is a zip archive (torch.save since 1.6) or a pickle (legacy format, first byte 0x80);
    anything else (a YAML or text file, an ONNX model, ...) is named as such before torch tries to unpickle it."""
    with open(path, "rb") as f:
        head = f.read(8)
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":
        return
    kind = "an empty file" if not head else "a text file" if _looks_like_text(path) else f"starts with {head!r}"
    raise CheckpointError(
        f"checkpoint {path}: not a PyTorch checkpoint ({kind}; expected a torch.save zip archive or pickle, "
        "e.g. the official FlashOcc .pth)"
    )


def _looks_like_text(path: Path) -> bool:
    with open(path, "rb") as f:
        block = f.read(4096)
    try:
        block.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return b"\0" not in block


def check_finite(state_dict: Mapping[str, torch.Tensor], source: str) -> None:
    """CheckpointError naming the floating-point tensors that hold NaN or infinity (at most MAX_LISTED_KEYS)."""
    bad = [
        f"{k} ({int((~torch.isfinite(v)).sum())} of {v.numel()} values)"
        for k, v in state_dict.items()
        if v.is_floating_point() and v.numel() and not bool(torch.isfinite(v).all())
    ]
    if bad:
        raise CheckpointError(f"{source}: non-finite weights (NaN or inf) in {_short(bad)}")


def extract_state_dict(obj: object, source: str = "checkpoint") -> tuple[OrderedDict, str | None]:
    """Unwrap an mmcv / EMA / converted checkpoint or a bare state dict -> (state_dict, variant stored in meta)."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{source}: expected a dict, got {type(obj).__name__}")
    stored_variant = obj.get(VARIANT_META_KEY) if isinstance(obj.get(VARIANT_META_KEY), str) else None
    sd: Mapping = obj
    for key in WRAPPER_KEYS:
        inner = sd.get(key) if isinstance(sd, Mapping) else None
        if isinstance(inner, Mapping) and inner and not isinstance(inner, torch.Tensor):
            sd = inner
            break
    tensors = OrderedDict()
    non_tensors = []
    for k, v in sd.items():
        if isinstance(v, torch.Tensor):
            tensors[str(k)] = v
        else:
            non_tensors.append(str(k))
    if not tensors:
        raise CheckpointError(f"{source}: no tensors found (top-level keys: {_short(list(obj.keys()))})")
    if non_tensors:
        raise CheckpointError(f"{source}: state_dict entries that are not tensors: {_short(non_tensors)}")
    if all(k.startswith("module.") for k in tensors):
        tensors = OrderedDict((k[len("module.") :], v) for k, v in tensors.items())
    check_finite(tensors, source)
    return tensors, stored_variant


def _short(keys: list[str]) -> str:
    shown = ", ".join(keys[:MAX_LISTED_KEYS])
    return f"{shown}, ... ({len(keys)} in total)" if len(keys) > MAX_LISTED_KEYS else shown


def match_variant(state_dict: Mapping[str, torch.Tensor], variant_name: str) -> tuple[list, list, list]:
    """(missing keys, unexpected keys, [(key, file shape, expected shape)]) of a state dict vs a variant."""
    expected = variant_shapes(get_variant(variant_name).name)
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    wrong = [
        (k, tuple(state_dict[k].shape), expected[k])
        for k in expected
        if k in state_dict and tuple(state_dict[k].shape) != expected[k]
    ]
    return missing, unexpected, wrong


def detect_variant(state_dict: Mapping[str, torch.Tensor]) -> str | None:
    """The variant whose keys and shapes the state dict matches exactly, or None."""
    for name in VARIANTS:
        if not any(match_variant(state_dict, name)):
            return name
    return None


def _closest_variant(state_dict: Mapping[str, torch.Tensor]) -> tuple[str, int]:
    scores = []
    for name in VARIANTS:
        missing, unexpected, wrong = match_variant(state_dict, name)
        scores.append((len(missing) + len(unexpected) + len(wrong), name))
    n, name = min(scores)
    return name, n


def _mismatch_message(source: str, variant: str, state_dict, missing, unexpected, wrong) -> str:
    parts = [f"{source}: does not match variant {variant!r}"]
    if missing:
        parts.append(f"missing keys: {_short(missing)}")
    if unexpected:
        parts.append(f"unexpected keys: {_short(unexpected)}")
    if wrong:
        parts.append(
            "shape mismatches: " + _short([f"{k} file {tuple(a)} vs expected {tuple(b)}" for k, a, b in wrong])
        )
    matched = detect_variant(state_dict)
    if matched is not None:
        parts.append(f"the keys DO match variant {matched!r} (use --variant {matched})")
    else:
        closest, n = _closest_variant(state_dict)
        parts.append(f"no variant matches exactly; closest is {closest!r} with {n} differing keys")
    return "; ".join(parts)


def load_checkpoint(path: str | Path, variant: str | None = None) -> tuple[OrderedDict, str]:
    """Read a checkpoint file -> (state_dict with official key names, variant name).

    With ``variant`` the keys and shapes must match it exactly (the error names the missing / unexpected keys and
    the variant they do match); without it the variant is taken from the file's metadata or detected from the keys.
    Tensors are returned as stored (float32 for official files).
    """
    source = f"checkpoint {path}"
    sd, stored = extract_state_dict(read_checkpoint_file(path), source)
    return sd, _resolved(sd, variant, stored, source)


def check_state_dict(state_dict: Mapping[str, torch.Tensor], variant: str | None = None) -> str:
    """Variant name of an in-memory state dict (checked against ``variant`` when given); CheckpointError if none."""
    return _resolved(state_dict, variant, None, "state_dict")


def _resolved(sd, variant: str | None, stored: str | None, source: str) -> str:
    wanted = variant or stored
    if wanted is not None:
        try:
            name = get_variant(wanted).name
        except ValueError as exc:
            raise CheckpointError(f"{source}: {exc}") from exc
        missing, unexpected, wrong = match_variant(sd, name)
        if missing or unexpected or wrong:
            raise CheckpointError(_mismatch_message(source, name, sd, missing, unexpected, wrong))
        return name
    name = detect_variant(sd)
    if name is None:
        closest, n = _closest_variant(sd)
        missing, unexpected, wrong = match_variant(sd, closest)
        raise CheckpointError(
            f"{source}: keys match none of the variants {', '.join(VARIANTS)}; closest {closest!r} differs in {n} "
            f"keys (missing: {_short(missing) or '-'}; unexpected: {_short(unexpected) or '-'}; "
            f"shape mismatches: {_short([k for k, _, _ in wrong]) or '-'})"
        )
    return name


def save_clean_checkpoint(state_dict: Mapping[str, torch.Tensor], variant: str, path: str | Path, meta=None) -> None:
    """Write ``{'state_dict', 'flashocc_variant', 'meta'}`` (contiguous float tensors) atomically."""
    path = Path(path)
    sd = OrderedDict((k, v.detach().cpu().contiguous()) for k, v in state_dict.items())
    payload = {"state_dict": sd, VARIANT_META_KEY: get_variant(variant).name, "meta": dict(meta or {})}
    atomic_write(path, lambda tmp: torch.save(payload, tmp))
