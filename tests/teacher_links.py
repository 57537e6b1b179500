"""Can the student learn the teacher's reasons from its prompt? (issue 31) Measured on a
finished run's SFT prompts, before (its sft/teacher.jsonl as written) and after (the same
examples, their tag evidence rewritten by this checkout, answered by this checkout's teacher):

    python tests/teacher_links.py --run RUN [--data sample] [--tokens]
    python tests/teacher_links.py --fit 256 --data sample:beauty [--tokens]

--fit N (no run; any sequential data, Beauty too): the data's first training prompt of each
of N users, with transition (and for music tag_overlap) evidence fitted on all its training
windows, not out of fold (a label's own transition is counted, so labelled items link more
often than out of fold) and without SASRec (seconds; the fillers follow the transitions'
order), answered by this checkout's teacher: "after" only.

- shown: the share of reasons whose every cited tag or field and history item appears on that
  candidate's prompt line (music: a tag the line's evidence shows, the artist it names "with",
  or the last artist where the line shows "N listeners next"; Beauty: a field its line
  displays, shown on the named history item's line too, or the "N buyers next" transition);
- keys_shown: the share of key features the prompt shows verbatim (its "Distinctive tags:" /
  "Distinctive fields:" line);
- linked: the judge's share of reasons linked to the history (reclaif/judge/links.py), and its
  share of distinct key-feature sets;
- junk keys: key preferences whose feature fails `descriptive_idf` (too few artists carry it);
- with --tokens: prompt tokens (mean, max; chat template, the run's tokenizer) and the longest
  answer, as the driver counts them, and how many prompt+answer exceed --max-length; with
  --run, also the run's held-out evaluation prompts rebuilt by this checkout.
- eval_prompts (with --run): the same measures of this teacher's answers to the run's held-out
  prompts (their key features do not depend on the label: the distinct share a student that
  states the prompt's key features would reach on the evaluated users).

The after prompts show all candidates (the driver's fit_answered may drop some where a
prompt and its answer exceed sft.max_length; the --tokens line says how close they come).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import re
import statistics
import sys
from pathlib import Path

from reclaif.data import load_examples, load_items
from reclaif.data.features import cited_name, descriptive_idf, item_features
from reclaif.data.interactions import fit_windows
from reclaif.evidence.models import EvidenceModels, read_evidence
from reclaif.judge.links import explanation_shares
from reclaif.parsing import parse_recommendation
from reclaif.prompts import display_item, render_recommender
from reclaif.records import Example, Item
from reclaif.teacher import OfflineTeacher

TOP_K = 3
# The teacher's own template words, never a citation ("like" and "pick" are HetRec tags too).
_TEMPLATE_RE = re.compile(r"less obvious pick|no shared (?:tag|field)|follows|\blike\b|"
                          r"sasrec\s*#\s*\d+|\d+ (?:listeners|buyers) next", re.I)
_WORD_RE = re.compile(r"[^\s,;.()]+")


def _norm(text: str) -> list[str]:
    return _WORD_RE.findall(text.casefold())


def cited(reason: str, ex: Example, items: dict[str, Item], tags: frozenset[str]
          ) -> tuple[set[str], set[str]]:
    """(tags, history ids) a reason cites: history artists named whole, then the longest
    catalogue tags its remaining words spell (no tag inside a longer cited one)."""
    text = _TEMPLATE_RE.sub(" ", reason)
    names = set()
    for h in dict.fromkeys(ex.context):
        title = items[h].title if h in items else h
        pattern = rf"(?<!\w){re.escape(title.casefold())}(?!\w)"
        if re.search(pattern, text.casefold()):
            names.add(h)
            text = re.sub(pattern, " ", text.casefold())
    words = _norm(text)
    found: list[tuple[int, int]] = []
    for n in range(6, 0, -1):
        for i in range(len(words) - n + 1):
            if " ".join(words[i:i + n]) in tags and not any(a <= i and i + n <= b
                                                            for a, b in found):
                found.append((i, i + n))
    return {" ".join(words[a:b]) for a, b in found}, names


def line_shows(line: str, tag: str | None, holder_title: str | None, last: bool) -> bool:
    """Whether a candidate's prompt line ("Title (fields) [evidence]") shows a cited tag (in
    its evidence's tags, or its displayed fields) or history artist (the one its evidence names
    "with", or the last one where it shows "N listeners next")."""
    head, _, evidence = line.partition(" [")
    evidence = evidence.removesuffix("]")
    ev = read_evidence(evidence)
    if tag is not None:
        return tag in {t.casefold() for t in ev.tags} or bool(
            re.search(rf"(?<!\w){re.escape(tag)}(?!\w)", head.casefold()))
    return f" with {holder_title.replace(';', ',')} (".casefold() in evidence.casefold() or (
        last and bool(ev.next_counts))


def candidate_lines(prompt: str) -> list[str]:
    block = prompt.split("<<<DATA candidates", 1)[1].split("DATA>>>", 1)[0]
    return [ln[2:] for ln in block.strip().splitlines() if ln.startswith("- ")]


def history_lines(prompt: str) -> list[str]:
    block = prompt.split("<<<DATA history", 1)[1].split("DATA>>>", 1)[0]
    return [ln[2:] for ln in block.strip().splitlines() if ln.startswith("- ")]


def field_reason_shown(reason: str, line: str, ex: Example, items: dict[str, Item],
                       prompt: str) -> tuple[bool, bool]:
    """(cites anything, shows all it cites) for a catalog-field reason (Beauty): each field of
    the item or the history it names ("brand: X") is displayed on the item's line and on
    every history item the reason names; a named last item counts as the shown transition."""
    head, _, evidence = line.partition(" [")
    folded = reason.casefold()
    feats = {f for i in [*ex.context, *ex.candidates]
             for f in item_features(items.get(i), ex.domain) if f.casefold() in folded}
    names = [h for h in dict.fromkeys(ex.context)
             if re.search(rf"(?<!\w){re.escape(cited_name(h, items, ex.domain).casefold())}"
                          rf"(?!\w)", folded)]
    shown_history = dict(zip(ex.context, history_lines(prompt)))
    ok = all(f in head for f in feats)
    for h in names:
        if folded.startswith("follows ") and h == ex.context[-1]:
            ok &= bool(read_evidence(evidence).next_counts)
        else:
            ok &= bool(feats) and all(f in shown_history.get(h, "") for f in feats)
    return bool(feats or names), ok


def measure(rows: list[tuple[Example, str, str]], items: dict[str, Item]) -> dict:
    domain = rows[0][0].domain
    tags = frozenset(f.casefold() for it in items.values() for f in item_features(it, "music"))
    idf = descriptive_idf(items, domain)
    reasons = citing = shown = keys = keys_shown = junk = 0
    answers = []
    for ex, prompt, response in rows:
        rec = parse_recommendation(response, ex, items, TOP_K)
        answers.append((ex, rec))
        lines = candidate_lines(prompt)
        for item, reason in zip(rec.items, rec.reasons):
            head = display_item(item, items, ex.domain)
            line = next((ln for ln in lines if ln == head or ln.startswith(head + " [")), "")
            reasons += 1
            if domain != "music":
                cites, ok = field_reason_shown(reason, line, ex, items, prompt)
                citing += cites
                shown += ok
                continue
            t, h = cited(reason, ex, items, tags)
            citing += bool(t or h)
            ok = all(line_shows(line, x, None, False) for x in t) and all(
                line_shows(line, None, items[x].title, x == ex.context[-1]) for x in h)
            shown += ok
        history = prompt.split("<<<DATA history", 1)[1].split("DATA>>>", 1)[0]
        for phrase in rec.key_features:
            keys += 1
            keys_shown += phrase in history
            feature = phrase.rpartition(" (")[0] or phrase
            junk += feature.casefold() not in idf
    shares = explanation_shares(answers, items)
    return {"reasons": reasons, "citing": citing, "shown": shown,
            "shown_share": round(shown / max(1, reasons), 3),
            "linked_share": round(shares.linked_share or 0, 3),
            "distinct_key_feature_share": round(shares.distinct_share or 0, 3),
            "key_features": keys, "keys_shown_share": round(keys_shown / max(1, keys), 3),
            "junk_key_features": junk}


def retagged(examples: list[Example], items: dict[str, Item]) -> list[Example]:
    """The examples with their tag_overlap parts written by this checkout (the SASRec and
    transition parts kept as the run wrote them: those models are not refitted)."""
    m = EvidenceModels(sources=["tag_overlap"], order="data")
    m._fit_unlearned(items, 0)
    out = []
    for ex in examples:
        fresh = m.annotate(dataclasses.replace(ex, evidence={}), items).evidence
        evidence = {}
        for c in ex.candidates:
            parts = [p for p in ex.evidence.get(c, "").split("; ")
                     if p and not p.startswith("tags: ")]
            parts += [fresh[c]] if c in fresh else []
            if parts:
                evidence[c] = "; ".join(parts)
        out.append(dataclasses.replace(ex, evidence=evidence))
    return out


def fitted(data: str, users: int) -> tuple[list[Example], dict[str, Item]]:
    """--fit: the first training prompt of each of `users` users, with transition (and, for
    music, tag_overlap) evidence fitted on all the data's training windows."""
    items = load_items(data)
    train = load_examples(data, "train")
    firsts: dict[str, Example] = {}
    for ex in train:
        firsts.setdefault(ex.user or ex.id, ex)
    sources = ["transition"] + (["tag_overlap"] if train[0].domain == "music" else [])
    m = EvidenceModels.fit(fit_windows(data, "train", train), items, sources)
    return [m.annotate(ex, items) for ex in list(firsts.values())[:users]], items


