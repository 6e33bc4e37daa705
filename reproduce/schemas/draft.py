"""`python -m reproduce.schemas.draft WORK`: print a draft schema module for a work from its YAML files.

For updating `reproduce/schemas/<work>.py` after the work's YAML changed: composes the config at every scale
(and preset) without checking it, merges the keys, and prints one dataclass per block with types guessed from
the values (a key that is null everywhere becomes `Any`). Review the draft (comments, free-form dicts, defaults
the code falls back to) before replacing the module; `tests/test_schemas.py` then checks it.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

CONF = Path(__file__).resolve().parents[1] / "conf"
BASE_KEYS = {"seed", "dry_run", "results_dir", "per_job_results", "tracking", "launcher", "slurm"}


def composed(work: str) -> list[dict[str, Any]]:
    """The work's config at every scale and preset, unresolved interpolations kept, nothing checked."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    from reproduce.app import _register_base

    _register_base()  # the shared keys only, open to any other key
    conf = CONF / work
    cases = []
    for scale in sorted(p.stem for p in (conf / "scale").glob("*.yaml")):
        cases.append([f"scale={scale}"])
        cases += [[f"scale={scale}", f"+preset={p.stem}"] for p in sorted((conf / "preset").glob("*.yaml"))]
    out = []
    for overrides in cases:
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
            out.append(OmegaConf.to_container(compose(config_name="config", overrides=overrides), resolve=False))
    GlobalHydra.instance().clear()
    return out


def _type(values: list[Any]) -> str:
    values = [v for v in values if v is not None]
    if not values or any(isinstance(v, str) and v.startswith("${") for v in values):
        return "Any"
    kinds = {type(v) for v in values}
    if kinds <= {bool}:
        return "bool"
    if kinds <= {int}:
        return "int"
    if kinds <= {int, float}:
        return "float"
    if kinds <= {str}:
        return "str"
    if kinds <= {list}:
        return f"list[{_type([x for v in values for x in v])}]"
    if kinds <= {dict}:
        return f"dict[str, {_type([x for v in values for x in v.values()])}]"
    return "Any"


def _class_name(path: list[str]) -> str:
    return "".join(p.title().replace("_", "") for p in path) + "Config"


def draft(work: str) -> str:
    configs = composed(work)
    classes: list[str] = []

    def block(path: list[str], nodes: list[dict[str, Any]]) -> str:
        keys: list[str] = []
        for n in nodes:
            keys += [k for k in n if k not in keys and not (not path and k in BASE_KEYS)]
        lines = [
            f"@dataclass\nclass {_class_name(path) if path else work.title() + 'Config'}"
            f"({'BaseConfig' if not path else ''}):".replace("()", "")
        ]
        for k in keys:
            values = [n.get(k) for n in nodes]
            present = [v for v in values if v is not None]
            if present and all(isinstance(v, dict) for v in present) and k != "compressors":
                sub = block([*path, k], present)
                optional = len(present) < len(nodes)
                typ = f"{sub} | None" if optional else sub
                default = "None" if optional else f"field(default_factory={sub})"
            else:
                typ = _type(values)
                default = repr(present[0]) if present and not isinstance(present[0], (list, dict)) else "None"
                if present and isinstance(present[0], (list, dict)):
                    default = f"field(default_factory=lambda: {present[0]!r})"
                if len(present) < len(values):  # absent or null at some scale
                    typ, default = (typ if typ == "Any" else f"{typ} | None"), "None"
            lines.append(f"    {k}: {typ} = {default}")
        classes.append("\n".join(lines))
        return _class_name(path) if path else work.title() + "Config"

    block([], configs)
    head = (
        f'"""`reproduce/conf/{work}/` (drafted by `python -m reproduce.schemas.draft {work}`)."""\n\n'
        "from dataclasses import dataclass, field\nfrom typing import Any\n\n"
        "from reproduce.schemas.base import BaseConfig\n"
    )
    return head + "\n\n" + "\n\n\n".join(classes) + "\n"


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__.strip().splitlines()[0])
    print(draft(sys.argv[1]))
