"""LLM-written recommendation blurbs that stay true to the data.

The path of one blurb: `build_facts` collects what may be said (the item's title, year and
attributes, the user's most influential history items, the item's popularity in words), all item
text sanitised (`grounding.sanitize`). `build_messages` puts the facts in a delimited DATA block the
model is told never to obey. A backend (`recsys_core.blurbs.backend.Backend`) streams the reply; an
in-process model is also steered (`guide_for`: the reply opens with the liked item and the title, and `recsys_core.blurbs.constrain` masks any
word outside the facts and the fixed stocks of `recsys_core.blurbs.wording` as it writes). `tidy` trims the
reply to the tone's length; `keep_supported` checks every sentence on its own (`grounding.check_sentence`: only
words of the facts and the fixed stocks, no title, attribute or number outside the facts, no claim about a
person, plot, event, award, critic, festival, release, box office or trailer) and drops those that fail. A draft
left without a sentence of the model's own, or failing `grounding.check_blurb` (names the item, not too
long, no withheld text, shouting, links...), is regenerated with the reason as feedback (bounded retries),
then replaced by `template_blurb`, built from the same facts. The result says which happened: source "llm",
"llm-retry" or "template", the reason, and the sentences dropped.

`BlurbStream` yields the text as it arrives (for `st.write_stream`); `write_blurb` just runs it.
`batch_blurbs` writes blurbs for every top-K recommendation of a list of users, with a cache.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from recsys_core.blurbs.backend import Backend
from recsys_core.blurbs.constrain import Guide
from recsys_core.blurbs.grounding import (
    CHECKED,
    MAX_ATTRIBUTE_CHARS,
    Allowed,
    Catalogue,
    Verdict,
    check_blurb,
    check_sentence,
    safety_problems,
    sanitize,
    sentences,
    vocabulary,
)
from recsys_core.blurbs.prompt import build_messages, tidy
from recsys_core.cache import KeyedCache
from recsys_core.data.dataset import Dataset
from recsys_core.data.item_schema import MULTI_SEPARATOR, TEXT_ATTRIBUTES, YEAR, attribute_values
from recsys_core.errors import ConfigError, LLMError, RecsysError
from recsys_core.evaluation.metrics import popularity_percentile
from recsys_core.insight.explain import Explainer
from recsys_core.models.base import Recommender
from recsys_core.progress import Progress

MAX_LIKED = 3
MAX_ATTRIBUTE_VALUES = 5
RETRIES = 2
RETRY_TEMPERATURE = 0.7  # a retry samples, so even without feedback it is a different draft


# ---- tones ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tone:
    name: str
    instruction: str
    max_sentences: int
    max_words: int
    max_new_tokens: int


TONES: dict[str, Tone] = {
    # Token budgets keep a CPU blurb under ~5 s (a 135M model writes ~15 tokens/s on one core); a cut-off
    # last sentence is dropped by `tidy`, so a blurb is one to three whole sentences.
    "demo": Tone("demo", "friendly and lively, 2 to 3 sentences, for a product demo", 3, 75, 60),
    "email": Tone("email", "warm and personal, 2 to 3 sentences for a marketing e-mail, speaking to the user as "
                  "'you'", 3, 80, 64),
    "push notification": Tone("push notification", "a push notification: one short sentence of at most 15 words",
                              1, 22, 32),
}


def get_tone(name: str) -> Tone:
    if name not in TONES:
        raise ConfigError(f"unknown tone {name!r}", hint=f"choose one of: {', '.join(TONES)}")
    return TONES[name]


# ---- facts ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BlurbFacts:
    """Everything a blurb may say about one recommendation, already sanitised. Only this reaches the LLM."""

    item_id: str
    title: str
    year: int | None
    attributes: tuple[tuple[str, tuple[str, ...]], ...]  # (("genres", ("Action", "Crime")), ...)
    liked: tuple[str, ...]  # titles of the user's most influential history items
    liked_how: str  # how `liked` was chosen (shown to people, not sent to the model)
    interactions: int
    top_percent: int  # the item is among the top X% of the catalogue by interactions
    popularity: str  # the popularity in plain words, as sent to the model
    noun: str = "movie"
    withheld: tuple[str, ...] = ()  # instruction-like text removed from item data: never sent, never allowed back

    def attribute_values(self) -> tuple[str, ...]:
        return tuple(v for _, values in self.attributes for v in values)

    def data_block(self) -> str:
        """The facts as the delimited DATA block of the prompt (every value JSON-quoted)."""
        q = lambda text: json.dumps(text, ensure_ascii=False)  # quoting escapes quotes and backslashes
        lines = [f"recommended_{self.noun}: {q(self.title)}"]
        if self.year is not None:
            lines.append(f"year: {self.year}")
        lines += [f"{name}: {', '.join(q(v) for v in values)}" for name, values in self.attributes if values]
        if self.liked:
            lines.append(f"user_liked: {', '.join(q(t) for t in self.liked)}")
        lines.append(f"popularity: {q(self.popularity)}")
        return "<data>\n" + "\n".join(lines) + "\n</data>"

    def allowed(self, tone: Tone) -> Allowed:
        numbers = tuple(dict.fromkeys(re.findall(r"\d+", self.data_block())))
        return Allowed(titles=(self.title, *self.liked), attributes=self.attribute_values(), numbers=numbers,
                       required_title=self.title, withheld=self.withheld, max_words=tone.max_words,
                       phrases=(self.popularity,), noun=self.noun)

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]

    def shown(self) -> dict:
        """The facts for display: what the model sees, plus where the liked items came from."""
        out = {f"recommended {self.noun}": self.title, **({"year": self.year} if self.year is not None else {})}
        out.update({name: list(values) for name, values in self.attributes})
        out.update({"because the user liked": list(self.liked), "chosen by": self.liked_how,
                    "popularity": self.popularity})
        if self.withheld:
            out["withheld from the model (instruction-like text in the item data)"] = len(self.withheld)
        return out


def item_noun(ds: Dataset) -> str:
    """'movie', 'book' or 'item', from the dataset's name and source."""
    text = f"{ds.name} {ds.source}".lower()
    if any(w in text for w in ("movie", "film", "ml-", "movielens", "netflix", "imdb")):
        return "movie"
    if any(w in text for w in ("book", "goodreads")):
        return "book"
    return "item"


