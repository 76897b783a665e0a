"""flashocc-demo argument handling (cheap; the end-to-end run is test_demo.py): every variant, by official or short
name; an unknown one is one clear argparse error."""

from __future__ import annotations

import pytest

from flashocc_ros.config import VARIANTS
from flashocc_ros.tools.demo import build_parser, default_spacing


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_variant_is_accepted_by_official_and_short_name(variant):
    parser = build_parser()
    assert parser.parse_args(["--variant", variant]).variant == variant
    assert parser.parse_args(["--variant", VARIANTS[variant].short.lower()]).variant == variant
    # the node keeps only the latest camera set: a temporal variant (slower, and a dropped keyframe is a lost
    # history frame) is played slower on CPU than a single-frame one
    single = default_spacing("flashocc-r50-M0", "cpu")
    if VARIANTS[variant].temporal:
        assert default_spacing(variant, "cpu") > single
    else:
        assert default_spacing(variant, "cpu") == single
    assert default_spacing(variant, "cuda") == 0.5


def test_unknown_variant_is_one_clear_error(capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["--variant", "X9"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "unknown model variant 'X9'" in err and "panoptic-flashocc-r50-depth4d-pano" in err
