"""`snakemake --report` on a tiny sine grid (Table 1, Figures 2, 4 and 7): the report command of the
README works once its targets are built, shows each table's content beside the paper's, gives
each figure its own caption and shows the configuration its home page promises; the reproduction
summary is made from the tables named in the config, and the paper's values re-make the tables
only."""

from __future__ import annotations

import base64
import json
import re
import textwrap

import pytest
import yaml

from .test_workflow import copy_workflow, planned, snakemake

TARGETS = ["table1", "fig2", "fig4", "fig7", "results/tables/reproduction.md"]
CONFIG = ["--config", "train={steps: 40, eval_every: 10, val_tasks: 5, test_tasks: 20, seeds: [0], "
          "checkpoint_steps: [40]}",
          "experiments={table1: {workers: [1, 2], seeds: [0], test_shots: [5]}, "
          "fig4: {dataset: sine, workers: 1, steps_per_run: [1, 2], steps: 40, eval_every: 10}, "
          # Figure 7 on fig4's runs: n = 2 by merge, n = 1 (fig4's) as the reference
          "fig7: {from: fig4, workers: 2, steps_per_run: 1, merge: [mean, weighted], "
          "also: [fig7_reference]}, fig7_reference: {from: fig4, steps_per_run: 1}}",
          "reproduction=[table1]"]


def report_entries(page: str) -> tuple[dict, str]:
    """The results (path -> caption, file contents) and the home text of a report page."""
    start = page.index("var results = ", page.index('<script id="results">'))
    results, _ = json.JSONDecoder().raw_decode(page[start + len("var results = "):])
    start = page.index("var workflow_desc = ")
    home, _ = json.JSONDecoder().raw_decode(page[start + len("var workflow_desc = "):])
    return results, home


@pytest.mark.slow
def test_report_shows_tables_captions_and_config(tmp_path):
    flow = copy_workflow(tmp_path / "flow")
    built = snakemake(flow, *TARGETS, *CONFIG)
    assert built.returncode == 0, built.stderr[-4000:]
    made = snakemake(flow, "--report", "report.html", *TARGETS, *CONFIG)
    assert made.returncode == 0, made.stderr[-4000:]
    results, home = report_entries((flow / "report.html").read_text())

    # each table's content, as the HTML entry the report displays
    page = base64.b64decode(results["results/tables/table1.html"]["data_uri"].split(",")[-1])
    assert len(re.findall(r"<td>[\d.]+ ± [\d.]+</td>", page.decode())) == 2  # n = 1, 2; K = 5
    # beside the paper's: n = 1 is in its Table 1, but after 10,000 steps, not 40: no verdict,
    # and no row of the paper's values
    assert '<tr class="paper">' not in page.decode()
    assert "The paper has no value for any cell of this table" in page.decode()
    assert "results/tables/table1.csv" in results

    # each figure its own words, and no list printed in a caption
    captions = {name: re.sub(r"<[^>]+>", "", entry["caption"]) for name, entry in results.items()}
    assert captions["results/figures/fig2.png"].startswith("Figure 2: sine regression")
    assert captions["results/figures/fig4.png"].startswith("Figure 4: validation")
    assert "Figure 2" not in captions["results/figures/fig4.png"]
    figure7 = captions["results/figures/fig7.png"]
    assert figure7.startswith("Figure 7 (beyond the paper): does a smarter merge stop")
    assert "from: fig4" in figure7 and "With the runs of fig7_reference" in figure7
    assert not any(re.search(r"\[\d", caption) for caption in captions.values()), captions

    # the home text shows the configuration it promises, as the workflow resolved it
    shown = re.search(r'<pre class="literal-block">\n(.*?)</pre>', home, re.S)
    assert shown, home
    config = yaml.safe_load(textwrap.dedent(shown[1].replace("&quot;", '"')))
    assert config["train"]["steps"] == 40 and config["experiments"]["fig4"]["dataset"] == "sine"
    assert config["experiments"]["table2"]["dataset"] == "omniglot"

    # the reproduction summary of the tables named in `reproduction:`
    text = (flow / "results/tables/reproduction.md").read_text()
    assert "| table1 | 2 | 0 | 0 | 0 | 0 |" in text and "## table1: sine" in text
    assert "the paper has no value for n = 2; step = 40." in text  # its Table 1: 10,000 steps
    assert "Unlike the paper (its Table 6): 20 test tasks (paper 600)." in text

    # a corrected paper value re-makes the tables and the summary, and no training
    paper = flow / "workflow/paper/tables.csv"
    paper.write_text(paper.read_text() + "# a corrected value\n")
    assert planned(snakemake(flow, "-n", *TARGETS, *CONFIG)) == {
        "make_table1": 1, "make_reproduction": 1, "table1": 1}  # table1: the named target
