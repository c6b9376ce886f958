"""A user's own file is not the demo: no timestamps, counts, stray spaces, mixed encodings, tied times."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recsys_core.data.dataset import TIE_RULE, build_dataset
from recsys_core.data.load import LoadOptions, load_dataset
from recsys_core.data.read import read_table
from recsys_core.data.resolve import resolve_dataset
from recsys_core.data.splits import leave_one_out
from recsys_core.errors import ConfigError, DataError
from recsys_core.training.experiment import make_split, run_experiment
from tests.own_data import as_tsv, listening_log

ML100K = Path(__file__).resolve().parents[2] / "shared" / "data" / "ml-100k"


@pytest.fixture(scope="module")
def plays() -> bytes:
    return as_tsv(listening_log())


def test_a_headerless_play_count_log_loads_as_counts_without_order(plays) -> None:
    ds, report = load_dataset(plays, "plays.tsv")
    assert report.mapping["count"] == 2 and report.mapping["rating"] is None
    text = str(report)
    assert "read as a count, not a rating" in text and "order of each user's interactions is unknown" in text
    stats = ds.stats()
    assert stats["has_counts"] and not stats["has_ratings"] and stats["order"] == "none"
    assert stats["time_min"] is None and stats["time_max"] is None  # file positions are not times
    assert stats["count_max"] > 100 and ds.confidence() is not None


def test_default_split_gives_item_knn_real_signal_while_file_order_reproduces_the_trap(plays) -> None:
    honest, _ = load_dataset(plays, "plays.tsv")
    trap, _ = load_dataset(plays, "plays.tsv", options=LoadOptions(file_order_is_time=True))
    assert make_split(honest).holdout == "random (seed 0)" and make_split(trap).holdout == "last"
    scores = {(name, fam): run_experiment(ds, fam).metrics["ndcg@10"]
              for name, ds in (("honest", honest), ("trap", trap)) for fam in ("itemknn", "popularity")}
    assert scores["honest", "itemknn"] > 0.15 and scores["honest", "itemknn"] > 2 * scores["honest", "popularity"]
    assert scores["trap", "itemknn"] < 0.05  # the highest artist id of each user is the rarest: nothing to learn


def test_random_holdout_is_seeded_and_keeps_every_interaction(plays) -> None:
    ds, _ = load_dataset(plays, "plays.tsv")
    a, b, c = leave_one_out(ds, seed=0), leave_one_out(ds, seed=0), leave_one_out(ds, seed=1)
    assert [t.tolist() for t in a.test.targets] == [t.tolist() for t in b.test.targets]
    assert [t.tolist() for t in a.test.targets] != [t.tolist() for t in c.test.targets]
    u = int(a.test.users[0])
    assert sorted([*a.test.histories[0], *a.test.targets[0]]) == sorted(ds.history(u).tolist())


def test_order_dependent_work_is_refused_without_an_order(plays) -> None:
    ds, _ = load_dataset(plays, "plays.tsv")
    with pytest.raises(ConfigError, match="temporal split needs timestamps"):
        make_split(ds, "temporal")
    with pytest.raises(ConfigError, match="bert4rec reads the order .* has no timestamps"):
        run_experiment(ds, "bert4rec", {"epochs": 1})
    with pytest.raises(ConfigError, match="text_tower reads the order"):
        run_experiment(ds, "text_tower")


def test_ids_lose_stray_spaces_on_any_row_but_are_never_merged_otherwise() -> None:
    rows = [f"u{i % 40},{100 + i % 300},4" for i in range(6000)]  # ~60 KB of tidy rows first
    rows += ["u1,65  ,3", "u2,65,5", "u3, 65,2", "u4,007,1", "u5,7,2"]
    ds, report = load_dataset(("user,item,rating\n" + "\n".join(rows) + "\n").encode(), "late-spaces.csv")
    assert "65" in ds.item_index and "65  " not in ds.item_index and " 65" not in ds.item_index
    assert int((ds.seq_items == ds.item_index["65"]).sum()) == 3
    assert {"007", "7"} <= set(ds.item_ids)  # different ids stay different
    assert "2 item id(s) had spaces around them" in str(report)


def test_mixed_encodings_fail_precisely_and_a_latin1_file_reads_correctly() -> None:
    utf8 = "".join(f"u{i % 50},i{i % 300},naïve {i}\n" for i in range(4000)).encode("utf-8")
    mixed = b"user,item,note\n" + utf8 + "u1,iX,caf\xe9\n".encode("latin-1")
    with pytest.raises(DataError, match=r"byte [\d,]+ \(0xe9, line 4002\) is not valid UTF-8") as err:
        load_dataset(mixed, "mixed.csv")
    assert err.value.line == 4002 and "UTF-8" in err.value.hint
    plain = "".join(f"u{i % 50},i{i % 300},x{i}\n" for i in range(8000)).encode()
    latin = b"user,item,title\n" + plain + "u1,iY,caf\xe9\n".encode("latin-1")
    raw = read_table(latin, "latin.csv")
    assert raw.encoding == "latin-1" and raw.frame["title"].iloc[-1] == "café"  # one encoding, read right


def test_tied_last_timestamps_are_counted_and_the_rule_is_reported() -> None:
    frame = pd.DataFrame({"user": ["a"] * 3 + ["b"] * 3, "item": ["x", "y", "z", "x", "y", "z"],
                          "timestamp": [1, 5, 5, 1, 2, 3]})
    ds = build_dataset(frame, name="ties")
    assert ds.users_with_tied_last_two() == 1
    assert ds.history(0).tolist() == [0, 1, 2]  # tie: file order kept, so "z" (written last) is last
    csv = frame.to_csv(index=False).encode()
    _, report = load_dataset(csv, "ties.csv")
    assert f"1 of 2 users have their last two interactions at the same timestamp; {TIE_RULE}" in str(report)


@pytest.mark.skipif(not ML100K.is_dir(), reason="MovieLens-100k is not in ../shared/data")
def test_movielens_folder_is_named_after_the_folder_and_its_ties_are_known() -> None:
    ds = resolve_dataset(str(ML100K), None)
    assert ds.name == "ml-100k" and ds.users_with_tied_last_two() == 415 and ds.order == "timestamp"
    assert np.diff(ds.indptr).min() >= 20


def test_counts_become_confidence_weights_for_models_that_take_them(plays) -> None:
    ds, _ = load_dataset(plays, "plays.tsv")
    weights = ds.confidence()
    assert weights is not None and weights.mean() == pytest.approx(1.0)
    counts = ds.interactions["count"].to_numpy()
    assert weights[np.argmax(counts)] == weights.max() and weights[np.argmin(counts)] == weights.min()
    weighted = run_experiment(ds, "popularity").model.score([np.array([], dtype=np.int64)])[0].numpy()
    plain = run_experiment(ds, "popularity", {"use_counts": "false"}).model.score([np.array([], dtype=np.int64)])
    train = np.concatenate(leave_one_out(ds).train)
    assert np.allclose(plain[0].numpy(), np.bincount(train, minlength=ds.n_items))
    assert not np.allclose(weighted, plain[0].numpy())  # popularity by how much, not only how often
