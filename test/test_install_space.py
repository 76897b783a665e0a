"""The cmake/colcon install space: generated interfaces and the hand-written modules import side by side.

This is the build a ROS user gets from `colcon build` (ament_cmake + rosidl_generate_interfaces, Python modules
installed with install(DIRECTORY) because of rosidl_python issue #141), done here with plain cmake against the
venv's ROS 2 wheels.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from .conftest import REPO_ROOT

pytestmark = pytest.mark.ros


@pytest.fixture(scope="module")
def install_space(tmp_path_factory):
    if shutil.which("cmake") is None:
        pytest.skip("cmake not installed")
    venv = Path(sys.prefix)
    tmp = tmp_path_factory.mktemp("colcon")
    build, prefix, src = tmp / "build", tmp / "install", tmp / "src" / "flashocc_ros"
    # A workspace source tree as a user would have it (the repository's .venv must not sit inside the source).
    ignore = shutil.ignore_patterns(".venv", ".git", "__pycache__", "test", "build", "install", "log", "reports", "out")
    shutil.copytree(REPO_ROOT, src, ignore=ignore)
    env = dict(os.environ, AMENT_PREFIX_PATH=str(venv))
    common = [f"-DCMAKE_PREFIX_PATH={venv}", f"-DPython3_EXECUTABLE={sys.executable}", "-DBUILD_TESTING=OFF"]
    for cmd in (
        ["cmake", "-S", str(src), "-B", str(build), f"-DCMAKE_INSTALL_PREFIX={prefix}", *common],
        ["cmake", "--build", str(build), "-j2"],
        ["cmake", "--install", str(build)],
    ):
        res = subprocess.run(cmd, env=env, capture_output=True, text=True)
        assert res.returncode == 0, f"{' '.join(cmd)} failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return prefix


def test_install_space_layout(install_space):
    share = install_space / "share" / "flashocc_ros"
    assert (share / "package.xml").is_file()
    assert (share / "config" / "fastdds_profile.xml").is_file()
    assert (share / "msg" / "SemanticOccupancy.msg").is_file()
    exe = install_space / "lib" / "flashocc_ros" / "flashocc_node"
    assert exe.is_file() and os.access(exe, os.X_OK)
    assert (install_space / "share" / "ament_index" / "resource_index" / "packages" / "flashocc_ros").is_file()


def test_interfaces_and_modules_import_from_install_space(install_space, tmp_path):
    pyver = f"python{sys.version_info.major}.{sys.version_info.minor}"
    site = install_space / "lib" / pyver / "site-packages"
    assert (site / "flashocc_ros" / "msg").is_dir() and (site / "flashocc_ros" / "config.py").is_file()
    env = dict(os.environ)
    env["PYTHONPATH"] = str(site)
    env["LD_LIBRARY_PATH"] = os.pathsep.join([str(install_space / "lib"), env.get("LD_LIBRARY_PATH", "")])
    env["AMENT_PREFIX_PATH"] = os.pathsep.join([str(install_space), sys.prefix])
    code = (
        "import flashocc_ros, flashocc_ros.msg as m, flashocc_ros.config as c;"
        "p = m.PanopticOccupancy(); p.semantic.labels = bytes(c.OCC_GRID.num_voxels);"
        "assert len(p.semantic.labels) == 640000;"
        "print(flashocc_ros.__file__); print(m.__file__)"
    )
    # Run from an empty directory so the repository checkout cannot be imported by accident.
    res = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    module_file, msg_file = res.stdout.split()[-2:]
    assert Path(module_file).is_relative_to(site), module_file
    assert Path(msg_file).is_relative_to(site), msg_file
    assert sysconfig.get_paths()  # interpreter sanity
