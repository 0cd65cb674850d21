"""The reference engine: workers one after another in this process, tasks in a Python loop."""

from __future__ import annotations

import numpy as np

from dmaml import maml, models, optimizer
from dmaml.engines import Engine, WorkerResult
from dmaml.tasks import TRAIN, make_sampler, sample_batch, task_rng


class SequentialEngine(Engine):
    """Each worker's MAML steps in turn, with one compiled step function shared by all workers."""

    def __init__(self, cfg):
        super().__init__(cfg)
        self.model = models.for_config(cfg)
        self.sampler = make_sampler(cfg, "train")
        self.step_fn = maml.make_step(self.model, cfg.alpha, cfg.inner_steps, cfg.beta,
                                      cfg.first_order, cfg.outer_reduction)

    def run(self, theta, states, step):
        cfg = self.cfg
        results = {}
        for w, state in states.items():
            params, losses, metrics = theta, [], []
            for s in range(step, step + cfg.steps_per_run):
                tasks = sample_batch(self.sampler, task_rng(cfg.seed, TRAIN, w, s),
                                     cfg.tasks_per_step)
                params, state, loss, metric = self.step_fn(params, state, *tasks)
                losses.append(float(loss))
                metrics.append(float(metric))
            results[w] = WorkerResult({k: v.numpy() for k, v in params.items()},
                                      optimizer.to_numpy(state), float(np.mean(losses)),
                                      float(np.mean(metrics)))
        return results
