"""Run a benchmark: every optimiser × seed, resumable after a kill at any moment.

The run directory (``config.json``, one folder of records and checkpoints per run, the report)
is laid out and checked by :mod:`sfn_teach.bench.rundir`.

**Records.** One flat JSON object per evaluation (at step 0, every ``eval_every`` steps and at
the last step); :meth:`sfn_teach.train.Trainer.record` plus the run's identity:

==========================================  ==================================================
``run_id``, ``optimizer``, ``seed``          the run's folder name, optimiser name, seed
``step``, ``epoch``                          optimiser steps taken; ``step / steps_per_epoch``
``wall_clock``                               s of training steps (batch + ``optimizer.step``),
                                             CUDA events on a GPU; after warm-up, without
                                             evaluation, checkpoints, compilation
``warmup_seconds``, ``compile_seconds``      s of the excluded first steps of each (re)start
``grad_equivalents``                         work: Σ over steps of c_t = gradients +
                                             c_HVP·HVPs + c_fwd·forwards + K-FAC's
                                             c_KF·factor updates + c_P·preconditionings
                                             (a step is a step, whatever its batch)
``example_grad_equivalents``                 work per example: Σ over steps of c_t × the
                                             examples of the step's batch (all ranks): one
                                             gradient on one example = 1
``gradients``, ``hvps``, ``forward``,        the counts behind them (the last two: K-FAC's
``factor_updates``, ``preconditionings``     curvature steps and steps)
``skipped_steps``                            steps the optimiser refused (non-finite values)
``{train,val,test}_{loss,accuracy}``         mean cross-entropy and accuracy on each part,
                                             fp32, BatchNorm in eval mode
``batch_loss``                               the loss of the last step's batch (before it)
``scale``, ``damping``, ``alpha``, ``mu``,    V, λ, α, μ, ρ of the last step (``None`` where
``rho``                                      the optimiser has no such quantity, at step 0)
``lambda_max``, ``scale_ratio``,              SeriesSFN's λ̂_max (Ritz estimate of the largest
``implicit_damping``                         |h|), V/λ̂_max² and ½√(πV/K) of the last step
``lambda_max_squared``,                      with ``train.curvature_every = n`` only, at every
``cos_gradient_exact``,                      n-th record (``None`` at the others): max h² of
``cos_series_exact``                         the dense Hessian, cos(g, Δ_exact) and
                                             cos(Δ_series, Δ_exact) on the diagnostic batch
                                             (:func:`sfn_teach.train.curvature_diagnostics`)
``compiled``, ``compile_error``              whether steps run through ``torch.compile``;
                                             why it fell back to eager (else ``None``)
``allreduce_bytes``, ``allreduce_seconds``,   data-parallel runs: bytes the optimiser
``allreduce_share``                          all-reduced in the last step; seconds spent in
                                             all-reduces during ``wall_clock``, and their
                                             share of it (``None`` in one process)
==========================================  ==================================================

``on_record`` (of :func:`run_benchmark` and :func:`run_one`) receives each record once it is
durable and checkpointed.

**Consistency under SIGKILL.** Each record is written, flushed and ``fsync``\\ ed before the
checkpoint that covers it, and every checkpoint stores ``num_records``, how many records its run
had written. On resume the run's ``records.jsonl`` is cut back to that many lines, and training
continues from the checkpoint; since a run is deterministic, the records after it are made
again, identical but for the times (:data:`sfn_teach.train.TIMING_FIELDS`). So a kill at any
moment (mid-step, between a record and its checkpoint, or mid-way through writing a
checkpoint, see :mod:`sfn_teach.checkpoint`) loses no record and duplicates none. A run is
finished when its checkpoint is at the last step, or, with ``train.time_budget``, at the step
whose ``wall_clock`` reached the budget; finished runs are skipped on resume. A resumed
time-budgeted run continues until its budget; since its steps are timed anew, it may stop at
another step than an uninterrupted run would (how many steps fit in a time budget depends on
the machine and its load). (For the tests, the fault point ``"record"`` of
:func:`sfn_teach.checkpoint.fault_point` lies between a durable record and its checkpoint.)
``config.json`` is written atomically too (:func:`sfn_teach.checkpoint.write_atomically`, fault
point ``"config-write"``).

**Damage.** A resume uses the newest checkpoint that is intact and whose records are all on
disk and readable; when it has to skip the newest (a corrupt file, or a damaged line among the
records it covers), it warns on standard error, deletes it and continues from the previous
one. When no checkpoint is usable, or ``config.json`` or a record is damaged where nothing can
be remade, :class:`~sfn_teach.bench.rundir.RunDirectoryError` or
:class:`~sfn_teach.checkpoint.CheckpointError` names the file (and line) and nothing is
changed.

**Data parallelism** (``torchrun --nproc-per-node P -m sfn_teach.bench run CONFIG``). Every rank
runs the same benchmark with ``process_group`` set: the same seeds, the same global batches, of
which it trains on its shard (:class:`sfn_teach.train.Trainer`); BatchNorm layers become
:class:`sfn_teach.distributed.SyncBatchNorm`. Only rank 0 writes the run directory (config,
records, checkpoints, report); every rank loads the same checkpoint on resume, and a barrier
keeps rank 0 from writing before all ranks have read it. :func:`data_parallel_config` checks a
config against the torchrun job before anything starts.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import torch
import torch.distributed as dist

from ..checkpoint import CheckpointError, fault_point, load_latest_checkpoint, save_checkpoint
from ..data import DATASETS
from ..device import configure_backends
from ..distributed import Launch, convert_sync_batchnorm, rank
from ..train import Trainer, seed_everything
from .config import (
    BenchmarkConfig,
    build_model,
    channels_last_ignored,
    load_config,
    validate_config,
)
from .fields import ConfigError
from .report import format_table, write_report
from .rundir import (
    CHECKPOINT_FILE,
    RECORDS_FILE,
    check_records,
    prepare_run_dir,
    read_records,
    read_run_config,
    truncate_records,
)

__all__ = [
    "BenchmarkResult", "as_config", "data_parallel_config", "fast_from_environment",
    "load_benchmark", "load_dataset", "print_warning", "report_benchmark", "run_benchmark",
    "run_id", "run_one"
]


def print_warning(message: str) -> None:
    """Print ``message`` on standard error, where warnings go even when progress is off."""
    print(message, file=sys.stderr)


def fast_from_environment() -> bool:
    """Whether ``SFN_TEACH_FAST`` asks for fast mode (set and not ``0``/``false``/empty)."""
    return os.environ.get("SFN_TEACH_FAST", "").lower() not in ("", "0", "false", "no")


def as_config(config) -> BenchmarkConfig:
    """A :class:`BenchmarkConfig` from a config, a path to a config file, or a raw dict."""
    if isinstance(config, BenchmarkConfig):
        return config
    if isinstance(config, dict):
        return validate_config(config)
    return load_config(config)


def run_id(spec, seed) -> str:
    """The name of a run's folder: ``<optimiser slug>-seed<seed>``."""
    return f"{spec.slug}-seed{seed}"


