"""Column names people use for each role, and how a header name is matched against them."""

from __future__ import annotations

import re

# A rating is a bounded explicit score (1-5 stars); a count is a non-negative, unbounded, heavy-tailed
# amount (plays, clicks, purchases) that says how much, not how good.
ROLES = ("user", "item", "rating", "count", "timestamp")

# Normalised (lowercase, alphanumerics only) names that fully identify a role.
ALIASES: dict[str, set[str]] = {
    "user": {"user", "userid", "uid", "customer", "customerid", "users", "visitorid", "reader", "readerid",
             "member", "memberid", "clientid", "accountid", "u"},
    "item": {"item", "itemid", "movie", "movieid", "product", "productid", "bookid", "book", "track",
             "trackid", "iid", "asin", "sku", "song", "songid", "artist", "artistid", "article", "articleid",
             "items", "imdbid", "i"},
    "rating": {"rating", "ratings", "score", "stars", "star", "rate", "preference", "r"},
    "count": {"count", "counts", "playcount", "plays", "play", "listens", "listencount", "clicks", "clickcount",
              "views", "viewcount", "quantity", "qty", "purchases", "weight", "frequency", "freq", "times", "n"},
    "timestamp": {"timestamp", "time", "date", "ts", "datetime", "ratingtimestamp", "unixtime",
                  "unixtimestamp", "createdat", "eventtime", "timestampms", "t"},
}
# Single words that name a role when they end a longer header ("customer_id" -> customer, "book_rating").
_TAIL_WORDS: dict[str, set[str]] = {
    "user": {"user", "customer", "visitor", "reader", "member", "client", "account"},
    "item": {"item", "movie", "product", "book", "track", "song", "artist", "article"},
    "rating": {"rating", "score", "stars"},
    "count": {"count", "plays", "clicks", "views", "quantity", "weight", "frequency", "listens"},
    "timestamp": {"timestamp", "time", "date", "datetime", "ts", "at"},  # "at": created_at, purchased_at
}
# Spelled as people write them, for messages.
EXAMPLE_NAMES = {
    "user": "user, userId, user_id, uid, customer_id",
    "item": "item, itemId, movieId, product_id, book_id, track",
    "rating": "rating, score, stars",
    "count": "count, plays, play_count, clicks, quantity, weight",
    "timestamp": "timestamp, time, date, ts, datetime",
}
METADATA_WORDS = {"title", "name", "genres", "genre", "id", "tags", "year", "description"}
# Single letters are aliases when a header is certain, but too weak to prove that line 1 is a header.
KNOWN_HEADER_WORDS = {w for w in set().union(*ALIASES.values()) | METADATA_WORDS if len(w) > 1}


def normalize(name: object) -> str:
    return re.sub(r"[^a-z0-9]", "", str(name).lower())


def words(name: object) -> list[str]:
    """'customerId' -> ['customer', 'id']; 'rating_timestamp' -> ['rating', 'timestamp']."""
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", str(name))
    return [w for w in re.split(r"[^a-z0-9]+", spaced.lower()) if w]


def name_score(name: object, role: str) -> int:
    """2 = the name is an alias of `role`, 1 = its last word (ignoring a trailing 'id') is, 0 = no match."""
    if normalize(name) in ALIASES[role]:
        return 2
    parts = words(name)
    if parts and parts[-1] == "id":
        parts = parts[:-1]
    return 1 if parts and parts[-1] in _TAIL_WORDS[role] else 0
