"""Pure helpers shared by launch/flashocc.launch.py and the pip-only path (no `launch` package needed).

The launch file and `node_command()` build the same node invocation, so the command line can be tested where the
ROS `launch` package is not installed.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from flashocc_ros.config import VARIANTS

PACKAGE = "flashocc_ros"


def share_dir() -> Path:
    """share/flashocc_ros of an install, or the repository root when running from a checkout."""
    try:
        from ament_index_python.packages import get_package_share_directory

        path = Path(get_package_share_directory(PACKAGE))
        if (path / "config").is_dir():
            return path
    except Exception:
        pass
    repo = Path(__file__).resolve().parents[2]
    return repo


def params_file_for(variant: str, params_file: str = "") -> Path:
    """The explicit params file, else config/<variant>.yaml; clear error for unknown variants or missing files."""
    if params_file:
        path = Path(params_file).expanduser()
    else:
        if variant not in VARIANTS:
            raise ValueError(f"unknown variant {variant!r}; known: {', '.join(VARIANTS)}")
        path = share_dir() / "config" / f"{variant}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"parameters file not found: {path}")
    return path


def fastdds_profile() -> Path:
    return share_dir() / "config" / "fastdds_profile.xml"


def parameter_overrides(
    variant: str, checkpoint: str = "", engine: str = "", backend: str = "", transport: str = ""
) -> dict[str, object]:
    """Launch arguments -> node parameters (empty strings leave the params file's value)."""
    out: dict[str, object] = {"model.variant": variant}
    for key, value in (
        ("model.checkpoint", checkpoint),
        ("model.engine", engine),
        ("model.backend", backend),
        ("cameras.transport", transport),
    ):
        if value:
            out[key] = value
    return out


def node_command(
    variant: str,
    params_file: str = "",
    checkpoint: str = "",
    engine: str = "",
    backend: str = "",
    transport: str = "",
    use_sim_time: bool = False,
    python: str = sys.executable,
) -> list[str]:
    """`python -m flashocc_ros.node --ros-args ...` equivalent of the launch file's Node action."""
    cmd = [python, "-m", "flashocc_ros.node", "--ros-args", "-r", "__node:=flashocc_node"]
    cmd += ["--params-file", str(params_file_for(variant, params_file))]
    params = parameter_overrides(variant, checkpoint, engine, backend, transport)
    params["use_sim_time"] = use_sim_time
    for key, value in params.items():
        text = str(value).lower() if isinstance(value, bool) else str(value)
        cmd += ["-p", f"{key}:={text}"]
    return cmd


def player_command(bag: str, use_sim_time: bool = False, rate: float = 1.0) -> list[str]:
    """`ros2 bag play` where rosbag2 is installed, else the package's own player (flashocc-play)."""
    if shutil.which("ros2") and os.environ.get("FLASHOCC_FORCE_OWN_PLAYER") != "1":
        cmd = ["ros2", "bag", "play", bag, "--rate", str(rate)]
        return cmd + (["--clock"] if use_sim_time else [])
    cmd = [sys.executable, "-m", "flashocc_ros.tools.play", bag, "--rate", str(rate)]
    return cmd + (["--clock"] if use_sim_time else [])
