"""report.md and a self-contained report.html for a run directory, rewritten after every phase.

The table follows the paper: Table 3 (ValidRatio, Hit@1, NDCG@3, Diversity, Expl.) for
sequential tasks, Table 2 (Prec@5, NDCG@5, Diversity, Expl.) for retrieval; one row per stage
(base, SFT, each DPO iteration), plots like the paper's Figure 3, judge statistics, timings and
example recommendations of the base and the latest model side by side.
"""
from __future__ import annotations

import base64
import html
import json
import logging
import re
from pathlib import Path
from typing import Any

from reclaif.atomic import atomic_write_bytes, atomic_write_text, read_jsonl
from reclaif.errors import ReclaifError
from reclaif.evidence.models import evidence_first
from reclaif.judge import RUBRIC_DESCRIPTION
from reclaif.logs import terminal_safe
from reclaif.metrics.evaluate import bootstrap_ci
from reclaif.metrics.paired import default_metrics, paired_differences
from reclaif.pipeline.explanations import (EvalContext, eval_context, example_lines,
                                           share_lines)
from reclaif.pipeline.judge_table import judge_tables
from reclaif.pipeline.store import RunStore
from reclaif.run_layout import BASE, SFT, is_iteration, iteration_dirs, iteration_of
from reclaif.teacher import TEACHER_DESCRIPTION

log = logging.getLogger(__name__)

SEQUENTIAL_COLUMNS = [("ValidRatio", "valid_ratio"), ("Hit@1", "hit@1"), ("NDCG@3", "ndcg@3"),
                      ("Diversity", "diversity"), ("Expl.", "explainability")]
BOOTSTRAP = 1000  # resamples of every interval in the report (seeded: reports are reproducible)
RETRIEVAL_COLUMNS = [("ValidRatio", "valid_ratio"), ("Prec@5", "precision@5"),
                     ("NDCG@5", "ndcg@5"), ("Diversity", "diversity"),
                     ("Expl.", "explainability")]


def metric(result: dict[str, Any], name: str) -> float | None:
    """The mean of one metric in an eval.json written by metrics.evaluate.evaluate_rankings."""
    value = result.get("metrics", result).get(name)
    if isinstance(value, dict):
        value = value.get("mean")
    return value if isinstance(value, (int, float)) else None


