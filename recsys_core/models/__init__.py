"""Model families. Importing this package registers every family in `base.FAMILIES`."""

from recsys_core.models import bert4rec, ease, itemknn, popularity, sasrec  # noqa: F401
from recsys_core.models.base import FAMILIES, Recommender, load_model  # noqa: F401
