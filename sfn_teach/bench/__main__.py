"""Command line of the benchmark runner.

    python -m sfn_teach.bench run CONFIG [--out DIR] [--resume] [--fast] [--quiet] [--threads N]
                                         [--device D] [--data-dir DIR] [--cifar10-url URL]
                                         [--set FIELD=VALUE ...]
    python -m sfn_teach.bench CONFIG [...]            (the same as ``run``)
    python -m sfn_teach.bench report DIR
    python -m sfn_teach.bench tune CONFIG [--address ADDR] [--out DIR] [--resume] [--fast] [...]
    torchrun --standalone --nproc-per-node N -m sfn_teach.bench run CONFIG [...]

``run`` validates the config (TOML or JSON) before training anything, trains every optimiser
× seed into ``DIR`` (default ``runs/<config name>``, ``runs/<config name>-fast`` in fast mode)
with progress bars, and writes the summary table and figures. ``--resume`` continues an
interrupted run directory. ``--fast`` (or ``SFN_TEACH_FAST=1``) uses the config's tiny
``[fast]`` budget. ``--set FIELD=VALUE`` overrides a config field before validation
(``--set data.generated=true``, ``--set optimizers[1].lr=0.01``; the value is read as a TOML
value, else taken as a string); ``--device``, ``--data-dir`` and ``--cifar10-url`` are short for
``--set device=…``, ``--set data.dir=…`` and ``--set data.url=…``. ``report`` rewrites the
table and figures of a run directory.

Started by ``torchrun``, ``run`` trains each run data-parallel over the torchrun processes
(NCCL on GPUs, one per process; gloo on CPUs): the config is checked against the job first
(:func:`sfn_teach.bench.runner.data_parallel_config`), only rank 0 prints and writes.

``tune`` tunes every optimiser of CONFIG with Ray Tune's ASHA and re-runs the best settings
over seeds (:mod:`sfn_teach.bench.tune`; ``--address`` or ``RAY_ADDRESS`` attaches to a Ray
cluster, else Ray starts in this process).

Exit status: 0 done; 2 a bad config (a bad field or ``--set``, a config file that is missing,
a folder, not UTF-8 or not TOML/JSON, or ``--resume`` with another config than the run
folder's), before anything is written; 1 any other error (an output folder that cannot be
written, a damaged run folder, missing data, a diverged run, ...); 130 interrupted. An error is
one line on standard error, ``error: ...``, never a traceback. Warnings (a resume that had to
skip the newest checkpoint) go to standard error too, also with ``--quiet``.
"""

import argparse
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from ..checks import SfnTeachError
from ..cpu import thread_budget
from ..distributed import init_process_group, torchrun_launch
from .config import load_config, tomllib
from .fields import ConfigError
from .runner import (
    data_parallel_config,
    fast_from_environment,
    report_benchmark,
    run_benchmark,
)
from .tune import tune_benchmark

__all__ = ["COMMANDS", "add_config_arguments", "main", "make_parser", "overrides", "run"]

COMMANDS = ("run", "report", "tune")


