"""The offline teacher on real LastFM and Amazon Beauty prompts, and the LLM teacher's wiring."""
from __future__ import annotations

import dataclasses
import math
import re

import pytest

from reclaif.config import LLMSpec, TeacherConfig
from reclaif.data import beauty, lastfm
from reclaif.data.features import candidate_link, descriptive_idf
from reclaif.errors import ConfigError
from reclaif.evidence.models import evidence_first, read_evidence
from reclaif.judge.explainability import grounding
from reclaif.llm.base import LLMClient
from reclaif.parsing import parse_recommendation
from reclaif.prompts import display_item
from reclaif.records import Example
from reclaif.teacher import (FILL_WINDOW, TEACHER_DESCRIPTION, LLMTeacher, OfflineTeacher,
                             item_features, make_teacher)

TOP_K = 3


@pytest.fixture(scope="module")
def music(real_data):
    return lastfm.load(real_data / "lastfm" / "sdpo" / "lastfm-val.json", limit=25)


@pytest.fixture(scope="module")
def beauty_data(real_data):
    return beauty.load(real_data / "beauty" / "All_Beauty.valid.csv.gz", limit=10)


def test_answers_are_valid_and_put_the_target_first(music):
    teacher = OfflineTeacher(music.items, TOP_K)
    for ex in music.examples:
        rec = parse_recommendation(teacher.respond(ex), ex, music.items, TOP_K)
        assert rec.valid, rec.raw_text
        assert rec.items[0] == next(iter(ex.relevant()))
        assert len(set(rec.items)) == TOP_K and set(rec.items) <= set(ex.candidates)


def _feature_and_names(phrase):
    """'drone (Boris, Fennesz)' -> ('drone', ['Boris', 'Fennesz'])."""
    feature, _, names = phrase.rpartition(" (")
    return feature, names.rstrip(")").split(", ")


def test_key_preferences_are_the_historys_distinctive_tags_named_with_their_items(music):
    teacher = OfflineTeacher(music.items, TOP_K)
    idf = descriptive_idf(music.items, "music")
    for ex in music.examples:
        rec = parse_recommendation(teacher.respond(ex), ex, music.items, TOP_K)
        assert 1 <= len(rec.key_features) <= 2
        for phrase in rec.key_features:
            feature, names = _feature_and_names(phrase)
            holders = [music.items[i].title for i in ex.context
                       if feature in item_features(music.items[i], "music")]
            assert names and set(names) <= set(holders), (phrase, holders)
        # by (1 + ln(history items having it)) x idf: no tag two history items share
        # outranks the first
        first, _ = _feature_and_names(rec.key_features[0])
        assert first.casefold() in idf  # never a junk tag
        count = lambda t: sum(t in item_features(music.items[i], "music")  # noqa: E731
                              for i in dict.fromkeys(ex.context))
        weight = lambda t: (1 + math.log(count(t))) * idf.get(t.casefold(), 0.0)  # noqa: E731
        shared = {t for i in ex.context for t in item_features(music.items[i], "music")
                  if t.casefold() in idf and count(t) >= 2}
        if shared:
            assert weight(first) >= max(weight(t) for t in shared) - 1e-9
        assert "seen live" not in rec.key_features


def test_key_preferences_differ_between_users_more_than_the_most_common_tags(music):
    """Counting alone gives "rock" (or another common tag) to many histories."""
    from collections import Counter

    from reclaif.data import load_examples, load_items

    # The bundled sample's catalogue and 150 of its held-out prompts: the clean tags of the
    # 25-prompt raw fixture come from too few training users to tell the two rules apart.
    items = load_items("sample")
    teacher = OfflineTeacher(items, TOP_K)
    ours, common = set(), set()
    for ex in load_examples("sample", split="valid")[:150]:
        ours.add(tuple(_feature_and_names(p.phrase)[0] for p in teacher.key_preferences(ex)))
        counts = Counter(t for i in ex.context for t in item_features(items[i], "music"))
        common.add(tuple(t for t, _ in counts.most_common(2)))
    assert len(ours) > 1.3 * len(common)  # measured: 116 against 56 (210 and 106 on 300 prompts)


