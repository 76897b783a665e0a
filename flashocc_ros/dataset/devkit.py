"""The nuScenes devkit, opened in one place: one clear error for a wrong dataroot or version."""

from __future__ import annotations

from pathlib import Path


def load_nuscenes(dataroot: str | Path, version: str, error: type[Exception] = ValueError):
    """The devkit's NuScenes object; `error` (the caller's error class) names the problem with the dataroot,
    the version or the tables."""
    root = Path(dataroot)
    if not root.is_dir():
        raise error(f"--dataroot {root}: no such directory")
    if not (root / version).is_dir():
        found = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name.startswith("v1.0"))
        raise error(
            f"--version {version}: nuScenes tables not found: {root / version} does not exist "
            f"(found: {', '.join(found) or 'none'}; check --dataroot and --version)"
        )
    from nuscenes.nuscenes import NuScenes

    try:
        return NuScenes(version=version, dataroot=str(root), verbose=False)
    except (AssertionError, FileNotFoundError, KeyError, ValueError) as exc:
        raise error(f"{root / version}: cannot load the nuScenes tables ({exc})") from exc


def split_scene_names(split: str, error: type[Exception] = ValueError) -> list[str]:
    """Scene names of a devkit split (train, val, test, mini_train, mini_val, ...); `error` names an unknown split."""
    from nuscenes.utils.splits import create_splits_scenes

    splits = create_splits_scenes()
    if split not in splits:
        raise error(f"--split {split}: unknown split; known: {', '.join(sorted(splits))}")
    return list(splits[split])
