"""What a blurb sentence may say: the closed vocabulary beyond the facts.

A sentence may use the words of its facts (attribute values with their plurals and synonyms, the
popularity wording, the kind of item), the words of a fact title inside that title, and these fixed
stocks: English function words (articles, pronouns, prepositions, auxiliaries...), a small stock of
tone words (the recommender's own enthusiasm: "great", "perfect pick", "enjoy") and, per genre the
item has, a few words that only restate that genre ("thrilling" for a thriller, "funny" for a comedy).
Nothing else: no plot, person, event, award, critic, festival, release, box office or trailer, since
no fact can support them. `CLAIMS` names those kinds, so a dropped sentence says what it tried to
claim; none of their words is in any stock (tests/test_grounding_sentences.py checks).

Words are letter runs, folded (`grounding.fold`): "it’s" is "it" + "s", "action-packed" is "action" +
"packed"; digits are numbers, checked on their own.
"""

from __future__ import annotations

import re
from collections.abc import Sequence


def _stock(words: str) -> frozenset[str]:
    return frozenset(words.split())


FUNCTION_WORDS = _stock("""
a an the this that these those it its i we us our ours you your yours yourself yourselves
who whom whose which what whatever whichever why how where when whenever
of in on at to for with from by about as into like through after before over under between among amongst
without within up out off down around across along near toward towards upon than beyond onto per via
and or but so yet nor if because while though although whether then also too either neither both
is are be am have has having do does did doing done will would can could should
may might must shall not no yes
s t d ll re ve m don doesn isn aren wouldn couldn shouldn haven hasn cannot let
all any each some none more most much few less least other others another such same own
only just even very really quite rather enough almost also again never always still already soon
here there now today tonight next right well once twice either else instead maybe perhaps
one ones something anything everything nothing someone anyone anybody somebody
lot lots bit kind sort way ways time times thing things
""")

# The recommender's voice: enthusiasm and invitation, never a fact about the item or its reception.
TONE_WORDS = _stock("""
enjoy enjoys enjoyed enjoying like liked likes love loved loves watch watched watching
read reading try trying pick picked picks choose chose chosen choice choices recommend recommended
think bet guess find get give see check add want deserves deserve miss sit settle relax dive
great good perfect fine fun enjoyable exciting excellent fantastic wonderful lovely terrific solid ideal
worth worthy special entertaining engaging satisfying easy natural similar different ready sure top
treat match fit night evening weekend mood
definitely surely certainly absolutely truly simply perfectly probably likely especially particularly
together alike equally
category genre genres blend mix combines combining combination touch dash delivers look looking decide
""")

# Words for the kind of item, per the facts' noun ("movie", "book", "item").
NOUN_WORDS = {
    "movie": frozenset({"movie", "movies", "film", "films"}),
    "book": frozenset({"book", "books", "novel", "novels", "reads", "page", "pages"}),
    "item": frozenset({"item", "items"}),
}

# Words that only restate a genre the item has (keys: folded canonical attribute values).
GENRE_WORDS = {
    "action": {"packed", "thrills"},
    "thriller": {"thrilling", "thrills", "tense", "suspense", "suspenseful", "gripping"},
    "horror": {"scary", "chilling", "creepy", "frightening", "scares"},
    "comedy": {"funny", "laughs", "hilarious", "comic", "comedic"},
    "romance": {"romantic", "romance"},
    "drama": {"dramatic", "moving", "emotional"},
    "sci fi": {"futuristic", "science", "fiction"},
    "adventure": {"adventurous", "adventures", "epic"},
    "fantasy": {"magical", "epic"},
    "mystery": {"mysterious", "mysteries"},
    "animation": {"animated", "cartoon"},
    "family": {"kids", "children", "friendly"},
    "musical": {"songs", "musicals"},
    "music": {"songs"},
    "biography": {"biographical", "biopic", "true"},
    "history": {"historical"},
    "war": {"wartime"},
    "sport": {"sports", "sporting"},
    "documentary": {"documentaries", "true"},
    "western": {"westerns"},
    "crime": {"crimes"},
    "children s": {"kids", "children"},
}

