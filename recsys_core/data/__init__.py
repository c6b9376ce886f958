"""Data ingestion and the Dataset: read files, map columns, validate, filter, split."""

from recsys_core.data.dataset import Dataset, build_dataset
from recsys_core.data.filters import DUPLICATE_POLICIES
from recsys_core.data.items import read_items
from recsys_core.data.load import LoadOptions, LoadReport, load_dataset
from recsys_core.data.mapping import ColumnMapping, infer_mapping, mapping_candidates
from recsys_core.data.read import RawTable, read_table
from recsys_core.data.source import DEFAULT_MAX_BYTES
from recsys_core.data.splits import EvalSet, Split, leave_one_out, temporal_split
from recsys_core.errors import DataError

__all__ = [
    "DEFAULT_MAX_BYTES", "DUPLICATE_POLICIES", "ColumnMapping", "DataError", "Dataset", "EvalSet", "LoadOptions",
    "LoadReport", "RawTable", "Split", "build_dataset", "infer_mapping", "leave_one_out", "load_dataset",
    "mapping_candidates", "read_items", "read_table", "temporal_split",
]