def _attribute_columns(items: pd.DataFrame) -> list[str]:
    return [c for c in TEXT_ATTRIBUTES if c in items.columns]


def _year(items: pd.DataFrame, item: int) -> int | None:
    value = items[YEAR].iat[item]
    return None if pd.isna(value) else int(value)


def _attributes(items: pd.DataFrame, item: int, withheld: list[str]) -> tuple[tuple[str, tuple[str, ...]], ...]:
    out = []
    for col in _attribute_columns(items):
        values = []
        for part in str(items[col].iat[item]).split(MULTI_SEPARATOR):
            clean = sanitize(part, MAX_ATTRIBUTE_CHARS)
            withheld += clean.withheld
            if clean.text and clean.text not in values:
                values.append(clean.text)
        if values:
            out.append((col, tuple(values[:MAX_ATTRIBUTE_VALUES])))
    return tuple(out)


def popularity_words(count: int, top_percent: int, noun: str, verb: str) -> str:
    if top_percent <= 1:
        band = f"one of the most popular {noun}s here"
    elif top_percent <= 10:
        band = f"in the top {top_percent}% most popular {noun}s here"
    elif top_percent <= 40:
        band = f"a well-known {noun} here"
    else:
        band = f"a lesser-known {noun} here"
    return f"{band} ({count} {'user' if count == 1 else 'users'} {verb} it)"


def build_facts(ds: Dataset, item: int, liked_items: Sequence[int] = (), liked_how: str = "",
                percentiles: np.ndarray | None = None, max_liked: int = MAX_LIKED) -> BlurbFacts:
    """The facts of recommending `item` to a user whose most influential history items are `liked_items`."""
    item = int(item)
    withheld: list[str] = []
    item_id = str(ds.item_ids[item])
    clean = sanitize(ds.title(item))
    withheld += clean.withheld
    title = clean.text or f"item {sanitize(item_id).text}"
    liked = []
    for other in liked_items:
        c = sanitize(ds.title(int(other)))
        withheld += c.withheld
        if c.text and c.text != title and c.text not in liked:
            liked.append(c.text)
    pct = popularity_percentile(ds.item_popularity) if percentiles is None else percentiles
    top = int(min(100, max(1, math.ceil((1.0 - float(pct[item])) * 100))))
    count = int(ds.item_popularity[item])
    noun = item_noun(ds)
    verb = "rated" if ds.has_ratings else "chose"
    return BlurbFacts(item_id, title, _year(ds.items, item), _attributes(ds.items, item, withheld),
                      tuple(liked[:max_liked]), liked_how, count, top, popularity_words(count, top, noun, verb),
                      noun, tuple(dict.fromkeys(withheld)))


