"""A request's time budget: what is left for a stage, and the check after it."""

from __future__ import annotations

from collections.abc import Callable

from serving.models.errors import MODEL_ERRORS, DeadlineExceeded


class Budget:
    """``deadline_ms`` for the whole request from ``start`` (on ``clock``, seconds)."""

    expected_errors = MODEL_ERRORS

    def __init__(self, deadline_ms: float, clock: Callable[[], float]):
        self.deadline_ms, self._clock = deadline_ms, clock
        self.start = clock()

    def left_ms(self) -> float:
        return max(0.0, self.deadline_ms - (self._clock() - self.start) * 1000)

    def left_s(self, stage_ms: float) -> float:
        """Seconds a stage may take: its own deadline or what is left, whichever is less."""
        return min(stage_ms, self.left_ms()) / 1000

    def check(self, stage: str, stage_start: float, stage_ms: float) -> None:
        """DeadlineExceeded when the stage took longer than ``stage_ms`` or the request is
        over budget."""
        now = self._clock()
        if (now - stage_start) * 1000 > stage_ms or (now - self.start) * 1000 > self.deadline_ms:
            raise DeadlineExceeded(
                f"{stage} took {(now - stage_start) * 1000:.0f} ms (stage deadline "
                f"{stage_ms:.0f} ms), the request {(now - self.start) * 1000:.0f} ms so far "
                f"(budget {self.deadline_ms:.0f} ms)")
