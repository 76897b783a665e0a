"""flashocc-infer: offline FlashOcc / Panoptic-FlashOcc inference on one sample, no ROS needed.

    flashocc-infer --variant V [--checkpoint W.pth] --inputs IN.npz --out OUT.npz [--config FILE.yaml]
                   [--backend auto|pytorch|onnxruntime|tensorrt] [--device auto|cpu|cuda[:N]]
                   [--save-logits] [--pano-mode corrected|official]

It runs the same path as the node: ``OccupancyPipeline`` on the configured runner (exact official preprocessing of
raw images, pooling indices from the calibration, network, centre decoding and panoptic assignment). Defaults are
those of the configuration (``--config``, else the built-in defaults); flags override them.

IN.npz (golden make_inputs.py layout, batch 1): ``imgs`` (1,6,3,256,704) float32 already normalised, or
``raw_imgs`` (1,6,H,W,3) uint8 RGB camera images; plus ``sensor2egos`` (1,6,4,4), ``ego2globals`` (1,6,4,4),
``intrins`` (1,6,3,3) source-image K, ``post_rots`` (1,6,3,3), ``post_trans`` (1,6,3), ``bda`` (1,3,3). The
pipeline applies the official test-time augmentation only: post_rots/post_trans must be those of the source size
(900x1600 for ``imgs``; they may be omitted with ``raw_imgs``) and bda the identity.
OUT.npz: ``occ_label`` (200,200,16) uint8 [ix,iy,iz]; ``occ_logits`` (200,200,16,18) float32 with --save-logits
(panoptic variants then also ``cen_heatmap_logits`` (10,200,200), ``cen_reg`` (2,..), ``cen_height`` (1,..));
panoptic variants add ``centers_xyz`` (K,3), ``centers_score`` (K,), ``centers_label`` (K,) in score order and
``pano_inst`` (200,200,16) int32. Without a checkpoint the deterministic untrained weights of --seed are used.

Temporal variants (flashocc-r50-4d-stereo, panoptic-flashocc-r50-depth4d-pano, ...-longterm8f-pano) take the
multi-frame layout of golden4d/make_inputs_4d.py: ``imgs`` (1, 6F, 3, 256, 704) CAMERA-major (index n*F + k = camera
n, frame k; frame 0 current, frame k the k-th previous keyframe), the matrices (1, 6F, ...) FRAME-major (index
k*6 + n), F = the variant's input frames (3, 2, 9). They run the official all-frames-at-once path
(``temporal.TemporalPipeline.run_frames``, PyTorch) and write the same OUT.npz keys.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flashocc_ros.atomic import atomic_save_npz
from flashocc_ros.config import CAMERA_NAMES, IMAGE_AUG, PANO_MODES, VARIANTS

N = len(CAMERA_NAMES)
GEOMETRY_KEYS = {
    "sensor2egos": (1, N, 4, 4),
    "ego2globals": (1, N, 4, 4),
    "intrins": (1, N, 3, 3),
    "post_rots": (1, N, 3, 3),
    "post_trans": (1, N, 3),
    "bda": (1, 3, 3),
}
OPTIONAL_WITH_RAW = ("post_rots", "post_trans")
BACKEND_CHOICES = ("auto", "pytorch", "onnxruntime", "tensorrt")
# --save-logits on panoptic variants also writes the raw centre-head maps, under the golden data's names
HEAD_MAP_KEYS = {"center_heatmap": "cen_heatmap_logits", "center_reg": "cen_reg", "center_height": "cen_height"}


class InputError(ValueError):
    pass


@dataclass
class SampleInputs:
    """One sample of IN.npz: ``images`` is the (6, 3, 256, 704) float32 network input or six raw HxWx3 uint8 RGB
    images (preprocessed by the pipeline), ``calibration`` the rig (K, camera -> ego, per-camera ego -> global)."""

    images: np.ndarray | list[np.ndarray]
    calibration: object  # geometry.RigCalibration


def _batched(name: str, arr: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    if arr.shape == shape[1:]:
        arr = arr[None]
    if arr.shape != shape:
        raise InputError(f"key {name!r}: expected shape {shape}, got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise InputError(f"key {name!r}: contains non-finite values")
    return arr


def load_inputs(path: Path) -> SampleInputs:
    """Read and validate IN.npz (see the module docstring)."""
    from flashocc_ros.network.geometry import RigCalibration
    from flashocc_ros.network.preprocess import augmentation_for

    try:
        npz = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: not a readable .npz file ({exc})") from exc
    with npz:
        keys = set(npz.files)
        if "imgs" in keys:
            images = _batched("imgs", np.asarray(npz["imgs"]), (1, N, 3, *IMAGE_AUG.input_hw))[0]
            images = np.ascontiguousarray(images, dtype=np.float32)
            source_hw, raw = IMAGE_AUG.source_hw, False
        elif "raw_imgs" in keys:
            arr = np.asarray(npz["raw_imgs"])
            if arr.ndim == 4:
                arr = arr[None]
            if arr.ndim != 5 or arr.shape[:2] != (1, N) or arr.shape[4] != 3 or arr.dtype != np.uint8:
                raise InputError(f"key 'raw_imgs': expected uint8 (1, {N}, H, W, 3) RGB, got {arr.dtype} {arr.shape}")
            images, source_hw, raw = list(arr[0]), tuple(arr.shape[2:4]), True
        else:
            raise InputError(f"{path}: needs key 'imgs' or 'raw_imgs' (found: {sorted(keys)})")
        geo: dict[str, np.ndarray] = {}
        for name, shape in GEOMETRY_KEYS.items():
            if name not in keys:
                if raw and name in OPTIONAL_WITH_RAW:
                    continue
                raise InputError(f"{path}: missing key {name!r} (found: {sorted(keys)})")
            geo[name] = _batched(name, np.asarray(npz[name], dtype=np.float64), shape)
    try:
        aug = augmentation_for(source_hw)
    except ValueError as exc:
        raise InputError(f"images: {exc}") from exc
    expected = {
        "post_rots": np.broadcast_to(aug.post_rot, (1, N, 3, 3)),
        "post_trans": np.broadcast_to(aug.post_tran, (1, N, 3)),
        "bda": np.eye(3)[None],
    }
    for name, value in expected.items():
        if name in geo and not np.allclose(geo[name], value, atol=1e-5):
            what = (
                "the identity (no BEV augmentation at test time)"
                if name == "bda"
                else (f"the test-time augmentation of {source_hw[1]}x{source_hw[0]} source images")
            )
            raise InputError(
                f"key {name!r} disagrees with {what} (expected {value[0, 0].tolist()}, got {geo[name][0, 0].tolist()})"
            )
    try:
        calib = RigCalibration(geo["intrins"][0], geo["sensor2egos"][0], geo["ego2globals"][0], source_hw)
    except ValueError as exc:
        raise InputError(str(exc)) from exc
    return SampleInputs(images=images, calibration=calib)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="flashocc-infer", description=__doc__.split("\n\n")[0])
    p.add_argument("--variant", help=f"official config name or M0/M1/PT/PF ({', '.join(VARIANTS)})")
    p.add_argument("--checkpoint", help="official .pth (mmcv / EMA / bare / module.-prefixed) or converted file")
    p.add_argument("--inputs", required=True, type=Path, help="IN.npz (make_inputs.py layout, or raw_imgs)")
    p.add_argument("--out", required=True, type=Path, help="OUT.npz")
    p.add_argument("--config", type=Path, help="parameters YAML (config/<variant>.yaml); flags override it")
    p.add_argument("--backend", choices=BACKEND_CHOICES, help="default: the config's (auto)")
    p.add_argument("--engine", help="ONNX file / TensorRT engine for those backends (default: cached export)")
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N (default: the config's)")
    p.add_argument("--save-logits", action="store_true", help="also write occ_logits (200,200,16,18) float32")
    p.add_argument("--pano-mode", choices=PANO_MODES, help="panoptic instance assignment (default: the config's)")
    p.add_argument("--seed", type=int, default=0, help="deterministic weights when no checkpoint (pytorch backend)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    return p


def _config(args):
    from flashocc_ros.config import get_variant, load_config

    model: dict = {}
    try:
        variant = None if args.variant is None else get_variant(args.variant).name
    except (KeyError, ValueError) as exc:
        raise InputError(f"--variant {args.variant!r}: {exc}") from exc
    for key, value in (
        ("variant", variant),
        ("checkpoint", args.checkpoint),
        ("backend", args.backend),
        ("engine", args.engine),
        ("device", args.device),
        ("pano_mode", args.pano_mode),
    ):
        if value is not None:
            model[key] = value
    if args.variant is None and args.checkpoint:
        from flashocc_ros.network.checkpoint import load_checkpoint

        model["variant"] = load_checkpoint(args.checkpoint)[1]
    return load_config(args.config, {"model": model})


def _runner(cfg, seed: int, with_logits: bool):
    """None (the pipeline creates the configured runner), or a PyTorch runner with the untrained weights of
    another seed than the built-in default."""
    if seed == 0 or cfg.model.checkpoint:
        return None
    from flashocc_ros.backends import resolve_device
    from flashocc_ros.backends.torch_runner import TorchRunner
    from flashocc_ros.network.weights import deterministic_state_dict

    if cfg.model.backend not in ("auto", "pytorch"):
        raise InputError(f"--seed {seed}: deterministic weights of other seeds run on the pytorch backend only")
    state = deterministic_state_dict(cfg.variant.name, seed)
    return TorchRunner(cfg.variant, state, resolve_device(cfg.model, "pytorch"), with_logits, cfg.model.precision)


def infer(cfg, sample: SampleInputs, seed: int = 0, with_logits: bool = False, log=print) -> dict[str, np.ndarray]:
    """One sample through OccupancyPipeline -> the OUT.npz arrays."""
    from flashocc_ros.inference.pipeline import OccupancyPipeline

    runner = _runner(cfg, seed, with_logits)
    with OccupancyPipeline(cfg, runner=runner, with_logits=with_logits, log=log) as pipe:
        pipe.set_calibration(sample.calibration)
        return output_arrays(pipe.run(sample.images), with_logits)


def output_arrays(result, with_logits: bool) -> dict[str, np.ndarray]:
    """OUT.npz arrays of a single-frame or temporal pipeline result (see the module docstring)."""
    out = {"occ_label": result.semantic}
    if with_logits:
        out["occ_logits"] = result.logits
        if result.center_maps is not None:
            out.update({golden: result.center_maps[name] for name, golden in HEAD_MAP_KEYS.items()})
    if result.centers is not None:
        out.update(result.centers.numpy())
        out["pano_inst"] = result.panoptic
    return out


def load_inputs_4d(path: Path, num_frames: int) -> dict[str, np.ndarray]:
    """Read and validate a multi-frame IN.npz (make_inputs_4d layout, 6F cameras) for a temporal variant."""
    f = int(num_frames)
    shapes = {"imgs": (1, N * f, 3, *IMAGE_AUG.input_hw)}
    shapes.update({k: (1, N * f, *v[2:]) for k, v in GEOMETRY_KEYS.items() if k != "bda"})
    shapes["bda"] = (1, 3, 3)
    try:
        npz = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: not a readable .npz file ({exc})") from exc
    out: dict[str, np.ndarray] = {}
    with npz:
        if "imgs" not in npz.files:
            raise InputError(
                f"{path}: temporal variants need key 'imgs' (1, {N * f}, 3, 256, 704) (found: {npz.files})"
            )
        for name, shape in shapes.items():
            if name not in npz.files:
                raise InputError(f"{path}: missing key {name!r} (found: {sorted(npz.files)})")
            arr = np.asarray(npz[name], dtype=np.float32)
            if arr.shape != shape:
                frames = f" ({N} cameras x {f} frames)" if arr.ndim > 1 and name != "bda" else ""
                raise InputError(f"key {name!r}: expected shape {shape}{frames}, got {arr.shape}")
            if not np.all(np.isfinite(arr)):
                raise InputError(f"key {name!r}: contains non-finite values")
            out[name] = arr
    if not np.allclose(out["bda"], np.eye(3)[None], atol=1e-5):
        raise InputError("key 'bda' disagrees with the identity (no BEV augmentation at test time)")
    return out


def infer_temporal(cfg, inputs: dict, seed: int = 0, with_logits: bool = False) -> dict[str, np.ndarray]:
    """All frames of one sample through TemporalPipeline.run_frames -> the OUT.npz arrays."""
    from flashocc_ros.backends import resolve_device
    from flashocc_ros.backends.torch_runner import torch_device
    from flashocc_ros.inference.temporal import TemporalPipeline
    from flashocc_ros.network.loading import load_model

    device = torch_device(resolve_device(cfg.model, "pytorch"))
    model = load_model(cfg.variant.name, cfg.model.checkpoint or None, device, seed=seed)
    return output_arrays(TemporalPipeline(cfg, model=model, with_logits=with_logits).run_frames(inputs), with_logits)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    prog = "flashocc-infer"
    try:
        import torch

        from flashocc_ros.backends import BackendError
        from flashocc_ros.config import ConfigError
        from flashocc_ros.inference.pipeline import PipelineError
        from flashocc_ros.network.checkpoint import CheckpointError

        if args.threads > 0:
            torch.set_num_threads(args.threads)
        if not args.checkpoint and not args.variant and args.config is None:
            raise InputError("--variant is required when no --checkpoint or --config is given")
        try:
            cfg = _config(args)
            if cfg.variant.temporal:
                inputs = load_inputs_4d(args.inputs, cfg.variant.num_frames)
                t0 = time.perf_counter()
                result = infer_temporal(cfg, inputs, args.seed, args.save_logits)
            else:
                sample = load_inputs(args.inputs)
                t0 = time.perf_counter()
                result = infer(
                    cfg, sample, args.seed, args.save_logits, log=lambda s: print(f"{prog}: {s}", file=sys.stderr)
                )
            seconds = time.perf_counter() - t0
        except (CheckpointError, ConfigError, BackendError, PipelineError, FileNotFoundError) as exc:
            raise InputError(str(exc)) from exc
        atomic_save_npz(args.out, result)
    except InputError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    extra = f", {len(result['centers_score'])} centres" if "centers_score" in result else ""
    print(f"{prog}: {cfg.variant.name} ({cfg.model.backend}) -> {args.out} ({seconds:.2f} s{extra})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
