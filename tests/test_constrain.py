"""Constrained decoding keeps the local model inside the facts: token masks on the real SmolLM2 tokenizer,
then real generations on demo recommendations whose every name, number and genre is a fact."""

from __future__ import annotations

import json
import re

import pytest
import torch
from llm_loopback import LoopbackLLM

from recsys_core.blurbs.constrain import FactLogitsProcessor
from recsys_core.blurbs.grounding import Vocabulary, check_blurb, fold, tokens, vocabulary
from recsys_core.blurbs.remote import OpenAIBackend
from recsys_core.blurbs.wording import WORD
from recsys_core.blurbs.writer import TONES, BlurbStream, build_facts, build_messages, catalogue_for, guide_for
from recsys_core.data.demo import load_demo

VOCAB = Vocabulary(names=frozenset({"man", "of", "steel", "pacific", "rim", "action", "i", "the", "a"}),
                   numbers=("2013", "1174"), banned=frozenset({"thriller", "horror"}))


@pytest.fixture(scope="module")
def tok(local_backend):
    return local_backend[1].tokenizer


def _allowed(tok, context: str, word: str, vocab: Vocabulary = VOCAB) -> bool:
    """Whether the first token of `word` may follow `context` (the reply written so far)."""
    proc = FactLogitsProcessor(tok, vocab, prefix=context)
    scores = proc(torch.zeros((1, 7), dtype=torch.long), torch.zeros((1, len(tok))))
    first = tok.encode(word, add_special_tokens=False)[0]
    return bool(torch.isfinite(scores[0, first]))


def test_invented_names_are_masked_mid_sentence_but_fact_words_and_sentence_starts_are_not(tok) -> None:
    ctx = "“Man of Steel” is a film by"
    assert not _allowed(tok, ctx, " Nolan") and not _allowed(tok, ctx, " Netflix")
    assert _allowed(tok, ctx, " Steel") and _allowed(tok, ctx, " Pacific") and _allowed(tok, ctx, " the")
    assert _allowed(tok, "“Man of Steel” is great. ", "Nolan")  # a sentence may start with any word


def test_a_name_prefix_must_be_finished_as_a_fact_word(tok) -> None:
    ctx = "a film like P"  # "P" may start "Pacific"; it may not end here or become "Paris"
    assert _allowed(tok, ctx, "acific") or _allowed(tok, ctx, "ac")
    assert not _allowed(tok, ctx, " film") and not _allowed(tok, ctx, ".") and not _allowed(tok, ctx, "aris")


def test_numbers_must_spell_a_fact_number(tok) -> None:
    assert _allowed(tok, "released in ", "2") and _allowed(tok, "released in ", "1")
    assert not _allowed(tok, "released in ", "9")
    assert _allowed(tok, "released in 20", "1") and not _allowed(tok, "released in 20", "2")
    assert not _allowed(tok, "released in 20", " film")  # "20" is no fact: finish the number first
    assert _allowed(tok, "released in 2013", " and")


def test_other_genres_and_shouting_are_masked(tok) -> None:
    assert not _allowed(tok, "a tense", " thriller") or not _allowed(tok, "a tense thr", "iller")
    assert _allowed(tok, "a tense", " action")
    assert not _allowed(tok, "a", " FILM") and not _allowed(tok, "a", " HACKED")


def test_vocabulary_is_derived_from_the_facts_and_the_catalogue() -> None:
    ds = load_demo()
    cat = catalogue_for(ds)
    steel = ds.items["title"].tolist().index("Man of Steel")
    liked = [ds.items["title"].tolist().index("Pacific Rim")]
    facts = build_facts(ds, steel, liked, "test")
    vocab = vocabulary(facts.allowed(TONES["demo"]), cat)
    assert {"man", "steel", "pacific", "rim", "action", "fantasy"} <= vocab.names
    assert "2013" in vocab.numbers and str(facts.interactions) in vocab.numbers
    assert {"horror", "thriller", "comedy"} <= vocab.banned and not {"action", "fantasy"} & vocab.banned


CLOSED = Vocabulary(names=VOCAB.names, numbers=VOCAB.numbers, words=frozenset(
    {"man", "of", "steel", "is", "a", "great", "action", "movie", "you", "will", "enjoy", "it", "the", "and", "s",
     "i", "fun", "pick"}))


def _spellable(tok, context: str, word: str, vocab: Vocabulary = CLOSED) -> bool:
    """Whether every token of `word` (as the tokenizer writes it) may follow `context` and the tokens before it."""
    for token in tok.encode(word, add_special_tokens=False):
        proc = FactLogitsProcessor(tok, vocab, prefix=context)
        scores = proc(torch.zeros((1, 7), dtype=torch.long), torch.zeros((1, len(tok))))
        if not torch.isfinite(scores[0, token]):
            return False
        context += tok.decode([token])
    return True


