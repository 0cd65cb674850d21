"""``dmaml status``: a row per run folder, from what training writes as it goes."""

from __future__ import annotations

import json
import time

from dmaml.cli import main
from dmaml.learner import Learner
from dmaml.run_folder import STALE_AFTER
from dmaml.status import collect

from .test_learner import sine


def test_status_shows_every_run_of_a_grid(tmp_path, capsys):
    root = tmp_path / "runs"
    Learner(sine(steps=20), root / "exp/sine-n1/seed0").train()
    Learner(sine(steps=20), root / "exp/sine-n1/seed1").train()
    # a run whose job died without a word, and one still writing progress
    for seed, age in ((1, STALE_AFTER + 60), (2, 5)):
        run = root / f"exp/sine-n1/seed{seed}"
        if seed == 2:
            run.mkdir(parents=True)
        info = {"status": "running", "step": 10, "steps": 20, "updated": time.time() - age,
                "step_s": 0.25, "eta_s": 2.5}
        (run / "run.json").write_text(json.dumps(info))

    assert main(["status", str(root)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["run", "status", "step", "val", "s/step", "left", "updated", "holder"]
    rows = {line.split()[0]: line.split() for line in out[1:-1]}
    assert rows["exp/sine-n1/seed0"][1:4] == ["finished", "20/20", "mse"]
    assert rows["exp/sine-n1/seed1"][1:3] == ["stalled?", "10/20"]
    assert rows["exp/sine-n1/seed2"][1:6] == ["running", "10/20", "0.250", "2s", "5s"]
    assert out[-1] == "3 runs: 1 finished, 1 running, 1 stalled?"

    assert main(["status", str(root), "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 3 == len(collect([root]))


def test_status_of_a_missing_folder_says_what_to_give(tmp_path, caplog):
    assert main(["status", str(tmp_path / "nowhere")]) == 2
    assert "no such folder; give the folder of run folders" in caplog.text