def catalogue_for(ds: Dataset) -> Catalogue:
    """Every title and attribute value of the dataset, for the grounding check (build once per dataset)."""
    titles = [ds.title(i) for i in range(ds.n_items)]
    values: list[str] = []
    for col in _attribute_columns(ds.items):
        values += attribute_values(ds.items, col)
    return Catalogue.build(titles, values)


# ---- which history items to cite -----------------------------------------------------------------


def similar_history_items(model: Recommender, history: np.ndarray, item: int, k: int = MAX_LIKED
                          ) -> tuple[np.ndarray, str]:
    """The k history items closest to `item` by the model's item embeddings (cosine), and how they were chosen.

    Models whose item vectors carry no similarity (`capabilities.similar_items` false: popularity's counts) cite
    the most recent items instead.
    """
    history = np.asarray(history, dtype=np.int64)
    unique = pd.unique(history[::-1])  # newest first, duplicates dropped
    if not model.capabilities.similar_items or not len(unique):
        return unique[:k], "the most recent items of the history (this model has no item embeddings to compare)"
    vectors = np.asarray(model.item_embeddings(), dtype=np.float32)
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    sims = unit[unique] @ unit[int(item)]
    order = np.argsort(-sims, kind="stable")[:k]
    return unique[order], "the history items most similar to it by the model's item embeddings (cosine)"


def influential_history_items(model: Recommender, history: np.ndarray, item: int, k: int = MAX_LIKED,
                              explainer: Explainer | None = None) -> tuple[np.ndarray, str]:
    """The history items that most raise the model's score for `item`: SHAP values when an explainer is
    given (the shared one of `recsys_core.insight.explain.explainer_for`), else item-embedding similarity.
    Says which."""
    if explainer is not None:
        try:
            expl = explainer.explain_history(history, item)
            items, values = np.asarray(expl.items), np.asarray(expl.values, dtype=float)
            keep = (items >= 0) & (values > 0)
            order = np.argsort(-values[keep], kind="stable")
            chosen = pd.unique(items[keep][order])[:k]
            if len(chosen):
                return chosen, f"SHAP values of the model's score for it ({expl.method}, {expl.n_evals} evaluations)"
        except (RecsysError, ValueError, RuntimeError) as err:  # SHAP is optional: fall back, say why
            items, how = similar_history_items(model, history, item, k)
            return items, f"{how}; SHAP was unavailable ({err})"
    return similar_history_items(model, history, item, k)


# ---- the deterministic fallback ------------------------------------------------------------------


def _join(values: Sequence[str]) -> str:
    values = list(values)
    return values[0] if len(values) == 1 else ", ".join(values[:-1]) + " and " + values[-1]


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def template_blurb(facts: BlurbFacts, tone: Tone) -> str:
    """A blurb from the facts alone (always grounded): the fallback when the LLM fails or strays."""
    title = f"“{facts.title}”" + (f" ({facts.year})" if facts.year is not None else "")
    liked = _join([f"“{t}”" for t in facts.liked[:2]]) if facts.liked else ""
    genres = next((values[:3] for _, values in facts.attributes if values), ())
    kind = f"{_join(genres)} {facts.noun}" if genres else facts.noun
    if tone.name == "push notification":
        if facts.liked:
            return f"{title} is picked for you because you liked “{facts.liked[0]}”."
        return f"{title}: {_article(kind)} {kind} picked for you."
    if tone.name == "email":
        opening = f"Because you liked {liked}, we picked {title} for you." if liked else \
            f"We picked {title} for you."
        return f"{opening} This {kind} is {facts.popularity}."
    opening = f"Because you enjoyed {liked}, we think you will like {title}." if liked else \
        f"We think you will like {title}."
    return f"{opening} It is {_article(kind)} {kind}, {facts.popularity}."


# ---- writing one blurb ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Dropped:
    """A sentence of a draft that failed the check, and why."""

    text: str
    problems: tuple[str, ...]
    number: int = 1  # its place in the draft (1: the first sentence)


