"""Command line of the benchmark runner.

    python -m sfn_teach.bench run CONFIG [--out DIR] [--resume] [--fast] [--quiet] [--threads N]
    python -m sfn_teach.bench CONFIG [...]            (the same as ``run``)
    python -m sfn_teach.bench report DIR

``run`` validates the config (TOML or JSON) before training anything, trains every optimiser
× seed into ``DIR`` (default ``runs/<config name>``, ``runs/<config name>-fast`` in fast mode)
with progress bars, and writes the summary table and figures. ``--resume`` continues an
interrupted run directory. ``--fast`` (or ``SFN_TEACH_FAST=1``) uses the config's tiny
``[fast]`` budget. ``report`` rewrites the table and figures of a run directory.
Exit status: 0 done, 2 bad config, 1 another error, 130 interrupted.
"""

import argparse
import sys
from pathlib import Path

import torch

from ..checkpoint import CheckpointError
from ..data import DataError
from ..optim import NonFiniteStepError
from .config import ConfigError, load_config
from .runner import fast_from_environment, report_benchmark, run_benchmark

COMMANDS = ("run", "report")


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sfn_teach.bench",
        description="Benchmark optimisers from a config file, with resumable runs, a summary "
        "table over seeds and figures. 'python -m sfn_teach.bench CONFIG' is short for "
        "'run CONFIG'.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run a benchmark config",
                              description="Train every optimiser x seed of CONFIG and report.")
    run.add_argument("config", type=Path, help="benchmark config (.toml or .json)")
    run.add_argument("--out", type=Path, help="run directory (default: runs/<config name>)")
    run.add_argument("--resume", action="store_true",
                     help="continue an interrupted run directory from its checkpoints")
    run.add_argument("--fast", action="store_true",
                     help="tiny budget from the config's [fast] table (also SFN_TEACH_FAST=1)")
    run.add_argument("--quiet", action="store_true", help="no progress output")
    run.add_argument("--threads", type=int, metavar="N",
                     help="torch CPU threads (torch.set_num_threads; default: torch's choice)")
    report = commands.add_parser("report", help="table and figures of a run directory",
                                 description="Write summary.md, summary.json and the figures "
                                 "of a run directory, and print the table.")
    report.add_argument("dir", type=Path, help="run directory made by 'run'")
    return parser


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] not in COMMANDS and not argv[0].startswith("-"):
        argv.insert(0, "run")
    args = make_parser().parse_args(argv)
    try:
        if args.command == "report":
            report_benchmark(args.dir)
            return 0
        config = load_config(args.config)
        if args.threads is not None:
            if args.threads < 1:
                raise ConfigError("--threads", f"must be >= 1, got {args.threads}")
            torch.set_num_threads(args.threads)
        fast = args.fast or fast_from_environment()
        out = args.out or Path("runs") / (config.name + ("-fast" if fast else ""))
        if not args.quiet:
            print(f"benchmark {config.name} -> {out}{' (fast mode)' if fast else ''}")
        run_benchmark(config, out, fast=fast, resume=args.resume, progress=not args.quiet)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except (DataError, CheckpointError, NonFiniteStepError, FileExistsError,
            FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: continue with --resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