# What a sentence may not claim, by kind: the reason a dropped sentence gives. Every word here is outside
# every stock above (a fact of the item can still use one: "Family" is a genre, "The Festival" a title).
CLAIMS = {
    "a person": "director directed directs actor actors actress actresses starring stars starred cast character "
                "characters hero heroine villain protagonist man woman men women boy girl he she him her his hers "
                "himself herself they them their writer author authored written narrator",
    "a plot": "plot plots follows follow journey quest mission battle battles fight fights kills killed killer "
              "becomes became discovers discovered explores explore tale tales story stories redemption revenge twist "
              "twists ending world life lives adventure sequel prequel trilogy universe franchise",
    "an event": "event events premiere premiered anniversary season summer holiday screening headlines news",
    "an award": "award awards awarded oscar oscars winning winner won nominated nomination prize acclaimed",
    # "favourite of many": other people's taste, which no fact gives
    "its reception": "audiences audience viewers worldwide millions captivated beloved famous classic iconic "
                     "legendary phenomenon fans fan everyone everybody popularity favorite favourite people ever "
                     "many every",
    # "has been on your list", "was being watched": the past is an event no fact records
    "a past event": "was were been being had wasn weren hadn didn",
    # "a fantastic choice for me", "thrills me every time": the app has no taste and watched nothing
    "the writer's own experience": "me my mine myself",
    "a critic": "critics critic critical reviews reviewers review praised praise rave raves hailed",
    "a festival": "festival festivals cannes sundance venice toronto",
    "a release": "release released releases debut debuted latest upcoming remake original recent newest since",
    "box office": "box office blockbuster grossing gross sold bestseller bestselling sales hit hits record",
    "a trailer": "trailer trailers teaser footage clip",
}
CLAIM_WORDS = {word: kind for kind, words in CLAIMS.items() for word in words.split()}

# Popularity phrases that only the item's own popularity wording may use ("a well-known movie" for a
# lesser-known one would pass word by word: "well" is a function word, "known" is in "lesser-known").
POPULARITY_PHRASES = (("well", "known"), ("lesser", "known"), ("most", "popular"), ("little", "known"))
# "loved by", "enjoyed by": a tone verb turned into a claim about other people.
# "a great choice for many.", "a top choice by many", "the most watched films of all time": the same, with the
# people left unsaid; "I watched it": the app watched nothing.
RECEPTION = re.compile(r"\b(?:loved|enjoyed|liked|watched|read|picked|chosen|recommended|adored)\s+by\b"
                       r"|\b(?:for|with|of)\s+(?:so\s+|very\s+)?many\b(?=\s*[.,;:!?]|\s+(?:and|who|but)\b|\s*$)"
                       r"|\b(?:by|among|to)\s+(?:so\s+|very\s+)?many\b"
                       r"|\bmost[\s-]+(?:watched|read|rated|loved|liked|enjoyed|chosen|picked)\b|\btop[\s-]+rated\b"
                       r"|\bof\s+all\s+time\b|\bin\s+history\b|\btop\s+\d+(?!\s*%)"
                       r"|\bI\s+(?:have\s+|once\s+)?(?:watch|watched|read|saw|see|love|loved|enjoy|enjoyed"
                       r"|like|liked)\b", re.IGNORECASE)
# Pieces of contractions: words only after an apostrophe ("it’s", "you’ll") or only before "’t" ("don’t").
AFTER_APOSTROPHE = frozenset({"s", "t", "d", "ll", "re", "ve", "m"})
BEFORE_NT = frozenset({"don", "doesn", "didn", "isn", "aren", "wasn", "weren", "won", "wouldn", "couldn", "shouldn",
                       "haven", "hasn", "hadn"})
REPEATS = 3  # a word (not a function word) this many times in one sentence: the model is stuck in a loop

WORD = re.compile(r"[^\W\d_]+")  # a word: a run of letters (digits are numbers, checked on their own)


def contraction_ok(text: str, words: Sequence, i: int) -> bool:
    """A piece of a contraction only where it belongs: "’s" after an apostrophe, "won" (of "won’t", else an award)
    before "’t"; "re-movies" or "won" alone is no word of the vocabulary."""
    word = words[i]
    if word.norm in AFTER_APOSTROPHE:
        return word.start > 0 and text[word.start - 1] in "’'"
    if word.norm in BEFORE_NT:
        after = words[i + 1] if i + 1 < len(words) else None
        return after is not None and after.norm == "t" and after.start == word.stop + 1 and text[word.stop] in "’'"
    return True
