"""The shipped LLaRA conversions: counts and history-length distributions from shared/data/llara/SCHEMA.md."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd
import pytest

from ilora.data.build import llara_movie_title
from ilora.data.datasets import load_dataset
from ilora.data.llara_import import convert_frame, import_one
from ilora.errors import DataError

# rows and len_seq distribution (len_seq = max(real, 1)) per SCHEMA.md
EXPECTED = {
    ("movielens", "train"): {1: 1508, 2: 754, 3: 754, 4: 754, 5: 754, 6: 753, 7: 753, 8: 752, 9: 752, 10: 60854},
    ("movielens", "val"): {9: 2, 10: 92},
    ("movielens", "test"): {10: 95},
    ("lastfm", "train"): {1: 1952, 2: 976, 3: 976, 4: 899, 5: 837, 6: 779, 7: 737, 8: 697, 9: 672, 10: 42275},
    ("lastfm", "val"): {3: 18, 4: 13, 5: 9, 6: 6, 7: 4, 8: 7, 9: 4, 10: 61},
    ("lastfm", "test"): {3: 11, 4: 8, 5: 11, 6: 10, 7: 7, 8: 4, 9: 7, 10: 64},
    ("steam", "train"): {3: 1, 5: 1, 6: 4, 7: 3, 8: 5, 9: 5, 10: 981},
    ("steam", "val"): {2: 10, 3: 19, 4: 41, 5: 77, 6: 88, 7: 116, 8: 108, 9: 90, 10: 645},
    ("steam", "test"): {1: 2, 2: 6, 3: 27, 4: 45, 5: 73, 6: 88, 7: 110, 8: 116, 9: 100, 10: 627},
}
NUM_ITEMS = {"movielens": 1682, "lastfm": 4606, "steam": 3581}


@pytest.fixture(scope="module")
def shipped():
    return {name: load_dataset(name) for name in NUM_ITEMS}


@pytest.mark.parametrize(("name", "split"), sorted(EXPECTED))
def test_shipped_counts_match_schema(shipped, name, split):
    data = shipped[name]
    lengths = np.fromiter(map(len, data.splits[split].history), dtype=np.int64)
    assert dict(Counter(np.maximum(lengths, 1).tolist())) == EXPECTED[(name, split)]
    assert data.meta["splits"][split] == len(lengths)
    assert data.num_items == data.padding_id == NUM_ITEMS[name]


def test_shipped_details(shipped):
    ml = shipped["movielens"]
    assert ml.titles[:2] == ["Toy Story", "GoldenEye"] and ml.titles[0] != ""
    test0 = ml.splits["test"]
    assert test0.history[0] == [704, 155, 80, 698, 745, 95, 1403, 202, 731, 432] and test0.target[0] == 3
    assert len(set(ml.splits["train"].user.tolist())) == 754 and len(ml.splits["test"].user) == 95
    assert ml.splits["train"].user[:3].tolist() == [186, 186, 186]
    assert shipped["lastfm"].titles[:2] == ["Morcheeba", "Enigma"] and shipped["lastfm"].splits["val"].user is None
    assert any("1,000-row" in n for n in shipped["steam"].meta["notes"])


def test_movie_title_rule():
    assert llara_movie_title("Usual Suspects, The (1995)") == "The Usual Suspects"
    assert llara_movie_title("Toy Story (1995)") == "Toy Story"
    assert llara_movie_title("Affair to Remember, An (1957)") == "A Affair to Remembern"  # LLaRA's quirk, kept
    assert llara_movie_title("unknown") == "unknown"


def test_convert_frame_rejects_inner_padding():
    frame = pd.DataFrame({"seq": [[1, 9, 2]], "len_seq": [2], "next": [3]})
    with pytest.raises(DataError, match="padding id 9 inside a history"):
        convert_frame(frame, 9, "x.df")
    ok = convert_frame(pd.DataFrame({"seq": [[9, 9]], "len_seq": [1], "next": [3]}), 9, "x.df")
    assert ok["history"].tolist() == [[]]


def test_reimport_steam_equals_shipped(tmp_path, shipped, shared_data):
    """Re-running the import reproduces the committed files (the small Steam set keeps this fast)."""
    assert import_one(shared_data / "llara", tmp_path / "out", "steam") == {"train": 1000, "val": 1194, "test": 1194}
    again, ref = load_dataset(tmp_path / "out" / "steam"), shipped["steam"]
    assert again.titles == ref.titles and again.meta == ref.meta
    for split in ("train", "val", "test"):
        assert again.splits[split].history == ref.splits[split].history
        assert np.array_equal(again.splits[split].target, ref.splits[split].target)
