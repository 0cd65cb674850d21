"""One source for every setting: RunConfig's fields (dmaml.config) hold each setting's default,
help, minimum and choices; the workflow schema's `train:` section and docs/design.md's settings
table must agree with them."""

from __future__ import annotations

import dataclasses
import re

import pytest
import yaml

from dmaml.config import FIELDS, RunConfig

from .conftest import ROOT

SCHEMA = yaml.safe_load((ROOT / "workflow/schemas/config.schema.yaml").read_text())
TRAIN = SCHEMA["properties"]["train"]["properties"]
WORKFLOW_ONLY = {"seeds"}  # the list form of `seed`, a grid key


def default(name: str):
    f = FIELDS[name]
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


def test_every_schema_train_key_is_a_run_setting():
    assert set(TRAIN) - WORKFLOW_ONLY <= set(FIELDS), set(TRAIN) - WORKFLOW_ONLY - set(FIELDS)


@pytest.mark.parametrize("name", sorted(set(TRAIN) - WORKFLOW_ONLY))
def test_the_schema_agrees_with_the_run_setting(name):
    spec, meta = TRAIN[name], FIELDS[name].metadata
    assert spec.get("enum") == (list(meta["choices"]) if meta["choices"] else None)
    if meta["minimum"] is not None:
        assert spec.get("minimum") == meta["minimum"]
    if "default" in spec:
        assert spec["default"] == default(name)


def test_every_setting_has_help_and_a_line_in_the_design_notes():
    section = (ROOT / "docs/design.md").read_text().split("## Run settings", 1)[1]
    section = section.split("\n## ", 1)[0]
    named = set(re.findall(r"`([a-z_]+)`", section))
    for name, f in FIELDS.items():
        assert f.metadata["help"], name
        assert name in named, f"docs/design.md, Run settings: add `{name}`"


def test_a_list_default_is_not_shared_between_configs():
    a, b = RunConfig(), RunConfig()
    a.checkpoint_steps.append(1)
    assert b.checkpoint_steps == default("checkpoint_steps")
