"""A circuit breaker per model: a failing backend is not called again until a probe succeeds.

After ``failure_threshold`` consecutive failures it opens; while open, calls are refused at once
(the caller falls back); after ``reset_seconds`` one probe call is let through (half-open);
success closes it, failure re-opens.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


class CircuitOpen(RuntimeError):
    pass


class CircuitBreaker:
    def __init__(self, failure_threshold: int = 5, reset_seconds: float = 10.0,
                 clock: Callable[[], float] = time.monotonic):
        self.failure_threshold = failure_threshold
        self.reset_seconds = reset_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._failures = 0
        self._opened_at: float | None = None
        self._probing = False

    @property
    def state(self) -> str:
        with self._lock:
            return self._state()

    def _state(self) -> str:
        if self._opened_at is None:
            return CLOSED
        if self._clock() - self._opened_at >= self.reset_seconds:
            return HALF_OPEN
        return OPEN

    def call(self, fn: Callable, *args, **kwargs):
        with self._lock:
            state = self._state()
            if state == OPEN or (state == HALF_OPEN and self._probing):
                raise CircuitOpen(
                    f"circuit open after {self._failures} consecutive failures; "
                    f"next probe in {self.reset_seconds - (self._clock() - self._opened_at):.1f} s")
            if state == HALF_OPEN:
                self._probing = True
        try:
            result = fn(*args, **kwargs)
        except Exception:
            with self._lock:
                self._failures += 1
                self._probing = False
                if self._failures >= self.failure_threshold or self._opened_at is not None:
                    self._opened_at = self._clock()
            raise
        with self._lock:
            self._failures = 0
            self._opened_at = None
            self._probing = False
        return result
