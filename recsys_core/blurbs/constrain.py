"""Constrained decoding: keep a local language model's words inside the vocabulary of the facts.

A 135M-parameter model asked for a blurb invents directors, studios, sequels and dates; the grounding
check (`recsys_core.blurbs.grounding`) then rejects the draft and the retry costs seconds. Rather than only
checking after the fact, we forbid, token by token, what the check would reject:

- a capitalised word mid-sentence (a name, a title, an award) unless it spells a word of the facts
  (titles, attribute values) or one of the few capitalised words that are no names ("I", "TV");
- a digit that would make a number not in the facts (years, interaction counts);
- an attribute value of the catalogue that is not this item's ("thriller" for a comedy);
- any word outside the closed vocabulary (`Vocabulary.words`: the facts' words and the fixed stocks of
  `recsys_core.blurbs.wording`), letter by letter: a token may only start or go on spelling one of those
  words, and a word may only end where one does ("vigilante", "critics", "trailer" cannot be written).

This mirrors the check, so what survives usually passes it; the check still runs on every draft.
`Vocabulary` says what is allowed (`grounding.vocabulary` builds it); `Guide` pairs it with a prefix the
reply must start with; `FactLogitsProcessor` applies it to a Hugging Face generation. Works with any
tokenizer: the per-token facts (leading space, leading letters, digits) are computed once per tokenizer.
"""

from __future__ import annotations

import re
import threading
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import torch

from recsys_core.blurbs.grounding import Vocabulary, fold, is_sentence_start
from recsys_core.blurbs.wording import WORD

_OPENERS = " \t\n\"'“‘«([*_-—–"
_LETTERS = re.compile(r"[^\W\d_]+")
_TRAILING_WORD = re.compile(r"[^\W\d_]+$")
_TRAILING_DIGITS = re.compile(r"\d+$")


@dataclass(frozen=True)
class Guide:
    """How to steer one generation: the reply starts with `prefix`; its words stay inside `vocabulary`."""

    prefix: str = ""
    vocabulary: Vocabulary | None = None


@dataclass
class TokenTable:
    """Per-token facts of a tokenizer, for masking quickly at every step."""

    texts: list[str]
    space: np.ndarray  # the token starts with whitespace (it begins a new word)
    capital: np.ndarray  # after whitespace and opening quotes, it starts with an upper-case letter
    letter: np.ndarray  # it starts with a letter right away (continues a word when one is open)
    upper: np.ndarray  # its first two letters are capitals ("FILM", " OF"): shouting, unless the facts shout
    heads: list[str]  # folded leading letters (after whitespace and openers)
    by_head: dict[str, list[int]] = field(default_factory=dict)  # folded head -> tokens starting a word
    by_letters: dict[str, list[int]] = field(default_factory=dict)  # folded head -> word-continuing tokens
    digits: dict[str, tuple[list[int], list[int]]] = field(default_factory=dict)  # digits -> (joined, spaced) tokens
    runs: list[tuple[str, ...]] = field(default_factory=list)  # case-folded letter runs (words or pieces of words)
    ends_letter: np.ndarray | None = None  # its last character is a letter (its last run may go on)
    partial: np.ndarray | None = None  # a piece of a multi-byte character ("\ufffd" when decoded alone)
    special: list[int] = field(default_factory=list)  # the end-of-text token: never masked (a reply may always end)

    @classmethod
    def build(cls, tokenizer) -> TokenTable:
        texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))], skip_special_tokens=False,
                                       clean_up_tokenization_spaces=False)
        n = len(texts)
        space, capital, letter, upper = (np.zeros(n, bool) for _ in range(4))
        heads = [""] * n
        table = cls(texts, space, capital, letter, upper, heads)
        for i, text in enumerate(texts):
            table._add(i, text)
        table.runs = [tuple(w.casefold() for w in WORD.findall(text)) for text in texts]  # accents kept
        table.ends_letter = np.array([t[-1:].isalpha() for t in texts], bool)
        table.partial = np.array(["\ufffd" in t for t in texts], bool)
        table.special = [int(tokenizer.eos_token_id)] if tokenizer.eos_token_id is not None else []
        return table

    def _add(self, i: int, text: str) -> None:
        self.space[i] = text[:1].isspace()
        body = text.lstrip(_OPENERS)
        self.letter[i] = text[:1].isalpha() or text[:1] == "\ufffd"  # a split multi-byte letter ("đ") counts
        m = _LETTERS.match(body)
        if m:
            head = fold(m.group(0))
            self.heads[i] = head
            self.capital[i] = body[0].isupper()
            self.upper[i] = len(m.group(0)) >= 2 and m.group(0)[:2].isupper()
            self.by_head.setdefault(head, []).append(i)
            if self.letter[i]:
                self.by_letters.setdefault(head, []).append(i)
        stripped = text.strip()
        if stripped.isdigit() and stripped.isascii():  # " 7" starts a number, "7" may go on one
            self.digits.setdefault(stripped, ([], []))[int(self.space[i])].append(i)


