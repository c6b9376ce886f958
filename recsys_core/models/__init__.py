"""Model families. Importing this package registers every family in `base.FAMILIES`."""

from recsys_core.models import bert4rec, blend, ease, hybrid, itemknn, popularity, sasrec, text_tower  # noqa: F401
from recsys_core.models.base import FAMILIES, Recommender, load_model  # noqa: F401