def test_reasons_name_a_tag_both_have_and_the_history_items_that_have_it():
    # The bundled sample's clean tags: most artists of the 25-prompt raw fixture are untagged
    # (its training file has 61 users), so it would test the "less obvious pick" branch only.
    from reclaif.data import load_examples, load_items

    items = load_items("sample")
    examples = load_examples("sample", split="valid")[:25]
    teacher = OfflineTeacher(items, TOP_K)
    linked = 0
    for ex in examples:
        rec = parse_recommendation(teacher.respond(ex), ex, items, TOP_K)
        for item_id, reason in zip(rec.items, rec.reasons):
            own = item_features(items[item_id], "music")
            m = re.fullmatch(r"(.+), like (.+?)\.", reason)
            if m:
                linked += 1
                assert m.group(1).casefold() in {t.casefold() for t in own}
                (h,) = [i for i in ex.context if items[i].title == m.group(2)]
                assert m.group(1).casefold() in {t.casefold() for t in
                                                 item_features(items[h], "music")}
            else:  # honest: nothing descriptive shared, said so
                assert reason.startswith("Less obvious pick, no shared tag")
                assert candidate_link(item_id, ex.context, items, "music",
                                      descriptive_idf(items, "music")) is None
        assert grounding(rec, ex, items, TOP_K).features > 0.75
    assert linked >= 1.5 * len(examples)


def test_deterministic_per_seed_and_the_seed_only_moves_fillers(music):
    a, a2, b = (OfflineTeacher(music.items, TOP_K, seed=s) for s in (0, 0, 1))
    outs_a = [a.respond(ex) for ex in music.examples]
    assert outs_a == [a2.respond(ex) for ex in music.examples]
    outs_b = [b.respond(ex) for ex in music.examples]
    assert outs_a != outs_b
    for ex, x, y in zip(music.examples, outs_a, outs_b):
        first = lambda t: parse_recommendation(t, ex, music.items, TOP_K).items[0]  # noqa: E731
        assert first(x) == first(y)


def test_fillers_prefer_candidates_that_share_the_key_preferences(music):
    """Over the examples, non-target picks share a key tag more often than random candidates."""
    teacher = OfflineTeacher(music.items, TOP_K)
    picked_hits = picked = pool_hits = pool = 0
    for ex in music.examples:
        rec = parse_recommendation(teacher.respond(ex), ex, music.items, TOP_K)
        keys = {_feature_and_names(f)[0] for f in rec.key_features}
        hit = lambda i: bool(keys & set(item_features(music.items[i], "music")))  # noqa: E731
        picked_hits += sum(hit(i) for i in rec.items[1:])
        picked += len(rec.items) - 1
        pool_hits += sum(hit(c) for c in ex.candidates)
        pool += len(ex.candidates)
    assert picked_hits / picked > pool_hits / pool


def test_beauty_preferences_come_from_catalog_fields(beauty_data):
    teacher = OfflineTeacher(beauty_data.items, TOP_K)
    for ex in beauty_data.examples:
        rec = parse_recommendation(teacher.respond(ex), ex, beauty_data.items, TOP_K)
        assert rec.valid and rec.items[0] == next(iter(ex.relevant()))
        assert "**Recommended Products" in rec.raw_text
        for f in rec.key_features:
            if not f.startswith("Similar to"):
                feature, names = _feature_and_names(f)
                holders = [i for i in ex.context
                           if feature in item_features(beauty_data.items[i], "beauty")]
                assert holders and all(any(beauty_data.items[i].title.startswith(n)
                                           for i in holders) for n in names), f
        for item_id, reason in zip(rec.items, rec.reasons):
            m = re.fullmatch(r"(.+?), like (.+)\.", reason)
            if m:  # a field both really have, e.g. "item form: Serum", that the prompt shows
                assert m.group(1).casefold() in display_item(item_id, beauty_data.items,
                                                             "beauty").casefold()
                feature = m.group(1).casefold()
                assert feature in {f.casefold() for f in item_features(
                    beauty_data.items[item_id], "beauty")}
                assert any(feature in {f.casefold() for f in item_features(
                    beauty_data.items[i], "beauty")} and beauty_data.items[i].title.startswith(
                    m.group(2)) for i in ex.context)


