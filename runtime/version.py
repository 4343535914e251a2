"""The installed kafkashake version, recorded in checkpoints and metrics."""
from __future__ import annotations

from importlib import metadata

try:
    VERSION = metadata.version("kafkashake")
except metadata.PackageNotFoundError:  # running from a source checkout
    VERSION = "0.0.0+source"