@dataclass(frozen=True)
class Attempt:
    text: str  # the sentences that passed (what would be shown)
    problems: tuple[str, ...]  # why the draft was rejected (empty: accepted)
    dropped: tuple[Dropped, ...] = ()


def keep_supported(text: str, allowed: Allowed, catalogue: Catalogue, prefix: str = ""
                   ) -> tuple[str, tuple[Dropped, ...]]:
    """The sentences of `text` that pass `grounding.check_sentence`, joined, and those dropped. A failing first
    sentence that opens with the guide's `prefix` is cut back to it: those words are ours, built from the facts."""
    kept, dropped = [], []
    for n, sentence in enumerate(sentences(text)):
        problems = check_sentence(sentence, allowed, catalogue)
        if not problems:
            kept.append(sentence)
            continue
        dropped.append(Dropped(sentence, problems, n + 1))
        if n == 0 and prefix and sentence.startswith(prefix) and not check_sentence(prefix + ".", allowed, catalogue):
            kept.append(prefix + ".")
    return " ".join(kept), tuple(dropped)


@dataclass
class BlurbResult:
    """The final blurb and how it came to be."""

    text: str
    source: str  # "llm" | "llm-retry" | "template"
    reason: str  # why the template was used, or the grounding verdict
    tone: str
    backend: str
    facts: BlurbFacts
    attempts: tuple[Attempt, ...] = ()
    seconds: float = 0.0
    first_token_s: float | None = None
    tokens: int = 0

    @property
    def dropped(self) -> tuple[Dropped, ...]:
        """The sentences of the shown draft that failed the check (none for the template)."""
        return self.attempts[-1].dropped if self.source != "template" and self.attempts else ()

    def badge(self) -> str:
        """What was checked, in words that say no more than that."""
        if self.source == "template":
            return "Built by the template from the facts alone: no model draft passed the check."
        after = "" if self.source == "llm" else f" after {len(self.attempts) - 1} rejected draft(s)"
        n = len(self.dropped)
        return (f"Written by the model{after}. Checked: {CHECKED}; "
                f"{n} {'sentence' if n == 1 else 'sentences'} that did not pass {'was' if n == 1 else 'were'} "
                "dropped.")


@dataclass(frozen=True)
class BlurbEvent:
    """One step of writing a blurb, for a page that shows status instead of unchecked text.

    kind: "draft" (draft number `draft` starts), "text" (a piece of that draft, not yet checked),
    "checking", "rejected" (`problems` says why), "done" (`BlurbStream.result` is set).
    """

    kind: str
    draft: int
    text: str = ""
    problems: tuple[str, ...] = ()