def test_product_search_preferences_are_the_query_terms(beauty_data):
    items = beauty_data.items
    ids = sorted(items)[:8]
    ex = Example(id="q1", task="retrieval", context="vegan shampoo for curly hair",
                 candidates=ids, labels={ids[3]: 3.0, ids[5]: 1.0, ids[0]: 0.0},
                 domain="product_search")
    rec = parse_recommendation(OfflineTeacher(items, 5).respond(ex), ex, items, 5)
    assert rec.valid and rec.items[:2] == [ids[3], ids[5]]   # best grade first
    assert "vegan shampoo for curly hair" in rec.key_features[0]
    assert "**Key Features:**" in rec.raw_text
    # A query made of the target's own title words: its reason must cite them.
    words = [w for w in items[ids[3]].title.lower().split() if w.isalpha() and len(w) > 3][:2]
    ex2 = Example(id="q2", task="retrieval", context=" ".join(words), candidates=ids,
                  labels={ids[3]: 1.0}, domain="product_search")
    rec2 = parse_recommendation(OfflineTeacher(items, 5).respond(ex2), ex2, items, 5)
    assert rec2.items[0] == ids[3] and words
    assert rec2.reasons[0].lower().endswith(f"matches the query terms {', '.join(sorted(words))}.")


class EchoClient(LLMClient):
    def __init__(self):
        self.prompts = []

    def generate(self, prompts, n=1, temperature=1.0, top_p=1.0, max_new_tokens=256, seed=0):
        self.prompts += prompts
        return [[f"answer {len(self.prompts) - len(prompts) + i}"] for i in range(len(prompts))]


def test_llm_teacher_sends_the_recommender_prompt(music):
    client = EchoClient()
    teacher = make_teacher(TeacherConfig(kind="llm", llm=LLMSpec(backend="bedrock")),
                           music.items, TOP_K, client_factory=lambda spec: client)
    assert isinstance(teacher, LLMTeacher)
    assert teacher.respond_many(music.examples[:2]) == ["answer 0", "answer 1"]
    assert "top three" in client.prompts[0] and "Listening History" in client.prompts[0]


def test_make_teacher_kinds(music):
    assert isinstance(make_teacher(TeacherConfig(), music.items, TOP_K), OfflineTeacher)
    with pytest.raises(ConfigError, match="teacher.kind"):
        make_teacher(TeacherConfig(kind="oracle"), music.items, TOP_K)
    assert "data-derived" in TEACHER_DESCRIPTION and "labels" in TEACHER_DESCRIPTION


@pytest.fixture(scope="module")
def hybrid(tmp_path_factory):
    """Bundled-sample prompts with real out-of-fold evidence (two folds, one SASRec epoch)."""
    from reclaif.config import EvidenceConfig
    from reclaif.data import load_examples, load_items
    from reclaif.data.interactions import fit_windows
    from reclaif.evidence import build_evidence

    train = load_examples("sample", "train")
    items = load_items("sample")
    windows = fit_windows("sample", "train", train)
    users = set(sorted({w.user for w in windows})[:150])
    prompts = [ex for ex in train if ex.user in users][:10]
    ev = build_evidence(EvidenceConfig(mode="hybrid", folds=2, sasrec_max_seconds=0.5),
                        prompts, [], [w for w in windows if w.user in users], items,
                        tmp_path_factory.mktemp("ev"))
    return ev.train, items


def test_hybrid_reasons_link_item_and_history_with_the_rank_as_support(hybrid):
    """The quickstart once wrote "1. Loscil - SASRec #20.": the rank must never be the whole
    reason, and every claim must be true (tags both have, the item's own rank)."""
    from reclaif.judge.explainability import REASON_TIED_CREDIT, reason_link, reason_score

    examples, items = hybrid
    teacher = OfflineTeacher(items, TOP_K)
    for ex in examples:
        rec = parse_recommendation(teacher.respond(ex), ex, items, TOP_K)
        assert rec.valid and rec.items[0] == next(iter(ex.relevant()))
        history_tags = {t for i in ex.context for t in item_features(items[i], "music")}
        for item, reason in zip(rec.items, rec.reasons):
            own = set(item_features(items[item], "music"))
            rank = re.search(r"; SASRec #(\d+)\.$", reason).group(1)  # last, as support
            assert read_evidence(ex.evidence[item]).ranks == (("SASRec", int(rank)),)
            shared = re.match(r"(.+?), like ", reason)
            link = reason_link(reason, item, ex, items, set())
            if shared:
                assert shared.group(1).casefold() in {t.casefold() for t in own & history_tags}
                assert link and reason_score(reason, item, ex, items) == REASON_TIED_CREDIT
            elif reason.startswith("Follows "):  # the transition from the last item
                assert read_evidence(ex.evidence[item]).next_counts
                assert link == f"follows {items[ex.context[-1]].title}"
                assert reason_score(reason, item, ex, items) == REASON_TIED_CREDIT
            else:
                assert reason.startswith("Less obvious pick, no shared tag")
                assert candidate_link(item, ex.context, items, "music",
                                      descriptive_idf(items, "music")) is None
        # after the target, the evidence's order (candidates are listed best first), linked
        # ones first among its top FILL_WINDOW (the test after _fillers)
        assert rec.items[1:] == _fillers(ex)[:TOP_K - 1]