_TABLES: dict[int, tuple[object, TokenTable]] = {}
_TABLES_LOCK = threading.Lock()


def token_table(tokenizer) -> TokenTable:
    """The table of `tokenizer`, built once per process (~1 s for a 50k vocabulary)."""
    with _TABLES_LOCK:
        hit = _TABLES.get(id(tokenizer))
        if hit is None or hit[0] is not tokenizer:
            hit = _TABLES[id(tokenizer)] = (tokenizer, TokenTable.build(tokenizer))
        return hit[1]


def _prefixes(words: frozenset[str]) -> dict[str, set[str]]:
    """Every prefix of every word -> the words it starts (for 'can this token still spell a name?')."""
    out: dict[str, set[str]] = defaultdict(set)
    for w in words:
        for k in range(1, len(w) + 1):
            out[w[:k]].add(w)
    return out


class FactLogitsProcessor:
    """A `transformers` LogitsProcessor enforcing a `Vocabulary` on the text after `prefix` (batch of one)."""

    def __init__(self, tokenizer, vocabulary: Vocabulary, prefix: str = "") -> None:
        self.table, self.vocab = token_table(tokenizer), vocabulary
        self.text, self.start = prefix, None
        # A name must also be a word of the closed vocabulary: "O" may start the name "OK" and the word "of", but
        # no word that is both, and a dead end lets nothing through.
        names = vocabulary.names & vocabulary.words if vocabulary.words else vocabulary.names
        self.name_prefixes = _prefixes(names)
        n = len(self.table.texts)
        allowed_heads = np.zeros(n, bool)
        for prefix_text in self.name_prefixes:
            allowed_heads[self.table.by_head.get(prefix_text, [])] = True
        shout_ok = np.zeros(n, bool)
        for prefix_text in _prefixes(vocabulary.capitals):
            shout_ok[self.table.by_head.get(prefix_text, [])] = True
        banned_heads = np.zeros(n, bool)
        for word in vocabulary.banned:
            banned_heads[self.table.by_head.get(word, [])] = True
        t = self.table
        # Fixed masks; per step we only pick among them and patch the few context-dependent tokens.
        new_word = ~t.letter  # after a letter, only a token starting with a space or quote starts a word
        self._bad_caps_after_letter = torch.from_numpy(t.capital & new_word & ~allowed_heads)
        self._bad_caps = torch.from_numpy(t.capital & ~allowed_heads)
        self._shout = torch.from_numpy(t.upper & ~shout_ok)  # the check rejects shouting anywhere
        self._banned_after_letter = torch.from_numpy(banned_heads & new_word)
        self._banned = torch.from_numpy(banned_heads)
        self._letter = torch.from_numpy(t.letter)
        self._upper_start = torch.from_numpy(np.array([x[:1].isupper() for x in t.texts], bool))
        self.closed = _ClosedWords(t, vocabulary.words) if vocabulary.words else None

    def _sync(self, input_ids) -> None:
        """Append the newest token's text to the running reply."""
        length = int(input_ids.shape[1])
        if self.start is None:
            self.start = length
        elif length > self.start:
            self.text += self.table.texts[int(input_ids[0, -1])]
            self.start = length

    def __call__(self, input_ids, scores):
        self._sync(input_ids)
        n = len(self.table.texts)
        mask = torch.zeros(max(n, scores.shape[-1]), dtype=torch.bool)
        in_word = bool(self.text) and self.text[-1].isalnum()
        if not is_sentence_start(self.text):
            mask[:n] |= self._bad_caps_after_letter if in_word else self._bad_caps
        mask[:n] |= self._banned_after_letter if in_word else self._banned
        mask[:n] |= self._shout
        if in_word:
            self._continuation(mask)
            if self.text[-1].islower():  # "settLe", "beforE": no capital inside a word
                mask[:n] |= self._upper_start
        if self.closed is not None:
            m = _TRAILING_WORD.search(self.text)
            mask[:n] |= self.closed.forbidden(m.group(0).casefold() if m else "")
        self._numbers(mask)
        mask = mask[: scores.shape[-1]]
        if bool(mask.all()):  # nothing left to say within the facts: end the reply (closed vocabulary) or let the
            if self.closed is None:  # model go on; the check decides
                return scores
            mask[self.closed.special.nonzero()[0]] = False
        scores = scores.clone()
        scores[:, mask.to(scores.device)] = -float("inf")
        return scores

    def _continuation(self, mask) -> None:
        """Inside a word: keep a capitalised name on a spelling of the facts; stop banned words forming."""
        m = _TRAILING_WORD.search(self.text)
        if m is None:
            return
        current = fold(m.group(0))
        table = self.table
        for word in self.vocab.banned:  # "thr" + "iller" = "thriller": forbid the completing token
            if word.startswith(current) and len(word) > len(current):
                mask[table.by_letters.get(word[len(current):], [])] = True
        name = m.group(0)[0].isupper() and not is_sentence_start(self.text[:m.start()])
        if not name:
            return
        allowed = np.zeros(len(table.texts), bool)
        for full in self.name_prefixes.get(current, ()):
            rest = full[len(current):]
            for k in range(1, len(rest) + 1):
                allowed[table.by_letters.get(rest[:k], [])] = True
        mask[: len(allowed)] |= self._letter & ~torch.from_numpy(allowed)
        if current not in self.vocab.names and allowed.any():  # "O" is only the start of "Oblivion": go on
            mask[: len(allowed)] |= ~self._letter

    def _numbers(self, mask) -> None:
        """Digits may only spell (a prefix of) a number of the facts."""
        run = _TRAILING_DIGITS.search(self.text)
        current = run.group(0) if run else ""
        for digits, (joined, spaced) in self.table.digits.items():
            for group, value in ((joined, current + digits), (spaced, digits)):
                if group and not any(n.startswith(value) for n in self.vocab.numbers):
                    mask[group] = True
        if current and current not in self.vocab.numbers and any(n.startswith(current) for n in self.vocab.numbers):
            # "1" is only the start of "1174": no word or space until the number is whole
            digit_ids = [i for joined, _ in self.table.digits.values() for i in joined]
            keep = mask[digit_ids].clone()
            mask[: len(self.table.texts)] = True
            mask[digit_ids] = keep


