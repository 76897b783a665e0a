"""flashocc-export: ONNX export and TensorRT engine building (ahead of time).

  flashocc-export onnx   --variant M0 [--checkpoint CKPT] [--logits] -o m0.onnx
  flashocc-export onnx   --variant P2 [--checkpoint CKPT] [--logits] -o p2.onnx
                         (temporal variants P2 / P9 / M2: p2.encoder.onnx + p2.fusion.onnx + p2.temporal.json)
  flashocc-export engine (--onnx m0.onnx --variant M0 | --variant M0 [--checkpoint CKPT]) --precision fp16
                         [-o m0.engine] [--calib-images DIR | --calib-bag BAG] [--device cuda:0]
  flashocc-export build_only [--config config/flashocc.yaml] [--set model.precision=fp16 ...]
  flashocc-export info   m0.engine            (prints the engine's metadata: TensorRT, GPU, precision, hashes)

``engine`` without ``-o`` and ``build_only`` fill the engine cache (model.engine_cache_dir) that the node and the
offline tools use, so the first frame does not wait for a build.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

from flashocc_ros.config import PRECISIONS, ConfigError, ModelConfig, get_variant, load_config, unflatten
from flashocc_ros.topics import COMPRESSED_IMAGE_TOPIC


def _model_cfg(args) -> ModelConfig:
    cfg = ModelConfig(variant=get_variant(args.variant).name)
    if getattr(args, "checkpoint", None):
        cfg.checkpoint = args.checkpoint
    if getattr(args, "cache_dir", None):
        cfg.engine_cache_dir = args.cache_dir
    return cfg


def _refuse_temporal(variant_name: str, command: str) -> None:
    if get_variant(variant_name).temporal:
        raise ConfigError(
            f"{command}: {variant_name} is temporal (an encoder and a fusion graph, not one engine); export the two "
            f"graphs with `flashocc-export onnx --variant {variant_name} -o BASE.onnx` and build each with trtexec "
            "(docs/deployment.md, 'Temporal variants')"
        )


def cmd_onnx(args) -> int:
    from flashocc_ros.backends import load_weights
    from flashocc_ros.backends.onnx_export import export_onnx

    cfg = _model_cfg(args)
    state_dict, weights_id = load_weights(cfg)
    if get_variant(cfg.variant).temporal:
        return _export_temporal(cfg, state_dict, weights_id, args)
    report = export_onnx(cfg.variant, state_dict, args.output, with_logits=args.logits)
    print(
        f"wrote {report.path} ({report.size_bytes / 1e6:.1f} MB, {report.num_nodes} nodes, {report.seconds:.1f} s, "
        f"weights {weights_id}); onnx.checker passed; operators: {', '.join(report.op_types)}"
    )
    return 0


def _export_temporal(cfg, state_dict, weights_id, args) -> int:
    from flashocc_ros.backends.onnx_export4d import export_temporal_onnx, trtexec_commands

    report = export_temporal_onnx(cfg.variant, state_dict, args.output, with_logits=args.logits)
    for role in ("encoder", "fusion"):
        print(
            f"wrote {report.paths[role]} ({role}, {report.size_bytes[role] / 1e6:.1f} MB); "
            f"operators: {', '.join(report.op_types[role])}"
        )
    print(
        f"wrote {report.paths['metadata']} ({report.metadata['frames']} frames; weights {weights_id}); "
        f"{report.seconds:.1f} s; onnx.checker passed"
    )
    print("TensorRT engines (one per graph; run in the output folder on the target machine):")
    for cmd in trtexec_commands(report.metadata).values():
        print(f"  {cmd}")
    return 0


def _calibration(args):
    if not (args.calib_images or args.calib_bag):
        return None
    from flashocc_ros.backends.calibration import make_source

    return make_source(args.calib_images, args.calib_bag, args.calib_max, args.calib_topic)


def cmd_engine(args) -> int:
    from flashocc_ros.backends import ensure_onnx
    from flashocc_ros.backends.tensorrt_build import BuildOptions, build_engine_file, ensure_engine, machine_identity

    cfg = _model_cfg(args)
    variant = get_variant(cfg.variant)
    _refuse_temporal(variant.name, "engine")
    machine_identity(args.device)  # clear error before any export when there is no GPU / tensorrt
    if args.onnx:
        cfg.engine = args.onnx
    onnx_path = ensure_onnx(cfg, with_logits=args.logits)
    options = BuildOptions(
        precision=args.precision, workspace_mib=args.workspace_mib, hardware_compatible=args.hardware_compatible
    )
    calibration = _calibration(args)
    if args.precision == "int8" and calibration is None:
        raise ConfigError("--precision int8 needs --calib-images DIR or --calib-bag BAG")
    if args.output:
        path, key = build_engine_file(onnx_path, variant, options, args.output, args.device, calibration)
    else:
        path, key = ensure_engine(onnx_path, variant, options, cfg.engine_cache_dir, args.device, calibration)
    print(
        f"engine {path}: TensorRT {key.tensorrt_version}, {key.gpu_name} (sm {key.compute_capability}), {key.precision}"
    )
    return 0


def cmd_build_only(args) -> int:
    from flashocc_ros.backends import ensure_onnx, resolve_backend, resolve_device
    from flashocc_ros.backends.loaders import is_engine_file
    from flashocc_ros.backends.tensorrt_build import BuildOptions, ensure_engine

    overrides = {}
    for item in args.set or []:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value")
        key, value = item.split("=", 1)
        overrides[key] = yaml.safe_load(value) if value else value
    cfg = load_config(args.config, unflatten(overrides) if overrides else None)
    if cfg.variant.temporal:
        if cfg.model.backend not in ("auto", "pytorch"):
            _refuse_temporal(cfg.variant.name, f"build_only (model.backend {cfg.model.backend})")
        print(f"{cfg.variant.name}: the temporal pipeline runs on the pytorch backend; nothing to build")
        return 0
    backend = resolve_backend(cfg.model)
    if backend == "pytorch":
        print("backend pytorch: nothing to build")
        return 0
    if backend == "tensorrt" and is_engine_file(cfg.model.engine):
        print(f"model.engine is an explicit engine ({cfg.model.engine}); nothing to build")
        return 0
    onnx_path = ensure_onnx(cfg.model)
    if backend == "onnxruntime":
        print(f"onnxruntime: ONNX ready at {onnx_path}")
        return 0
    if cfg.model.precision == "int8":
        raise ConfigError(
            "build_only: int8 engines need calibration data; use `flashocc-export engine --precision int8`"
        )
    device = resolve_device(cfg.model)  # cpu (device auto without a GPU) fails in ensure_engine with the no-GPU error
    path, _ = ensure_engine(
        onnx_path, cfg.variant, BuildOptions(precision=cfg.model.precision), cfg.model.engine_cache_dir, device
    )
    print(f"tensorrt: engine ready at {path}")
    return 0


def cmd_info(args) -> int:
    from flashocc_ros.backends.engine_cache import read_engine_key

    key = read_engine_key(args.engine)
    print(json.dumps(key.to_dict(), indent=2, sort_keys=True))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="flashocc-export", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    sub = p.add_subparsers(dest="command", required=True)

    o = sub.add_parser("onnx", help="export a variant to standard-op ONNX")
    o.add_argument("--variant", default="flashocc-r50-M0", help="official config name or M0/M1/PT/PF")
    o.add_argument("--checkpoint", default="", help="weights (.pth); default: deterministic untrained weights")
    o.add_argument("--logits", action="store_true", help="also output occ_logits (1,200,200,16,18)")
    o.add_argument(
        "-o",
        "--output",
        required=True,
        type=Path,
        help="ONNX file; temporal variants: base path, writes BASE.encoder.onnx, BASE.fusion.onnx, BASE.temporal.json",
    )
    o.set_defaults(func=cmd_onnx)

    e = sub.add_parser("engine", help="build a TensorRT engine (to -o FILE, or into the engine cache)")
    e.add_argument("--variant", default="flashocc-r50-M0")
    e.add_argument("--checkpoint", default="")
    e.add_argument("--onnx", default="", help="ONNX file from `flashocc-export onnx` (default: export now)")
    e.add_argument("--logits", action="store_true")
    e.add_argument("--precision", choices=PRECISIONS, default="fp16")
    e.add_argument("--workspace-mib", type=int, default=4096)
    e.add_argument("--hardware-compatible", action="store_true", help="Ampere+ portable engine (slower)")
    e.add_argument("--calib-images", default="", help="INT8: directory of images (camera sub-directories or flat)")
    e.add_argument("--calib-bag", default="", help="INT8: ROS 2 bag with CompressedImage topics")
    e.add_argument("--calib-max", type=int, default=64, help="INT8: number of six-camera sets used")
    e.add_argument(
        "--calib-topic",
        default=COMPRESSED_IMAGE_TOPIC,
        help=f"INT8: image topic pattern in --calib-bag (default {COMPRESSED_IMAGE_TOPIC}, as the converter writes)",
    )
    e.add_argument("--device", default="cuda:0")
    e.add_argument("--cache-dir", default="", help="engine cache (default: model.engine_cache_dir)")
    e.add_argument("-o", "--output", default="", help="engine file (a .json metadata file is written beside it)")
    e.set_defaults(func=cmd_engine)

    b = sub.add_parser("build_only", help="prepare everything a config needs (ONNX export, cached engine)")
    b.add_argument("--config", default=None, help="YAML config (default: built-in defaults)")
    b.add_argument("--set", action="append", metavar="KEY=VALUE", help="override, e.g. model.precision=fp16")
    b.set_defaults(func=cmd_build_only)

    i = sub.add_parser("info", help="print the metadata (build key) of an engine")
    i.add_argument("engine", type=Path)
    i.set_defaults(func=cmd_info)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from flashocc_ros.backends import BackendError

    try:
        return int(args.func(args))
    except (BackendError, ConfigError, FileNotFoundError, ValueError) as exc:
        print(f"flashocc-export {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