def run_one(config: BenchmarkConfig, spec, seed, dataset, run_dir, *, resume=False,
            progress=True, log=print, warn=print_warning, on_record=None,
            process_group=None) -> list[dict]:
    """Train one ``(optimiser, seed)`` run into ``run_dir``; return all its records.

    ``dataset`` is :func:`load_dataset` ``(config)``, loaded once for all runs. Seeds every
    generator with ``seed`` and builds the model and optimiser; with ``resume``, continues
    from the newest good checkpoint in ``run_dir`` (module docstring, **Damage**; ``warn``
    says so when it had to skip the newest one), else starts afresh. ``on_record(record)`` is
    called after each record is durable and checkpointed (live plots, a tuner's report). With
    ``process_group`` the run is data-parallel (module docstring): rank 0 writes, warns and
    calls ``on_record``, all ranks return the records once they are written.
    """
    run_dir = Path(run_dir)
    writer = rank(process_group) == 0
    records_path, checkpoint_path = run_dir / RECORDS_FILE, run_dir / CHECKPOINT_FILE
    configure_backends(config.device)
    seed_everything(seed)
    model = build_model(config, spec)
    if process_group is not None:
        model = convert_sync_batchnorm(model)
    trainer = Trainer(model, spec.build(model, process_group), dataset,
                      spec.batch_size, seed, cost=config.cost,
                      eval_batch_size=config.eval_batch_size, precision=config.precision,
                      compile=config.compile, warmup_steps=config.warmup_steps,
                      process_group=process_group, curvature_every=config.curvature_every,
                      curvature_batch_size=config.batch_size)
    num_steps, identity = config.num_steps(spec), {"run_id": run_id(spec, seed),
                                                    "optimizer": spec.name, "seed": seed}
    skipped = []  # what was wrong with the newest checkpoint, when it was skipped
    if resume:
        try:
            state, used, skipped = load_latest_checkpoint(
                checkpoint_path, config.device, check=partial(check_records, records_path))
        except CheckpointError as error:
            raise CheckpointError(f"{error}: delete the run folder {run_dir} to run that run "
                                  "again") from None
        for problem in skipped if writer else ():
            warn(f"warning: {problem}; resuming from the previous checkpoint {used} instead")
        if state is not None:
            trainer.load_state_dict(state)
    if process_group is not None:
        dist.barrier(process_group)  # every rank has read the checkpoint before rank 0 writes
    if writer:
        run_dir.mkdir(parents=True, exist_ok=True)
        if skipped:  # else the next checkpoint would push the one resumed from out of .prev
            checkpoint_path.unlink()
        truncate_records(records_path, trainer.num_records)
    if trainer.finished(num_steps, config.time_budget):
        log(f"{identity['run_id']}: already finished (step {trainer.step} of {num_steps}, "
            f"{trainer.wall_clock:.3g} s of training)")
        return read_records(records_path)
    if not writer:
        trainer.run(num_steps, config.eval_every(spec), progress=False,
                    time_budget=config.time_budget)
        dist.barrier(process_group)  # rank 0 has written the last record
        return read_records(records_path)

    with open(records_path, "a") as records:

        def write(record):
            records.write(json.dumps({**identity, **record}) + "\n")
            records.flush()
            os.fsync(records.fileno())
            fault_point("record")
            if (trainer.num_records % config.checkpoint_every == 0
                    or trainer.finished(num_steps, config.time_budget)):
                save_checkpoint(trainer.state_dict(), checkpoint_path)
            if on_record is not None:
                on_record({**identity, **record})

        trainer.run(num_steps, config.eval_every(spec), write, progress, identity["run_id"],
                    config.time_budget)
    if trainer.compile_error:
        log(f"    torch.compile fell back to the eager model: {trainer.compile_error}")
    if process_group is not None:
        dist.barrier(process_group)
    return read_records(records_path)