class _ClosedWords:
    """Token masks that keep every word inside a closed vocabulary: a token may finish words of it and start or go
    on spelling one; a word may end only where one of the vocabulary's words does."""

    def __init__(self, table: TokenTable, words: frozenset[str]) -> None:
        self.table, self.words = table, words
        self.starting = _prefixes(words)  # prefix -> words it starts
        foreign = any(not w.isascii() for w in words)
        n = len(table.texts)
        fresh, tail = np.zeros(n, bool), np.zeros(n, bool)
        self.open_by_run: dict[str, list[int]] = defaultdict(list)  # one run, may go on: "thr"
        self.closed_by_run: dict[str, list[int]] = defaultdict(list)  # first run ends inside it: "iller,"
        for i, runs in enumerate(table.runs):
            if table.partial[i] and not foreign:
                continue
            fresh[i] = self._fits(runs, bool(table.ends_letter[i]))
            tail[i] = self._fits(runs[1:], bool(table.ends_letter[i]))
            if table.letter[i] and runs:
                (self.open_by_run if len(runs) == 1 and table.ends_letter[i] else self.closed_by_run)[runs[0]].append(i)
        self.tail = tail
        self.special = np.zeros(n, bool)
        self.special[[i for i in table.special if i < n]] = True
        self.after_space = torch.from_numpy(~(fresh | self.special))  # no word open: what may come
        self.end_word = fresh & ~table.letter  # a word that is whole may be followed by these
        self.cache: dict[str, torch.Tensor] = {}

    def _fits(self, runs: tuple[str, ...], last_open: bool) -> bool:
        if not runs:
            return True
        *whole, last = runs
        return all(r in self.words for r in whole) and (last in self.starting if last_open else last in self.words)

    def forbidden(self, current: str) -> torch.Tensor:
        """Tokens that may not follow text ending in the letters `current` ("" when no word is open)."""
        if not current:
            return self.after_space
        hit = self.cache.get(current)
        if hit is None:
            allowed = self.end_word.copy() if current in self.words else np.zeros(len(self.tail), bool)
            for word in self.starting.get(current, ()):
                rest = word[len(current):]
                for k in range(1, len(rest) + 1):
                    allowed[self.open_by_run.get(rest[:k], [])] = True
                closed = [i for i in self.closed_by_run.get(rest, []) if self.tail[i]]
                allowed[closed] = True
            if not allowed.any():  # a word the mask did not write (the prompt's prefix): let it end
                allowed = self.end_word.copy()
            hit = self.cache[current] = torch.from_numpy(~(allowed | self.special))
        return hit
