"""flashocc-infer: offline FlashOcc / Panoptic-FlashOcc inference on one sample, no ROS needed.

    flashocc-infer --variant V [--checkpoint W.pth] --inputs IN.npz --out OUT.npz [--device cpu|cuda]
                   [--save-logits] [--pano-mode official|corrected]

IN.npz (golden make_inputs.py layout, batch 1): ``imgs`` (1,6,3,256,704) float32 already normalised, or
``raw_imgs`` (1,6,H,W,3) uint8 RGB camera images (pre-processed here with the exact official path); plus
``sensor2egos`` (1,6,4,4), ``ego2globals`` (1,6,4,4), ``intrins`` (1,6,3,3) source-image K, ``post_rots``
(1,6,3,3), ``post_trans`` (1,6,3), ``bda`` (1,3,3). With ``raw_imgs`` the post_rots/post_trans may be omitted
(they follow from the image size); when given they must agree with it.
OUT.npz: ``occ_label`` (200,200,16) uint8 [ix,iy,iz]; ``occ_logits`` (200,200,16,18) float32 with --save-logits;
panoptic variants add ``centers_xyz`` (K,3), ``centers_score`` (K,), ``centers_label`` (K,) in score order and
``pano_inst`` (200,200,16) int32. Without --checkpoint the deterministic untrained weights of --seed are used.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from flashocc_ros.config import CAMERA_NAMES, PANO_MODES, VARIANTS

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


class InputError(ValueError):
    pass


def _batched(name: str, arr: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    if arr.shape == shape[1:]:
        arr = arr[None]
    if arr.shape != shape:
        raise InputError(f"key {name!r}: expected shape {shape}, got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise InputError(f"key {name!r}: contains non-finite values")
    return arr.astype(np.float32)


def load_inputs(path: Path) -> dict[str, np.ndarray]:
    """Read and validate IN.npz -> {'imgs' (6,3,256,704) float32, geometry arrays (batch 1)}."""
    from flashocc_ros.preprocess import augmentation_for, preprocess_images

    try:
        npz = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: not a readable .npz file ({exc})") from exc
    with npz:
        keys = set(npz.files)
        out: dict[str, np.ndarray] = {}
        if "imgs" in keys:
            out["imgs"] = _batched("imgs", np.asarray(npz["imgs"]), (1, N, 3, 256, 704))[0]
            raw_hw = None
        elif "raw_imgs" in keys:
            raw = np.asarray(npz["raw_imgs"])
            if raw.ndim == 4:
                raw = raw[None]
            if raw.ndim != 5 or raw.shape[:2] != (1, N) or raw.shape[4] != 3 or raw.dtype != np.uint8:
                raise InputError(f"key 'raw_imgs': expected uint8 (1, {N}, H, W, 3) RGB, got {raw.dtype} {raw.shape}")
            raw_hw = raw.shape[2:4]
            try:
                out["imgs"] = preprocess_images(list(raw[0]))
            except ValueError as exc:
                raise InputError(f"key 'raw_imgs': {exc}") from exc
        else:
            raise InputError(f"{path}: needs key 'imgs' or 'raw_imgs' (found: {sorted(keys)})")
        for name, shape in GEOMETRY_KEYS.items():
            if name not in keys:
                if raw_hw is not None and name in OPTIONAL_WITH_RAW:
                    continue
                raise InputError(f"{path}: missing key {name!r} (found: {sorted(keys)})")
            out[name] = _batched(name, np.asarray(npz[name]), shape)
    if raw_hw is not None:
        aug = augmentation_for(raw_hw)
        expected = {
            "post_rots": np.broadcast_to(aug.post_rot, (1, N, 3, 3)),
            "post_trans": np.broadcast_to(aug.post_tran, (1, N, 3)),
        }
        for name, value in expected.items():
            if name in out and not np.allclose(out[name], value, atol=1e-5):
                raise InputError(
                    f"key {name!r} disagrees with the test-time augmentation of {raw_hw[1]}x{raw_hw[0]} raw images "
                    f"(expected {value[0, 0].tolist()}, got {out[name][0, 0].tolist()})"
                )
            out[name] = value.astype(np.float32)
    return out


def run_inference(model, inputs: dict[str, np.ndarray], device: str = "cpu") -> dict[str, np.ndarray]:
    """Network forward + post-processing on one sample -> dict of output arrays (occ_label, occ_logits, centers)."""
    import torch

    from flashocc_ros.geometry import compute_pool_indices, make_mlp_input, sensor_to_key_ego
    from flashocc_ros.model import occupancy_labels

    v = model.variant
    s2ke = sensor_to_key_ego(inputs["sensor2egos"], inputs["ego2globals"])
    geo = (inputs["intrins"], inputs["post_rots"], inputs["post_trans"], inputs["bda"])
    pool = compute_pool_indices(v, s2ke, *geo).to(device)
    mlp = make_mlp_input(s2ke, *geo).to(device) if v.depth_net == "bevdepth" else None
    img = torch.from_numpy(inputs["imgs"]).to(device)
    with torch.inference_mode():
        outs = model.forward_tensors(img, *pool.network_inputs(), mlp)
        logits = outs[0]
        result = {"occ_label": occupancy_labels(logits).cpu().numpy(), "occ_logits": logits[0].float().cpu().numpy()}
        if v.panoptic:
            from flashocc_ros.centers import decode_centers

            centers = decode_centers(outs[1], outs[2], outs[3])
            result.update(centers.numpy())
            result["_centers"] = centers
    return result


def write_npz_atomic(path: Path, arrays: dict[str, np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="flashocc-infer", description=__doc__.split("\n\n")[0])
    p.add_argument("--variant", help=f"official config name or M0/M1/PT/PF ({', '.join(VARIANTS)})")
    p.add_argument("--checkpoint", help="official .pth (mmcv / EMA / bare / module.-prefixed) or converted file")
    p.add_argument("--inputs", required=True, type=Path, help="IN.npz (make_inputs.py layout, or raw_imgs)")
    p.add_argument("--out", required=True, type=Path, help="OUT.npz")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    p.add_argument("--save-logits", action="store_true", help="also write occ_logits (200,200,16,18) float32")
    p.add_argument("--pano-mode", choices=PANO_MODES, default="official", help="panoptic instance assignment")
    p.add_argument("--seed", type=int, default=0, help="deterministic weights when no --checkpoint")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    prog = "flashocc-infer"
    try:
        import torch

        if args.threads > 0:
            torch.set_num_threads(args.threads)
        if args.device.startswith("cuda") and not torch.cuda.is_available():
            raise InputError(f"--device {args.device}: CUDA is not available")
        if not args.checkpoint and not args.variant:
            raise InputError("--variant is required when no --checkpoint is given")
        from flashocc_ros.checkpoint import CheckpointError
        from flashocc_ros.model import load_model

        inputs = load_inputs(args.inputs)
        t0 = time.perf_counter()
        try:
            model = load_model(args.variant, args.checkpoint, device=args.device, seed=args.seed)
        except (CheckpointError, ValueError) as exc:
            raise InputError(str(exc)) from exc
        t1 = time.perf_counter()
        result = run_inference(model, inputs, args.device)
        t2 = time.perf_counter()
        centers = result.pop("_centers", None)
        if not args.save_logits:
            result.pop("occ_logits")
        if centers is not None:
            result["pano_inst"] = _panoptic(result["occ_label"], centers, args.pano_mode)
        write_npz_atomic(args.out, result)
    except InputError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    extra = f", {len(centers)} centres" if centers is not None else ""
    print(
        f"{prog}: {model.variant.name} -> {args.out} (load {t1 - t0:.1f} s, inference {t2 - t1:.2f} s{extra})",
        file=sys.stderr,
    )
    return 0


def _panoptic(occ_label: np.ndarray, centers, mode: str) -> np.ndarray:
    import torch

    from flashocc_ros.panoptic import assign_instances

    pano = assign_instances(torch.from_numpy(occ_label.astype(np.int64)), centers, mode=mode)
    return pano.panoptic.cpu().numpy().astype(np.int32)


if __name__ == "__main__":
    sys.exit(main())
