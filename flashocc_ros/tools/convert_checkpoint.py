"""flashocc-convert-ckpt: official FlashOcc / Panoptic-FlashOcc .pth -> clean state-dict file with variant metadata.

    flashocc-convert-ckpt IN.pth OUT.pth [--variant V]

Reads mmcv checkpoints (``{'meta', 'state_dict', 'optimizer'}``), MEGVII EMA files, bare or ``module.``-prefixed
state dicts with ``torch.load(weights_only=True)`` (pickles that would run code are refused), checks every key and
shape against the variant (given or detected), drops optimizer state and metadata, and writes
``{'state_dict': ..., 'flashocc_variant': <config name>, 'meta': {'source': ..., 'num_tensors': ...}}``
atomically. The result loads with weights_only=True everywhere a checkpoint is accepted.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from flashocc_ros.config import VARIANTS


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="flashocc-convert-ckpt", description=__doc__.split("\n\n")[0])
    p.add_argument("input", type=Path, help="official checkpoint (.pth)")
    p.add_argument("output", type=Path, help="clean checkpoint to write")
    p.add_argument("--variant", help=f"expected variant ({', '.join(VARIANTS)} or M0/M1/PT/PF); default: detect")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from flashocc_ros.network.checkpoint import CheckpointError, load_checkpoint, save_clean_checkpoint

    try:
        if args.output.resolve() == args.input.resolve():
            raise CheckpointError(f"output {args.output} would overwrite the input")
        state_dict, variant = load_checkpoint(args.input, args.variant)
        meta = {"source": str(args.input.name), "num_tensors": len(state_dict)}
        save_clean_checkpoint(state_dict, variant, args.output, meta)
    except CheckpointError as exc:
        print(f"flashocc-convert-ckpt: error: {exc}", file=sys.stderr)
        return 2
    num = sum(int(t.numel()) for k, t in state_dict.items() if not k.endswith("num_batches_tracked"))
    print(f"flashocc-convert-ckpt: {variant}: {len(state_dict)} tensors ({num:,} values) -> {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
