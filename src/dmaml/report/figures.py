"""The paper's figures (2-6) from run folders: validation curves with mean and std over seeds
(Figure 7, beyond the paper, is :mod:`dmaml.report.figure7`).

Every figure is written as PNG and PDF with a caption side file (``.txt``) that states the
configuration, the seeds and the number of validation tasks behind each curve. The figure itself
says what its lines and bands are (legend) and which setting and tasks made it (a note below), so
that it reads without the caption.

The ``_wall`` companions (of Figures 3 and 5) plot the same runs against the seconds they took,
as measured (``wall_s`` of ``metrics.csv``), and come with a table of the seconds per MAML step
(``.csv`` and ``.md``) by setting and machine (from ``run.json``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.ticker import LogFormatter  # noqa: E402

from dmaml import atomic  # noqa: E402
from dmaml.report import IDENTITY, SHORT, ReportError, describe, listing, load_runs, metrics  # noqa: E402
from dmaml.report.tables import best_seeds, config_columns  # noqa: E402

plt.rcParams.update({"figure.dpi": 120, "font.size": 10, "axes.grid": True, "grid.alpha": 0.3})

# the machine a run's seconds were measured on (run.json)
MACHINE = ["engine", "cpu", "cores", "threads"]
NOT_RECORDED = "not recorded"
SECONDS = "seconds: training with the first run's compilation, validation excluded (metrics.csv wall_s)"
X_LABELS = {"step": "MAML steps of the central model",
            "tasks": "tasks processed per worker (steps x t)",
            "wall": "seconds of training, measured (mean over seeds)"}


def palette(count: int) -> list:
    """Distinct colours: tab10 for up to ten lines, an ordered colour map beyond."""
    if count <= 10:
        return [plt.cm.tab10(i) for i in range(count)]
    return list(plt.cm.viridis(np.linspace(0, 0.9, count)))


def _score_column(m: pd.DataFrame) -> tuple[str, str]:
    return ("val_acc", "validation accuracy") if "val_acc" in m else ("val_loss", "validation MSE")


def plot_curves(ax, runs: pd.DataFrame, keys: list[str], label: Callable[[tuple], str],
                x: str = "step", max_step: int | None = None, trend: bool = False) -> str:
    """One line per value of ``keys`` (mean over seeds) with a +-1 std band; returns the y label.

    ``x`` is ``"step"`` (MAML steps of the central model), ``"tasks"`` (tasks processed by one
    worker: steps x t, proportional to wall-clock time when tasks are computed one by one) or
    ``"wall"`` (the measured seconds of training, on a log axis: each validation is placed at the
    mean over seeds of the seconds its runs took to reach it). With ``trend``, a thin dashed
    cubic fitted to each mean shows its shape under the noise. The legend names each line and, in
    grey, what lines, bands and dashes are.
    """
    ylabel = ""
    banded = False
    colors = palette(runs.groupby(keys).ngroups)
    for color, (value, group) in zip(colors, runs.groupby(keys, sort=True)):
        scores, seconds = [], []
        for run in group["run"]:
            m = metrics(run)
            column, ylabel = _score_column(m)
            if x == "wall" and "wall_s" not in m:
                raise ReportError(f"{run}/metrics.csv: no wall_s column; train the run again "
                                  "with this version to measure its seconds")
            if max_step is not None:
                m = m[m["step"] <= max_step]
            m = m.set_index("step")
            scores.append(m[column])
            if x == "wall":
                seconds.append(m["wall_s"])
        table = pd.concat(scores, axis=1).sort_index()
        mean, std = table.mean(axis=1), table.std(axis=1, ddof=0)
        if x == "wall":
            xs = pd.concat(seconds, axis=1).sort_index().mean(axis=1).to_numpy()
        else:
            xs = table.index.to_numpy() * (group["tasks_per_step"].iloc[0] if x == "tasks" else 1)
        seeds = f"{len(scores)} seed{'s' if len(scores) > 1 else ''}"
        name = f"{label(value if isinstance(value, tuple) else (value,))} ({seeds})"
        ax.plot(xs, mean, color=color, lw=1.8, label=name)
        if len(scores) > 1:  # one seed has no spread to show
            ax.fill_between(xs, mean - std, mean + std, color=color, alpha=0.15, lw=0)
            banded = True
        if trend and len(xs) > 3:
            coeffs = np.polyfit(xs, mean, 3)
            ax.plot(xs, np.polyval(coeffs, xs), color=color, lw=1, ls="--", alpha=0.9)
    if x == "wall":
        ax.set_xscale("log")
        # seconds as 20, 50, 100 rather than 2 x 10^1; between decades over up to 3 of them
        ax.xaxis.set_major_formatter(LogFormatter(labelOnlyBase=False))
        ax.xaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(3, 1)))
    ax.set_xlabel(X_LABELS[x])
    ax.set_ylabel(ylabel)
    key = [Line2D([], [], color="grey", lw=1.8, label="solid: mean over seeds"),
           Patch(color="grey", alpha=0.15, label="band: ±1 std over seeds")] if banded else [
        Line2D([], [], color="grey", lw=1.8, label="solid: the seed's run (no band: one seed)")]
    if trend:
        key.append(Line2D([], [], color="grey", lw=1, ls="--",
                          label="dashed: cubic fit to the mean"))
    ax.legend(handles=[*ax.get_legend_handles_labels()[0], *key], fontsize=8)
    return ylabel


def save(fig, out: Path, caption: str) -> None:
    """Write ``out`` as .png and .pdf plus the caption as .txt, each atomically."""
    out = Path(out).with_suffix("")
    for suffix in (".png", ".pdf"):
        with atomic.replacing(out.with_suffix(suffix), suffix) as tmp:
            fig.savefig(tmp, bbox_inches="tight")
    atomic.write_text(out.with_suffix(".txt"), caption + "\n")
    plt.close(fig)


def seeds_per_setting(runs: pd.DataFrame) -> int:
    """The most seeds any one setting of ``runs`` has (a line's seeds)."""
    keys = list(dict.fromkeys([*config_columns(runs), "strategy"]))
    return int(runs.groupby(keys, dropna=False)["seed"].nunique().max())


def figure_caption(title: str, runs: pd.DataFrame, what: str) -> str:
    lines = (f"Lines: mean over seeds {listing(runs['seed'])}; bands: ±1 std over seeds"
             if seeds_per_setting(runs) > 1 else
             f"Lines: one seed each ({listing(runs['seed'])}), no bands")
    return (f"{title}. {what} {lines}; each point is a validation over "
            f"{listing(runs['val_tasks'])} fixed tasks. Configuration: {describe(runs)}.")


def points_text(runs: pd.DataFrame) -> str:
    return (f"seeds {listing(runs['seed'])}; each point: validation on "
            f"{listing(runs['val_tasks'])} fixed tasks")


def settings_note(fig, runs: pd.DataFrame, detail: str | None = None) -> None:
    """Below the axes, in small type: the settings shared by every curve and ``detail`` (by
    default the seeds and validation tasks of each point), so that the figure reads without its
    caption."""
    fixed = [f"{SHORT.get(k, k)} = {runs[k].iloc[0]}" for k in IDENTITY if runs[k].nunique() == 1
             and k != "dataset"]
    if detail is None:
        detail = points_text(runs)
    fig.text(0.01, 0, f"{listing(runs['dataset'])}: {', '.join(fixed)}; {detail}", fontsize=7,
             va="top")


def _one_panel(run_dirs, out: Path, keys: list[str], label: Callable[[tuple], str], title: str,
               caption: str, note: str = "", **plot) -> None:
    """A single-panel curves figure with its caption."""
    runs = load_runs(run_dirs)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    plot_curves(ax, runs, keys, label, **plot)
    ax.set_title(title)
    settings_note(fig, runs)
    save(fig, out, figure_caption(caption, runs, note))


def workers_figure(run_dirs, out: Path, max_step: int = 1000) -> None:
    """Figure 3: validation score vs MAML steps for each n, with a cubic trend line."""
    _one_panel(run_dirs, out, ["workers"], lambda v: f"n = {v[0]}",
               "DMAML: validation during training by number of workers n",
               f"Figure 3: validation score over the first {max_step} MAML steps for each number "
               "of workers n", "Dashed: cubic polynomial fitted to the mean.",
               max_step=max_step, trend=True)


def workers_wall_figure(run_dirs, out: Path) -> None:
    """Figure 3 against the measured seconds of training (whole runs), and the seconds per step."""
    runs = load_runs(run_dirs)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    plot_curves(ax, runs, ["workers"], lambda v: f"n = {v[0]}", x="wall")
    ax.set_title("DMAML: validation against measured seconds, by number of workers n")
    _save_wall(fig, runs, out, "Figure 3", "validation score for each number of workers n over "
               "whole runs", "x: seconds of training (log scale).")


def machine_text(runs: pd.DataFrame) -> str:
    """The engine(s), processor(s), cores and TensorFlow threads of ``runs`` (from run.json)."""
    if runs[MACHINE].isna().all().all():
        return ("machine not recorded (runs made before run.json recorded engine, cpu, cores and "
                "threads)")
    engine, cpu, cores, threads = (listing(runs[k].fillna(NOT_RECORDED).astype(str))
                                   for k in MACHINE)
    choice = " (0: TensorFlow's choice)" if (runs["threads"] == 0).any() else ""
    return f"engine {engine} on {cpu}, {cores} cores, TensorFlow intra-op threads {threads}{choice}"


def seconds_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Seconds per MAML step by setting and machine: one row per setting (the table columns of
    :func:`~dmaml.report.tables.config_columns`) and engine, cpu, cores and threads, with the
    seeds, ``step_s`` (seconds per step after the first, compiling run: mean and std over seeds),
    ``seconds_per_step`` (wall_s / steps, compilation included) and ``wall_s`` (seconds of
    training), means over seeds."""
    keys = [*config_columns(runs), *MACHINE]
    # as text, so that runs without a record group (and sort) beside those with one
    frame = runs.assign(**{k: runs[k].fillna(NOT_RECORDED).astype(str) for k in MACHINE})
    rows = [{**dict(zip(keys, values)), "seeds": listing(group["seed"]),
             "step_s": group["step_s"].mean(), "step_s_std": group["step_s"].std(ddof=0),
             "seconds_per_step": group["seconds_per_step"].mean(),
             "wall_s": group["wall_s"].mean()}
            for values, group in frame.groupby(keys, sort=True)]
    return pd.DataFrame(rows).map(lambda v: float(f"{v:.3g}") if isinstance(v, float) else v)


SECONDS_NOTE = ("step_s: seconds per MAML step after the first run (which compiles the step), "
                "mean and std over seeds; seconds_per_step: wall_s / steps, the compilation "
                "included; wall_s: seconds of training runs, validation excluded; means over seeds.")


def seconds_markdown(table: pd.DataFrame, title: str) -> str:
    """The seconds table in Markdown, with what its columns are."""
    lines = [f"**{title}**", "", "| " + " | ".join(table.columns) + " |",
             "|" + "---|" * len(table.columns)]
    cells = table.astype(object).where(table.notna(), "—")  # a value the runs did not record
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in cells.itertuples(index=False)]
    return "\n".join([*lines, "", SECONDS_NOTE]) + "\n"


def _save_wall(fig, runs: pd.DataFrame, out: Path, figure: str, subject: str, what: str) -> None:
    """A figure against measured seconds: the note and caption name the machine and what the
    seconds are, and the seconds table is written beside it (.csv, .md)."""
    machine = machine_text(runs)
    settings_note(fig, runs, f"{points_text(runs)}\n{machine}\n{SECONDS}")
    save(fig, out, figure_caption(f"{figure} against measured seconds: {subject}", runs,
                            f"{what} Seconds measured with {machine}; {SECONDS}; each validation "
                            "at the mean over seeds of its seconds."))
    table = seconds_table(runs)
    out = Path(out).with_suffix("")
    atomic.write_text(out.with_suffix(".csv"), table.to_csv(index=False))
    atomic.write_text(out.with_suffix(".md"),
                      seconds_markdown(table, f"Seconds per MAML step of {figure}'s runs"))


def steps_per_run_figure(run_dirs, out: Path) -> None:
    """Figure 4: validation score vs MAML steps for each m (consecutive steps per run)."""
    _one_panel(run_dirs, out, ["workers", "steps_per_run"], lambda v: f"n = {v[0]}, m = {v[1]}",
               "DMAML: consecutive MAML steps per run m",
               "Figure 4: validation score for m consecutive MAML steps per run")


def tasks_figure(run_dirs, out: Path, wall: bool = False) -> None:
    """Figure 5: tasks per MAML step t; x = MAML steps (left) or tasks processed (middle or
    right), and with ``wall`` the measured seconds (right); rows: mean of task gradients with
    fixed beta, sum with beta proportional to t."""
    runs = load_runs(run_dirs)
    rows = sorted(set(runs["outer_reduction"]))
    xs = ("step", "tasks", "wall") if wall else ("step", "tasks")
    fig, axes = plt.subplots(len(rows), len(xs), figsize=(6 * len(xs), 4.2 * len(rows)),
                             squeeze=False)
    for r, reduction in enumerate(rows):
        part = runs[runs["outer_reduction"] == reduction]
        for c, x in enumerate(xs):
            plot_curves(axes[r, c], part, ["tasks_per_step"], lambda v: f"t = {v[0]}", x=x)
            betas = ", ".join(f"{b:g}" for b in sorted(set(part["beta"])))
            axes[r, c].set_title(f"{reduction} of task gradients, beta = {betas}")
    fig.tight_layout()  # row titles clear of the tick labels above them
    what = ("Left: perfect parallelisation of tasks (x = MAML steps); "
            + ("middle: perfect serialisation (x = tasks processed); right: the seconds measured."
               if wall else "right: perfect serialisation (x = tasks processed)."))
    if wall:
        _save_wall(fig, runs, out, "Figure 5", "tasks per MAML step t", what)
    else:
        settings_note(fig, runs)
        save(fig, out, figure_caption("Figure 5: tasks per MAML step t", runs, what))


def tasks_wall_figure(run_dirs, out: Path) -> None:
    """Figure 5 with a third column against the measured seconds, and the seconds per step."""
    tasks_figure(run_dirs, out, wall=True)


def split_figure(run_dirs, out: Path) -> None:
    """Figure 6: the same tasks per run split over workers (n x t constant)."""
    _one_panel(run_dirs, out, ["workers", "tasks_per_step"],
               lambda v: f"n x t = {v[0]} x {v[1]}",
               "The same tasks per run split over n workers of t tasks",
               "Figure 6: n workers x t tasks per step, n x t constant")


def extrapolation_figure(prediction_files, out: Path) -> None:
    """Figure 2: sine models adapted on points from the left half only, over the whole range."""
    frames = [pd.read_csv(p) for p in prediction_files]
    if not frames:
        raise ReportError("no prediction files given")
    # one line per n: the seed its table row shows (best validation), as Table 1 chooses
    every = load_runs(sorted({f["run"].iloc[0] for f in frames}))
    chosen = set(best_seeds(every)["run"])
    frames = [f for f in frames if f["run"].iloc[0] in chosen]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    first = frames[0]
    ax.plot(first["x"], first["y_true"], color="black", lw=2, label="true function")
    support = first.dropna(subset=["support_x"])
    ax.scatter(support["support_x"], support["support_y"], color="black", marker="^", zorder=5,
               label="adaptation points")
    for color, frame in zip(palette(len(frames)),
                            sorted(frames, key=lambda f: f["workers"].iloc[0])):
        ax.plot(frame["x"], frame["y_pred"], color=color, lw=1.5,
                label=f"n = {frame['workers'].iloc[0]} (seed {frame['seed'].iloc[0]})")
    ax.axvspan(first["x"].min(), 0, color="grey", alpha=0.08)
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    ax.legend(fontsize=8)
    ax.set_title("Sine: adapted on the left half (shaded), evaluated on [-5, 5]")
    runs = load_runs(sorted({f["run"].iloc[0] for f in frames}))
    adapted = f"{first['inner_steps'].iloc[0]} gradient step(s) on {len(support)} points from [-5, 0]"
    seeds = f"each n's seed with the best validation score of seeds {listing(every['seed'])}"
    settings_note(fig, runs, f"adapted with {adapted}; {seeds}")
    save(fig, out, f"Figure 2: extrapolation after {adapted}; {seeds}. "
                   f"Configuration: {describe(runs)}.")
