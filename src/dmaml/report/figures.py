"""The paper's figures (2-6) from run folders: validation curves with mean and std over seeds.

Every figure is written as PNG and PDF with a caption side file (``.txt``) that states the
configuration, the seeds and the number of validation tasks behind each curve. The figure itself
says what its lines and bands are (legend) and which setting and tasks made it (a note below), so
that it reads without the caption.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from dmaml.report import IDENTITY, SHORT, ReportError, describe, listing, load_runs, metrics  # noqa: E402

plt.rcParams.update({"figure.dpi": 120, "font.size": 10, "axes.grid": True, "grid.alpha": 0.3})


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

    ``x`` is ``"step"`` (MAML steps of the central model) or ``"tasks"`` (tasks processed by one
    worker: steps x t, proportional to wall-clock time when tasks are computed one by one). With
    ``trend``, a thin dashed cubic fitted to each mean shows its shape under the noise. The legend
    names each line and, in grey, what lines, bands and dashes are.
    """
    ylabel = ""
    colors = palette(runs.groupby(keys).ngroups)
    for color, (value, group) in zip(colors, runs.groupby(keys, sort=True)):
        curves = []
        for run in group["run"]:
            m = metrics(run)
            column, ylabel = _score_column(m)
            if max_step is not None:
                m = m[m["step"] <= max_step]
            curves.append(m.set_index("step")[column])
        table = pd.concat(curves, axis=1).sort_index()
        mean, std = table.mean(axis=1), table.std(axis=1, ddof=0)
        xs = table.index.to_numpy() * (group["tasks_per_step"].iloc[0] if x == "tasks" else 1)
        seeds = f"{len(curves)} seed{'s' if len(curves) > 1 else ''}"
        name = f"{label(value if isinstance(value, tuple) else (value,))} ({seeds})"
        ax.plot(xs, mean, color=color, lw=1.8, label=name)
        ax.fill_between(xs, mean - std, mean + std, color=color, alpha=0.15, lw=0)
        if trend and len(xs) > 3:
            coeffs = np.polyfit(xs, mean, 3)
            ax.plot(xs, np.polyval(coeffs, xs), color=color, lw=1, ls="--", alpha=0.9)
    ax.set_xlabel("MAML steps of the central model" if x == "step"
                  else "tasks processed per worker (steps x t)")
    ax.set_ylabel(ylabel)
    key = [Line2D([], [], color="grey", lw=1.8, label="solid: mean over seeds"),
           Patch(color="grey", alpha=0.15, label="band: ±1 std over seeds")]
    if trend:
        key.append(Line2D([], [], color="grey", lw=1, ls="--",
                          label="dashed: cubic fit to the mean"))
    ax.legend(handles=[*ax.get_legend_handles_labels()[0], *key], fontsize=8)
    return ylabel


def save(fig, out: Path, caption: str) -> None:
    """Write ``out`` as .png and .pdf plus the caption as .txt, each atomically."""
    out = Path(out).with_suffix("")
    out.parent.mkdir(parents=True, exist_ok=True)
    for suffix in (".png", ".pdf"):
        tmp = out.with_name(f".{out.name}.tmp{suffix}")
        fig.savefig(tmp, bbox_inches="tight")
        os.replace(tmp, out.with_suffix(suffix))
    tmp = out.with_name(f".{out.name}.tmp.txt")
    tmp.write_text(caption + "\n")
    os.replace(tmp, out.with_suffix(".txt"))
    plt.close(fig)


def _caption(title: str, runs: pd.DataFrame, what: str) -> str:
    return (f"{title}. {what} Lines: mean over seeds {listing(runs['seed'])}; bands: ±1 std over seeds; "
            f"each point is a validation over {listing(runs['val_tasks'])} fixed tasks. "
            f"Configuration: {describe(runs)}.")


def settings_note(fig, runs: pd.DataFrame, detail: str | None = None) -> None:
    """Below the axes, in small type: the settings shared by every curve and ``detail`` (by
    default the seeds and validation tasks of each point), so that the figure reads without its
    caption."""
    fixed = [f"{SHORT.get(k, k)} = {runs[k].iloc[0]}" for k in IDENTITY if runs[k].nunique() == 1
             and k != "dataset"]
    if detail is None:
        detail = (f"seeds {listing(runs['seed'])}; each point: validation on "
                  f"{listing(runs['val_tasks'])} fixed tasks")
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
    save(fig, out, _caption(caption, runs, note))


def workers_figure(run_dirs, out: Path, max_step: int = 1000) -> None:
    """Figure 3: validation score vs MAML steps for each n, with a cubic trend line."""
    _one_panel(run_dirs, out, ["workers"], lambda v: f"n = {v[0]}",
               "DMAML: validation during training by number of workers n",
               f"Figure 3: validation score over the first {max_step} MAML steps for each number "
               "of workers n", "Dashed: cubic polynomial fitted to the mean.",
               max_step=max_step, trend=True)


def steps_per_run_figure(run_dirs, out: Path) -> None:
    """Figure 4: validation score vs MAML steps for each m (consecutive steps per run)."""
    _one_panel(run_dirs, out, ["workers", "steps_per_run"], lambda v: f"n = {v[0]}, m = {v[1]}",
               "DMAML: consecutive MAML steps per run m",
               "Figure 4: validation score for m consecutive MAML steps per run")


def tasks_figure(run_dirs, out: Path) -> None:
    """Figure 5: tasks per MAML step t; x = MAML steps (left) or tasks processed (right); rows:
    mean of task gradients with fixed beta, sum with beta proportional to t."""
    runs = load_runs(run_dirs)
    rows = sorted(set(runs["outer_reduction"]))
    fig, axes = plt.subplots(len(rows), 2, figsize=(12, 4.2 * len(rows)), squeeze=False)
    for r, reduction in enumerate(rows):
        part = runs[runs["outer_reduction"] == reduction]
        for c, x in enumerate(("step", "tasks")):
            plot_curves(axes[r, c], part, ["tasks_per_step"], lambda v: f"t = {v[0]}", x=x)
            betas = ", ".join(f"{b:g}" for b in sorted(set(part["beta"])))
            axes[r, c].set_title(f"{reduction} of task gradients, beta = {betas}")
    settings_note(fig, runs)
    save(fig, out, _caption("Figure 5: tasks per MAML step t", runs,
                            "Left: perfect parallelisation of tasks (x = MAML steps); right: perfect "
                            "serialisation (x = tasks processed)."))


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
    settings_note(fig, runs, f"adapted with {adapted}")
    save(fig, out, f"Figure 2: extrapolation after {adapted}. Configuration: {describe(runs)}.")