def _fillers(ex):
    """The fillers the issue asks for, in order: the evidence's unlabelled candidates best
    first, with those whose line shows a link (a tag link or the transition) ahead of the
    others among the first FILL_WINDOW, the evidence's #1 kept in front."""
    rest = [c for c in ex.candidates if ex.labels.get(c, 0) <= 0]
    head = rest[:FILL_WINDOW]
    keep = head[:1] if head and head[0] == evidence_first(ex.evidence) else []
    shows = lambda c: bool(re.search(r"(^|; )(tags: .+ with .+|\d+ listeners next)(;|$)",  # noqa
                                     ex.evidence.get(c, "")))
    linked = [c for c in head if c not in keep and shows(c)]
    return keep + linked + [c for c in rest if c not in keep + linked]


def test_fillers_put_candidates_whose_line_shows_a_link_first(hybrid, transitions):
    """Issue 31: a filler whose line shows no link can only be "a less obvious pick", which a
    student cannot learn to tie to the user. Among the evidence's top five, the teacher fills
    with linked candidates first (the evidence's #1 stays first), so more of its reasons link
    item and history than the evidence's plain order gives, on real sample rows."""
    from reclaif.judge.links import explanation_shares

    teacher = OfflineTeacher(hybrid[1], TOP_K)
    moved, shares = 0, {}
    for examples, items in (hybrid, transitions):
        for ex in examples:
            rec = parse_recommendation(teacher.respond(ex), ex, items, TOP_K)
            rest = [c for c in ex.candidates if ex.labels.get(c, 0) <= 0]
            assert rec.items[1:] == _fillers(ex)[:TOP_K - 1]
            first = evidence_first(ex.evidence)
            assert first is None or first in rec.items  # SASRec's #1 stays in the top 3
            moved += rec.items[1:] != rest[:TOP_K - 1]
    examples, items = transitions
    for window in (0, FILL_WINDOW):
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr("reclaif.teacher.FILL_WINDOW", window)
            shares[window] = explanation_shares(
                [(ex, parse_recommendation(teacher.respond(ex), ex, items, TOP_K))
                 for ex in examples], items).linked_share
    # measured: 26 of 70 rows reordered; linked reasons 0.839 -> 0.989
    assert moved >= 10 and shares[FILL_WINDOW] > shares[0], (moved, shares)


@pytest.fixture(scope="module")
def transitions():
    """The first 60 bundled-sample validation prompts with transition and tag_overlap evidence
    fitted on every training user (as tests/test_evidence_text.py builds it; no SASRec, so
    seconds): the two folds of `hybrid` see too few users to have transitions."""
    from reclaif.data import load_examples, load_items
    from reclaif.data.interactions import fit_windows
    from reclaif.evidence import EvidenceModels

    items = load_items("sample")
    train = load_examples("sample", "train")
    m = EvidenceModels.fit(fit_windows("sample", "train", train), items,
                           ["transition", "tag_overlap"])
    return [m.annotate(ex, items) for ex in load_examples("sample", "valid")[:60]], items


def test_a_transition_in_the_evidence_becomes_a_follows_reason_the_judge_links(transitions):
    """"5 listeners next" (no shared tag): the teacher says the item follows the user's last
    artist, and the judge credits that link only where the evidence has the transition."""
    from reclaif.judge.explainability import REASON_TIED_CREDIT, reason_link, reason_score

    examples, items = transitions
    teacher = OfflineTeacher(items, TOP_K)
    followed = unlinked = 0
    for ex in examples:
        prefs = teacher.key_preferences(ex)
        last = items[ex.context[-1]].title
        for c in ex.candidates:
            if teacher._link(c, ex, prefs):
                continue
            reason = teacher.reason(c, ex, prefs)
            if read_evidence(ex.evidence.get(c, "")).next_counts:
                assert re.search(r"(^|; )\d+ listeners next(;|$)", ex.evidence[c])
                assert reason == f"Follows {last}.", reason
                assert reason_link(reason, c, ex, items) == f"follows {last}"
                assert reason_score(reason, c, ex, items) == REASON_TIED_CREDIT
                followed += 1
            else:
                assert reason_link(f"Follows {last}.", c, ex, items) is None
                unlinked += 1
    # measured: 2 and 388 (most candidates with a transition share a tag, the stronger link)
    assert followed >= 2 and unlinked >= 3, (followed, unlinked)


