"""Parsing: LLM answer text → key features, ranked candidate ids, reasons; the validity rule."""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lastfm_records import lastfm_examples

from reclaif.data import load_examples, load_items
from reclaif.data.features import display_title
from reclaif.parsing import format_recommendation, is_valid, match_candidate, parse_recommendation
from reclaif.records import Example, Item

# Bounded fuzzing; no example database written into the checkout.
FUZZ = settings(deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def lastfm(real_data):
    return lastfm_examples(real_data, 40)


@pytest.fixture(scope="module")
def ex0(lastfm):
    examples, items = lastfm
    return examples[0], items  # candidates: Clint Mansell, µ-Ziq, Sugarcult, ..., Mutya Buena


def test_format_then_parse_gives_back_what_went_in_on_real_examples(lastfm):
    examples, items = lastfm
    for n, ex in enumerate(examples):
        picks = [ex.candidates[(n + j * 7) % 20] for j in range(3)]
        feats = [f"Feature {n} about {ex.context[0]}", "Dark, moody: atmospheric"]
        reasons = [f"Because {p} - fits the mood (really)" for p in picks]
        rec = parse_recommendation(format_recommendation(feats, picks, reasons, "music"),
                                   ex, items, 3)
        assert (rec.key_features, rec.items, rec.reasons, rec.valid) == \
            (feats, picks, reasons, True)


@pytest.mark.parametrize("domain", ["beauty", "product_search"])
def test_format_then_parse_in_other_domains(domain):
    items = {f"B0{i}": Item(f"B0{i}", t) for i, t in enumerate(
        ["Shampoo - 12 oz", "Lip Balm, Cherry", "Nail Polish (Red)", "Face Mask", "Soap"])}
    ex = Example("u1", "retrieval", "gentle shampoo", list(items), {"B00": 1.0},
                 domain=domain)
    titles = ["Nail Polish (Red)", "Shampoo - 12 oz", "Lip Balm, Cherry", "Soap", "Face Mask"]
    text = format_recommendation(["gentle"], titles, ["r1", "r2", "r3", "r4", "r5"], domain)
    rec = parse_recommendation(text, ex, items, 5)
    assert rec.items == ["B02", "B00", "B01", "B04", "B03"]
    assert rec.reasons == ["r1", "r2", "r3", "r4", "r5"] and rec.valid


def test_names_copied_with_their_display_fields():
    items = {"B1": Item("B1", "Rose Shampoo", {"brand": "Acme"}),
             "B2": Item("B2", "Nail Polish (Red)", {"brand": "Nailco"}),
             "B3": Item("B3", "Face Mask", {"brand": "Acme"})}
    ex = Example("u", "sequential", ["B3"], list(items), {"B1": 1.0}, domain="beauty")
    text = ("Key Preferences: hair care\n1. Rose Shampoo (brand: Acme) - gentle\n"
            "2. Nail Polish (Red) (brand: Nailco) - bright\n3. Nail Polish (Red) - again\n"
            "4. Face Mask (brand: Acme)")
    rec = parse_recommendation(text, ex, items, 3)
    assert rec.items == ["B1", "B2", "B3"] and rec.reasons == ["gentle", "bright", ""]


def test_the_papers_example_response_shape(ex0):
    ex, items = ex0
    text = """#### **Key Preferences:**

- Preference 1: Alternative/Indie Rock and Electronic/Synthpop genres

- Preference 2: Dark, moody, and atmospheric vibes
- Preference 3: Female vocals

# Recommended Artists/Bands (from most to least likely):

 Wax Tailor - Their music blends trip-hop with cinematic samples.
Atlas Sound - This project has a moody and atmospheric sound.
Clint Mansell - His film scores are dark and atmospheric.

The recommendations focus on the user's preferences. The top recommendation, *Wax Tailor*,
strongly aligns, while *Atlas Sound* and *Mutya Buena* provide complementary options.
"""
    rec = parse_recommendation(text, ex, items, 3)
    assert rec.key_features == ["Alternative/Indie Rock and Electronic/Synthpop genres",
                                "Dark, moody, and atmospheric vibes", "Female vocals"]
    assert rec.items == ["Wax Tailor", "Atlas Sound", "Clint Mansell"]
    assert rec.reasons[2] == "His film scores are dark and atmospheric."
    assert rec.valid


@pytest.mark.parametrize("line, reason", [
    ("1. Wax Tailor - smooth", "smooth"),
    ("1) Wax Tailor – smooth", "smooth"),
    ("#1 Wax Tailor — smooth", "smooth"),
    ("(1) Wax Tailor: smooth", "smooth"),
    ("- Wax Tailor - smooth", "smooth"),
    ("* **Wax Tailor** - smooth", "smooth"),
    ("• **Wax Tailor**: smooth", "smooth"),
    ("1. **Wax Tailor - smooth**", "smooth"),
    ('2. "Wax Tailor" - smooth', "smooth"),
    ("Recommendation 1: Wax Tailor - smooth", "smooth"),
    ("1. wax tailor. - smooth", "smooth"),
    ("1. WAX TAILOR (smooth)", "smooth"),
    ("1. The Wax Tailor", ""),
    ("1. Wax Taylor - smooth", "smooth"),  # a typo: fuzzy
])
def test_list_line_styles(ex0, line, reason):
    ex, items = ex0
    rec = parse_recommendation(f"Key Preferences: trip-hop\n{line}\n2. Hope - b\n3. Angra - c",
                               ex, items, 3)
    assert rec.items == ["Wax Tailor", "Hope", "Angra"]
    assert rec.reasons[0] == reason
    assert rec.key_features == ["trip-hop"]


def test_numbered_features_under_a_bare_header_and_bold_labels(ex0):
    ex, items = ex0
    text = ("Key preferences\n1. **Preference 1:** Trip-hop\n2. Jazz fusion\n\n"
            "### Top 3 picks\n1. Wax Tailor: beats\n2. Weather Report: fusion\n3. Hope: x\n")
    rec = parse_recommendation(text, ex, items, 3)
    assert rec.key_features == ["Trip-hop", "Jazz fusion"]
    assert rec.items == ["Wax Tailor", "Weather Report", "Hope"] and rec.valid


def test_copied_template_placeholders_are_not_key_features(ex0):
    """Seen from SmolLM2-135M before SFT: the output format echoed with its brackets."""
    ex, items = ex0
    text = ("**Key Preferences:**\n- Preference 1: [Description]\n- Preference 2:\n\n"
            "**Recommended Artists/Bands (from most to least likely):**\n[Hope] - [Reason]\n"
            "[Angra]\n[Forfun] - ok\n")
    rec = parse_recommendation(text, ex, items, 3)
    assert rec.key_features == [] and rec.items == ["Hope", "Angra", "Forfun"]
    assert rec.valid  # the list rule holds; the copied placeholders earn no key feature


def test_duplicates_and_names_outside_the_candidates_are_dropped_and_invalid(ex0):
    ex, items = ex0
    text = ("Key Preferences:\n- rock\n\nRecommended:\n1. Metallica - not a candidate\n"
            "2. Angra - x\n3. angra - again\n4. Hope - y\n5. Forfun - z\n6. Sugarcult - w")
    rec = parse_recommendation(text, ex, items, 3)
    assert rec.items == ["Angra", "Hope", "Forfun"] and rec.reasons == ["x", "y", "z"]
    assert not rec.valid  # strict: an out-of-set name, a repeat and extra items


@pytest.mark.parametrize("text", [
    "Key Preferences:\n- rock\n\nRecommended:\n1. Angra - x\n2. Hope - y\n3. Forfun - z\n"
    "4. Sugarcult - w",                                            # one item too many
    "Key Preferences:\n- rock\n\nRecommended:\n1. Angra - x\n2. Metallica - y\n3. Hope - z\n"
    "4. Forfun - w",                                               # an out-of-set name
    "Key Preferences:\n- rock\n\nRecommended:\n1. Angra - x\n2. Hope - y\nI also like Forfun.",
    "Key Preferences:\n- rock\n\nAngra, Hope and Forfun suit you.\nForfun\n",  # prose only
])
def test_strict_validity_rejects_extras_outsiders_and_prose(ex0, text):
    ex, items = ex0
    assert not parse_recommendation(text, ex, items, 3).valid


def test_exactly_k_listed_candidates_is_valid_even_with_evidence_copied(ex0):
    ex, items = ex0
    text = ("Key Preferences:\n- rock\n\nRecommended:\n1. Angra [SASRec #1 (0.31)] - x\n"
            "2. Hope - y\n3. Forfun - z\nThese fit your history.")
    rec = parse_recommendation(text, ex, items, 3)
    assert rec.valid and rec.items == ["Angra", "Hope", "Forfun"]


def test_a_5000_character_title_parses_fast(ex0):
    import time

    ex, items = ex0
    items = {**items, ex.candidates[0]: Item(ex.candidates[0], "x" * 5000)}
    t0 = time.perf_counter()
    parse_recommendation("Key Preferences:\n- rock\n\n" + "\n".join(
        f"{n}. {'y' * 4000} - z" for n in range(1, 4)), ex, items, 3)
    assert time.perf_counter() - t0 < 5.0  # was over a minute before the length caps


def test_fewer_than_k_items_is_invalid(ex0):
    ex, items = ex0
    rec = parse_recommendation("Key Preferences:\n- rock\n\n1. Angra - x\n2. Hope - y", ex,
                               items, 3)
    assert rec.items == ["Angra", "Hope"] and not rec.valid


def test_validity_is_the_list_rule_alone(ex0):
    """LLaRA's rule: key features are scored by explainability, not by validity."""
    ex, items = ex0
    rec = parse_recommendation("1. Angra - x\n2. Hope - y\n3. Forfun - z", ex, items, 3)
    assert rec.items == ["Angra", "Hope", "Forfun"] and rec.key_features == []
    assert rec.valid


def test_indented_reason_under_a_bare_name(ex0):
    ex, items = ex0
    rec = parse_recommendation("Key Preferences: x\nRecommendations:\n1. Angra\n   Reason: power"
                               " metal\n2. Hope\n3. Forfun", ex, items, 3)
    assert rec.items == ["Angra", "Hope", "Forfun"] and rec.reasons == ["power metal", "", ""]


def test_match_candidate_order_of_rules(ex0):
    ex, items = ex0
    assert match_candidate("Robbie Williams", ex, items) == "Robbie Williams"
    assert match_candidate("  the ROBBIE williams!! ", ex, items) == "Robbie Williams"
    assert match_candidate("Robie Wiliams", ex, items) == "Robbie Williams"
    assert match_candidate("Robie Wiliams", ex, items, threshold=0.99) is None
    assert match_candidate("\u03bc-ZIQ", ex, items) == "\u00b5-Ziq"  # Greek mu = micro sign
    assert match_candidate("Metallica", ex, items) is None
    assert match_candidate("", ex, items) is None


def test_beauty_answers_name_the_displayed_title_or_the_whole_one(real_data):
    """A Beauty prompt shows each product by its display title (8 words where the whole title
    has ~24): both name it, on real validation prompts; the cushion shades whose titles differ
    in their last word only are told apart."""
    items = load_items("sample:beauty")
    examples = load_examples("sample:beauty", "valid")[:30]
    cut = 0
    for ex in examples:
        for c in ex.candidates:
            shown = display_title(c, items, "beauty")
            cut += shown != items[c].title
            assert match_candidate(shown, ex, items) == c, shown
            assert match_candidate(items[c].title, ex, items) == c
    assert cut >= 200  # most titles are cut: matching them by the whole title alone fails
    shades = sorted(i for i, it in items.items() if it.title.startswith("UNNY CLUB"))
    ex = Example("u", "sequential", [], shades, {shades[0]: 1.0}, domain="beauty")
    text = format_recommendation(["cushion"], [display_title(i, items, "beauty")
                                               for i in reversed(shades)], ["a", "b"], "beauty")
    assert parse_recommendation(text, ex, items, 2).items == list(reversed(shades))


def test_match_candidate_uses_titles_and_ids():
    items = {"B01": Item("B01", "Rose Shampoo"), "B02": Item("B02", "Rose Conditioner")}
    ex = Example("u", "sequential", ["B01"], ["B01", "B02"], {"B02": 1.0}, domain="beauty")
    assert match_candidate("rose conditioner", ex, items) == "B02"
    assert match_candidate("B01", ex, items) == "B01"
    assert match_candidate("Rose Shampo", ex, items) == "B01"
    items["B02"] = Item("B02", "Beyoncé Heat")
    assert match_candidate("beyonce heat", ex, items) == "B02"  # accents fold


@pytest.mark.parametrize("entries, n, k, expected", [
    (["a", "b", "c"], 20, 3, True),
    (["a", "b"], 20, 3, False),                 # fewer than k
    (["a", "b", "c", "d"], 20, 3, False),       # more than k: an extra item is invalid
    (["a", "a", "c"], 20, 3, False),            # repeated item
    (["a", None, "c"], 20, 3, False),           # a list line naming nothing in the set
    (["a", "b", "zz"], 20, 3, False),           # an id outside the candidates
    (["a", "b"], 2, 3, True),                   # k capped by the candidate count
    ([], 0, 3, False),                          # nothing to rank
])
def test_is_valid_rule(entries, n, k, expected):
    cands = ["a", "b", "c", "d", *[f"x{i}" for i in range(max(0, n - 4))]][:n]
    assert is_valid(entries, cands, k) is expected


@settings(FUZZ, max_examples=300)
@given(st.text(max_size=400))
def test_any_text_parses_without_raising(ex0, text):
    ex, items = ex0
    rec = parse_recommendation(text, ex, items, 3)
    assert len(rec.items) <= 3 and len(set(rec.items)) == len(rec.items)
    assert set(rec.items) <= set(ex.candidates) and len(rec.reasons) == len(rec.items)
    # a valid answer's list is exactly its items; an invalid one never has a valid list
    assert not rec.valid or is_valid(rec.items, ex.candidates, 3)


_pieces = st.sampled_from(["1.", "-", "**", "Key Preferences:", "Recommended:", " - ", ":",
                           "\n", "#", "(", ")", "Wax Tailor", "Hope", "Angra", "µ-Ziq", "the",
                           "Preference 1:", "—", "\"", "  "])


@settings(FUZZ, max_examples=200)
@given(st.lists(_pieces, max_size=60).map("".join))
def test_answer_shaped_noise_parses_without_raising(ex0, text):
    ex, items = ex0
    rec = parse_recommendation(text, ex, items, 3)
    assert set(rec.items) <= set(ex.candidates) and len(rec.items) <= 3


_word = st.text(st.characters(whitelist_categories=("Lu", "Ll", "Nd")), min_size=1, max_size=8)
_phrase = st.lists(_word, min_size=1, max_size=5).map(" ".join)


@settings(FUZZ, max_examples=150)
@given(feats=st.lists(_phrase, min_size=1, max_size=3),
       picks=st.permutations(list(range(20))).map(lambda p: p[:3]),
       reasons=st.lists(_phrase, min_size=3, max_size=3))
def test_format_parse_round_trip_property(ex0, feats, picks, reasons):
    ex, items = ex0
    titles = [ex.candidates[i] for i in picks]
    rec = parse_recommendation(format_recommendation(feats, titles, reasons), ex, items, 3)
    assert rec.key_features == feats and rec.items == titles and rec.reasons == reasons