class BlurbStream:
    """Iterate to receive the text of each attempt as it is generated; `result` holds the checked blurb.

    Attempts after the first start with `RETRY_MARK` so a live display can show that a draft was rejected.
    `events()` gives the same run as `BlurbEvent`s: a page that must show only checked text keeps the
    "text" events in a hidden buffer and shows the draft's status instead.
    """

    RETRY_MARK = "\n\n↻ "

    def __init__(self, facts: BlurbFacts, tone: Tone | str, backend: Backend | None, catalogue: Catalogue,
                 retries: int = RETRIES, stream: bool = True, feedback: bool = True,
                 retry_temperature: float = RETRY_TEMPERATURE, guided: bool = True) -> None:
        self.facts, self.tone = facts, get_tone(tone) if isinstance(tone, str) else tone
        self.backend, self.catalogue, self.retries, self.stream = backend, catalogue, retries, stream
        self.feedback, self.retry_temperature = feedback, retry_temperature
        self.guided = guided and backend is not None and backend.supports_guide
        self.guide = guide_for(self.facts, self.tone, catalogue) if self.guided else None
        self.result: BlurbResult | None = None

    def __iter__(self) -> Iterator[str]:
        for event in self.events():
            if event.kind == "draft" and event.draft > 1:
                yield self.RETRY_MARK
            elif event.kind == "text":
                yield event.text

    def events(self) -> Iterator[BlurbEvent]:
        start = time.perf_counter()
        attempts: list[Attempt] = []
        stats = {"first": None, "tokens": 0}
        reason = "no language model chosen"
        allowed = self.facts.allowed(self.tone)
        feedback = None
        for number in range(1, 2 + self.retries if self.backend is not None else 1):
            yield BlurbEvent("draft", number)
            try:
                raw = yield from self._attempt(number, feedback, self.retry_temperature if number > 1 else 0.0,
                                               start, stats)
            except LLMError as err:
                reason = f"the language model failed: {err}"
                break
            yield BlurbEvent("checking", number)
            prefix = self.guide.prefix if self.guide is not None else ""
            text, dropped = keep_supported(tidy(raw, self.tone), allowed, self.catalogue, prefix)
            verdict = _judge(text, raw, allowed, self.catalogue, prefix, dropped)
            attempts.append(Attempt(text, verdict.problems, dropped))
            if verdict.ok:
                summary = f"{verdict.summary()}; {len(dropped)} sentence(s) dropped"
                self._finish(text, "llm" if number == 1 else "llm-retry", summary, attempts, start, stats)
                yield BlurbEvent("done", number)
                return
            yield BlurbEvent("rejected", number, problems=verdict.problems)
            feedback = verdict.summary() if self.feedback else None
            reason = f"{len(attempts)} draft(s) rejected; the last {verdict.summary()}"
        self._finish(template_blurb(self.facts, self.tone), "template", reason, attempts, start, stats)
        yield BlurbEvent("done", len(attempts))

    def _attempt(self, number: int, feedback: str | None, temperature: float, start: float,
                 stats: dict) -> Iterator[BlurbEvent]:
        messages = build_messages(self.facts, self.tone, feedback)
        pieces: list[str] = []
        options = {"max_new_tokens": self.tone.max_new_tokens, "stream": self.stream, "temperature": temperature}
        if self.guide is not None:
            options["guide"] = self.guide
            pieces.append(self.guide.prefix)
            yield BlurbEvent("text", number, self.guide.prefix)
        chunks = self.backend.generate(messages, **options)
        try:
            for chunk in chunks:
                if stats["first"] is None:
                    stats["first"] = time.perf_counter() - start
                pieces.append(chunk)
                yield BlurbEvent("text", number, chunk)
                so_far = "".join(pieces)
                if len(sentences(" ".join(so_far.split()))) > self.tone.max_sentences or re.search(r"\S\s*\n\s*\n", so_far):
                    break  # tidy would cut what follows anyway: stop the model instead of waiting for it
        finally:
            chunks.close()  # ends a local generation early / closes the HTTP stream
        stats["tokens"] += self.backend.last_stats.tokens
        return "".join(pieces)

    def _finish(self, text: str, source: str, reason: str, attempts: list[Attempt], start: float,
                stats: dict) -> None:
        backend = self.backend.id if self.backend is not None else "none"
        self.result = BlurbResult(text, source, reason, self.tone.name, backend, self.facts, tuple(attempts),
                                  time.perf_counter() - start, stats["first"], stats["tokens"])


def guide_for(facts: BlurbFacts, tone: Tone, catalogue: Catalogue) -> Guide:
    """Steering for a local model: the reply opens with why and what ("Because you liked “A”, you will
    enjoy “B”"), so it explains the recommendation and names the item, and its words stay inside the
    facts' vocabulary (`recsys_core.blurbs.constrain`). Told to cite a liked item, a 135M model rarely does, or
    gets it wrong ("director Oblivion"); given this opening, it goes on to describe the item."""
    if facts.liked:
        prefix = f"Because you liked “{facts.liked[0]}”, you will enjoy “{facts.title}”"
    else:
        prefix = f"“{facts.title}”"
    return Guide(prefix=prefix, vocabulary=vocabulary(facts.allowed(tone), catalogue))


def _judge(text: str, raw: str, allowed: Allowed, catalogue: Catalogue, prefix: str = "",
           dropped: Sequence[Dropped] = ()) -> Verdict:
    """The verdict on the sentences kept: `check_blurb`, plus the safety checks on the whole raw reply (an order
    obeyed in a sentence that tidying cut off still condemns the draft), plus some words of the model's own
    (beyond the guide's `prefix`). A rejection also says why each sentence was dropped."""
    verdict = check_blurb(text, allowed, catalogue) if text else Verdict(False, ())
    problems = list(verdict.problems)
    problems += [p for p in safety_problems(raw, allowed) if p not in problems]
    own = text[len(prefix):] if prefix and text.startswith(prefix) else text
    if not re.search(r"[^\W\d_]", own):
        problems.append("keeps no sentence of the model's own")
    if problems:
        problems = [f"sentence {d.number} {p}" for d in dropped for p in d.problems[:2]] + problems
    return Verdict(not problems, tuple(problems))


