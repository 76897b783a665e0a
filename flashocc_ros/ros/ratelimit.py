"""Rate-limited logging (no ROS import): one line per kind of problem per interval, with a count of the lines
suppressed in between. Used by the node for every warning about its inputs."""

from __future__ import annotations

import re
import threading
import time
from typing import Any


def problem_key(text: str) -> str:
    """Warnings that differ only in numbers (stamps, ages, sizes) share one rate limit."""
    return re.sub(r"[0-9]+(\.[0-9]*)?", "#", text)


class RateLimitedLog:
    """One log line per key per interval; counts how many were suppressed in between."""

    def __init__(self, logger: Any, interval_s: float):
        self._logger = logger
        self.interval_s = interval_s
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}
        self._lock = threading.Lock()

    # Each severity is logged from its own line: rclpy refuses a call site whose severity changes between calls
    # ("Logger severity cannot be changed between calls"), which killed the worker on its first error after a warning.
    def warn(self, key: str, text: str) -> None:
        line = self._due(key, text)
        if line is not None:
            self._logger.warning(line)

    def error(self, key: str, text: str) -> None:
        line = self._due(key, text)
        if line is not None:
            self._logger.error(line)

    def _due(self, key: str, text: str) -> str | None:
        """The line to log now, or None while `key` is rate-limited (counted as suppressed)."""
        now = time.monotonic()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self.interval_s:
                self._suppressed[key] = self._suppressed.get(key, 0) + 1
                return None
            n = self._suppressed.pop(key, 0)
            self._last[key] = now
        return text + (f" ({n} more like this suppressed)" if n else "")
