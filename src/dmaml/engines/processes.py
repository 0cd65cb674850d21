"""Workers in separate processes on this machine, each with its own TensorFlow runtime.

The paper's setting, and the basis of workers as separate jobs. ``processes`` worker processes
(spawned once, reused by every run) each hold the workers ``w`` with ``w % processes == p`` and
run them with the :class:`~dmaml.engines.vectorized.VectorizedEngine`; the central learner stays
in the parent. By default there are as many processes as cores (at most one per worker): more
would only time-slice the same cores, and several workers in one process share one compiled
computation. Each process gets ``threads // processes`` intra-op threads (``threads`` being
``cfg.threads``, or the cores this process may use), at least one, so that the processes together
do not oversubscribe the cores.

Arrays travel through shared memory: the parent writes theta once into a block all processes
read, and each worker's parameters and Adam moments into that worker's slot of its process's
block; the process writes the results back into the slot. The pipe to each process carries only
the command and the losses. A process that dies is noticed at once (its sentinel becomes ready):
it is started again and its share of the run redone from the run's inputs, which are still in
the parent (the central parameters, its workers' Adam states, the task seeds), so the numbers
equal those of a run without the crash. After ``restarts`` restarts (``DMAML_WORKER_RESTARTS``,
default 3) the next death is a :class:`WorkerProcessError` and the engine is closed.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import os
import signal
import time
import traceback
from multiprocessing.connection import Connection, wait
from multiprocessing.shared_memory import SharedMemory

import numpy as np

from dmaml import models
from dmaml.config import RunConfig
from dmaml.engines import Engine, WorkerResult, cores
from dmaml.errors import UserError
from dmaml.optimizer import AdamState
from dmaml.tasks import INIT, task_rng

log = logging.getLogger(__name__)

Layout = list[tuple[str, tuple[int, ...]]]


class WorkerProcessError(UserError, RuntimeError):
    """A worker process died or failed too often; the message says which and why."""


class _Died(Exception):
    """A worker process died (it may be restarted)."""


class Slots:
    """Flat float32 views of a shared-memory block: ``theta``-shaped arrays by name, per slot."""

    def __init__(self, shm: SharedMemory, layout: Layout, slots: int):
        self.size = sum(int(np.prod(shape)) for _, shape in layout)
        self.flat = np.ndarray((slots, self.size), np.float32, buffer=shm.buf)
        self.layout = layout

    def write(self, slot: int, arrays: dict[str, np.ndarray]) -> None:
        self.flat[slot] = np.concatenate([np.ravel(arrays[name]) for name, _ in self.layout])

    def read(self, slot: int) -> dict[str, np.ndarray]:
        """Copies, so the block can be written again while the caller keeps them."""
        out, at = {}, 0
        flat = self.flat[slot].copy()
        for name, shape in self.layout:
            size = int(np.prod(shape))
            out[name] = flat[at:at + size].reshape(shape)
            at += size
        return out


def _process_main(cfg: RunConfig, processes: int, threads: int, layout: Layout, theta_name: str,
                  slots_name: str, workers: list[int], conn: Connection) -> None:
    """A worker process: build the vectorized engine, then serve runs until told to close."""
    # the parent decides when to stop: a SIGTERM that SLURM sends every process of a cancelled
    # job would otherwise kill the workers of the run the parent finishes before it checkpoints
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    try:
        from dmaml.engines import set_threads

        set_threads(threads)
        from dmaml.engines.vectorized import MEMORY_BUDGET, VectorizedEngine

        engine = VectorizedEngine(cfg, MEMORY_BUDGET // processes)  # the processes share it
        theta_shm, slots_shm = SharedMemory(theta_name), SharedMemory(slots_name)
        theta = Slots(theta_shm, layout, 1)
        # Each worker has three consecutive slots: parameters, first and second moments.
        slots = Slots(slots_shm, layout, 3 * len(workers))
        index = {w: i for i, w in enumerate(workers)}
        conn.send(("ready",))
        while True:
            message = conn.recv()
            if message[0] == "close":
                break
            _, step, counts = message
            start = time.perf_counter()
            states = {w: AdamState(slots.read(3 * index[w] + 1), slots.read(3 * index[w] + 2),
                                   np.float32(t)) for w, t in counts.items()}
            results = engine.run(theta.read(0), states, step)
            summary = {}
            for w, r in results.items():
                slots.write(3 * index[w], r.params)
                slots.write(3 * index[w] + 1, r.opt_state.m)
                slots.write(3 * index[w] + 2, r.opt_state.v)
                summary[w] = (r.loss, r.metric, float(r.opt_state.t))
            conn.send(("done", summary, time.perf_counter() - start))
        engine.close()
        del theta, slots
        theta_shm.close()
        slots_shm.close()
    except (EOFError, KeyboardInterrupt):
        pass  # the parent went away
    except BaseException:
        conn.send(("error", traceback.format_exc()))


class ProcessesEngine(Engine):
    """Worker processes with shared-memory exchange (see the module docstring)."""

    def __init__(self, cfg: RunConfig, processes: int | None = None,
                 restarts: int | None = None):
        super().__init__(cfg)
        self.restarts_left = (restarts if restarts is not None
                              else int(os.environ.get("DMAML_WORKER_RESTARTS", "3")))
        theta = models.for_config(cfg).init(task_rng(cfg.seed, INIT))
        self.layout: Layout = [(k, v.shape) for k, v in theta.items()]
        self.count = max(1, min(processes or cores(), cfg.workers))
        self.threads = max(1, (cfg.threads or cores()) // self.count)
        self.workers = [list(range(p, cfg.workers, self.count)) for p in range(self.count)]
        size = sum(v.nbytes for v in theta.values())
        self.theta_shm = SharedMemory(create=True, size=size)
        self.theta = Slots(self.theta_shm, self.layout, 1)
        self.slot_shms = [SharedMemory(create=True, size=3 * len(ws) * size) for ws in self.workers]
        self.slots = [Slots(shm, self.layout, 3 * len(ws))
                      for shm, ws in zip(self.slot_shms, self.workers)]
        self.context = mp.get_context("spawn")
        self.procs: list = [None] * self.count
        self.conns: list[Connection | None] = [None] * self.count
        self.ready = [False] * self.count
        self.last_compute: list[float] = []  # seconds each process computed in the last run
        for p in range(self.count):
            self._start(p)
        log.info("processes engine: %d processes x %d threads for %d workers", self.count,
                 self.threads, cfg.workers)

    def _start(self, p: int) -> None:
        """Start (or restart) worker process ``p``; it reports ready before its first run."""
        parent, child = self.context.Pipe()
        proc = self.context.Process(
            target=_process_main, name=f"dmaml-worker-{p}", daemon=True,
            args=(self.cfg, self.count, self.threads, self.layout, self.theta_shm.name,
                  self.slot_shms[p].name, self.workers[p], child))
        proc.start()
        child.close()  # else the parent's copy keeps the pipe open and a dead child goes unseen
        self.procs[p], self.conns[p], self.ready[p] = proc, parent, False

    def _receive(self, p: int, step: int):
        """The next message of process ``p``; raises :class:`WorkerProcessError` if it died or
        failed instead."""
        conn, proc = self.conns[p], self.procs[p]
        wait([conn, proc.sentinel])
        try:
            if not conn.poll():  # the sentinel alone: dead, and nothing left in the pipe
                raise EOFError
            message = conn.recv()
        except (EOFError, ConnectionResetError, OSError):
            proc.join(5)
            code = proc.exitcode
            name = f" ({signal.Signals(-code).name})" if code is not None and code < 0 else ""
            raise _Died(f"died (exit code {code}{name})") from None
        if message[0] == "error":
            self._fail(p, step, f"failed:\n{message[1]}")
        return message

    def _fail(self, p: int, step: int, what: str):
        self.close(force=True)
        raise WorkerProcessError(
            f"worker process {p} (workers {self.workers[p]}) {what} in the run from MAML step "
            f"{step}; the engine is closed. Run training again: it resumes from the last "
            "checkpoint")

    def _send(self, p: int, step: int, states) -> None:
        """Write process ``p``'s workers' Adam states and start its share of the run."""
        workers = self.workers[p]
        counts = {w: float(states[w].t) for w in workers if w in states}
        for i, w in enumerate(workers):
            if w in counts:
                self.slots[p].write(3 * i + 1, states[w].m)
                self.slots[p].write(3 * i + 2, states[w].v)
        if not self.ready[p]:
            self._receive(p, step)  # "ready": the process has built its engine
            self.ready[p] = True
        with contextlib.suppress(OSError):  # a dead process: _receive tells how it died
            self.conns[p].send(("run", step, counts))

    def _result(self, p: int, step: int, states):
        """Process ``p``'s answer for the run, restarting it and redoing its share if it died."""
        while True:
            try:
                return self._receive(p, step)
            except _Died as died:
                if self.restarts_left <= 0:
                    self._fail(p, step, f"{died} and no restarts are left")
                self.restarts_left -= 1
                log.warning("worker process %d %s in the run from MAML step %d: restarting it "
                            "and redoing its share (%d restarts left)", p, died, step,
                            self.restarts_left)
                self._start(p)
                with contextlib.suppress(_Died):  # a death while starting: counted next round
                    self._send(p, step, states)

    def run(self, theta, states, step):
        if self.conns[0] is None:
            raise WorkerProcessError("the processes engine is closed")
        self.theta.write(0, theta)
        busy = [p for p, workers in enumerate(self.workers) if any(w in states for w in workers)]
        for p in busy:
            with contextlib.suppress(_Died):  # _result restarts it
                self._send(p, step, states)
        results, self.last_compute = {}, []
        for p in busy:
            _, summary, seconds = self._result(p, step, states)
            self.last_compute.append(seconds)
            index = {w: i for i, w in enumerate(self.workers[p])}
            for w, (loss, metric, t) in summary.items():
                slots, i = self.slots[p], 3 * index[w]
                results[w] = WorkerResult(slots.read(i), AdamState(slots.read(i + 1),
                                                                   slots.read(i + 2),
                                                                   np.float32(t)), loss, metric)
        return results

    def close(self, force: bool = False) -> None:
        """Stop the worker processes (``force``: kill them at once) and free the shared memory;
        safe to call twice."""
        for p, (proc, conn) in enumerate(zip(self.procs, self.conns)):
            if conn is None:
                continue
            if not force:
                with contextlib.suppress(OSError):
                    conn.send(("close",))
                proc.join(10)
            if proc.is_alive():
                proc.kill()
                proc.join()
            conn.close()
            self.conns[p] = None
        self.theta, self.slots = None, []  # views into the blocks must go before closing them
        for shm in (self.theta_shm, *self.slot_shms):
            shm.close()
            with contextlib.suppress(FileNotFoundError):
                shm.unlink()
        self.slot_shms = []
