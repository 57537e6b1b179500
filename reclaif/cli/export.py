"""`reclaif export pairs`: a run's judged pairs as a Hugging Face dataset (TRL's formats)."""
from __future__ import annotations

import argparse

from reclaif.cli.common import handler
from reclaif.llm.models import load_tokenizer
from reclaif.pipeline.export import FORMATS, export_pairs
from reclaif.pipeline.store import RunStore


def register(sub: argparse._SubParsersAction) -> None:
    export = sub.add_parser("export", help="a run's data for other tools")
    esub = export.add_subparsers(dest="export_command", required=True, metavar="WHAT")
    p = esub.add_parser("pairs", help="judged pairs as a Hugging Face parquet dataset (TRL)")
    p.add_argument("run_dir", help="run directory (runs/NAME)")
    p.add_argument("--iteration", type=int, default=0, help="one iteration (default: all)")
    p.add_argument("--format", default="conversational", choices=FORMATS,
                   help="TRL's conversational rows (messages; default) or standard rows (the "
                        "prompt rendered by the run's own chat template)")
    p.add_argument("--out", required=True, help="output directory (gets train.parquet)")
    handler(p, pairs)


def pairs(args: argparse.Namespace) -> int:
    store = RunStore(args.run_dir)
    store.require_run()
    tok = None
    if args.format == "standard":
        cfg = store.load_config()
        tok = load_tokenizer(cfg.recommender.model, cfg.recommender.cache_dir or None)
    out = export_pairs(args.run_dir, args.out, args.iteration, args.format, tok)
    print(f"{out}: load it with datasets.load_dataset({str(out.parent)!r})")
    return 0
