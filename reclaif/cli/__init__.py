"""The `reclaif` command (docs/ARCHITECTURE.md, "Command line": a contract scripts depend on).

Each command group declares its flags in its own module of this package and names a handler,
a function that turns the parsed flags into a call of a typed library function. The group
modules import only torch-free modules at their top (config, errors); a handler imports the
library it calls when it runs, so `reclaif --help` and `reclaif eval` never pay for torch, Ray
or DeepSpeed imports they do not use. No module outside this package reads argv.
"""
from __future__ import annotations

import argparse
import errno
import glob
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence

from reclaif.cli import audit, bench, compare, config, data, export, plan, recommend, run
from reclaif.cli import eval as evaluate
from reclaif.logs import for_terminal, setup_logging
from reclaif.errors import ReclaifError, Terminated


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="reclaif", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    # the `deepspeed` launcher passes --local_rank=N first; the trainer reads LOCAL_RANK instead
    parser.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    data.register(sub)
    evaluate.register(sub)
    recommend.register(sub)
    run.register(sub)
    judge = sub.add_parser("judge", help="judge phase, or audit a verdicts file")
    jsub = judge.add_subparsers(dest="judge_command", required=True, metavar="SUBCOMMAND")
    run.register_judge(jsub)
    audit.register(jsub)
    run.register_train(sub)
    bench.register(sub)
    plan.register(sub)
    config.register(sub)
    export.register(sub)
    compare.register(sub)
    return parser


def _no_gpu_means_cpu_deepspeed() -> None:
    """DeepSpeed, imported by transformers through accelerate, guesses its accelerator and says
    so on *stdout* when no GPU is found, which breaks `--json` output. Where the machine has no
    GPU device node, tell it CPU, as it would decide anyway; a GPU machine keeps auto-detect."""
    if "DS_ACCELERATOR" in os.environ:
        return
    if not (glob.glob("/dev/nvidia[0-9]*") or os.path.exists("/dev/kfd")):
        os.environ["DS_ACCELERATOR"] = "cpu"


_WRITE_ERRORS = (errno.ENOSPC, errno.EACCES, errno.EROFS, errno.EDQUOT, errno.EFBIG, errno.EPERM)


def _terminate(signum: int, frame: object) -> None:
    raise Terminated


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    on_main = threading.current_thread() is threading.main_thread()
    before = signal.signal(signal.SIGTERM, _terminate) if on_main else None
    try:
        return _run(args)
    finally:
        if on_main:  # a caller's own handler (main() called from Python) comes back
            signal.signal(signal.SIGTERM, before)


def _run(args: argparse.Namespace) -> int:
    _no_gpu_means_cpu_deepspeed()
    setup_logging(args.verbose)

    def fail(message: str) -> int:
        # One line for the user; the traceback only with -v (through the redacting logger).
        if args.verbose:
            logging.getLogger("reclaif.cli").debug("traceback", exc_info=True)
        print(f"reclaif: error: {for_terminal(message)}", file=sys.stderr)
        return 2

    try:
        return int(args._handler(args) or 0)
    except ReclaifError as e:
        return fail(str(e))
    except OSError as e:
        if e.errno in _WRITE_ERRORS:
            # Disk full, read-only or unwritable run directory: every write is atomic, so
            # what was finished before is intact and a rerun continues from it.
            return fail(f"cannot write {e.filename or ''}: {e.strerror}. Finished work is "
                        "intact; free space or fix permissions and rerun the same command.")
        if e.filename is not None:
            return fail(f"{e.filename}: {e.strerror or e}")
        raise
    except KeyboardInterrupt:
        print("reclaif: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except Terminated:
        print("reclaif: terminated (SIGTERM); finished work is intact, rerun the same command "
              "to resume", file=sys.stderr)
        return 143


if __name__ == "__main__":
    sys.exit(main())
