"""Where TransferBench keeps its state. ``TRANSFERBENCH_HOME`` (default ``~/.transferbench``) holds:

leaderboard/   the local leaderboard, one JSON record per submission (the embedded default store)
weights/       downloaded target weights, verified by sha256
demo/          data and models of the offline smoke protocol
"""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    return Path(os.environ.get("TRANSFERBENCH_HOME", Path.home() / ".transferbench")).expanduser()


def leaderboard_dir() -> Path:
    return home() / "leaderboard"


def weights_cache() -> Path:
    return home() / "weights"


OFFLINE_VARS = ("TRANSFERBENCH_OFFLINE", "HF_HUB_OFFLINE")


def offline_var() -> str | None:
    """The first of ``OFFLINE_VARS`` that is set to a true value, if any."""
    return next((v for v in OFFLINE_VARS if env_flag(v)), None)


def offline() -> bool:
    """True when downloads are forbidden (air-gapped sites): TRANSFERBENCH_OFFLINE or HF_HUB_OFFLINE."""
    return offline_var() is not None


def env_flag(name: str) -> bool:
    """Truthy environment variable, with the values huggingface_hub accepts (1, true, yes, on)."""
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")
