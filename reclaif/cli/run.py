"""`reclaif run`, its phases (`sft`, `sample`, `judge run`, `report`) and `reclaif train`."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from reclaif.cli.common import config_args, handler
from reclaif.errors import ConfigError, ReclaifError
from reclaif.pipeline.driver import Driver, run_config, run_phase
from reclaif.pipeline.store import RunStore
from reclaif.pipeline.report import table_markdown, write_report
from reclaif.pipeline.train_command import phase_config, train_phase


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="the driver: SFT then N DPO iterations; rerun to resume")
    config_args(p)
    handler(p, run)
    for phase, text, fn in [("sft", "teacher data + SFT", sft),
                            ("sample", "sample sampling.num_samples answers per prompt", sample),
                            ("report", "rewrite report.md/html of a run directory", report)]:
        p = sub.add_parser(phase, help=f"one phase on a run directory: {text}")
        config_args(p, run_dir_required=True)
        p.add_argument("--iteration", type=int, default=0)
        handler(p, fn)


def register_judge(jsub: argparse._SubParsersAction) -> None:
    p = jsub.add_parser("run", help="judge the samples of one iteration of a run directory")
    config_args(p, run_dir_required=True)
    p.add_argument("--iteration", type=int, required=True)
    handler(p, judge)


def register_train(sub: argparse._SubParsersAction) -> None:
    train = sub.add_parser("train", help="one training phase (runs under any launcher)")
    tsub = train.add_subparsers(dest="train_command", required=True, metavar="PHASE")
    for phase, fn in (("sft", train_sft), ("dpo", train_dpo)):
        p = tsub.add_parser(phase, help=f"{phase.upper()} on a run directory's data")
        config_args(p, run_dir_required=True)
        p.add_argument("--iteration", type=int, default=0, help="DPO iteration (1-based)")
        handler(p, fn)


def run(args: argparse.Namespace) -> int:
    cfg, run_dir = run_config(args.config, args.run_dir, args.overrides)
    t0 = time.time()
    with RunStore(run_dir).exclusive():
        path = Driver(cfg, run_dir).run()
    print(f"\nRun finished in {time.time() - t0:.0f} s. Report: {path} (and report.html)\n")
    print(table_markdown(run_dir))
    return 0


def _phase(args: argparse.Namespace, phase: str) -> int:
    cfg, run_dir = run_config(args.config, args.run_dir, args.overrides)
    with RunStore(run_dir).exclusive():
        print(run_phase(cfg, run_dir, phase, args.iteration))
    return 0


def sft(args: argparse.Namespace) -> int:
    return _phase(args, "sft")


def sample(args: argparse.Namespace) -> int:
    if args.iteration < 1:
        raise ReclaifError("sample: give --iteration N (1-based)")
    return _phase(args, "sample")


def judge(args: argparse.Namespace) -> int:
    return _phase(args, "judge")


def report(args: argparse.Namespace) -> int:
    RunStore(args.run_dir).require_run()
    print(write_report(Path(args.run_dir)))
    return 0


def _train(args: argparse.Namespace, phase: str) -> int:
    cfg = phase_config(args.run_dir, args.config, args.overrides)
    train_phase(phase, cfg, args.run_dir, args.iteration)
    return 0


def train_sft(args: argparse.Namespace) -> int:
    return _train(args, "sft")


def train_dpo(args: argparse.Namespace) -> int:
    if args.iteration < 1:
        raise ConfigError("train dpo: --iteration N (1-based) is required")
    return _train(args, "dpo")
