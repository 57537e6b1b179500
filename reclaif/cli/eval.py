"""`reclaif eval`: score one predictions file, or build the paper's Table 2/3."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from reclaif.cli.common import count, handler, positive_int
from reclaif.errors import ConfigError, ReclaifError
from reclaif.atomic import atomic_write_json, dumps
from reclaif.comparison.methods import is_learned
from reclaif.comparison.table import build_table, load_table_data, to_markdown
from reclaif.metrics.evaluate import score_predictions
from reclaif.pipeline.inputs import checkpoint_inputs


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="score predictions, or build the paper's Table 2/3")
    p.add_argument("--examples", required=True, help="prepared dataset dir (or examples.jsonl)")
    p.add_argument("--predictions", help="JSONL: {id, items} or {id, text}")
    p.add_argument("--train", help="training dataset dir (for methods that learn)")
    p.add_argument("--methods", help="comma list: random,popularity,sasrec,bm25,dense,"
                                     "model:PATH,llm:NAME")
    p.add_argument("--run", dest="run_dirs", action="append", default=[],
                   help="a run directory whose base/SFT/iteration rows join the table")
    p.add_argument("--k", default="1,3,5", help="cut-offs, comma separated")
    p.add_argument("--top-k", type=positive_int, help="items an answer must rank (default: the task's, "
                                             "3 sequential, 5 retrieval)")
    p.add_argument("--split", help="evaluate only examples of this split")
    p.add_argument("--limit", type=count, default=0,
                   help="evaluate the first N examples (with --methods: the first N that pass "
                        "the held-out check)")
    p.add_argument("--max-new-tokens", type=positive_int, default=256,
                   help="answer token limit of llm:/model: methods (the driver's "
                        "eval.max_new_tokens; the quickstart uses 128)")
    p.add_argument("--bootstrap", type=count, default=1000, help="bootstrap resamples for 95%% CI")
    p.add_argument("--no-diversity", action="store_true", help="skip the embedding diversity")
    p.add_argument("--out", help="write the JSON result here")
    handler(p, evaluate)


def parse_ks(text: str) -> list[int]:
    try:
        ks = [int(k) for k in str(text).split(",") if k.strip()]
    except ValueError:
        ks = []
    if not ks or min(ks) <= 0:
        raise ConfigError(f"--k: expected positive integers separated by commas, got {text!r}")
    return ks


def evaluate(args: argparse.Namespace) -> int:
    """`--predictions` scores one file; `--methods`/`--run` build the paper's table."""
    if args.methods or args.run_dirs:
        return table(args)
    if not args.predictions:
        raise ReclaifError("eval: give --predictions FILE, or --methods LIST / --run DIR")
    if args.out and Path(args.out).resolve() == Path(args.predictions).resolve():
        raise ConfigError(f"--out {args.out}: is the --predictions file; writing the scores "
                          "there would replace the predictions")

    result = score_predictions(args.examples, args.predictions, parse_ks(args.k),
                               split=args.split, limit=args.limit, top_k=args.top_k,
                               diversity=not args.no_diversity, resamples=args.bootstrap)
    if result["n_missing"]:
        print(f"reclaif eval: {result['n_missing']} of {result['n_examples']} examples have no "
              f"prediction and count as misses", file=sys.stderr)
    print(dumps({k: v for k, v in result.items() if k != "per_example"}, indent=2))
    if args.out:
        atomic_write_json(args.out, result)
    return 0


def table(args: argparse.Namespace) -> int:
    ks = parse_ks(args.k)
    examples, train, items = load_table_data(args.examples, args.split, args.train)
    methods = [m.strip() for m in (args.methods or "").split(",") if m.strip()]
    learned = [m for m in methods if is_learned(m)]
    if learned and not train:
        raise ReclaifError(f"methods {', '.join(learned)} learn from training data: "
                           "give --train DIR")
    result = build_table(examples, train, items, methods, ks, args.bootstrap,
                         diversity=not args.no_diversity, run_dirs=args.run_dirs,
                         eval_path=str(args.examples), train_path=str(args.train or ""),
                         limit=args.limit, max_new_tokens=args.max_new_tokens,
                         model_inputs=checkpoint_inputs(methods))
    print(to_markdown(result))
    if args.out:
        atomic_write_json(args.out, result)
    return 0
