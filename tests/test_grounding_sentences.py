"""Blurbs that state only facts: every sentence is checked on its own against a closed vocabulary (the facts'
words and the fixed stocks of recsys_core.blurbs.wording), failing sentences are dropped, and the badge says
what was checked. Real demo facts throughout; the writer runs against a real HTTP server (LoopbackLLM)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from llm_loopback import LoopbackLLM

from recsys_core.blurbs.grounding import Catalogue, check_blurb, check_sentence, sentence_words, sentences
from recsys_core.blurbs.remote import OpenAIBackend
from recsys_core.blurbs.wording import CLAIM_WORDS, FUNCTION_WORDS, GENRE_WORDS, NOUN_WORDS, TONE_WORDS
from recsys_core.blurbs.writer import TONES, BlurbFacts, build_facts, catalogue_for, keep_supported, write_blurb
from recsys_core.data.demo import load_demo

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def demo():
    ds = load_demo()
    return ds, catalogue_for(ds), ds.items["title"].tolist()


def _facts(demo, title: str, liked: tuple[str, ...] = ()):
    ds, _, titles = demo
    return build_facts(ds, titles.index(title), [titles.index(t) for t in liked], "test")


def _problems(demo, sentence: str, title: str, liked: tuple[str, ...] = ()) -> tuple[str, ...]:
    return check_sentence(sentence, _facts(demo, title, liked).allowed(TONES["demo"]), demo[1])


# The claims the issue found under a green badge, each with the facts it was written from.
ISSUE_SENTENCES = [
    ("Red 2", ("Iron Man 3",), ("Because you liked “Iron Man 3”, you will enjoy “Red 2”, a superhero sequel about a "
     "young man who becomes a vigilante after he kills a demonic killer, praised by critics worldwide.")),
    ("Pacific Rim", ("Man of Steel",), "In fact, Fast & Furious 6's original trailer was based on a real film."),
    ("Oblivion", ("Dead Man Down",), ("Because you liked “Dead Man Down”, you will enjoy “Oblivion” – an action "
     "thriller that has captivated audiences worldwide.")),
    ("Man of Steel", ("Pacific Rim",), ("Because you liked “Pacific Rim”, you will enjoy “Man of Steel” as one of your "
     "top picks in the latest sci-fi film festival.")),
    ("Oblivion", (), "This film has been praised by critics as one of the best in recent history."),
]


@pytest.mark.parametrize("title, liked, sentence", ISSUE_SENTENCES)
def test_the_sentences_the_issue_found_are_dropped(demo, title: str, liked: tuple[str, ...], sentence: str) -> None:
    assert _problems(demo, sentence, title, liked)


@pytest.mark.parametrize("sentence, kind", [
    ("Red 2 is an action comedy starring a retired agent.", "a person"),
    ("Red 2 follows a journey across the world.", "a plot"),
    ("Red 2 won an award at Cannes.", "an award"),
    ("Red 2 was praised by critics.", "a critic"),
    ("Red 2 was the hit of the festival.", "a festival"),
    ("Red 2 is the latest release of the year.", "a release"),
    ("Red 2 was a blockbuster at the box office.", "box office"),
    ("Red 2 has a great trailer.", "a trailer"),
    ("Red 2 has captivated audiences.", "its reception"),
])
def test_a_dropped_sentence_says_what_it_tried_to_claim(demo, sentence: str, kind: str) -> None:
    problems = _problems(demo, sentence, "Red 2")
    assert any(p.startswith(f"claims {kind} ") for p in problems), problems


@pytest.mark.parametrize("sentence, problem", [
    # Seen in fresh blurbs that passed an earlier version of the check: each word is in the stocks, the claim is not.
    ("This film has been a top choice by many in the action genre.", "claims its reception (“by many”)"),
    ("It is one of the most watched films of all time.", "claims its reception (“most watched”)"),
    ("It is on your list since 2013.", "claims a release (“since”)"),
    ("It has been on your list for a weekend.", "claims a past event (“been”)"),
    ("It is one of your top 3 picks.", "claims its reception (“top 3”)"),
    ("This film has been a fantastic choice for me.", "claims the writer's own experience (“me”)"),
    ("I watched it and loved it.", "claims its reception (“I watched”)"),
    ("It won the night.", "claims an award (“won”)"),
    ("It is a great pick from the re-movies.", "uses “re”"),
    ("Red 2 is a comedy comedy comedy.", "repeats “comedy” 3 times"),
    ("Because you liked “Iron Man 3”, you will enjoy “Red 2” by Iron Man 3.", "claims a maker"),
    ("It is also about Iron Man 3.", "claims a subject"),
    ("The film wasn’t even a movie at all.", "claims a past event (“wasn”)"),
])
def test_claims_made_of_stock_words_are_dropped_too(demo, sentence: str, problem: str) -> None:
    problems = _problems(demo, sentence, "Red 2", ("Iron Man 3",))
    assert any(p.startswith(problem) for p in problems), problems


def test_contractions_keep_their_pieces(demo) -> None:
    assert _problems(demo, "You won’t want to miss it, and it’s a great pick you’ll enjoy!", "Red 2") == ()


@pytest.mark.parametrize("sentence", [
    "Because you liked “Iron Man 3”, you will enjoy “Red 2” (2013), a funny and thrilling action comedy.",
    "Red 2 is one of the most popular movies here, and 153 users rated it.",
    "It is a perfect pick for a fun night, especially if you love crime movies.",
    "If you enjoyed Iron Man 3, you will surely like this tense crime thriller too!",
])
def test_plain_sentences_built_from_the_facts_pass(demo, sentence: str) -> None:
    facts = _facts(demo, "Red 2", ("Iron Man 3",))
    assert facts.popularity.startswith("in the top 3% most popular movies here (153 users")  # the facts it reads
    assert _problems(demo, sentence, "Red 2", ("Iron Man 3",)) == ()


def test_a_title_word_is_a_fact_only_inside_its_title(demo) -> None:
    assert _problems(demo, "Man of Steel is a great pick.", "Man of Steel") == ()
    assert _problems(demo, "It is about a man of few words.", "Man of Steel")  # "man" outside the title
    assert _problems(demo, "Because you liked Epic, you will enjoy The Great Gatsby.", "The Great Gatsby", ("Epic",)) == ()
    assert _problems(demo, "It is an epic drama.", "The Great Gatsby", ("Epic",))  # the liked film, not a word


def test_popularity_words_must_be_this_items(demo) -> None:
    ds, _, _titles = demo
    least = int(ds.item_popularity.argmin())
    facts = build_facts(ds, least, [], "test")
    assert facts.popularity.startswith("a lesser-known movie here")
    allowed = facts.allowed(TONES["demo"])
    assert check_sentence(f"{facts.title} is a lesser-known movie here.", allowed, demo[1]) == ()
    assert check_sentence(f"{facts.title} is a well-known movie.", allowed, demo[1])
    assert check_sentence(f"{facts.title} is one of the most popular movies.", allowed, demo[1])


def test_accents_are_not_a_way_around_the_vocabulary(demo) -> None:
    assert _problems(demo, "Man of Steel is a great fántaşy pick.", "Man of Steel")
    assert _problems(demo, "Man of Steel is a great fantasy pick.", "Man of Steel") == ()


def test_no_claim_word_is_in_a_stock() -> None:
    stocks = FUNCTION_WORDS | TONE_WORDS | set().union(*NOUN_WORDS.values()) | set().union(*GENRE_WORDS.values())
    assert not stocks & set(CLAIM_WORDS), stocks & set(CLAIM_WORDS)


def test_genre_words_come_only_with_the_genre(demo) -> None:
    comedy = sentence_words(_facts(demo, "Red 2").allowed(TONES["demo"]), demo[1])
    horror = sentence_words(_facts(demo, "The Conjuring").allowed(TONES["demo"]), demo[1])
    assert {"funny", "thrilling", "crime"} <= comedy and not {"scary", "horror"} & comedy
    assert {"scary", "horror"} <= horror and "funny" not in horror


def test_sentences_split_at_full_stops_but_not_inside_titles_or_after_initials() -> None:
    assert sentences("Because you liked “G.I. Joe: Retaliation”, try “Vol. 2”. It is fun! Dr. No is next.") == [
        "Because you liked “G.I. Joe: Retaliation”, try “Vol. 2”.", "It is fun!", "Dr. No is next."]


# ---- the writer keeps what passes ----------------------------------------------------------------


def test_keep_supported_drops_only_the_failing_sentences_and_keeps_a_guided_opening(demo) -> None:
    facts = _facts(demo, "Red 2", ("Iron Man 3",))
    allowed, cat = facts.allowed(TONES["demo"]), demo[1]
    prefix = "Because you liked “Iron Man 3”, you will enjoy “Red 2”"
    text = f"{prefix} – a sequel praised by critics. It is a funny action comedy. It has a great trailer."
    kept, dropped = keep_supported(text, allowed, cat, prefix)
    assert kept == f"{prefix}. It is a funny action comedy."
    assert [d.text for d in dropped] == [f"{prefix} – a sequel praised by critics.", "It has a great trailer."]
    assert check_blurb(kept, allowed, cat).ok


def test_a_served_reply_is_shown_without_its_unsupported_sentence_and_the_badge_says_so(demo) -> None:
    facts = _facts(demo, "Red 2", ("Iron Man 3",))
    reply = "Red 2 is a funny action comedy. It was praised by critics worldwide. You will surely enjoy it!"
    with LoopbackLLM(reply) as server:
        result = write_blurb(facts, "demo", OpenAIBackend(server.url, "tiny"), demo[1], retries=0)
    assert result.source == "llm" and result.text == "Red 2 is a funny action comedy. You will surely enjoy it!"
    assert [d.text for d in result.dropped] == ["It was praised by critics worldwide."]
    badge = result.badge()
    assert "every sentence uses only words of the facts and a fixed stock of tone and function words" in badge
    assert badge.endswith("1 sentence that did not pass was dropped.")


def test_a_reply_with_nothing_supported_is_retried_then_replaced_by_the_template(demo) -> None:
    facts = _facts(demo, "Red 2", ("Iron Man 3",))
    with LoopbackLLM("Red 2 is the acclaimed sequel. It won an award at the festival.") as server:
        result = write_blurb(facts, "demo", OpenAIBackend(server.url, "tiny"), demo[1], retries=1)
        assert len(server.requests) == 2 and "rejected because it" in json.dumps(server.requests[-1])
    assert result.source == "template" and len(result.attempts) == 2 and result.dropped == ()
    assert all(a.problems for a in result.attempts) and "no model draft passed" in result.badge()


# ---- the labelled set ------------------------------------------------------------------------------


def test_no_sentence_labelled_unsupported_in_the_committed_set_passes_the_check(demo) -> None:
    """bench/data/blurb-claims.jsonl, labelled by reading: recall 1.0 on unsupported sentences (demo lines here;
    bench/blurbs.py also reads the goodbooks ones, whose catalogue lives outside the repository)."""
    lines = [json.loads(x) for x in (ROOT / "bench" / "data" / "blurb-claims.jsonl").read_text().splitlines()]
    assert len(lines) >= 60
    shown = []
    for line in (x for x in lines if x["dataset"] == "demo"):
        record = line["facts"]
        facts = BlurbFacts(**{**record, "attributes": tuple((n, tuple(v)) for n, v in record["attributes"]),
                              "liked": tuple(record["liked"]), "withheld": tuple(record["withheld"])})
        allowed = facts.allowed(TONES[line["tone"]])
        shown += [s["text"] for s in line["sentences"]
                  if s["label"] == "unsupported" and not check_sentence(s["text"], allowed, demo[1])]
    assert shown == []


def test_a_catalogue_without_attributes_still_checks_words() -> None:
    cat = Catalogue.build(["Heat (1995)"], [])
    facts = BlurbFacts("1", "Heat", 1995, (), (), "", 10, 50, "a lesser-known movie here (10 users rated it)")
    assert check_sentence("Heat is a great pick.", facts.allowed(TONES["demo"]), cat) == ()
    assert check_sentence("Heat stars a famous actor.", facts.allowed(TONES["demo"]), cat)