def _read_json(f: Path, optional: bool = False) -> Any:
    """A run file the report shows; damaged is one line naming it (or, where `optional`, the
    report goes without it: timings only inform)."""
    try:
        return json.loads(f.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        if optional:
            log.warning("%s: damaged; the report leaves it out", f)
            return {}
        raise ReclaifError(f"{f}: damaged (not UTF-8 JSON); rerun the same `reclaif run` "
                           "command to redo the phase that wrote it") from None


def _config_text(run_dir: Path) -> str:
    """The frozen config's text, only searched for a few settings: undecodable bytes (a
    damaged file) do not stop the report."""
    f = run_dir / "config.yaml"
    return f.read_bytes().decode("utf-8", "replace") if f.is_file() else ""


def stages(run_dir: Path) -> list[tuple[str, dict]]:
    """(stage name, eval.json) in pipeline order: base, sft, iter-001, ..."""
    out = []
    names = [BASE, SFT] + [p.name for p in iteration_dirs(run_dir)]
    for name in names:
        f = run_dir / name / "eval.json"
        if f.exists():
            out.append((name, _read_json(f)))
    return out


def _columns(run_dir: Path) -> list[tuple[str, str]]:
    cfg = _config_text(run_dir)
    return RETRIEVAL_COLUMNS if "dataset: esci" in cfg else SEQUENTIAL_COLUMNS


def _label(stage: str) -> str:
    if stage == "base":
        return "Base (zero-shot)"
    if stage == "sft":
        return "SFT"
    return f"DPO-Iter{iteration_of(stage)}"


def _fmt(v: float | None, expl: bool = False) -> str:
    if v is None:
        return "-"
    return f"{v:.2f}" if expl else f"{v:.4f}"


def _values(result: dict, key: str) -> list[float] | None:
    per = result.get("per_example") or {}
    values = per.get("valid" if key == "valid_ratio" else key)
    return None if values is None else [float(v) for v in values if v is not None]


def _ci(result: dict, key: str) -> tuple[float, float] | None:
    values = _values(result, key)
    return bootstrap_ci(values, BOOTSTRAP) if values else None


def _cell(result: dict, key: str) -> str:
    """Mean and 95% bootstrap interval; explainability as a plain mean (1-100)."""
    v = metric(result, key)
    if key == "explainability" or v is None:
        return _fmt(v, key == "explainability")
    ci = _ci(result, key)
    return f"{v:.3f} [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else f"{v:.3f}"


def evidence_rows(run_dir: Path) -> list[tuple[str, dict]]:
    """(label, result) of the evidence phase's own rankings on the same evaluation examples."""
    f = Path(run_dir) / "evidence" / "baselines.json"
    if not f.is_file():
        return []
    rows = _read_json(f)
    if not isinstance(rows, dict):
        raise ReclaifError(f"{f}: damaged (not a JSON object); rerun the same `reclaif run` "
                           "command to redo the evidence phase")
    # BM25 is the evidence of retrieval runs; in a sequential run it is an eval.baselines row
    retrieval = _columns(Path(run_dir)) == RETRIEVAL_COLUMNS
    names = {"random": "Random", "popularity": "Popularity", "transition": "Transition",
             "sasrec-ce": "SASRec-CE (evidence model)", "sasrec-bce": "SASRec-BCE",
             "bm25": "BM25 (evidence)" if retrieval else "BM25"}
    return [(names.get(k, k), v) for k, v in rows.items()]


def table_rows(run_dir: Path) -> tuple[list[str], list[list[str]]]:
    cols = _columns(Path(run_dir))
    rows = []
    for label, result in evidence_rows(Path(run_dir)):
        rows.append([label] + [_cell(result, key) if key != "explainability" else "-"
                               for _, key in cols])
    st = stages(Path(run_dir))
    most = max((r.get("n_examples") or 0 for _, r in st), default=0)
    for stage, result in st:
        n = result.get("n_examples")
        # eval.base_examples scores the base model on the first n examples only: say so
        label = _label(stage) + (f" (n={n})" if n is not None and n < most else "")
        rows.append([label] + [_cell(result, key) for _, key in cols])
    return ["Model"] + [c for c, _ in cols], rows


def paired_lines(run_dir: Path) -> list[str]:
    """The last iteration against SFT (and against base without SFT) on the same examples:
    mean difference and its paired 95% bootstrap interval, per metric (`metrics.paired`)."""
    st = dict(stages(Path(run_dir)))
    iters = sorted(k for k in st if is_iteration(k))
    ref = "sft" if "sft" in st else "base"
    if not iters or ref not in st:
        return []
    last = iters[-1]
    return [f"- {d.line(_label(last), _label(ref))}"
            for d in paired_differences(st[last], st[ref], resamples=BOOTSTRAP)]


def baseline_paired_lines(run_dir: Path) -> list[str]:
    """The last trained stage (the last iteration, else SFT) against each baseline row on the
    same examples, ranking metrics only (a baseline is always valid and explains nothing): the
    paired form of "above BM25" or "within 0.02 of SASRec", which overlapping intervals of
    two separate rows cannot show."""
    st = dict(stages(Path(run_dir)))
    trained = sorted(k for k in st if is_iteration(k)) or ([SFT] if SFT in st else [])
    if not trained:
        return []
    last = st[trained[-1]]
    ranked = [m for m in default_metrics(last) if m not in ("valid_ratio", "explainability")]
    return [f"- {d.line(_label(trained[-1]), label)}"
            for label, row in evidence_rows(Path(run_dir))
            for d in paired_differences(last, row, ranked, resamples=BOOTSTRAP)]


def agreement_lines(run_dir: Path) -> list[str]:
    """How often each LLM stage's first pick is the evidence's #1 (hybrid runs): a reranker
    that only copies its first stage can match it, never beat it. Where the two differ, how
    often each was right (hit@1 of the stage and of the evidence's own row)."""
    run_dir = Path(run_dir)
    f = run_dir / "evidence" / "eval.jsonl"
    if not f.is_file():
        return []
    first = {str(r["id"]): evidence_first(r.get("evidence") or {}) for r in read_jsonl(f)}
    if not any(first.values()):
        return []
    rows = dict(evidence_rows(run_dir))
    ev = rows.get("SASRec-CE (evidence model)") or rows.get("BM25 (evidence)") or {}
    ev_hit = dict(zip(ev.get("per_example", {}).get("ids", []),
                      ev.get("per_example", {}).get("hit@1", [])))
    out = []
    for stage, result in stages(run_dir):
        pf = run_dir / stage / "predictions.jsonl"
        if not pf.is_file():
            continue
        preds = [r for r in read_jsonl(pf) if r.get("valid") and r.get("items")]
        per = result.get("per_example", {})
        hit = dict(zip(per.get("ids", []), per.get("hit@1", [])))
        same = [r for r in preds if first.get(r["id"]) == r["items"][0]]
        other = [r["id"] for r in preds if first.get(r["id"]) not in (None, r["items"][0])]
        line = (f"- {_label(stage)}: first pick = the evidence's #1 in {len(same)} of "
                f"{len(preds)} valid answers")
        if other and hit and ev_hit:
            line += (f"; of the {len(other)} others, {sum(bool(hit.get(i)) for i in other)} "
                     f"right (the evidence's #1: {sum(bool(ev_hit.get(i)) for i in other)})")
        out.append(line)
    return out


def _stage_labels(run_dir: Path) -> list[tuple[str, str]]:
    return [(_label(s), s) for s, _ in stages(Path(run_dir))]


def table_markdown(run_dir: Path, context: EvalContext | None | bool = True) -> str:
    """The results table and the lines under it; `context`: the evaluation examples the
    explanation shares read (True: load them from the run's config)."""
    if context is True:
        context = eval_context(Path(run_dir))
    head, rows = table_rows(Path(run_dir))
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    paired = paired_lines(Path(run_dir)) + baseline_paired_lines(Path(run_dir))
    if paired:
        lines += [""] + paired
    agree = agreement_lines(Path(run_dir))
    if agree:
        lines += [""] + agree
    shares = share_lines(Path(run_dir), _stage_labels(run_dir), context or None)
    if shares:
        lines += ["", "Explanations of the valid answers (as `reclaif judge audit` counts):"]
        lines += shares
    return "\n".join(lines)


def _plot(run_dir: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    st = stages(run_dir)
    if not st:
        return None
    cols = _columns(run_dir)
    fig, axes = plt.subplots(1, len(cols), figsize=(3.2 * len(cols), 3.0))
    labels = [_label(s) for s, _ in st]
    for ax, (title, key) in zip(axes, cols):
        values = [metric(r, key) or 0.0 for _, r in st]
        cis = [_ci(r, key) if key != "explainability" else None for _, r in st]
        err = [[max(0.0, v - c[0]) if c else 0.0 for v, c in zip(values, cis)],
               [max(0.0, c[1] - v) if c else 0.0 for v, c in zip(values, cis)]]
        ax.bar(range(len(values)), values, color="#4C72B0", yerr=err, capsize=3)
        for label, result in evidence_rows(run_dir):
            if label.startswith("SASRec") and metric(result, key) is not None \
                    and key != "explainability":
                ax.axhline(metric(result, key), color="#C44E52", ls="--", lw=1, label=label)
                ax.legend(fontsize=6)
        ax.set_xticks(range(len(values)), labels, rotation=45, ha="right", fontsize=7)
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    out = run_dir / "plots" / "metrics.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    atomic_write_bytes(out, tmp.read_bytes())
    tmp.unlink()
    return out


def _examples(run_dir: Path, n: int) -> list[dict[str, str]]:
    st = [s for s, _ in stages(run_dir)]
    if len(st) < 2:
        return []
    first, last = st[0], st[-1]
    fa, fb = run_dir / first / "predictions.jsonl", run_dir / last / "predictions.jsonl"
    if not (fa.exists() and fb.exists()):
        return []
    a = {r.get("id"): r for r in read_jsonl(fa) if isinstance(r, dict)}
    b = {r.get("id"): r for r in read_jsonl(fb) if isinstance(r, dict)}
    ids = [i for i in a if i is not None and i in b][:n]
    # model output and ids are outside data: no terminal escapes or controls reach the report
    return [{"id": " ".join(terminal_safe(str(i)).split()),
             first: terminal_safe(str(a[i].get("raw_text", ""))),
             last: terminal_safe(str(b[i].get("raw_text", "")))} for i in ids]


def _descriptions(run_dir: Path) -> list[str]:
    cfg = _config_text(run_dir)
    notes = []
    if "kind: offline" in cfg:
        notes.append("**Teacher (data-derived):** " + TEACHER_DESCRIPTION)
    if "kind: rubric" in cfg:
        notes.append("**Judge (data-derived rubric):** " + RUBRIC_DESCRIPTION)
    manifest = run_dir / "manifest.json"
    if manifest.is_file():
        entry = RunStore(run_dir).manifest()["phases"].get("evidence")  # damaged: one line
        if entry:
            notes.append(f"**Hybrid mode (evidence in the prompt):** {entry.get('description')} "
                         f"Fitted on the training split only ({entry.get('windows', 0):,} "
                         f"interaction windows); training prompts' evidence out of fold "
                         f"({entry.get('folds')} folds), evaluation's from one model fitted on "
                         "all. The evidence model's own ranking is the SASRec row below.")
    return notes


def write_report(run_dir: str | Path, examples_shown: int = 3) -> Path:
    run_dir = Path(run_dir)
    plot = _plot(run_dir)
    head, rows = table_rows(run_dir)
    judge = judge_tables(run_dir, _read_json)
    timings = _read_json(run_dir / "timings.json", optional=True) \
        if (run_dir / "timings.json").exists() else {}
    shown = _examples(run_dir, examples_shown)
    notes = _descriptions(run_dir)
    context = eval_context(run_dir)
    checks = example_lines(run_dir, _stage_labels(run_dir), context)

    md = [f"# RecLAIF run: {run_dir.name}", ""]
    md += [n + "\n" for n in notes]
    md += ["## Results (evaluation split, held out from all training)", "",
           "Each cell: mean [95% bootstrap interval over the same evaluation examples].", "",
           table_markdown(run_dir, context), ""]
    if plot:
        md += ["![metrics](plots/metrics.png)", ""]
    for title, jhead, jrows in judge:
        md += [f"## {title}", "", "| " + " | ".join(jhead) + " |", "|" + "---|" * len(jhead)]
        md += ["| " + " | ".join(r) + " |" for r in jrows] + [""]
    if timings:
        md += ["## Wall time per phase (s)", "", "| Phase | Seconds |", "|---|---|"]
        md += [f"| {k} | {v} |" for k, v in timings.items()] + [""]
    if checks:  # each reason, then the item's features, what it shares, the rubric's link
        md += ["## Explanations a person can check", ""] + checks
    for ex in shown:
        keys = [k for k in ex if k != "id"]
        md += [f"## Example {ex['id']}", ""]
        for k in keys:
            text = ex[k].strip()
            # a fence longer than any backtick run inside: model output cannot close it
            fence = "`" * max(3, 1 + max((len(r) for r in re.findall(r"`+", text)), default=0))
            md += [f"**{_label(k)}:**", "", fence, text, fence, ""]
    atomic_write_text(run_dir / "report.md", "\n".join(md))

    def table_html(h: list[str], rs: list[list[str]]) -> str:
        th = "".join(f"<th>{html.escape(x)}</th>" for x in h)
        trs = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>"
                      for r in rs)
        return f"<table><tr>{th}</tr>{trs}</table>"

    parts = [f"<h1>RecLAIF run: {html.escape(run_dir.name)}</h1>"]
    parts += [f"<p>{html.escape(n.replace('**', ''))}</p>" for n in notes]
    parts += ["<h2>Results</h2>", table_html(head, rows)]
    shares = share_lines(run_dir, _stage_labels(run_dir), context)
    if shares:
        parts += ["<p>Explanations (valid answers):</p><ul>"
                  + "".join(f"<li>{html.escape(x[2:])}</li>" for x in shares) + "</ul>"]
    if plot:
        b64 = base64.b64encode(plot.read_bytes()).decode()
        parts.append(f'<img alt="metrics" src="data:image/png;base64,{b64}">')
    for title, jhead, jrows in judge:
        parts += [f"<h2>{html.escape(title)}</h2>", table_html(jhead, jrows)]
    if timings:
        parts += ["<h2>Wall time per phase (s)</h2>",
                  table_html(["Phase", "Seconds"], [[k, str(v)] for k, v in timings.items()])]
    if checks:
        parts += ["<h2>Explanations a person can check</h2>",
                  f"<pre>{html.escape(chr(10).join(checks))}</pre>"]
    for ex in shown:
        keys = [k for k in ex if k != "id"]
        cells = "".join(f"<td><b>{html.escape(_label(k))}</b><pre>{html.escape(ex[k])}</pre></td>"
                        for k in keys)
        parts += [f"<h3>Example {html.escape(ex['id'])}</h3><table><tr>{cells}</tr></table>"]
    style = ("body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:"
             "collapse}td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top}"
             "pre{white-space:pre-wrap;font-size:12px}")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>RecLAIF report</title>"
            f"<style>{style}</style></head><body>{''.join(parts)}</body></html>")
    atomic_write_text(run_dir / "report.html", page)
    return run_dir / "report.md"