def token_counts(prompts: list[str], answers: list[str], max_length: int) -> dict:
    from reclaif.llm.models import load_tokenizer
    from reclaif.train.data import answer_tokens, prompt_tokens

    tok = load_tokenizer("default")
    pt = [len(prompt_tokens(tok, x)) for x in prompts]
    at = [len(answer_tokens(tok, x)) for x in answers]
    out = {"prompt_tokens_mean": round(statistics.mean(pt), 1), "prompt_tokens_max": max(pt)}
    if at:
        out.update(answer_tokens_mean=round(statistics.mean(at), 1), answer_tokens_max=max(at),
                   answers_over_128=sum(x > 128 for x in at),
                   prompt_and_answer_max=max(x + y for x, y in zip(pt, at)),
                   prompt_and_answer_over_max_length=sum(x + y > max_length
                                                         for x, y in zip(pt, at)))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", help="a finished run directory (its sft/teacher.jsonl, evidence/)")
    p.add_argument("--fit", type=int, default=0, help="without --run: users to build prompts for")
    p.add_argument("--data", default="sample")
    p.add_argument("--tokens", action="store_true")
    p.add_argument("--max-length", type=int, default=1216,
                   help="sft.max_length the --tokens line counts prompts+answers over")
    p.add_argument("--show", type=int, default=0, help="after answers to print")
    a = p.parse_args(argv)
    if not a.run and not a.fit:
        p.error("give --run RUN or --fit N")
    teacher_rows: list[dict] = []
    result: dict = {}
    if a.run:
        run = Path(a.run)
        items = load_items(a.data)
        by_id = {ex.id: ex for ex in load_examples(a.data, "train")}
        teacher_rows = [json.loads(x) for x in (run / "sft" / "teacher.jsonl").open()]
        ev = {r["id"]: r for r in map(json.loads, (run / "evidence" / "train.jsonl").open())}
        before = [dataclasses.replace(by_id[r["id"]], candidates=ev[r["id"]]["candidates"],
                                      evidence=ev[r["id"]]["evidence"]) for r in teacher_rows]
        after = retagged(before, items)
        result["before"] = measure([(ex, r["prompt"], r["response"])
                                    for ex, r in zip(before, teacher_rows)], items)
    else:
        after, items = fitted(a.data, a.fit)
    teacher = OfflineTeacher(items, TOP_K)
    answers = teacher.respond_many(after)
    prompts = [render_recommender(ex, items, TOP_K) for ex in after]
    result["after"] = measure(list(zip(after, prompts, answers)), items)
    if a.tokens:
        if teacher_rows:
            result["before"].update(token_counts([r["prompt"] for r in teacher_rows],
                                                 [r["response"] for r in teacher_rows],
                                                 a.max_length))
        result["after"].update(token_counts(prompts, answers, a.max_length))
    if a.run:  # the held-out prompts the proof evaluates, as this checkout renders them
        valid = {ex.id: ex for ex in load_examples(a.data, "valid")}
        rows = [json.loads(x) for x in (run / "evidence" / "eval.jsonl").open()]
        held = retagged([dataclasses.replace(valid[r["id"]], candidates=r["candidates"],
                                             evidence=r["evidence"]) for r in rows], items)
        held_prompts = [render_recommender(ex, items, TOP_K) for ex in held]
        held_answers = teacher.respond_many(held)
        # what the teacher would write there: its key features are what a student copying the
        # prompt's "Distinctive tags" line states, so their distinct share is the student's bar
        result["eval_prompts"] = measure(list(zip(held, held_prompts, held_answers)), items)
        if a.tokens:
            result["eval_prompts"].update(token_counts(held_prompts, held_answers, a.max_length))
    for ex, text in list(zip(after, answers))[:a.show]:
        print(ex.id, "\n", text)
    json.dump(result, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
