"""Every work's YAML config, at every scale (and preset), composes against its schema in reproduce/schemas/,
and every key a schema declares is set by some YAML file of the work: a key added, renamed or dropped on
one side only fails here."""

import dataclasses
import types
import typing
from pathlib import Path

import pytest
import yaml

from reproduce import app
from reproduce.schemas import WORK_SCHEMAS, schema_for
from reproduce.schemas.base import BaseConfig

CONF = Path(app.__file__).parent / "conf"


def _compose(work: str, overrides: list[str]):
    app.register_schema(work)
    return _compose_registered(work, overrides)


def _compose_registered(work: str, overrides: list[str]):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF / work), version_base="1.3"):
            cfg = compose(config_name="config", overrides=overrides)
    finally:
        GlobalHydra.instance().clear()
    OmegaConf.resolve(cfg)
    return cfg


def _cases():
    for work in WORK_SCHEMAS:
        for scale in sorted(p.stem for p in (CONF / work / "scale").glob("*.yaml")):
            yield work, [f"scale={scale}"]
            for preset in sorted(p.stem for p in (CONF / work / "preset").glob("*.yaml")):
                yield work, [f"scale={scale}", f"+preset={preset}"]


@pytest.mark.parametrize("work, overrides", list(_cases()), ids=lambda v: v if isinstance(v, str) else " ".join(v))
def test_every_scale_composes_against_the_schema(work, overrides):
    from omegaconf import OmegaConf

    cfg = _compose(work, overrides)
    assert OmegaConf.get_type(cfg) is schema_for(work)
    assert app.added_keys(cfg) == []
    OmegaConf.to_object(cfg)  # every value typed, nothing missing


def _dataclass_of(tp):
    if dataclasses.is_dataclass(tp):
        return tp
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        return next((a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)), None)
    return None


def _schema_leaves(cls, prefix=""):
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        sub = _dataclass_of(hints[f.name])
        if sub is not None:
            yield from _schema_leaves(sub, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}"


def _yaml_keys(node, prefix=""):
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "defaults" and not prefix:
                continue
            yield from _yaml_keys(v, f"{prefix}{k}.")
    else:
        yield prefix.rstrip(".")


def _keys_set_by_yaml(work: str) -> set[str]:
    keys = set()
    for path in sorted((CONF / work).rglob("*.yaml")):
        text = path.read_text()
        rel = path.relative_to(CONF / work)
        package = "" if rel.parent == Path(".") or "@package _global_" in text else f"{rel.parent.as_posix()}."
        keys |= set(_yaml_keys(yaml.safe_load(text) or {}, package))
    return keys


@pytest.mark.parametrize("work", list(WORK_SCHEMAS))
def test_every_schema_key_is_set_by_the_works_yaml(work):
    base = set(_schema_leaves(BaseConfig)) - {"scale.name"}
    keys = _keys_set_by_yaml(work)
    unset = []
    for leaf in set(_schema_leaves(schema_for(work))) - base:
        parts = leaf.split(".")
        # a key set by YAML covers everything below it (a whole block, or an interpolation such as ${scale.x});
        # a free-form dict is covered by any key inside it
        above = any(".".join(parts[:i]) in keys for i in range(1, len(parts) + 1))
        if not above and not any(k.startswith(leaf + ".") for k in keys):
            unset.append(leaf)
    assert not unset, f"reproduce/schemas/{work}.py declares keys no YAML of {work} sets: {sorted(unset)}"


def test_a_key_the_schema_lacks_fails_to_compose():
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException):
        _compose("amp", ["scale=smoke", "no_such_key=1"])
    with pytest.raises(ConfigCompositionException):
        _compose("mpcformer", ["scale=smoke", "train.batch_size=eight"])


@pytest.mark.parametrize("work", list(WORK_SCHEMAS))
def test_a_drafted_schema_composes_every_scale(work):
    """`python -m reproduce.schemas.draft WORK` (for updating a schema after the YAML changed) drafts a module
    that already composes every scale."""
    from omegaconf import OmegaConf

    from reproduce.schemas.draft import draft

    namespace: dict = {}
    exec(compile(draft(work), f"<draft of {work}>", "exec"), namespace)
    schema = namespace[f"{work.title()}Config"]
    try:
        for w, overrides in _cases():
            if w == work:
                app.register_schema(work, schema)
                cfg = _compose_registered(work, overrides)
                assert app.added_keys(cfg) == [] and OmegaConf.get_type(cfg) is schema
    finally:
        app.register_schema(work)