def _without_tags(ex):
    """`ex` with its lines' tag_overlap parts cut: lines that show no tag at all."""
    return dataclasses.replace(ex, evidence={
        c: "; ".join(p for p in text.split("; ") if not p.startswith("tags: "))
        for c, text in ex.evidence.items()})


def test_hybrid_reasons_cite_only_what_the_candidate_line_shows(transitions):
    """Issue 31, proof run row lastfm:llara-train:159: "The Black Dahlia Murder [SASRec #3 3%]"
    got "Metal, like Saliva" and "Lee Ann Womack" got "...; country": a tag and a history
    artist its line did not show, which SFT cannot teach. Every reason cites a tag the line
    shows with the history artist the line names, the transition the line shows, or says it is
    a less obvious pick with nothing the line lacks; also when the lines show no tags at all."""
    examples, items = transitions
    teacher = OfflineTeacher(items, TOP_K)
    idf = descriptive_idf(items, "music")
    linked = hidden = 0
    for ex in examples + [_without_tags(ex) for ex in examples]:
        prefs = teacher.key_preferences(ex)
        for c in ex.candidates:
            reason, line = teacher.reason(c, ex, prefs), ex.evidence.get(c, "")
            hidden += "tags: " not in line and candidate_link(c, ex.context, items, "music",
                                                              idf) is not None
            if m := re.fullmatch(r"(.+), like (.+?)\.", reason):
                assert m.group(1).casefold() in {t.casefold() for t in read_evidence(line).tags}
                assert f" with {m.group(2)} (" in line, (reason, line)
                linked += 1
            elif reason.startswith("Follows "):
                assert reason == f"Follows {items[ex.context[-1]].title}."
                assert read_evidence(line).next_counts
            else:
                assert reason == "Less obvious pick, no shared tag.", (reason, line)
    # measured: 809 and 809 (each link a line shows is cited; cutting the tags hides each)
    assert linked > 500 and hidden > 500, (linked, hidden)


def test_a_junk_tag_never_becomes_a_key_feature():
    """"specials to 3mmey" (one tagger's label, on 4 artists) was the proof teacher's key
    preference for a history with two of them; a history of all four still does not get it."""
    from reclaif.data import load_examples, load_items

    items = load_items("sample")
    teacher = OfflineTeacher(items, TOP_K)
    idf = descriptive_idf(items, "music")
    junk = [i for i, it in items.items()
            if "specials to 3mmey" in {t.casefold() for t in item_features(it, "music")}]
    ex = Example(id="junk", task="sequential", context=junk, candidates=junk[:1], labels={},
                 domain="music")
    assert len(junk) >= 2 and all(p.feature and p.feature.casefold() in idf
                                  for p in teacher.key_preferences(ex))
    for ex in load_examples("sample", split="valid")[:100]:
        assert all(p.feature.casefold() in idf for p in teacher.key_preferences(ex) if p.feature)


def test_a_reason_citing_a_tag_or_figure_the_item_lacks_earns_nothing(hybrid):
    from reclaif.judge.explainability import catalog_words, reason_credit

    examples, items = hybrid
    ex = examples[0]
    item = ex.candidates[0]
    vocab = catalog_words(items)
    own = item_features(items[item], "music")
    foreign = next(t for other in ex.candidates[1:] for t in item_features(items[other], "music")
                   if t not in own and all(w not in items[item].fields["tags"]
                                           for w in t.split()))
    true = f"SASRec #1; tagged {own[0]}."
    assert reason_credit(true, items[item], ex.evidence[item], set(), vocab) > 0
    assert reason_credit(f"Tagged {foreign}.", items[item], ex.evidence[item], set(), vocab) == 0
    assert reason_credit(f"SASRec #7; tagged {own[0]}.", items[item], ex.evidence[item], set(),
                         vocab) == 0


def _linked_row(examples, items):
    """A real hybrid row and one of its teacher reasons that shares a tag with the history."""
    teacher = OfflineTeacher(items, TOP_K)
    for ex in examples:
        rec = parse_recommendation(teacher.respond(ex), ex, items, TOP_K)
        for item, reason in zip(rec.items, rec.reasons):
            if ", like " in reason:
                return ex, item, reason
    raise AssertionError("no linked reason in the sample rows")


