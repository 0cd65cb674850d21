"""The Python API: train a DMAML run and read its results from a notebook or a script.

Example::

    import dmaml
    data = dmaml.omniglot("path/to/omniglot_zips")           # -> resources/omniglot.h5
    run = dmaml.train("runs/n4", data=data, workers=4, steps=200)
    run.test                                                 # test scores, a data frame

:func:`train` is ``dmaml train``: the same settings (:class:`~dmaml.config.RunConfig`, checked
and filled with the paper's values for the dataset), the same run folder (one writer at a time,
checkpoints, resumed when called again on the same folder) and progress lines every few seconds.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from dmaml import config as settings

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger("dmaml")


@dataclass(frozen=True)
class Run:
    """A run folder and its settings, with its results as data frames."""

    folder: Path
    config: settings.RunConfig

    @property
    def metrics(self) -> pd.DataFrame:
        """metrics.csv: a row per validation (step, training and validation loss and metric)."""
        import pandas as pd

        return pd.read_csv(self.folder / "metrics.csv")

    @property
    def test(self) -> pd.DataFrame:
        """test.csv: a row per kept checkpoint (step, metric, mean, ci95 over ``tasks``)."""
        import pandas as pd

        return pd.read_csv(self.folder / "test.csv")


def _show_progress() -> None:
    """Progress lines on stderr (a notebook shows them under the cell) unless logging is set."""
    if not log.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)


def train(out: str | os.PathLike, config: settings.RunConfig | None = None,
          **values) -> Run:
    """Train a DMAML run into the run folder ``out`` (resuming it when it holds a checkpoint)
    and return it. Settings are ``config`` and/or keyword arguments named as the ``dmaml train``
    flags (``workers=4``, ``steps=200``, ``dataset="sine"``); unset ones take the paper's
    Table 6 value for the dataset. A bad value raises :class:`~dmaml.errors.ConfigError`
    naming it, before anything is written."""
    base = {} if config is None else dataclasses.asdict(config)
    cfg = settings.load(None, {**base, **values})
    _show_progress()
    from dmaml.learner import Learner  # TensorFlow: seconds to import

    Learner(cfg, out).train()
    return Run(Path(out), cfg)


def omniglot(source: str | os.PathLike, out: str | os.PathLike = "resources/omniglot.h5",
             **options) -> Path:
    """The Omniglot HDF5 file ``out``, built from ``source`` (a folder holding the official
    zips, or a URL prefix to fetch them from) unless it exists; ``options`` are those of
    :func:`dmaml.data.omniglot.prepare_omniglot` (the workflow's data rule calls it too)."""
    out = Path(out)
    if out.is_file():
        return out
    _show_progress()
    from dmaml.data.omniglot import prepare_omniglot

    return prepare_omniglot(source, out, **options)
