"""thorbis-runbook: a PostgreSQL schema-migration runbook kit for the Thorbis Business OS schema.

The apply path imports no pandas, matplotlib or Jupyter: keep this module's imports light.
"""

from __future__ import annotations

from .errors import (
    CircuitOpen,
    ConfigError,
    ConfirmationRequired,
    ConnectionFailed,
    LockBusy,
    MigrationFailed,
    MigrationFileError,
    PlanBlocked,
    RunbookError,
    SeedError,
)

__version__ = "0.1.0"
__all__ = [
    "CircuitOpen",
    "ConfigError",
    "ConfirmationRequired",
    "ConnectionFailed",
    "LockBusy",
    "MigrationFailed",
    "MigrationFileError",
    "PlanBlocked",
    "RunbookError",
    "SeedError",
    "__version__",
]
