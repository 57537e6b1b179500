"""The `reclaif` command (docs/ARCHITECTURE.md, "Command line": a contract scripts depend on).

The parser is declared here in one place; each command's work lives in the module named in
its `_handler` string and is imported only when that command runs, so `reclaif --help` and
`reclaif eval` never pay for torch, Ray or DeepSpeed imports they do not use.
"""
from __future__ import annotations

import argparse
import errno
import glob
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from reclaif.config import LOGPROB_KERNELS, LOGPROB_WEIGHT_GRADS
from reclaif.logs import redact, setup_logging


def _handler(p: argparse.ArgumentParser, target: str) -> None:
    p.set_defaults(_target=target)


def _config_args(p: argparse.ArgumentParser, run_dir_required: bool = False) -> None:
    p.add_argument("--config", help="run config YAML (configs/*.yaml)")
    p.add_argument("--run-dir", required=run_dir_required, help="run directory (runs/NAME)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="reclaif", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    # the `deepspeed` launcher passes --local_rank=N first; the trainer reads LOCAL_RANK instead
    parser.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    # data ------------------------------------------------------------------------------
    data = sub.add_parser("data", help="prepare datasets, print their statistics")
    dsub = data.add_subparsers(dest="data_command", required=True, metavar="SUBCOMMAND")
    p = dsub.add_parser("prepare", help="raw dataset files → examples.jsonl, items.jsonl, stats.json")
    p.add_argument("--dataset", required=True, choices=["lastfm", "beauty", "esci"])
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
    _handler(p, "reclaif.data.prepare:cmd_prepare")
    p = dsub.add_parser("stats", help="Table-1 counts of a prepared dataset directory")
    p.add_argument("dirs", nargs="+", help="prepared dataset directories")
    _handler(p, "reclaif.data.prepare:cmd_stats")

    # eval ------------------------------------------------------------------------------
    p = sub.add_parser("eval", help="score predictions, or build the paper's Table 2/3")
    p.add_argument("--examples", required=True, help="prepared dataset dir (or examples.jsonl)")
    p.add_argument("--predictions", help="JSONL: {id, items} or {id, text}")
    p.add_argument("--train", help="training dataset dir (for methods that learn)")
    p.add_argument("--methods", help="comma list: random,popularity,sasrec,bm25,dense,"
                                     "model:PATH,llm:NAME")
    p.add_argument("--run", dest="run_dirs", action="append", default=[],
                   help="a run directory whose base/SFT/iteration rows join the table")
    p.add_argument("--k", default="1,3,5", help="cut-offs, comma separated")
    p.add_argument("--top-k", type=int, help="items an answer must rank (default: the task's, "
                                             "3 sequential, 5 retrieval)")
    p.add_argument("--split", help="evaluate only examples of this split")
    p.add_argument("--limit", type=int, default=0,
                   help="evaluate the first N examples (with --methods: the first N that pass "
                        "the held-out check)")
    p.add_argument("--max-new-tokens", type=int, default=256,
                   help="answer token limit of llm:/model: methods (the driver's "
                        "eval.max_new_tokens; the quickstart uses 128)")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for 95%% CI")
    p.add_argument("--no-diversity", action="store_true", help="skip the embedding diversity")
    p.add_argument("--out", help="write the JSON result here")
    _handler(p, "reclaif.cli:cmd_eval")

    # recommend -------------------------------------------------------------------------
    p = sub.add_parser("recommend", help="one recommendation from a model")
    p.add_argument("--model", default="default", help="checkpoint dir, HF dir, or 'default'")
    p.add_argument("--backend", default="hf", help="hf, vllm, bedrock, openai_compat")
    p.add_argument("--base-url", help="openai_compat: the endpoint, e.g. http://host:8000/v1")
    p.add_argument("--api-key-env", default="OPENAI_API_KEY",
                   help="openai_compat: the environment variable that holds the API key")
    p.add_argument("--domain", default="music", choices=["music", "beauty", "product_search"])
    p.add_argument("--history", help="'a; b; c' (sequential task)")
    p.add_argument("--query", help="search query (retrieval task)")
    p.add_argument("--candidates", required=True, help="'x; y; z'")
    p.add_argument("--top-k", type=int, default=3)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print the Recommendation as JSON")
    _handler(p, "reclaif.recommender:cmd_recommend")

    # run and its phases -----------------------------------------------------------------
    p = sub.add_parser("run", help="the driver: SFT then N DPO iterations; rerun to resume")
    _config_args(p)
    _handler(p, "reclaif.pipeline.driver:cmd_run")
    for phase, text in [("sft", "teacher data + SFT"), ("sample", "sample two answers per prompt"),
                        ("report", "rewrite report.md/html of a run directory")]:
        p = sub.add_parser(phase, help=f"one phase on a run directory: {text}")
        _config_args(p, run_dir_required=True)
        p.add_argument("--iteration", type=int, default=0)
        _handler(p, f"reclaif.pipeline.driver:cmd_phase_{phase}")

    judge = sub.add_parser("judge", help="judge phase, or audit a verdicts file")
    jsub = judge.add_subparsers(dest="judge_command", required=True, metavar="SUBCOMMAND")
    p = jsub.add_parser("run", help="judge the samples of one iteration of a run directory")
    _config_args(p, run_dir_required=True)
    p.add_argument("--iteration", type=int, required=True)
    _handler(p, "reclaif.pipeline.driver:cmd_phase_judge")
    p = jsub.add_parser("audit", help="position consistency, ties, agreement with labels")
    p.add_argument("verdicts", help="verdicts JSONL (a run's iter-NNN/verdicts.jsonl)")
    p.add_argument("--examples", help="dataset dir, for agreement with the human labels")
    p.add_argument("--json", action="store_true")
    _handler(p, "reclaif.judge.audit:cmd_audit")

    train = sub.add_parser("train", help="one training phase (runs under any launcher)")
    tsub = train.add_subparsers(dest="train_command", required=True, metavar="PHASE")
    for phase in ("sft", "dpo"):
        p = tsub.add_parser(phase, help=f"{phase.upper()} on a run directory's data")
        _config_args(p, run_dir_required=True)
        p.add_argument("--iteration", type=int, default=0, help="DPO iteration (1-based)")
        _handler(p, f"reclaif.pipeline.train_command:cmd_train_{phase}")

    # bench and plan ---------------------------------------------------------------------
    p = sub.add_parser("bench", help="benchmarks: ratios measured side by side")
    p.add_argument("name", choices=["logprobs", "sampling", "train", "e2e", "peer"])
    p.add_argument("--json", action="store_true")
    p.add_argument("--quick", action="store_true", help="smaller shapes (smoke test)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                   help="logprobs, train: where the variants run")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                   help="logprobs, train: dtype of hidden states, weights and model")
    p.add_argument("--chunk", type=int, default=None,
                   help="logprobs: token chunk of the fused kernel (default 256)")
    p.add_argument("--kernel", choices=LOGPROB_KERNELS, default="auto",
                   help="logprobs: the fused kernel's inner loop over each chunk (auto: triton "
                        "on CUDA where it is installed, else torch)")
    p.add_argument("--weight-grad", choices=LOGPROB_WEIGHT_GRADS, default=None,
                   help="logprobs: where a bf16 weight's gradient sums over chunks (fp32 "
                        "accumulator, the default, or the weight's dtype)")
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="sampling: tokens generated per prompt (default: the sampling "
                        "config's, 256)")
    p.add_argument("--num-samples", type=int, default=None,
                   help="sampling: answers per prompt (default: the sampling config's, 2)")
    p.add_argument("--with-generate", action="store_true",
                   help="sampling: also time the batches with transformers' generate")
    p.add_argument("--steps", type=int, default=None,
                   help="peer: timed DPO steps per run of each side (default 3, --quick 1; "
                        "with more than 1, one more untimed warm-up step runs first)")
    p.add_argument("--gradient-checkpointing", action="store_true",
                   help="peer: the project's side trains with dpo.gradient_checkpointing "
                        "(TRL's side without, its fastest setting)")
    _handler(p, "reclaif.bench:cmd_bench")

    p = sub.add_parser("plan", help="memory and time plan for a cluster run")
    p.add_argument("--config", required=True)
    p.add_argument("--gpus", type=int, required=True, help="GPUs per node")
    p.add_argument("--nodes", type=int, default=1)
    p.add_argument("--gpu-memory-gb", type=float, default=80.0)
    p.add_argument("--json", action="store_true")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides")
    # Assumptions of the estimate; defaults live in reclaif.plan.Assumptions.
    for flag, typ, text in [("--peak-tflops", float, "GPU peak TFLOPS (default 312, A100 bf16)"),
                            ("--mfu", float, "training MFU (default 0.40)"),
                            ("--sampling-mfu", float, "sampling MFU (default 0.10)"),
                            ("--judge-latency-s", float, "seconds per remote LLM call (default 10)"),
                            ("--headroom", float, "memory fraction kept free (default 0.10)"),
                            ("--overhead-gb", float, "CUDA/NCCL overhead per GPU (default 2)"),
                            ("--prompts", int, "training prompts (default: config, else 60%% of "
                                                    "the paper's Table 1 users)"),
                            ("--eval-prompts", int, "eval prompts (default: config, else 20%%)"),
                            ("--prompt-tokens", int, "mean prompt tokens (default 600)")]:
        p.add_argument(flag, type=typ, help=text)
    _handler(p, "reclaif.plan:cmd_plan")
    return parser


def cmd_eval(args: argparse.Namespace) -> int:
    """`--predictions` scores one file; `--methods`/`--run` build the paper's table."""
    from reclaif.errors import ReclaifError

    if args.methods or args.run_dirs:
        from reclaif.baselines.table import cmd_table

        return cmd_table(args)
    if not args.predictions:
        raise ReclaifError("eval: give --predictions FILE, or --methods LIST / --run DIR")
    from reclaif.metrics.evaluate import cmd_eval_predictions

    return cmd_eval_predictions(args)


def _no_gpu_means_cpu_deepspeed() -> None:
    """DeepSpeed, imported by transformers through accelerate, guesses its accelerator and says
    so on *stdout* when no GPU is found, which breaks `--json` output. Where the machine has no
    GPU device node, tell it CPU, as it would decide anyway; a GPU machine keeps auto-detect."""
    if "DS_ACCELERATOR" in os.environ:
        return
    if not (glob.glob("/dev/nvidia[0-9]*") or os.path.exists("/dev/kfd")):
        os.environ["DS_ACCELERATOR"] = "cpu"


_WRITE_ERRORS = (errno.ENOSPC, errno.EACCES, errno.EROFS, errno.EDQUOT, errno.EFBIG, errno.EPERM)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _no_gpu_means_cpu_deepspeed()
    setup_logging(args.verbose)
    module, func = args._target.split(":")
    from reclaif.errors import ReclaifError

    def fail(message: str) -> int:
        # One line for the user; the traceback only with -v (through the redacting logger).
        if args.verbose:
            logging.getLogger("reclaif.cli").debug("traceback", exc_info=True)
        print(f"reclaif: error: {redact(message)}", file=sys.stderr)
        return 2

    try:
        return int(getattr(importlib.import_module(module), func)(args) or 0)
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


if __name__ == "__main__":
    sys.exit(main())
