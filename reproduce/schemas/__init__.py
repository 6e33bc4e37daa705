"""Structured-config schemas (dataclasses) of the reproductions, one module per work.

`reproduce.app.main` stores a work's schema in Hydra's ConfigStore as `repro_base`, the first entry of the
work's defaults list (`reproduce/conf/<work>/config.yaml`); the YAML files are merged onto it, so a key the
schema lacks, or a value of the wrong type, fails when the config is composed (on the command line too).
When a work's YAML gains, renames or drops a key, change its module here (`python -m reproduce.schemas.draft WORK`
prints a draft from the YAML files); `tests/test_schemas.py` composes every work at every scale against its
schema, so a mismatch fails there first.
"""

from __future__ import annotations

import importlib

from .base import BaseConfig

WORK_SCHEMAS = {
    "amp": "AmpConfig",
    "compression": "CompressionConfig",
    "dcvae": "DcvaeConfig",
    "mpcformer": "MpcformerConfig",
}


def schema_for(work: str) -> type[BaseConfig]:
    """The schema dataclass of a work (`reproduce.schemas.<work>`)."""
    if work not in WORK_SCHEMAS:
        raise KeyError(f"no schema for work {work!r}; add reproduce/schemas/{work}.py and list it in WORK_SCHEMAS")
    return getattr(importlib.import_module(f"{__name__}.{work}"), WORK_SCHEMAS[work])
