"""The paper's values beside ours: the transcribed CSV, the verdicts and the matching of cells."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from dmaml import config
from dmaml.cli import main
from dmaml.errors import ReportError
from dmaml.report import caveats, paper

ROOT = Path(__file__).resolve().parents[1]
PAPER = ROOT / "workflow" / "paper" / "tables.csv"


NAN = float("nan")
HALF = 0.005  # the paper prints 2 decimals: 0.97 stands for [0.965, 0.975)


@pytest.mark.parametrize("seeds, theirs, metric, rounding, expected", [
    # one seed, the paper's ± a 95% interval: the test on the difference, sqrt(ci^2 + paper^2)
    ([(0.80, 0.01)], (0.81, 0.006), "accuracy", 0, "="),
    ([(0.83, 0.01)], (0.81, 0.006), "accuracy", 0, "better"),    # 0.02 > 0.0117
    ([(0.823, 0.01)], (0.81, 0.006), "accuracy", 0, "better"),   # the intervals overlap, yet
    ([(0.70, 0.01)], (0.81, 0.006), "accuracy", 0, "worse"),
    ([(0.30, 0.04)], (0.52, 0.04), "mse", 0, "better"),          # lower MSE is better
    ([(0.70, 0.04)], (0.52, 0.04), "mse", 0, "worse"),
    # rounding: 0.97 stands for [0.965, 0.975)
    ([(0.975, 0.001)], (0.97, 0.001), "accuracy", 0, "better"),
    ([(0.975, 0.001)], (0.97, 0.001), "accuracy", HALF, "="),
    ([(0.9755, 0.001)], (0.97, paper.paper_interval("omniglot", 0.002)), "accuracy", HALF, "="),
    ([(0.979, 0.001)], (0.97, 0.002), "accuracy", HALF, "better"),
    # a standard error widened to 95%: 0.017 is within sqrt(0.008^2 + (1.96 * 0.006)^2) + 0.005
    ([(0.827, 0.008)], (0.81, 0.006), "accuracy", HALF, "better"),
    ([(0.827, 0.008)], (0.81, paper.paper_interval("omniglot", 0.006)), "accuracy", HALF, "="),
    # one seed against three: a seed of ours consistent with the paper makes the cell =
    ([(0.90, 0.01)], (0.86, 0.006), "accuracy", HALF, "better"),
    ([(0.90, 0.01), (0.865, 0.01), (0.91, 0.01)], (0.86, 0.006), "accuracy", HALF, "="),
    ([(0.90, 0.01), (0.89, 0.01), (0.91, 0.01)], (0.86, 0.006), "accuracy", HALF, "better"),
    # seeds on both sides of the paper's value, none consistent with it: between them, =
    ([(0.80, 0.005), (0.90, 0.005)], (0.85, 0.002), "accuracy", HALF, "="),
    # diverged seeds have no score: left out; all diverged, nothing to compare
    ([(NAN, NAN), (0.70, 0.01)], (0.81, 0.006), "accuracy", HALF, "worse"),
    ([(NAN, NAN), (0.81, 0.01)], (0.81, 0.006), "accuracy", HALF, "="),
    ([(NAN, NAN)], (0.81, 0.006), "accuracy", HALF, "-"),
    ([(0.80, 0.01)], (NAN, NAN), "accuracy", HALF, "-"),          # no paper value
])
def test_verdict_on_hand_made_intervals(seeds, theirs, metric, rounding, expected):
    assert paper.verdict(seeds, *theirs, metric, rounding) == expected


def test_the_papers_omniglot_interval_is_read_as_a_standard_error():
    assert paper.paper_interval("omniglot", 0.005) == pytest.approx(0.0098)
    assert paper.paper_interval("miniimagenet", 0.005) == 0.005
    assert paper.paper_interval("sine", 0.1) == 0.1


def test_binomial_floor_of_a_95_percent_interval():
    # 5-way 1-shot, one query per class: 600 tasks of 5 answers at p = 0.8
    assert paper.binomial_floor(0.8, 600, 5) == pytest.approx(1.96 * (0.16 / 3000) ** 0.5)
    cells = pd.DataFrame({"table": "t", "dataset": ["omniglot", "miniimagenet"], "ways": 5,
                          "shots": 1, "metric": "accuracy", "mean": ["0.8", "0.5"],
                          "ci95": ["0.007", "0.006"]})
    ratios = paper.floor_ratios(cells)
    assert ratios["answers"].tolist() == [5, 75]  # k' of the paper's Table 6: 1 and 15
    assert ratios["ratio"].tolist() == pytest.approx(
        [0.007 / paper.binomial_floor(0.8, 600, 5), 0.006 / paper.binomial_floor(0.5, 600, 75)])


def test_the_papers_omniglot_intervals_are_below_the_floor():
    """The evidence for reading the paper's Omniglot ± as a standard error: below the floor of a
    95% interval in 102 of 108 cells, at a median near 1/1.96 for 1-shot; miniImageNet above."""
    summary = paper.floor_summary(paper.load_paper(PAPER)).set_index(["table", "shots"])
    omniglot = summary.loc[["table2", "table3", "table4"]]
    assert omniglot["cells"].sum() == 108 and omniglot["below"].sum() == 102
    assert summary.loc[("table2", 1), "median"] == pytest.approx(0.47, abs=0.005)
    assert summary.loc[("table4", 1), "median"] == pytest.approx(0.49, abs=0.005)
    assert summary.loc[("table3", 5), "median"] == pytest.approx(0.33, abs=0.005)
    assert (summary.loc["table5", "below"] == 0).all()
    assert summary.loc["table5", "median"].tolist() == pytest.approx([1.35, 1.30], abs=0.005)


def test_transcribed_tables_have_the_papers_shape():
    cells = paper.load_paper(PAPER)
    assert PAPER.read_text().startswith("# ") and "garbled" in PAPER.read_text()
    assert cells.groupby("table").size().to_dict() == {
        "table1": 12, "table2": 36, "table3": 36, "table4": 36, "table5": 24}
    one = cells[cells["table"] == "table1"]
    assert set(one["metric"]) == {"mse"} and set(one["step"]) == {10000}
    assert set(one["K"]) == {5, 10, 20} and set(one["workers"]) == {1, 4, 16, 64}
    images = cells[cells["table"] != "table1"]
    assert set(images["metric"]) == {"accuracy"} and images["K"].isna().all()
    accuracy = images["mean"].astype(float)
    assert accuracy.between(0, 1).all() and accuracy.min() > 0.3  # fractions, not percentages
    assert (cells["ci95"].astype(float) > 0).all()
    for name, (dataset, ways, shots, steps, workers) in {
            "table2": ("omniglot", 5, {1}, {500, 1000, 2000, 4000, 8000, 10000}, {1, 2, 4, 8, 16, 32}),
            "table3": ("omniglot", 5, {5}, {500, 1000, 2000, 4000, 8000, 10000}, {1, 2, 4, 8, 16, 32}),
            "table4": ("omniglot", 20, {1}, {500, 1000, 2000, 4000, 8000, 10000}, {1, 2, 4, 8, 16, 32}),
            "table5": ("miniimagenet", 5, {1, 5}, {500, 1000, 2000}, {4, 8, 16, 32})}.items():
        t = cells[cells["table"] == name]
        assert set(t["dataset"]) == {dataset} and set(t["ways"]) == {ways}
        assert set(t["shots"]) == shots and set(t["step"]) == steps and set(t["workers"]) == workers
    # spot checks, one per table, read off the paper again
    spot = cells.set_index(["table", "shots", "workers", "step", "K"])
    assert spot.loc[("table1", 10, 16, 10000, 10), ["mean", "ci95"]].tolist() == ["0.53", "0.05"]
    assert spot.loc[("table2", 1, 32, 8000, pd.NA), ["mean", "ci95"]].tolist() == ["0.75", "0.016"]
    assert spot.loc[("table3", 5, 8, 10000, pd.NA), ["mean", "ci95"]].tolist() == ["0.72", "0.021"]
    assert spot.loc[("table4", 1, 1, 500, pd.NA), ["mean", "ci95"]].tolist() == ["0.59", "0.004"]
    assert spot.loc[("table5", 5, 32, 2000, pd.NA), ["mean", "ci95"]].tolist() == ["0.53", "0.006"]


@pytest.mark.parametrize("edit, message", [
    (lambda text: text.replace("ci95,source", "ci,source"), r"missing column\(s\) \['ci95'\]"),
    (lambda text: text.replace("0.81,0.006", "0.81,n/a"), "ci95 is not a number.*table2"),
    (lambda text: text + "table2,omniglot,5,1,1,,500,accuracy,0.8,0.01,x\n", "same cell twice"),
    (lambda text: text.replace(",mse,1.24", ",loss,1.24"), r"unknown metric\(s\) \['loss'\]"),
])
def test_a_wrong_paper_file_is_a_clear_error(tmp_path, edit, message):
    broken = tmp_path / "tables.csv"
    broken.write_text(edit(PAPER.read_text()))
    with pytest.raises(ReportError, match=f"{broken}: .*{message}"):
        paper.load_paper(broken)


def run_folder(path: Path, tests: dict[int, tuple[float, float]], steps: int = 10000,
               tasks: int = 600, val: float = 0.5, status: str = "finished", **settings) -> Path:
    """A run folder, as `dmaml train` leaves it, with these test scores per step and this final
    validation score."""
    cfg = config.load(None, {"steps": steps, "checkpoint_steps": sorted(tests), **settings})
    path.mkdir(parents=True)
    config.dump(cfg, path / "config.yaml")
    (path / "run.json").write_text(json.dumps({"status": status, "dmaml": "0", "git": "x"}))
    score = "val_acc" if cfg.dataset != "sine" else "val_loss"
    pd.DataFrame({"step": [steps], score: [val]}).to_csv(path / "metrics.csv", index=False)
    pd.DataFrame([{"step": s, "metric": "accuracy", "mean": m, "ci95": c, "tasks": tasks}
                  for s, (m, c) in tests.items()]).to_csv(path / "test.csv", index=False)
    return path


@pytest.fixture
def omniglot_runs(tmp_path) -> list[Path]:
    """Omniglot 5-way 1-shot runs: n = 1, 2 (in the paper's Table 2), n = 3 (not), each tested at
    step 500 (a column of the paper) and 50 (not)."""
    scores = {1: {50: (0.5, 0.01), 500: (0.8123, 0.0102)},    # paper 0.81 ± 0.006: =
              2: {50: (0.5, 0.01), 500: (0.9512, 0.0081)},    # paper 0.84 ± 0.006: better
              3: {50: (0.5, 0.01), 500: (0.6, 0.01)}}         # no paper n = 3
    return [run_folder(tmp_path / f"n{n}", tests, dataset="omniglot", ways=5, shots=1, workers=n)
            for n, tests in scores.items()]


def test_cells_match_the_paper_on_their_settings_and_step_only(omniglot_runs, tmp_path):
    out = tmp_path / "table2.csv"
    assert main(["table", "checkpoints", *map(str, omniglot_runs), "--out", str(out),
                 "--paper", str(PAPER), "--paper-table", "table2"]) == 0
    csv = pd.read_csv(out, dtype=str, keep_default_na=False).set_index(["workers", "step"])
    assert list(csv.columns[-6:]) == ["paper_mean", "paper_ci95", "paper_ci95_used", "difference",
                                      "seeds_compared", "verdict"]
    # the paper's Omniglot ± is a standard error: 0.006 x 1.96 is the 95% interval used
    assert csv.loc[("1", "500"), ["paper_ci95_used", "seeds", "seed_min", "seed_max",
                                  "seed_scores"]].tolist() == ["0.012", "0", "0.812", "0.812",
                                                               "0: 0.812 ± 0.010"]
    assert csv.loc[("1", "500"), ["mean", "paper_mean", "paper_ci95", "difference", "verdict"]
                   ].tolist() == ["0.812", "0.81", "0.006", "+0.00", "="]
    assert csv.loc[("2", "500"), ["paper_mean", "difference", "verdict"]].tolist() == [
        "0.84", "+0.11", "better"]
    for cell in [("1", "50"), ("2", "50"), ("3", "50"), ("3", "500")]:  # no such paper cell
        assert csv.loc[cell, ["paper_mean", "difference", "verdict"]].tolist() == ["", "", "-"]

    md = out.with_suffix(".md").read_text()
    assert "| 1 (0) | 0.500 ± 0.010 | 0.812 ± 0.010 |" in md
    assert "| paper | - | 0.81 ± 0.006 · +0.00 · = (1 seed) |" in md
    assert "| paper | - | 0.84 ± 0.006 · +0.11 · better (1 seed) |" in md
    assert md.count("| paper |") == 2  # none under n = 3: the paper has no value in its row
    assert "Against the paper: 2 of 6 cells compared: 1 =, 1 better, 0 worse." in md
    assert paper.RULE in md
    html = out.with_suffix(".html").read_text()
    assert ('<tr class="paper"><td>paper</td><td>-</td><td>0.84 ± 0.006 · +0.11 · better (1 seed)'
            '</td>') in html

    # another table of the paper (5-way 5-shot) has no cell of these 1-shot runs
    assert main(["table", "checkpoints", *map(str, omniglot_runs), "--out", str(out),
                 "--paper", str(PAPER), "--paper-table", "table3"]) == 0
    assert set(pd.read_csv(out)["verdict"]) == {"-"}


def test_paper_needs_its_table_name(omniglot_runs, tmp_path, caplog):
    out = tmp_path / "t.csv"
    assert main(["table", "checkpoints", str(omniglot_runs[0]), "--out", str(out),
                 "--paper", str(PAPER)]) == 2
    assert "--paper CSV and --paper-table NAME go together" in caplog.text and not out.exists()


def test_table1_matches_on_k_and_the_runs_last_step(tmp_path):
    """Table 1's cells are after 10,000 steps: a run of 10,000 steps is compared at K = 5 (a
    column of the paper) and not at K = 7; a run of 200 steps is never compared."""
    evals = []
    for steps in (10000, 200):
        run = run_folder(tmp_path / f"s{steps}", {}, steps=steps, dataset="sine", workers=4)
        for k, mean in ((5, 1.3), (7, 1.0)):
            evals.append(tmp_path / f"s{steps}-k{k}.json")
            evals[-1].write_text(json.dumps({"run": str(run), "shots": k, "metric": "mse",
                                             "mean": mean, "ci95": 0.1, "tasks": 600}))
    out = tmp_path / "table1.csv"
    assert main(["table", "shots", *map(str, evals), "--out", str(out), "--paper", str(PAPER),
                 "--paper-table", "table1"]) == 0
    csv = pd.read_csv(out, dtype=str, keep_default_na=False).set_index(["step", "K"])
    assert csv.loc[("10000", "5"), ["shots", "paper_mean", "difference", "verdict"]].tolist() == [
        "10", "1.02", "+0.28", "worse"]  # 1.3 ± 0.1 against 1.02 ± 0.08: higher MSE
    assert (csv.drop(("10000", "5"))["verdict"] == "-").all()
    md = out.with_suffix(".md").read_text()
    assert "| paper | 1.02 ± 0.08 · +0.28 · worse (1 seed) | - |" in md
    assert md.count("| paper |") == 1  # not under the run of 200 steps: no value of the paper


def reproduction_page(table: Path, folder: Path) -> str:
    """The reproduction page of ``table`` as the workflow writes it (`dmaml.report.paper`'s CLI)."""
    page = folder / "reproduction.md"
    assert paper.main([str(table), "--paper", str(PAPER), "--out", str(page)]) == 0
    return page.read_text()


def test_reproduction_sums_up_each_table(omniglot_runs, tmp_path):
    out = tmp_path / "table2.csv"
    assert main(["table", "checkpoints", *map(str, omniglot_runs), "--out", str(out),
                 "--paper", str(PAPER), "--paper-table", "table2"]) == 0
    text = reproduction_page(out, tmp_path)
    assert "| table2 | 6 | 2 | 1 | 1 | 0 |" in text
    assert "## table2: omniglot, N = 5, k = 1" in text
    assert "- Cells: 2 of 6 cells compared: 1 =, 1 better, 0 worse." in text
    assert "the paper has no value for n = 3; step = 50." in text
    assert ("Largest differences (ours - paper): n = 2, step 500: ours 0.9512 ± 0.0081, paper 0.84 "
            "± 0.006, +0.11 (better); n = 1, step 500: ours 0.812 ± 0.010, paper 0.81 ± 0.006, "
            "+0.00 (=).") in text
    assert "Paper cells without one of ours: 34 (ours has no n = 4, 8, 16, 32; step = " in text
    assert "the seed of each row (best validation after the last step): n = 1: 0, n = 2: 0" in text
    assert "Unlike the paper" not in text  # t = 32, m = 1 and 600 test tasks, as the paper's


def test_reproduction_needs_tables_made_with_the_paper(omniglot_runs, tmp_path, capsys):
    out = tmp_path / "table2.csv"
    assert main(["table", "checkpoints", *map(str, omniglot_runs), "--out", str(out)]) == 0
    assert "| paper |" not in out.with_suffix(".md").read_text()  # without --paper: ours alone
    assert paper.main([str(out), "--paper", str(PAPER), "--out", str(tmp_path / "r.md")]) == 2
    assert f"{out}: no verdict column" in capsys.readouterr().err


def test_difference_has_the_papers_precision_where_it_drops_a_zero():
    """The paper prints 0.90 as 0.9 (Table 2, n = 2, step 10000): still a mean to 2 places."""
    ours = pd.DataFrame([{"dataset": "omniglot", "ways": 5, "shots": 1, "workers": 2,
                          "step": 10000, "metric": "accuracy", "mean": 0.9298, "ci95": 0.0081}])
    row = paper.compare(ours, paper.load_paper(PAPER), "table2").iloc[0]
    assert (row["paper_mean"], row["difference"], row["verdict"]) == ("0.9", "+0.03", "better")


def test_table5_cells_match_on_their_shots(tmp_path):
    """miniImageNet 1-shot and 5-shot rows of one table: each is compared with its own row."""
    runs = [run_folder(tmp_path / f"k{k}", {500: (mean, 0.006)}, steps=2000, dataset="miniimagenet",
                       shots=k, workers=4) for k, mean in ((1, 0.31), (5, 0.44))]
    out = tmp_path / "table5.csv"
    assert main(["table", "checkpoints", *map(str, runs), "--out", str(out), "--paper", str(PAPER),
                 "--paper-table", "table5"]) == 0
    csv = pd.read_csv(out, dtype=str).set_index("shots")
    assert csv.loc["1", "paper_mean"] == "0.31" and csv.loc["5", "paper_mean"] == "0.44"
    assert set(csv["verdict"]) == {"="}
    assert "| k, n (seed) | step 500 |" in out.with_suffix(".md").read_text()


def test_reproduction_names_settings_unlike_the_papers(tmp_path):
    """A quick-preset-like run (t = 8, 200 test tasks, steps the paper has not): nothing compared,
    and the summary says why."""
    run = run_folder(tmp_path / "n1", {50: (0.5, 0.01), 200: (0.6, 0.01)}, steps=200, tasks=200,
                     dataset="omniglot", workers=1, tasks_per_step=8)
    out = tmp_path / "table2.csv"
    assert main(["table", "checkpoints", str(run), "--out", str(out), "--paper", str(PAPER),
                 "--paper-table", "table2"]) == 0
    text = paper.reproduction([out], paper.load_paper(PAPER))
    assert "| table2 | 2 | 0 | 0 | 0 | 0 |" in text and "Largest" not in text
    assert "- Not compared: 2 cells, the paper has no value for step = 50, 200." in text
    assert "- Unlike the paper (its Table 6): t = 8 (paper 32), 200 test tasks (paper 600)." in text


@pytest.fixture
def seeded_runs(tmp_path) -> list[Path]:
    """Table 2's n = 1 with three seeds (seed 2 validates best) and n = 2 with two, of which
    seed 1 diverged after step 500; the paper: n = 1 0.81 ± 0.006 and 0.82 ± 0.007 at 500 and
    1,000, n = 2 0.84 ± 0.006 and 0.86 ± 0.006."""
    n1 = {0: ({500: (0.90, 0.01), 1000: (0.90, 0.01)}, 0.6),
          1: ({500: (0.815, 0.01), 1000: (0.95, 0.01)}, 0.5),
          2: ({500: (0.92, 0.01), 1000: (0.93, 0.01)}, 0.7)}
    dirs = [run_folder(tmp_path / f"n1-s{seed}", tests, val=val, seed=seed, dataset="omniglot",
                       workers=1) for seed, (tests, val) in n1.items()]
    dirs.append(run_folder(tmp_path / "n2-s0", {500: (0.90, 0.01), 1000: (0.95, 0.01)},
                           seed=0, dataset="omniglot", workers=2))
    diverged = run_folder(tmp_path / "n2-s1", {500: (0.845, 0.01)}, seed=1, dataset="omniglot",
                          workers=2, status="diverged")
    config.dump(config.load(None, {"steps": 10000, "checkpoint_steps": [500, 1000], "seed": 1,
                                   "dataset": "omniglot", "workers": 2}), diverged / "config.yaml")
    return [*dirs, diverged]


def test_cells_show_the_chosen_seed_and_the_range_over_seeds(seeded_runs, tmp_path):
    out = tmp_path / "table2.csv"
    assert main(["table", "checkpoints", *map(str, seeded_runs), "--out", str(out),
                 "--paper", str(PAPER), "--paper-table", "table2"]) == 0
    csv = pd.read_csv(out, dtype=str, keep_default_na=False).set_index(["workers", "step"])
    columns = ["seed", "mean", "seeds", "seed_min", "seed_max", "seeds_compared", "verdict"]
    # n = 1, step 500: the chosen seed (2) alone would be `better`; seed 1 agrees with the paper
    assert csv.loc[("1", "500"), columns].tolist() == ["2", "0.920", "0, 1, 2", "0.815", "0.920",
                                                       "3", "="]
    # step 1,000: every seed beyond the paper's 0.82 ± 1.96 x 0.007
    assert csv.loc[("1", "1000"), columns].tolist() == ["2", "0.930", "0, 1, 2", "0.900", "0.950",
                                                        "3", "better"]
    assert csv.loc[("1", "500"), "seed_scores"] == ("0: 0.900 ± 0.010; 1: 0.815 ± 0.010; "
                                                    "2: 0.920 ± 0.010")
    # n = 2: seed 1 diverged after step 500, so step 1,000 rests on seed 0 alone
    assert csv.loc[("2", "500"), ["seed", "seeds", "seeds_compared", "verdict"]].tolist() == [
        "0", "0, 1", "2", "="]  # seed 1's 0.845 agrees with 0.84
    assert csv.loc[("2", "1000"), ["seeds", "seed_scores", "seeds_compared", "verdict"]].tolist() \
        == ["0", "0: 0.950 ± 0.010; 1: —", "1", "better"]
    md = out.with_suffix(".md").read_text()
    assert "| 1 (2) | 0.920 ± 0.010 (0.815–0.920) | 0.930 ± 0.010 (0.900–0.950) |" in md
    assert "| 2 (0) | 0.900 ± 0.010 (0.845–0.900) | 0.950 ± 0.010 |" in md
    assert "| paper | 0.84 ± 0.006 · +0.06 · = | 0.86 ± 0.006 · +0.09 · better (1 seed) |" in md
    assert "in parentheses, the lowest and highest mean over all seeds" in md

    text = reproduction_page(out, tmp_path)
    assert "| table2 | 4 | 4 | 2 | 2 | 0 | 1 |" in text
    assert "n = 1, step 1000: ours 0.930 ± 0.010 (seeds 0.900–0.950), paper 0.82 ± 0.007" in text
    assert "1 compared cell(s) rest on one seed of ours" in text


def test_one_setting_shows_one_value_in_every_table(seeded_runs):
    """A row's seed is chosen among the runs a table is given, so every table showing a setting
    must be given all its seeds: the workflow's grid gives each table and figure every seed the
    configuration trains in a run folder it uses. In the quick preset Table 7's n = 1 reference
    and its mean n = 4 runs (Figure 7 asks for seed 0) are Table 2's, with Table 2's seeds."""
    from dmaml import grid
    from dmaml.costs import runs
    from dmaml.report import tables

    cfg = runs.load_config(ROOT, [ROOT / "presets" / "quick.yaml"])
    seeds = {}
    for name in ("table2", "table7", "fig7"):
        for w in grid.runs(cfg, name):
            seeds.setdefault((name, grid.setting(w)), set()).add(w["seed"])
    shared = {s for (name, s) in seeds if name == "table2"} & {s for (name, s) in seeds
                                                              if name == "table7"}
    assert {s.split("/")[1] for s in shared} == {"omniglot-5w1s-n1-m1-t8-mean-mean",
                                                  "omniglot-5w1s-n4-m1-t8-mean-mean"}
    for setting in shared:
        assert seeds[("table2", setting)] == seeds[("table7", setting)] == seeds[
            ("fig7", setting)] == {0, 1}
    assert seeds[("table7", "table2/omniglot-5w1s-n4-m1-t8-weighted-mean/seed*")] == {0}
    # and given the same seeds, two tables choose the same one
    alone, _ = tables.checkpoint_table(seeded_runs[:3])
    beside, _ = tables.checkpoint_table(seeded_runs)
    ones = beside[beside["workers"] == 1].reset_index(drop=True)
    assert ones[["seed", "step", "mean"]].equals(alone[["seed", "step", "mean"]])


def test_a_page_that_compares_nothing_says_so(tmp_path):
    run = run_folder(tmp_path / "n1", {50: (0.5, 0.01)}, steps=50, tasks=200, dataset="omniglot",
                     workers=1, tasks_per_step=8)
    out = tmp_path / "table2.csv"
    assert main(["table", "checkpoints", str(run), "--out", str(out), "--paper", str(PAPER),
                 "--paper-table", "table2"]) == 0
    text = paper.reproduction([out], paper.load_paper(PAPER))
    assert "**This page answers nothing: none of our 1 cells has a value of the paper" in text
    assert "`presets/check.yaml`" in text and "| table2 | 1 | 0 | 0 | 0 | 0 | 0 |" in text
    md = out.with_suffix(".md").read_text()
    assert "| paper |" not in md
    assert "The paper has no value for any cell of this table: nothing is compared." in md


def test_the_page_states_the_rule_the_papers_interval_and_what_it_leaves_open(omniglot_runs,
                                                                              tmp_path):
    out = tmp_path / "table2.csv"
    assert main(["table", "checkpoints", *map(str, omniglot_runs), "--out", str(out),
                 "--paper", str(PAPER), "--paper-table", "table2"]) == 0
    text = paper.reproduction([out], paper.load_paper(PAPER))
    assert paper.RULE in text and "This page answers nothing" not in text
    assert "| table2 | omniglot | 5 | 1 | 36 | 35 | 0.47 | 0.42-1.03 |" in text
    assert "| table5 | miniimagenet | 5 | 5 | 12 | 0 | 1.30 | 1.30-1.31 |" in text
    assert "below the floor in 102 of 108 cells, at a median 0.47 (5-way 1-shot)" in text
    assert "Ours (1.96·SD/√tasks, 600 tasks, 5 query examples a task): 6 cells at" in text
    assert "val_alphabets: N` holds N evaluation alphabets out" in text
    for point, _, _ in caveats.OPEN:
        assert f"- **{point}.** The paper: " in text


def test_readme_and_docs_state_the_rule_and_the_open_points():
    readme = (ROOT / "README.md").read_text()
    docs = (ROOT / "docs" / "reproduction.md").read_text()
    # The README (one screen) points to the rule; docs/reproduction.md states it.
    assert paper.RULE in docs and "docs/reproduction.md" in readme
    for line in [*caveats.markdown(), *paper._paper_se(paper.load_paper(PAPER))]:
        assert line in docs
    assert "presets/check.yaml" in readme and "about ±0.006" not in readme


@pytest.mark.parametrize("dataset, preprocessing, expected", [
    ("omniglot", {"val": "same classes as test"}, "the test classes"),
    ("omniglot", {"val": ["Angelic", "Atemayar_Qelisayer"]}, "2 held-out alphabets"),
    ("miniimagenet", {"aggregate_val_test": True}, "the val classes, which are also tested on"),
    ("miniimagenet", {"aggregate_val_test": False}, "the val classes"),
])
def test_captions_say_where_the_seed_choice_looked(tmp_path, dataset, preprocessing, expected):
    """The data file records its split (its preprocessing attributes); with validation tasks from
    the test classes the caption says the seed choice has seen them, and offers the alternative."""
    import h5py

    from dmaml import report

    data = tmp_path / f"{dataset}.h5"
    with h5py.File(data, "w") as f:
        f.attrs["preprocessing"] = json.dumps(preprocessing)
    assert report.validation_classes(dataset, str(data)) == expected
    note = report.selection_note([expected])
    assert ("has seen the test classes; `omniglot: val_alphabets: N` holds N" in note) == (
        expected == "the test classes")
    assert report.validation_classes("omniglot", str(tmp_path / "none.h5")) == report.UNKNOWN
    assert "not known here" in report.selection_note([report.UNKNOWN])
