"""Parsing: LLM answer text → key features, ranked candidate ids, reasons; the validity rule."""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lastfm_records import lastfm_examples

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
    assert not rec.valid


def test_duplicates_and_names_outside_the_candidates_are_dropped(ex0):
    ex, items = ex0
    text = ("Key Preferences:\n- rock\n\nRecommended:\n1. Metallica - not a candidate\n"
            "2. Angra - x\n3. angra - again\n4. Hope - y\n5. Forfun - z\n6. Sugarcult - w")
    rec = parse_recommendation(text, ex, items, 3)
    assert rec.items == ["Angra", "Hope", "Forfun"] and rec.reasons == ["x", "y", "z"]
    assert rec.valid


def test_fewer_than_k_items_is_invalid(ex0):
    ex, items = ex0
    rec = parse_recommendation("Key Preferences:\n- rock\n\n1. Angra - x\n2. Hope - y", ex,
                               items, 3)
    assert rec.items == ["Angra", "Hope"] and not rec.valid


def test_missing_key_features_is_invalid(ex0):
    ex, items = ex0
    rec = parse_recommendation("1. Angra - x\n2. Hope - y\n3. Forfun - z", ex, items, 3)
    assert rec.items == ["Angra", "Hope", "Forfun"] and rec.key_features == []
    assert not rec.valid


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


def test_match_candidate_uses_titles_and_ids():
    items = {"B01": Item("B01", "Rose Shampoo"), "B02": Item("B02", "Rose Conditioner")}
    ex = Example("u", "sequential", ["B01"], ["B01", "B02"], {"B02": 1.0}, domain="beauty")
    assert match_candidate("rose conditioner", ex, items) == "B02"
    assert match_candidate("B01", ex, items) == "B01"
    assert match_candidate("Rose Shampo", ex, items) == "B01"
    items["B02"] = Item("B02", "Beyoncé Heat")
    assert match_candidate("beyonce heat", ex, items) == "B02"  # accents fold


@pytest.mark.parametrize("items, feats, k, n, text, expected", [
    (["a", "b", "c"], ["x"], 3, 20, "t", True),
    (["a", "b", "c"], [], 3, 20, "t", False),          # no key feature
    (["a", "b", "c"], ["  "], 3, 20, "t", False),      # blank key feature
    (["a", "b"], ["x"], 3, 20, "t", False),            # fewer than k
    (["a", "b", "c", "d"], ["x"], 3, 20, "t", False),  # more than k
    (["a", "a", "c"], ["x"], 3, 20, "t", False),       # repeated item
    (["a", "b"], ["x"], 3, 2, "t", True),              # k capped by the candidate count
    (["a", "b", "c"], ["x"], 3, 20, "  \n", False),    # blank answer
    ([], ["x"], 3, 0, "t", False),                     # nothing to rank
])
def test_is_valid_rule(items, feats, k, n, text, expected):
    assert is_valid(items, feats, k, n, text) is expected


@settings(FUZZ, max_examples=300)
@given(st.text(max_size=400))
def test_any_text_parses_without_raising(ex0, text):
    ex, items = ex0
    rec = parse_recommendation(text, ex, items, 3)
    assert len(rec.items) <= 3 and len(set(rec.items)) == len(rec.items)
    assert set(rec.items) <= set(ex.candidates) and len(rec.reasons) == len(rec.items)
    assert rec.valid == is_valid(rec.items, rec.key_features, 3, 20, text)


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
