"""The records the write routes accept and the stores keep: an interaction and a quiz answer."""

from __future__ import annotations

import dataclasses

from marquee.data import contract as c


@dataclasses.dataclass(frozen=True)
class Event:
    """One accepted interaction, typed as the contract's interactions row."""

    user_id: int
    item_id: int
    timestamp: int  # UTC seconds
    event: str  # contract.EVENTS
    watch_seconds: float
    device: str  # contract.DEVICES
    position: int | None = None
    rating: float | None = None
    # The exposure columns (contract.EXPOSURE_COLUMNS) when the client sent them: the page a
    # watch came from, the experiment and arm it names.
    page_id: str | None = None
    experiment: str | None = None
    arm: str | None = None

    @property
    def is_watch(self) -> bool:
        return self.event == c.EVENT_WATCH

    def to_row(self) -> dict[str, object]:
        """The interactions row, keyed by the contract's column names (the exposure columns
        only when set)."""
        row = {c.USER_ID: self.user_id, c.ITEM_ID: self.item_id, c.TIMESTAMP: self.timestamp,
               c.EVENT: self.event, c.POSITION: self.position,
               c.WATCH_SECONDS: self.watch_seconds, c.DEVICE: self.device, c.RATING: self.rating}
        for name in c.EXPOSURE_COLUMNS:
            if getattr(self, name) is not None:
                row[name] = getattr(self, name)
        return row


@dataclasses.dataclass(frozen=True)
class Onboarding:
    """A user's answer to the onboarding quiz (``POST /v1/users/{id}/onboarding``): the genres
    picked, in order. Stores take it through ``record_event`` like an interaction."""

    user_id: int
    genres: tuple[str, ...]
    timestamp: int  # UTC seconds

    def to_json(self) -> dict[str, object]:
        return {c.USER_ID: self.user_id, c.ONBOARDING_GENRES: list(self.genres),
                c.TIMESTAMP: self.timestamp}
