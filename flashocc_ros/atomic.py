"""Atomic file writes, in one place: write to a temporary file beside the target, then rename it over the target.
A reader never sees a half-written file, and a failed write leaves the old file (or none) and no temporary."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np


def temp_path_beside(path: str | Path, keep_suffix: bool = False) -> Path:
    """A fresh temporary file in `path`'s folder (created): ``.<name>.XXXX.tmp``, or with `keep_suffix`
    ``.<stem>.XXXX.partial<suffix>`` for writers that pick the format from the suffix. The caller renames it over
    `path` or removes it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if keep_suffix:
        prefix, suffix = f".{path.stem}.", f".partial{path.suffix}"
    else:
        prefix, suffix = f".{path.name}.", ".tmp"
    fd, name = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=path.parent)
    os.close(fd)
    return Path(name)


def atomic_write(path: str | Path, write: Callable[[Path], None], keep_suffix: bool = False) -> Path:
    """Call ``write(tmp)`` on a temporary file beside `path` (see `temp_path_beside`), then rename it to `path`."""
    path = Path(path)
    tmp = temp_path_beside(path, keep_suffix)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def atomic_save_npz(path: str | Path, arrays: dict[str, np.ndarray], compressed: bool = False) -> Path:
    """`arrays` as an .npz file (np.savez / np.savez_compressed), written atomically."""
    save = np.savez_compressed if compressed else np.savez

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            save(f, **arrays)

    return atomic_write(path, write)


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` still runs (its unfinished output, e.g. a ``.partial-*`` folder named after it, is
    still being written); a process of another user counts as alive."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
