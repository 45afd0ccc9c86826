"""Surrogate submissions: the folder format, its loading (no code execution), ensembles and seed groups."""

from surrogates.submission import (
    CONFIG_NAME,
    FORMAT_VERSION,
    WEIGHTS_NAME,
    Ensemble,
    SubmissionError,
    Surrogate,
    SurrogateConfig,
    load_surrogate,
    read_config,
    save_group,
    save_surrogate,
)

__all__ = [
    "CONFIG_NAME",
    "FORMAT_VERSION",
    "WEIGHTS_NAME",
    "Ensemble",
    "SubmissionError",
    "Surrogate",
    "SurrogateConfig",
    "load_surrogate",
    "read_config",
    "save_group",
    "save_surrogate",
]
