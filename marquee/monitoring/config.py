"""Monitoring settings (``monitor:`` in the config file)."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class MonitorConfig:
    pass
