"""`reclaif judge audit`: how trustworthy were a run's verdicts?

Verdict row format (one JSON object per line; the driver writes RUN/iter-NNN/verdicts.jsonl so):

    {"example_id": "lastfm:sdpo-valid:0",   # Example.id the two answers answer
     "a": "<raw answer text a>",             # as shown to the judge in position A first
     "b": "<raw answer text b>",
     "verdict": {...}}                       # Verdict.to_json(): scores_a, scores_b, choice,
                                             #   raw_text, consistent
    Other keys (the driver adds "prompt") are ignored. A row with "failed": true (a shard the
    judge could not finish after its retries) has no verdict; it is skipped and counted. A
    group row (sampling.num_samples > 2: "answers", "ranking") counts each comparison it
    holds as a verdict row, and adds the group numbers (judge/group_audit.py).

Reported:
- position consistency: the share of verdicts whose position-swapped judgement agreed
  (`consistent`); for a judge that does not swap, trivially 1;
- tie rate, and the a/b/tie split (a large 'a' share with few inconsistencies would mean the
  swap is off and the judge leans to position A);
- agreement with the human labels: among verdicts that chose an answer and whose two answers
  differ in NDCG@k of their parsed rankings against Example.labels, how often the chosen answer
  is the one with the higher NDCG. Pairs equal by the labels are excluded from that rate and
  counted; an invalid answer has NDCG 0 like any miss;
- explanations (with the items): over all valid answers (a and b), the share of reasons linked
  to the history and the share of distinct key-feature sets (`judge/links.py`).
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

from reclaif.errors import ConfigError, DataError
from reclaif.records import Example, Item, Verdict
from reclaif.atomic import read_jsonl
from reclaif.config_load import load_yaml, read_config_text
from reclaif.data import load_examples, load_items
from reclaif.judge.group_audit import format_groups, group_audit, is_group, pairwise_rows
from reclaif.judge.links import explanation_shares
from reclaif.metrics.relevance import ndcg_at_k
from reclaif.parsing import parse_recommendation

REQUIRED = ("example_id", "a", "b", "verdict")


def _verdict(row: dict, n: int) -> Verdict:
    for key in REQUIRED:
        if key not in row:
            raise DataError(f"verdict row {n}: missing field {key!r} (need {list(REQUIRED)})")
    try:
        return Verdict.from_json(row["verdict"])
    except (KeyError, TypeError) as e:
        raise DataError(f"verdict row {n}: field 'verdict' is not a Verdict ({e!r})") from None


def audit(verdict_rows: list[dict], examples: dict[str, Example] | None,
          items: dict[str, Item] | None = None, top_k: int = 3) -> dict:
    """The audit numbers of a list of verdict rows (format in the module docstring). Without
    `examples`, the label agreement is left out; without `items`, titles are the item ids."""

    failed = sum(1 for r in verdict_rows if r.get("failed"))
    groups = [r for r in verdict_rows if not r.get("failed") and is_group(r)]
    verdict_rows = pairwise_rows([r for r in verdict_rows if not r.get("failed")])
    verdicts = [_verdict(r, n) for n, r in enumerate(verdict_rows, 1)]
    n = len(verdicts)
    choices = Counter(v.choice for v in verdicts)
    inconsistent = sum(not v.consistent for v in verdicts)
    out: dict = {
        "verdicts": n,
        "failed_rows": failed,
        "position_consistency": (n - inconsistent) / n if n else None,
        "inconsistent": inconsistent,
        "tie_rate": choices["tie"] / n if n else None,
        "choices": {k: choices[k] for k in ("a", "b", "tie")},
    }
    if groups:
        out["groups"] = group_audit(groups, examples, items, top_k)
    if examples is None:
        return out
    cat = items or {}
    missing, equal, agree, decided_distinct, tie_distinct = 0, 0, 0, 0, 0
    parsed = []  # (example, answer) of both positions, for the explanation shares
    for row, v in zip(verdict_rows, verdicts):
        ex = examples.get(str(row["example_id"]))
        if ex is None:
            missing += 1
            continue
        local = cat if cat else {c: Item(id=c, title=c) for c in ex.candidates}
        recs = [parse_recommendation(row[k], ex, local, top_k) for k in ("a", "b")]
        parsed += [(ex, r) for r in recs]
        # As in evaluation, an invalid answer is a miss whatever its partial list holds.
        ndcg = [ndcg_at_k(r.items, ex.labels, top_k) if r.valid else 0.0 for r in recs]
        if abs(ndcg[0] - ndcg[1]) < 1e-12:
            equal += 1
            continue
        if v.choice == "tie":
            tie_distinct += 1
            continue
        decided_distinct += 1
        agree += (v.choice == "a") == (ndcg[0] > ndcg[1])
    out["label_agreement"] = {
        "rate": agree / decided_distinct if decided_distinct else None,
        "agree": agree,
        "decided": decided_distinct,
        "ties_on_distinct": tie_distinct,
        "equal_by_labels": equal,
        "missing_examples": missing,
        "top_k": top_k,
    }
    if items:  # links are read from the items' tags and fields: none without the catalog
        out["explanations"] = explanation_shares(parsed, items).to_json()
    return out


def read_rows(path: str | Path) -> list[dict]:
    """Verdict rows of a JSONL file; errors name the file and line."""

    rows = read_jsonl(path)
    for n, row in enumerate(rows, 1):
        if not isinstance(row, dict):
            raise DataError(f"{path}: row {n}: expected an object, got {type(row).__name__}")
        comparisons = (row.get("ranking") or {}).get("comparisons", [])  # a group row's
        for verdict in [row.get("verdict")] + [c.get("verdict") for c in comparisons]:
            if isinstance(verdict, dict) and verdict.get("choice") not in ("a", "b", "tie"):
                # counted as neither a, b nor tie, it would vanish from every rate unseen
                raise DataError(f"{path}: row {n}: verdict choice {verdict.get('choice')!r} is "
                                "not 'a', 'b' or 'tie'")
    return rows


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def format_report(res: dict) -> str:
    c = res["choices"]
    lines = [f"verdicts:             {res['verdicts']}"
             + (f" ({res['failed_rows']} failed rows skipped)" if res.get("failed_rows") else ""),
             f"position consistency: {_fmt(res['position_consistency'])} "
             f"({res['inconsistent']} inconsistent)",
             f"tie rate:             {_fmt(res['tie_rate'])}  (a {c['a']}, b {c['b']}, "
             f"tie {c['tie']})"]
    la = res.get("label_agreement")
    if la:
        lines.append(f"label agreement:      {_fmt(la['rate'])}  ({la['agree']} of {la['decided']} "
                     f"decided pairs that differ in NDCG@{la['top_k']}; {la['equal_by_labels']} "
                     f"equal by labels excluded, {la['ties_on_distinct']} ties on distinct pairs"
                     + (f", {la['missing_examples']} rows without their example" if
                        la['missing_examples'] else "") + ")")
    ex = res.get("explanations")
    if ex:
        lines.append(f"explanations:         {_explanation_line(ex)}")
    if res.get("groups"):
        lines += format_groups(res["groups"])
    return "\n".join(lines)


def _explanation_line(ex: dict) -> str:
    return (f"{_fmt(ex['linked_share'])} of reasons linked to the history ({ex['linked']} of "
            f"{ex['reasons']}); {_fmt(ex['distinct_feature_share'])} distinct key-feature sets "
            f"({ex['distinct_feature_sets']} of {ex['feature_sets']} valid answers); "
            f"{_fmt(ex['linkable_share'])} of picks with a link to cite")


def _run_top_k(verdicts: Path, default: int = 3) -> int:
    """data.top_k of the run the verdicts belong to (RUN/config.yaml beside RUN/iter-NNN/)."""
    import yaml

    for cfg in (verdicts.parent / "config.yaml", verdicts.parent.parent / "config.yaml"):
        if cfg.is_file():
            try:  # the config's loader: aliases bounded, non-UTF-8 a ConfigError
                k = (load_yaml(read_config_text(cfg), str(cfg)) or {}).get("data", {}).get("top_k")
            except (yaml.YAMLError, AttributeError, ConfigError):
                k = None
            if isinstance(k, int) and k > 0:
                return k
    return default


def audit_file(verdicts: str | Path, examples_path: str | Path | None = None) -> dict:
    """The audit of a verdicts file; with a dataset, agreement with its human labels too. The
    top-k of the NDCG comparison is the run's data.top_k where the file sits in a run directory."""
    rows = read_rows(verdicts)
    examples = items = None
    top_k = _run_top_k(Path(verdicts))
    if examples_path:

        examples = {e.id: e for e in load_examples(examples_path)}
        try:
            items = load_items(examples_path)
        except (DataError, FileNotFoundError, OSError):
            items = None  # titles default to ids; names in answers then rarely match
    return audit(rows, examples, items, top_k=top_k)
