"""Trim the official temporal golden outputs (../shared/golden4d/out/<config>_seed0.npz) for the test suite.

Usage: python test/data/golden4d/trim_golden4d.py /work/shared/golden4d
Keeps every scalar / statistic field and the full label grid and panoptic grid (int16, compressed); the probe
arrays are cut to the first N_VOX probe voxels, the first N_BEV BEV probe cells and the first N_PX pixel probes
(the official probe order is kept, so the kept probes are the official ones). Float values are copied unchanged
(float16 where the official file stores float16). Also copies keys_<config>.json.
"""

import shutil
import sys
from pathlib import Path

import numpy as np

CONFIGS = (
    "flashocc-r50-4d-stereo",
    "panoptic-flashocc-r50-depth4d-pano",
    "panoptic-flashocc-r50-depth4d-longterm8f-pano",
)
N_VOX, N_BEV, N_PX = 6000, 128, 8
DROP = {"cen_heatmap_logits_f16", "depth_argmax_frames", "cost_volume_argmax_frames", "cost_volume_max_frames_f16"}


def trim(src: Path, dst: Path) -> None:
    z = np.load(src)
    out = {}
    for k in z.files:
        a = z[k]
        if k in DROP:
            continue
        if k in ("probe_vox_xyz", "probe_logits"):
            a = a[:N_VOX].astype(np.int16) if k == "probe_vox_xyz" else a[:N_VOX]
        elif k in ("probe_bev_yx", "bev_encoder_probe", "bev_fused_probe"):
            a = a[:N_BEV]
        elif k in ("lss_bev_probe_frames",):
            a = a[:, :N_BEV]
        elif k in ("cen_heatmap_probe", "cen_reg_probe", "cen_height_probe"):
            a = a[:, :N_BEV]
        elif k in (
            "depth_net_out_probe_frames",
            "cost_volume_probe_frames",
            "cost_volume_net_out_probe_frames",
            "stereo_feat_probe_frames",
        ):
            a = a[..., :N_PX]
        elif k in ("probe_px_yx", "probe_cvpx_yx"):
            a = a[:N_PX]
        elif k in ("pano_inst",):
            a = a.astype(np.int16)
        out[k] = a
    np.savez_compressed(dst, **out)


def main() -> None:
    src = Path(sys.argv[1])
    here = Path(__file__).resolve().parent
    for c in CONFIGS:
        trim(src / "out" / f"{c}_seed0.npz", here / f"{c}_seed0.npz")
        shutil.copy(src / f"keys_{c}.json", here / f"keys_{c}.json")


if __name__ == "__main__":
    main()
