"""Shared test fixtures: ROS environment isolation, synthetic data built once per session.

ROS tests use a random ROS_DOMAIN_ID per test, localhost-only discovery, a private ROS_LOG_DIR and the shipped
Fast DDS profile; they wait for matching with timeouts instead of sleeping.
"""

from __future__ import annotations

import os
import random
import sys
import time
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
TEST_DATA = Path(__file__).resolve().parent / "data"
FASTDDS_PROFILE = REPO_ROOT / "config" / "fastdds_profile.xml"

os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
os.environ.setdefault("FASTDDS_DEFAULT_PROFILES_FILE", str(FASTDDS_PROFILE))
os.environ.setdefault("OMP_NUM_THREADS", "2")
if "AMENT_PREFIX_PATH" not in os.environ and (Path(sys.prefix) / "share" / "flashocc_ros").exists():
    os.environ["AMENT_PREFIX_PATH"] = sys.prefix

_used_domains: set[int] = set()


def _ros_available() -> tuple[bool, str]:
    try:
        import rclpy  # noqa: F401

        import flashocc_ros.msg  # noqa: F401
    except Exception as exc:  # pragma: no cover - depends on the environment
        return False, f"rclpy or flashocc_ros.msg not importable ({exc}); run scripts/setup_env.sh"
    return True, ""


ROS_OK, ROS_WHY = _ros_available()


def require_ros() -> None:
    """Skip (or fail, when FLASHOCC_REQUIRE_ROS=1 as in scripts/test.sh) if the ROS stack is missing."""
    if not ROS_OK:
        if os.environ.get("FLASHOCC_REQUIRE_ROS") == "1":
            pytest.fail(ROS_WHY)
        pytest.skip(ROS_WHY)


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.get_closest_marker("ros") is not None:
            item.add_marker(pytest.mark.usefixtures("_ros_required"))


@pytest.fixture
def _ros_required():
    require_ros()


@pytest.fixture
def ros_domain_id() -> int:
    """A domain id not used before in this session (reusing one right away delays discovery)."""
    while True:
        d = random.randint(1, 200)
        if d not in _used_domains:
            _used_domains.add(d)
            return d


@pytest.fixture
def ros_env(ros_domain_id, tmp_path) -> dict[str, str]:
    """Environment for ROS subprocesses of one test (random domain, localhost, private logs, Fast DDS profile)."""
    log_dir = tmp_path / "ros_log"
    log_dir.mkdir()
    env = dict(os.environ)
    env.update(
        ROS_DOMAIN_ID=str(ros_domain_id),
        ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
        ROS_LOG_DIR=str(log_dir),
        FASTDDS_DEFAULT_PROFILES_FILE=str(FASTDDS_PROFILE),
        PYTHONUNBUFFERED="1",
    )
    return env


@pytest.fixture
def rclpy_context(ros_env):
    """An initialised rclpy Context on this test's private domain; shut down afterwards."""
    require_ros()
    import rclpy

    os.environ["ROS_LOG_DIR"] = ros_env["ROS_LOG_DIR"]
    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=int(ros_env["ROS_DOMAIN_ID"]))
    try:
        yield ctx
    finally:
        ctx.try_shutdown()


def wait_for(predicate, timeout: float = 15.0, spin=None, what: str = "condition") -> None:
    """Poll `predicate` (spinning `spin()` between polls if given) until true or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if spin is not None:
            spin()
        else:
            time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.fixture(scope="session")
def synthetic_nuscenes(tmp_path_factory):
    """A tiny nuScenes-format dataset (2 scenes, real nuScenes rig calibration, small JPEGs, Occ3D labels),
    built once per session by flashocc_ros.dataset.synthetic."""
    from flashocc_ros.dataset.synthetic import make_synthetic_nuscenes

    root = tmp_path_factory.mktemp("nuscenes")
    return make_synthetic_nuscenes(root)