@pytest.mark.parametrize("word", [" vigilante", " critics", " trailer", " festival", " worldwide", " audiences",
                                  " director", " sequel", " fántaşy", " acclaimed"])
def test_a_closed_vocabulary_cannot_spell_a_word_outside_it(tok, word: str) -> None:
    assert not _spellable(tok, "“Man of Steel” is a", word)


@pytest.mark.parametrize("word", [" great", " action", " movie", " fun", " pick", " enjoy"])
def test_a_closed_vocabulary_spells_its_own_words_and_may_end_them(tok, word: str) -> None:
    assert _spellable(tok, "“Man of Steel” is a", word)
    assert _spellable(tok, "“Man of Steel” is a" + word, ".")  # the word is whole: punctuation may follow
    assert not _spellable(tok, "“Man of Steel” is a gre", ".")  # "gre" is no word: it must go on to "great"


def test_no_capital_inside_a_lower_case_word(tok) -> None:
    assert not _spellable(tok, "“Man of Steel” is a gre", "At")  # "greAt" folds to a word of the vocabulary
    assert _spellable(tok, "“Man of Steel” is a gre", "at")


def test_the_end_of_the_reply_is_never_masked(tok) -> None:
    proc = FactLogitsProcessor(tok, CLOSED, prefix="“Man of Steel” is a gre")
    scores = proc(torch.zeros((1, 7), dtype=torch.long), torch.zeros((1, len(tok))))
    assert torch.isfinite(scores[0, tok.eos_token_id])


def _mid_sentence_names(text: str) -> set[str]:
    return {t.norm for t in tokens(text) if t.capital and not t.initial and not t.norm[0].isdigit()}


@pytest.mark.parametrize("title", ["Man of Steel", "The Conjuring", "Silver Linings Playbook"])
def test_guided_generation_on_demo_recommendations_names_only_facts(local_backend, title: str) -> None:
    backend, _, _ = local_backend
    ds = load_demo()
    cat = catalogue_for(ds)
    titles = ds.items["title"].tolist()
    item = titles.index(title)
    liked = [i for i in range(40) if i != item][:3]
    facts = build_facts(ds, item, liked, "test")
    guide = guide_for(facts, TONES["demo"], cat)
    reply = "".join(backend.generate(build_messages(facts, TONES["demo"]), max_new_tokens=40, guide=guide))
    text = guide.prefix + reply
    vocab = guide.vocabulary
    assert _mid_sentence_names(text) <= vocab.names, text
    assert set(re.findall(r"\d+", text)) <= set(vocab.numbers), text
    assert not {fold(w) for w in re.findall(r"\w+", text)} & vocab.banned, text
    assert {w.casefold() for w in WORD.findall(text)} <= vocab.words, text  # the closed vocabulary held


def test_a_guided_blurb_opens_with_why_and_what_and_streams_that_first(local_backend) -> None:
    backend, _, _ = local_backend
    ds = load_demo()
    cat = catalogue_for(ds)
    titles = ds.items["title"].tolist()
    facts = build_facts(ds, titles.index("Iron Man 3"), [titles.index("Man of Steel")], "test")
    run = BlurbStream(facts, "push notification", backend, cat, retries=0)
    chunks = list(run)
    assert chunks[0] == "Because you liked “Man of Steel”, you will enjoy “Iron Man 3”"
    assert run.result.text.startswith(chunks[0]) or run.result.source == "template"
    assert check_blurb(run.result.text, run.result.facts.allowed(TONES["push notification"]), cat).ok
    alone = BlurbStream(build_facts(ds, titles.index("Iron Man 3"), [], "test"), "demo", backend, cat, retries=0)
    assert next(iter(alone)) == "“Iron Man 3”"  # no liked item to cite: the title alone


def test_a_server_gets_no_opening_and_its_reply_is_shown_as_it_came() -> None:
    ds = load_demo()
    cat = catalogue_for(ds)
    titles = ds.items["title"].tolist()
    facts = build_facts(ds, titles.index("Iron Man 3"), [titles.index("Man of Steel")], "test")
    reply = "Iron Man 3 is a fun action pick for you."
    with LoopbackLLM(reply) as server:
        run = BlurbStream(facts, "demo", OpenAIBackend(server.url, "tiny"), cat, retries=0)
        chunks = list(run)
    assert "".join(chunks) == reply  # nothing written for the server, nothing added to what it wrote
    assert run.result.source == "llm" and run.result.text == reply
    assert "Because you liked" not in json.dumps(server.requests[-1])
