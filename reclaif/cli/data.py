"""`reclaif data prepare|stats`."""
from __future__ import annotations

import argparse

from reclaif.cli.common import handler
from reclaif.config import DataConfig, choices
from reclaif.data import resolve_data_dir
from reclaif.data.prepare import format_table, prepare as prepare_dir, read_stats


def register(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="prepare datasets, print their statistics")
    dsub = data.add_subparsers(dest="data_command", required=True, metavar="SUBCOMMAND")
    p = dsub.add_parser("prepare", help="raw dataset files → examples.jsonl, items.jsonl, stats.json")
    p.add_argument("--dataset", required=True, choices=choices(DataConfig, "dataset"))
    p.add_argument("--source", required=True,
                   help="lastfm: S-DPO json or LLaRA jsonl(.gz); beauty: benchmark csv(.gz); "
                        "esci: examples parquet or joined csv/parquet")
    p.add_argument("--items", help="item metadata: lastfm: HetRec dir; beauty: meta csv or "
                                   "meta_*.jsonl; esci: products parquet (official layout)")
    p.add_argument("--id2name", help="lastfm: LLaRA id2name.txt (default: beside --source)")
    p.add_argument("--split", help="split name written into the examples (default: from file)")
    p.add_argument("--seed", type=int, default=0, help="candidate sampling / split seed")
    p.add_argument("--limit", type=int, default=0, help="keep only the first N examples")
    p.add_argument("--shard-size", type=int, default=0,
                   help="write examples in shards of N lines (examples-00000.jsonl ...)")
    p.add_argument("--out", required=True, help="output directory")
    handler(p, prepare)
    p = dsub.add_parser("stats", help="Table-1 counts of a prepared dataset directory")
    p.add_argument("dirs", nargs="+", help="prepared dataset directories")
    handler(p, stats)


def prepare(args: argparse.Namespace) -> int:
    result = prepare_dir(args.dataset, args.source, args.out, items=args.items,
                         id2name=args.id2name, split=args.split, seed=args.seed,
                         limit=args.limit, shard_size=args.shard_size)
    print(format_table([(args.out, result)]))
    return 0


def stats(args: argparse.Namespace) -> int:
    print(format_table([(d, read_stats(resolve_data_dir(d))) for d in args.dirs]))
    return 0