def load_dataset(config: BenchmarkConfig, progress=True):
    """The config's task as a :class:`sfn_teach.data.Dataset` on its device, in its dtype.

    ``progress`` shows download bars (CIFAR-10).
    """
    return DATASETS[config.task].load(config.dtype, config.device, progress, **config.data)


def run_benchmark(config, out_dir, *, fast=None, resume=False, progress=True, log=print,
                  warn=print_warning, on_record=None, process_group=None):
    """Run every ``(optimiser, seed)`` of ``config`` into ``out_dir``, then write the report.

    Args:
        config: a :class:`BenchmarkConfig`, a path to a TOML/JSON file, or a raw dict.
        out_dir: the run directory (created; refused if it holds a benchmark, unless
            ``resume``).
        fast: use the ``[fast]`` budget; ``None`` reads ``SFN_TEACH_FAST``.
        resume: continue an interrupted benchmark in ``out_dir`` (same config required).
        progress: tqdm bars and ``log`` lines; ``False`` is silent but for warnings.
        log: where progress lines go (``print``).
        warn: where warnings go, whatever ``progress`` says (standard error): a corrupt or
            unusable checkpoint that a resume had to skip.
        on_record: called with every record once it is durable.
        process_group: run data-parallel over this ``torch.distributed`` group, one process
            per rank (module docstring; :func:`data_parallel_config` checks the config).

    The config is validated before anything is trained. Returns the
    :class:`BenchmarkResult` (records and summary) after writing the report; on the ranks
    other than 0 of a data-parallel run, which write nothing, ``None``.
    """
    config = as_config(config)
    fast = fast_from_environment() if fast is None else fast
    writer = rank(process_group) == 0
    log = log if progress and writer else (lambda message: None)
    if fast:
        config = config.fast_version()
    out_dir = Path(out_dir)
    prepare_run_dir(out_dir, config, fast, resume, process_group)
    log(f"{config.task} on {config.device}; {config.precision.describe(config.device)}"
        f"{'; torch.compile on' if config.compile else ''}")
    note = channels_last_ignored(config)
    if note:
        log(f"note: {note}")
    dataset = load_dataset(config, progress)
    runs = config.runs()
    for index, (spec, seed) in enumerate(runs, start=1):
        log(f"[{index}/{len(runs)}] {spec.name}, seed {seed}: {config.num_steps(spec)} steps "
            f"of batch {spec.batch_size}")
        records = run_one(config, spec, seed, dataset, out_dir / run_id(spec, seed),
                          resume=resume, progress=progress and writer, log=log, warn=warn,
                          on_record=on_record, process_group=process_group)
        last = records[-1]
        log(f"    test loss {last['test_loss']:.4g}, test accuracy {last['test_accuracy']:.3f}, "
            f"{last['wall_clock']:.2f} s, {last['grad_equivalents']:.0f} gradient-equivalents "
            f"({last['example_grad_equivalents']:.3g} per example)")
        if last.get("allreduce_bytes") is not None:
            log(f"    all-reduce: {last['allreduce_bytes']:,} bytes per step, "
                f"{last['allreduce_share']:.1%} of the training time")
    return report_benchmark(out_dir, log=log) if writer else None


