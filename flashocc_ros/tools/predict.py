"""flashocc-predict: offline batch prediction over a nuScenes split, straight from the dataset (no ROS).

For every keyframe of the split's scenes: the six camera JPEGs and their calibration (nuscenes-devkit: intrinsics,
camera -> ego and ego -> global of each camera's sample_data) go through ``OccupancyPipeline`` (configured model,
backend and the exact official preprocessing by default); the result is written as ``<out>/<sample_token>.npz``
(``pred`` uint8, plus ``inst`` int32 for panoptic variants), ready for flashocc-eval. Existing files are kept
(the run can be resumed) unless --overwrite. Keyframes are taken in time order (the official test order;
--limit N = the first N).

Temporal variants (M2, P2, P9) run through ``TemporalPipeline`` with the history the official test uses (SPEC4D
2): with the split's keyframes sorted by time, the frame k back of keyframe i is keyframe max(i - k, 0) when that is
of the same scene, else the current frame itself. The split is walked in that order and every keyframe is encoded
once (its record is reused by the next F - 1 keyframes), never once per sample it appears in.

  flashocc-predict --dataroot data/nuscenes --version v1.0-trainval --split val --out preds_m0 \\
                   --variant flashocc-r50-M0 --checkpoint flashocc-r50-M0.pth --backend pytorch
  flashocc-predict --dataroot data/nuscenes --split val --out preds_p2 --variant P2 \\
                   --checkpoint panoptic-flashocc-r50-depth4d-pano.pth --device cuda
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from flashocc_ros.config import BACKENDS, CAMERA_NAMES, PRECISIONS, ConfigError, load_config
from flashocc_ros.metrics import evaluation as ev


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="flashocc-predict",
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--dataroot", type=Path, required=True, help="nuScenes dataroot")
    p.add_argument("--version", default="v1.0-trainval", help="nuScenes version (default v1.0-trainval)")
    p.add_argument("--split", default="val", help="nuScenes split whose scenes are predicted (default val)")
    p.add_argument("--out", type=Path, required=True, help="output folder for <sample_token>.npz")
    p.add_argument("--config", type=Path, help="FlashOcc YAML config (config/<variant>.yaml); options below override")
    p.add_argument("--variant", help="model variant (official config name or M0/M1/PT/PF/M2/P2/P9)")
    p.add_argument("--checkpoint", help="checkpoint .pth (default: the config's; empty = untrained weights)")
    p.add_argument("--engine", help="TensorRT engine / ONNX file for those backends")
    p.add_argument("--backend", choices=BACKENDS, help="inference backend")
    p.add_argument("--device", help="cpu | cuda | cuda:N")
    p.add_argument("--precision", choices=PRECISIONS, help="engine precision")
    p.add_argument("--fast-jpeg", action="store_true", help="DCT-scaled JPEG decode (faster, not bit-exact)")
    p.add_argument("--limit", type=int, default=0, help="predict only the first N keyframes in time (0 = all)")
    p.add_argument("--overwrite", action="store_true", help="recompute existing prediction files")
    p.add_argument("--no-progress", action="store_true")
    return p


def _model_overrides(args: argparse.Namespace) -> dict:
    from flashocc_ros.config import get_variant

    model: dict = {}
    if args.variant:
        try:
            model["variant"] = get_variant(args.variant).name
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    for key in ("checkpoint", "engine", "backend", "device", "precision"):
        value = getattr(args, key)
        if value is not None:
            model[key] = value
    return {"model": model} if model else {}


def sample_inputs(nusc, sample_token: str):
    """(six JPEG byte strings, RigCalibration) of a keyframe, cameras in network order."""
    from nuscenes.utils.geometry_utils import transform_matrix
    from pyquaternion import Quaternion

    from flashocc_ros.network.geometry import RigCalibration

    sample = nusc.get("sample", sample_token)
    jpegs, intrinsics, sensor2ego, ego2global, hw = [], [], [], [], None
    for cam in CAMERA_NAMES:
        if cam not in sample["data"]:
            raise ev.EvaluationError(f"sample {sample_token} has no {cam} image")
        sd = nusc.get("sample_data", sample["data"][cam])
        cs = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
        pose = nusc.get("ego_pose", sd["ego_pose_token"])
        path = Path(nusc.dataroot) / sd["filename"]
        try:
            jpegs.append(path.read_bytes())
        except FileNotFoundError:
            raise ev.EvaluationError(f"camera image not found: {path}") from None
        intrinsics.append(np.array(cs["camera_intrinsic"], dtype=np.float64))
        sensor2ego.append(transform_matrix(np.array(cs["translation"]), Quaternion(cs["rotation"])))
        ego2global.append(transform_matrix(np.array(pose["translation"]), Quaternion(pose["rotation"])))
        hw = (int(sd["height"]), int(sd["width"])) if sd.get("height") else hw
    calib = RigCalibration(np.stack(intrinsics), np.stack(sensor2ego), np.stack(ego2global), hw or (900, 1600))
    return jpegs, calib


def official_adjacent(scene_tokens: Sequence[str], index: int, count: int) -> list[int | None]:
    """The official test's previous frames of keyframe ``index`` (SPEC4D 2; ``scene_tokens``: the split's
    keyframes sorted by time): frame k = 1 .. ``count`` is keyframe max(index - k, 0), or None (= the current
    frame) when that keyframe is of another scene or is ``index`` itself."""
    out: list[int | None] = []
    for k in range(1, count + 1):
        j = max(index - k, 0)
        out.append(j if j != index and scene_tokens[j] == scene_tokens[index] else None)
    return out


def predict_temporal(cfg, nusc, tokens: list[str], todo: set[str], out: Path, exact: bool, progress: bool) -> None:
    """Walk ``tokens`` (the split's keyframes in time order) once; predict those in ``todo`` with the official
    history (``official_adjacent``), encoding each keyframe that is predicted or is history of one exactly once."""
    from tqdm import tqdm

    from flashocc_ros.inference.pipeline import PipelineError
    from flashocc_ros.inference.temporal import TemporalPipeline

    pipe = TemporalPipeline(cfg)
    slots = cfg.variant.num_frames - 1
    scenes = [nusc.get("sample", t)["scene_token"] for t in tokens]
    adjacent = {i: official_adjacent(scenes, i, slots) for i, t in enumerate(tokens) if t in todo}
    needed = set(adjacent) | {j for adj in adjacent.values() for j in adj if j is not None}
    if progress:
        print(
            f"{cfg.variant.short}: {slots} previous keyframe(s) per sample, the official way (same scene, else the "
            f"current frame); {len(needed) - len(adjacent)} keyframe(s) encoded as history only",
            file=sys.stderr,
        )
    try:
        records: dict = {}
        with tqdm(total=len(adjacent), desc=f"predict {cfg.variant.short}", unit="sample", disable=not progress) as bar:
            for i in sorted(needed):
                token = tokens[i]
                jpegs, calib = sample_inputs(nusc, token)
                try:  # the pipeline's JPEG decode + preprocessing (run_jpeg's), sizes checked against sample_data
                    images = pipe.preprocess_jpegs(jpegs, calib, exact)
                except PipelineError as exc:
                    raise ev.EvaluationError(f"sample {token}: {exc}") from exc
                stamp = nusc.get("sample", token)["timestamp"] * 1e-6
                if i in adjacent:
                    previous = [None if j is None else records[j] for j in adjacent[i]]
                    result, records[i] = pipe.run_with_history(images, calib, previous, stamp)
                    ev.write_prediction(out / f"{token}.npz", result.semantic, result.panoptic)
                    bar.update()
                else:
                    records[i] = pipe.encode(images, calib, stamp)
                for j in [j for j in records if j < i - slots]:  # no later keyframe looks further back
                    del records[j]
    finally:
        pipe.close()  # its decode threads


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from flashocc_ros.inference.pipeline import OccupancyPipeline

    cfg = load_config(args.config, _model_overrides(args))
    nusc = ev.load_nuscenes(args.dataroot, args.version)
    tokens = ev.split_sample_tokens(nusc, args.split)
    stamps = ev.sample_timestamps(nusc, tokens)
    tokens.sort(key=stamps.__getitem__)  # the official test order (keyframe infos sorted by time)
    if args.limit:
        tokens = tokens[: args.limit]
    todo = [t for t in tokens if args.overwrite or not (args.out / f"{t}.npz").exists()]
    if len(todo) < len(tokens) and not args.no_progress:
        print(f"{len(tokens) - len(todo)} predictions exist in {args.out}; skipping them", file=sys.stderr)
    args.out.mkdir(parents=True, exist_ok=True)
    if not todo:
        return 0
    if cfg.variant.temporal:
        predict_temporal(cfg, nusc, tokens, set(todo), args.out, not args.fast_jpeg, not args.no_progress)
        return len(todo)
    with OccupancyPipeline(cfg, log=(lambda *a: None) if args.no_progress else print) as pipeline:
        for token in tqdm(todo, desc=f"predict {cfg.variant.short}", unit="sample", disable=args.no_progress):
            jpegs, calib = sample_inputs(nusc, token)
            pipeline.set_calibration(calib)
            result = pipeline.run_jpeg(jpegs, exact=not args.fast_jpeg)
            ev.write_prediction(args.out / f"{token}.npz", result.semantic, result.panoptic)
    return len(todo)


def main(argv: list[str] | None = None) -> int:
    from flashocc_ros.inference.pipeline import PipelineError

    args = build_parser().parse_args(argv)
    try:
        n = run(args)
    except (ev.EvaluationError, ConfigError, PipelineError, FileNotFoundError) as exc:
        print(f"flashocc-predict: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {n} predictions to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
