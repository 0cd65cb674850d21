"""The README's pipeline picture (docs/rulegraph.svg) is the workflow's own rule graph: the same
rules and the same arrows as `snakemake --rulegraph` gives today (docs/rulegraph.md re-makes it)."""

from __future__ import annotations

import html
import re

from .conftest import ROOT
from .test_workflow import copy_workflow, snakemake

# The command of docs/rulegraph.md, less its `| dot -Tsvg`.
COMMAND = ["--rulegraph", "--configfile", "presets/quick.yaml",
           "--config", "miniimagenet={source: .}", "--", "all"]


def rules_and_arrows(ids: dict[str, str], arrows: list[tuple[str, str]]) -> tuple[set, set]:
    """Rule names, and (from, to) pairs of rule names, from node ids and id pairs."""
    return set(ids.values()), {(ids[a], ids[b]) for a, b in arrows}


def from_dot(text: str) -> tuple[set, set]:
    ids = dict(re.findall(r'^\s*(\d+)\[label = "(\w+)"', text, re.M))
    return rules_and_arrows(ids, re.findall(r"^\s*(\d+) -> (\d+)", text, re.M))


def from_svg(text: str) -> tuple[set, set]:
    text = html.unescape(text)
    ids = dict(re.findall(r'class="node">\s*<title>(\d+)</title>.*?<text[^>]*>(\w+)</text>', text,
                          re.S))
    return rules_and_arrows(ids, re.findall(r'class="edge">\s*<title>(\d+)->(\d+)</title>', text))


def test_the_committed_picture_is_todays_rule_graph(tmp_path):
    graph = snakemake(copy_workflow(tmp_path / "flow"), *COMMAND)
    assert graph.returncode == 0, graph.stderr[-3000:]
    rules, arrows = from_dot(graph.stdout)
    assert "train_dmaml" in rules and ("train_dmaml", "make_table") in arrows
    assert from_svg((ROOT / "docs" / "rulegraph.svg").read_text()) == (rules, arrows), (
        "docs/rulegraph.svg is out of date: re-make it with the command in docs/rulegraph.md")
    assert " ".join(COMMAND) in (ROOT / "docs" / "rulegraph.md").read_text().replace('"', "")