def add_config_arguments(command, out_help, resume_help):
    """The arguments that ``run`` and ``tune`` share: the config, where to write, overrides."""
    command.add_argument("config", type=Path, help="benchmark config (.toml or .json)")
    command.add_argument("--out", type=Path, help=out_help)
    command.add_argument("--resume", action="store_true", help=resume_help)
    command.add_argument("--fast", action="store_true",
                         help="tiny budget from the config's [fast] (and [tune.fast]) table "
                         "(also SFN_TEACH_FAST=1)")
    command.add_argument("--quiet", action="store_true", help="no progress output")
    command.add_argument("--device", metavar="D",
                         help="'cpu', 'cuda', 'cuda:N' or 'auto' (overrides the config's device)")
    command.add_argument("--data-dir", metavar="DIR",
                         help="the folder of the task's files (CIFAR-10: archive and cache; "
                         "default $SFN_TEACH_DATA_DIR/cifar10 or data/cifar10); sets data.dir")
    command.add_argument("--cifar10-url", metavar="URL",
                         help="where to download the CIFAR-10 binary archive from (http(s)://, "
                         "file:// or a path; default $SFN_TEACH_CIFAR10_URL or the authors' "
                         "site); sets data.url")
    command.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                         help="override a config field, e.g. data.generated=true or "
                         "optimizers[1].lr=0.01 (repeatable)")


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sfn_teach.bench",
        description="Benchmark optimisers from a config file, with resumable runs, a summary "
        "table over seeds and figures. 'python -m sfn_teach.bench CONFIG' is short for "
        "'run CONFIG'.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run a benchmark config",
                              description="Train every optimiser x seed of CONFIG and report. "
                              "Started by torchrun, each run is data-parallel over its "
                              "processes.")
    add_config_arguments(run, "run directory (default: runs/<config name>)",
                         "continue an interrupted run directory from its checkpoints")
    run.add_argument("--threads", type=int, metavar="N",
                     help="torch CPU threads (torch.set_num_threads; default: torch's choice, "
                     "or under torchrun cores / local ranks unless OMP_NUM_THREADS is set)")
    report = commands.add_parser("report", help="table and figures of a run directory",
                                 description="Write summary.md, summary.json and the figures "
                                 "of a run directory, and print the table.")
    report.add_argument("dir", type=Path, help="run directory made by 'run'")
    tune = commands.add_parser("tune", help="tune every optimiser with Ray Tune's ASHA",
                               description="Tune each optimiser of CONFIG with ASHA under the "
                               "same budget (the [tune] table), re-run the best settings over "
                               "seeds and report. Needs Ray Tune: pip install -e \".[tune]\".")
    add_config_arguments(tune, "tuning directory (default: runs/<config name>-tune)",
                         "continue an interrupted tuning (Ray Tune's restore)")
    tune.add_argument("--address", metavar="ADDR",
                      help="attach to this Ray cluster (HOST:PORT or ray://HOST:PORT; default "
                      "$RAY_ADDRESS, else Ray starts in this process)")
    return parser


def overrides(args) -> dict:
    """The config fields that the command line sets: ``{"data.dir": "/x", …}``."""
    fields = {}
    for assignment in args.set:
        field, equals, text = assignment.partition("=")
        if not equals or not field:
            raise ConfigError("--set", f"must be FIELD=VALUE, got {assignment!r}")
        try:
            fields[field.strip()] = tomllib.loads(f"value = {text}")["value"]
        except tomllib.TOMLDecodeError:
            fields[field.strip()] = text  # a bare word: a string
    for option, field in (("device", "device"), ("data_dir", "data.dir"),
                          ("cifar10_url", "data.url")):
        if getattr(args, option) is not None:
            fields[field] = getattr(args, option)
    return fields


def run(args, config, fast) -> None:
    """``run``: the benchmark, data-parallel when torchrun started this process."""
    launch = torchrun_launch()
    if launch is not None:
        config = data_parallel_config(config, launch)
    if args.threads is not None:
        if args.threads < 1:
            raise ConfigError("--threads", f"must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    elif launch is not None and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(thread_budget(launch.local_size))  # the ranks share the cores
    out = args.out or Path("runs") / (config.name + ("-fast" if fast else ""))
    if not args.quiet and (launch is None or launch.rank == 0):
        ranks = f" on {launch.size} data-parallel ranks" if launch else ""
        print(f"benchmark {config.name} -> {out}{' (fast mode)' if fast else ''}{ranks}")
    group = None if launch is None else init_process_group(config.device)
    try:
        run_benchmark(config, out, fast=fast, resume=args.resume, progress=not args.quiet,
                      process_group=group)
    finally:
        if group is not None:
            dist.destroy_process_group()


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] not in COMMANDS and not argv[0].startswith("-"):
        argv.insert(0, "run")
    args = make_parser().parse_args(argv)
    launch = torchrun_launch()

    def say(line):  # under torchrun every rank fails alike: rank 0 says why, once
        if launch is None or launch.rank == 0:
            print(line, file=sys.stderr)

    try:
        if args.command == "report":
            report_benchmark(args.dir)
            return 0
        config = load_config(args.config, overrides(args))
        fast = args.fast or fast_from_environment()
        if args.command == "run":
            run(args, config, fast)
        else:
            out = args.out or Path("runs") / f"{config.name}-tune{'-fast' if fast else ''}"
            tune_benchmark(config, out, fast=fast, resume=args.resume, address=args.address,
                           progress=not args.quiet)
    except ConfigError as problem:
        say(f"error: {problem}")
        return 2
    except (SfnTeachError, OSError) as problem:  # every error of the package, and the system's
        say(f"error: {problem}")
        return 1
    except KeyboardInterrupt:
        say("interrupted: continue with --resume")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