def test_a_reason_that_only_restates_a_rank_scores_below_a_linked_one(hybrid):
    from reclaif.judge.explainability import (REASON_PARTIAL_CREDIT, REASON_RANK_ONLY_CREDIT,
                                              reason_score)

    examples, items = hybrid
    ex, item, linked = _linked_row(examples, items)
    rank = re.search(r"SASRec #\d+", linked).group(0)
    own = item_features(items[item], "music")
    assert reason_score(f"{rank}.", item, ex, items) == REASON_RANK_ONLY_CREDIT
    assert reason_score(f"Tagged {own[0]}; {rank}.", item, ex, items) == REASON_PARTIAL_CREDIT
    assert reason_score(f"{rank}.", item, ex, items) < reason_score(linked, item, ex, items)


def test_a_shared_tag_the_item_lacks_or_a_history_item_without_it_earns_no_link(hybrid):
    from reclaif.judge.explainability import reason_link, reason_score

    examples, items = hybrid
    ex, item, linked = _linked_row(examples, items)
    own = {t.casefold() for t in item_features(items[item], "music")}
    tag, holder = next((t, h) for h in ex.context for t in item_features(items[h], "music")
                       if t.casefold() not in own
                       and all(w not in items[item].fields["tags"] for w in t.split()))
    claim = f"Shares {tag} with {items[holder].title}."
    assert reason_score(claim, item, ex, items) == 0.0
    # a tag the item has, credited to a history item that lacks it: no link
    mine = next((t for t in item_features(items[item], "music")
                 if all(t not in item_features(items[h], "music") for h in ex.context)), None)
    if mine is not None:
        assert reason_link(f"Shares {mine} with {items[ex.context[0]].title}.", item, ex,
                           items, set()) is None


def test_a_distinctive_key_feature_named_with_its_items_beats_a_common_bare_tag(music):
    from reclaif.data.features import distinctive_features, feature_idf
    from reclaif.judge.explainability import context_words, key_feature_credit

    teacher = OfflineTeacher(music.items, TOP_K)
    better = 0
    for ex in music.examples:
        feats = distinctive_features(ex.context, music.items, "music",
                                     feature_idf(music.items, "music"), k=10 ** 6)
        ctx = context_words(ex, music.items)
        credit = lambda text: key_feature_credit(text, ex, music.items, feats, ctx)  # noqa: E731
        ours = credit(teacher.key_preferences(ex)[0].phrase)
        common = max(feats, key=lambda fh: (len(fh[1]), -feature_idf(music.items, "music")
                                             .get(fh[0].casefold(), 0)))[0]
        assert ours >= credit(common) and credit("smooth jazz for rainy days") == 0.0
        better += ours > credit(common)
    assert better >= len(music.examples) // 2


def _history_block(prompt):
    return prompt.split("<<<DATA history\n", 1)[1].split("\nDATA>>>", 1)[0]


def test_a_hybrid_prompt_shows_the_key_features_the_teacher_states(hybrid, beauty_data):
    """Issue 31: the teacher's key features ("chillout (Enigma)") came from history tags the
    prompt never showed (history lines are names), so a student could not learn them. A hybrid
    prompt shows them below the history, verbatim; a names-only prompt shows names only, and
    the teacher states the same key features in both modes."""
    from reclaif.prompts import render_recommender

    examples, items = hybrid
    beauty_rows = [dataclasses.replace(ex, evidence={ex.candidates[0]: "1 buyers next"})
                   for ex in beauty_data.examples]
    shown = 0
    for rows, its in ((examples, items), (beauty_rows, beauty_data.items)):
        teacher = OfflineTeacher(its, TOP_K)
        for ex in rows:
            rec = parse_recommendation(teacher.respond(ex), ex, its, TOP_K)
            history = _history_block(render_recommender(ex, its, TOP_K))
            names_only = dataclasses.replace(ex, evidence={})
            plain = _history_block(render_recommender(names_only, its, TOP_K))
            assert all(line.startswith("- ") for line in plain.splitlines())
            assert history.startswith(plain + "\n") or history == plain
            assert [p.phrase for p in teacher.key_preferences(names_only)] == rec.key_features
            for phrase in rec.key_features:
                if not phrase.startswith("Similar to"):  # a history without features
                    assert phrase in history.splitlines()[-1], (phrase, history)
                    shown += 1
    # measured: 40 (10 music and 10 Beauty prompts, two each)
    assert shown >= 30, shown
