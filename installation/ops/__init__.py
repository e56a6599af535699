"""Unattended operation: show state on disk, opening hours, the health endpoint, systemd notifications, logging
and screen blanking. Each part stands alone with a small API; the runtime wires them into its loop.
"""

from .display import inhibit_blanking
from .health import HealthServer, HealthSettings, MemoryWatch, Trend, eta_to_limit_s, memory_limit_mb, vram_mb
from .logs import LogSettings, setup_logging
from .notify import Notifier
from .schedule import Schedule, ScheduleSettings
from .state import STATE_VERSION, StateKeeper, StateSettings, load_state, save_state

__all__ = [
    "HealthServer", "HealthSettings", "LogSettings", "MemoryWatch", "Notifier", "STATE_VERSION", "Schedule",
    "ScheduleSettings", "StateKeeper", "StateSettings", "Trend", "eta_to_limit_s", "inhibit_blanking", "load_state",
    "memory_limit_mb", "save_state", "setup_logging", "vram_mb",
]