def write_blurb(facts: BlurbFacts, tone: Tone | str, backend: Backend | None, catalogue: Catalogue,
                retries: int = RETRIES, stream: bool = True, feedback: bool = True, guided: bool = True
                ) -> BlurbResult:
    """One checked blurb (see the module docstring); never raises for backend failures."""
    run = BlurbStream(facts, tone, backend, catalogue, retries, stream, feedback, guided=guided)
    for _ in run.events():
        pass
    return run.result


# ---- many blurbs ---------------------------------------------------------------------------------


class BlurbCache(KeyedCache[BlurbResult]):
    """Results per (model, user, item, backend, tone, facts), least recently used dropped first."""

    def __init__(self, max_entries: int = 4096) -> None:
        super().__init__(max_entries)

    @staticmethod
    def key(model_id: str, user_id: str, facts: BlurbFacts, backend: Backend | None, tone: str) -> tuple:
        return (model_id, user_id, facts.item_id, backend.id if backend is not None else "none", tone, facts.digest())



LikedFn = Callable[[np.ndarray, int], tuple[np.ndarray, str]]


def batch_blurbs(ds: Dataset, model: Recommender, users: Sequence[int], k: int, backend: Backend | None,
                 tone: Tone | str, *, model_id: str, catalogue: Catalogue | None = None,
                 cache: BlurbCache | None = None, liked: LikedFn | None = None, retries: int = RETRIES,
                 progress: Progress | None = None) -> pd.DataFrame:
    """Top-k recommendations of each user with a checked blurb each (export-ready long table).

    Columns: those of `export.recommendations_for_users` plus blurb, blurb_source, blurb_reason, because.
    `liked(history, item)` picks the history items to cite (default: item-embedding similarity).
    Every blurb goes through the one `backend` (an in-process model is loaded once and shared). Stops
    early, returning the rows done so far, when `progress` is cancelled: the flag is read at every
    generated piece, so a cancel ends the running generation within a token, not after the blurb.
    """
    from recsys_core.recommend.export import recommendations_for_users  # export imports recommend; keep ours light

    tone = get_tone(tone) if isinstance(tone, str) else tone
    catalogue = catalogue if catalogue is not None else catalogue_for(ds)
    liked = liked or (lambda history, item: similar_history_items(model, history, item))
    recs = recommendations_for_users(model, ds, k, users)
    user_index, item_index = ds.user_index, ds.item_index
    pct = popularity_percentile(ds.item_popularity)
    extra = {"blurb": [], "blurb_source": [], "blurb_reason": [], "because": []}
    for n, (user_id, item_id) in enumerate(zip(recs["user_id"], recs["item_id"])):
        if progress is not None:
            progress.update(n, len(recs), message=f"writing blurb {n + 1} of {len(recs)}")
        item, history = item_index[item_id], ds.history(user_index[user_id])
        items, how = liked(history, item)
        facts = build_facts(ds, item, items, how, pct)
        key = BlurbCache.key(model_id, user_id, facts, backend, tone.name)
        result = cache.get(key) if cache is not None else None
        if result is None:
            result = _write_unless_cancelled(facts, tone, backend, catalogue, retries, progress)
            if result is None:
                break
            if cache is not None:
                cache.put(key, result)
        for name, value in (("blurb", result.text), ("blurb_source", result.source),
                            ("blurb_reason", result.reason), ("because", "; ".join(facts.liked))):
            extra[name].append(value)
        if progress is not None:
            progress.update(n + 1, len(recs), message=f"{n + 1} of {len(recs)} blurbs written")
            if progress.cancelled:
                break
    done = len(extra["blurb"])
    return recs.iloc[:done].assign(**extra).reset_index(drop=True)


def _write_unless_cancelled(facts: BlurbFacts, tone: Tone, backend: Backend | None, catalogue: Catalogue,
                            retries: int, progress: Progress | None) -> BlurbResult | None:
    """`write_blurb`, streamed so that a cancel stops the generation at the next piece (None if cancelled)."""
    run = BlurbStream(facts, tone, backend, catalogue, retries, stream=True)
    events = run.events()
    for _ in events:
        if progress is not None and progress.cancelled:
            events.close()  # closes the model's stream: the generation thread stops at its next token
            return None
    return run.result