def data_parallel_config(config: BenchmarkConfig, launch: Launch) -> BenchmarkConfig:
    """The config of one rank of the torchrun job ``launch``, checked before anything starts.

    Every optimiser's (global) batch size must be divisible by the number of ranks, and
    ``train.curvature_every`` must be off (the diagnostics are for small models, in one
    process). A CUDA config runs each rank on ``cuda:LOCAL_RANK`` with NCCL, so it must say
    ``device = "cuda"`` (or ``"auto"``), not one GPU, and the machine needs a GPU per local
    rank. Raises :class:`ConfigError` naming the field; returns the config on this rank's
    device.
    """
    for i, spec in enumerate(config.optimizers):
        if spec.batch_size % launch.size:
            field = (f"optimizers[{i}].batch_size" if "batch_size" in config.raw["optimizers"][i]
                     else "train.batch_size")
            raise ConfigError(field, f"{spec.batch_size} (of {spec.name}) must be divisible by "
                              f"the number of torchrun processes, {launch.size}, so that every "
                              "rank gets an equal shard of each batch")
    if config.curvature_every is not None:
        raise ConfigError("train.curvature_every", "the curvature diagnostics run in one "
                          "process: leave it out under torchrun")
    if config.device.type != "cuda":
        return config
    if config.device.index is not None:
        raise ConfigError("device", f"{str(config.device)!r} names one GPU, but under torchrun "
                          "each rank uses its own (cuda:LOCAL_RANK): set device = 'cuda'")
    available = torch.cuda.device_count()
    if launch.local_size > available:
        raise ConfigError("device", f"torchrun starts {launch.local_size} processes on this "
                          f"machine, but it has {available} GPU(s) and NCCL needs one per "
                          f"process: use --nproc-per-node {available} or fewer")
    return replace(config, device=torch.device("cuda", launch.local_rank))


def load_benchmark(out_dir):
    """``(config, records)`` of a run directory: its validated config and every record.

    Records come optimiser by optimiser, seed by seed, as in the config; runs that have not
    started yet are absent.
    """
    out_dir = Path(out_dir)
    stored = read_run_config(out_dir)
    config = validate_config(stored["config"], stored["name"])
    if stored["fast"]:
        config = config.fast_version()
    records = []
    for spec, seed in config.runs():
        path = out_dir / run_id(spec, seed) / RECORDS_FILE
        if path.exists():
            records += read_records(path)
    return config, records


@dataclass(frozen=True)
class BenchmarkResult:
    """A benchmark's run directory, read back: its config, every record and the summary."""

    out_dir: Path
    config: BenchmarkConfig
    records: list  # one dict per evaluation, optimiser by optimiser, seed by seed
    summary: list  # one row per optimiser (sfn_teach.bench.report.summarise)

    @property
    def table(self) -> str:
        """The summary as a Markdown table (median [min–max] over seeds)."""
        return format_table(self.summary, self.config.target_loss, self.config.target_split)


def report_benchmark(out_dir, log=print) -> BenchmarkResult:
    """Write the summary table and figures of the run directory ``out_dir``; read it back."""
    out_dir = Path(out_dir)
    config, records = load_benchmark(out_dir)
    machine = read_run_config(out_dir).get("machine", "")
    summary = write_report(out_dir, config, records, machine=machine, log=log)
    return BenchmarkResult(out_dir, config, records, summary)
