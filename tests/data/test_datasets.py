"""load_dataset / write_dataset: round trip, and one clear DataError per kind of corruption."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ilora.data.datasets import load_dataset, pad_histories, write_dataset
from ilora.errors import DataError


def _frames():
    train = pd.DataFrame({"history": [[], [0], [0, 1]], "target": [0, 1, 2], "user": [7, 7, 7]})
    val = pd.DataFrame({"history": [[2, 1]], "target": [0]})
    return {"train": train, "val": val, "test": val}


def test_round_trip(tmp_path):
    write_dataset(tmp_path / "d", name="d", domain="game", titles=["A", "B", "C"], splits=_frames(),
                  source="unit", terms="none", notes=["n1"])
    data = load_dataset(tmp_path / "d")
    assert (data.num_items, data.padding_id, data.window, data.domain) == (3, 3, 10, "game")
    assert data.titles == ["A", "B", "C"]
    assert data.splits["train"].history == [[], [0], [0, 1]]
    assert data.splits["train"].target.dtype == np.int64
    assert data.splits["train"].user.tolist() == [7, 7, 7]
    assert data.splits["val"].user is None
    assert data.meta["splits"] == {"train": 3, "val": 1, "test": 1} and data.meta["notes"] == ["n1"]


def test_tiny_dataset_is_consistent(tiny_data):
    train, test = tiny_data.splits["train"], tiny_data.splits["test"]
    assert len(train.history[0]) == 0  # first interaction of a train user: empty history
    assert max(map(len, train.history)) == tiny_data.window
    assert set(train.user.tolist()).isdisjoint(test.user.tolist())
    titles = tiny_data.titles
    assert not any(a != b and a in b for a in titles for b in titles)


def test_pad_histories():
    mat, lengths = pad_histories([[], [4], [1, 2, 3]], padding_id=9, window=3)
    assert mat.tolist() == [[9, 9, 9], [4, 9, 9], [1, 2, 3]] and lengths.tolist() == [0, 1, 3]


def _rewrite(path: Path, table: pa.Table) -> None:
    pq.write_table(table, path)


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (lambda d: (d / "test.parquet").unlink(), "test.parquet: split 'test' not found"),
        (lambda d: (d / "items.parquet").unlink(), "items.parquet: file not found"),
        (lambda d: (d / "meta.json").unlink(), "meta.json: file not found"),
        (lambda d: (d / "meta.json").write_text("[1, 2]"), "meta.json: expected a JSON object, got list"),
        (lambda d: (d / "meta.json").write_text('{"name": "x", "domain": "movie", "num_items": true}'),
         "meta.json: key 'num_items' must be a int, got True"),
        (lambda d: _rewrite(d / "val.parquet", pq.read_table(d / "val.parquet").slice(0, 0)), "empty"),
        (lambda d: _rewrite(d / "val.parquet", pq.read_table(d / "val.parquet").drop_columns(["target"])),
         "missing column 'target'"),
        (lambda d: _rewrite(d / "val.parquet", pa.table({"history": [[1]], "target": [1.5]})), "must be integer"),
        (lambda d: _rewrite(d / "val.parquet", pa.table({"history": ["1"], "target": [1]})), "must be list<int64>"),
        (lambda d: _rewrite(d / "val.parquet", pa.table({"history": [[1]], "target": pa.array([None], pa.int64())})),
         "null/NaN"),
        (lambda d: _rewrite(d / "val.parquet", pa.table({"history": [[1, None]], "target": [1]})), "null/NaN item ids"),
        (lambda d: _rewrite(d / "val.parquet", pa.table({"history": [[30]], "target": [1]})), "outside 0..29"),
        (lambda d: _rewrite(d / "val.parquet", pa.table({"history": [[1]], "target": [-1]})), "target item ids outside"),
        (lambda d: _rewrite(d / "val.parquet", pa.table({"history": [list(range(11))], "target": [12]})),
         "longer than the window 10"),
        (lambda d: _rewrite(d / "items.parquet", pq.read_table(d / "items.parquet").slice(0, 29)), "titles missing"),
        (lambda d: _rewrite(d / "items.parquet", pa.table({"item_id": [0] * 30, "title": ["x"] * 30})),
         "duplicate item ids"),
        (lambda d: (d / "meta.json").write_text(json.dumps({"name": "t"})), "'domain' must be a str"),
    ],
)
def test_corruptions_raise_one_line(tiny_dataset_dir, tmp_path, corrupt, message):
    d = tmp_path / "bad"
    shutil.copytree(tiny_dataset_dir, d)
    corrupt(d)
    with pytest.raises(DataError) as err:
        load_dataset(d)
    text = str(err.value)
    assert message in text and "\n" not in text and str(d) in text


def test_missing_dir_and_unknown_name(tmp_path):
    with pytest.raises(DataError, match="dataset directory not found"):
        load_dataset(tmp_path / "nope")
    with pytest.raises(DataError, match="unknown dataset name 'netflix'"):
        load_dataset("netflix")


def test_write_rejects_bad_frame_and_writes_nothing(tmp_path):
    frames = _frames()
    frames["val"] = pd.DataFrame({"history": [[5]], "target": [0]})
    with pytest.raises(DataError, match="val.parquet: 1 history item ids outside 0..2"):
        write_dataset(tmp_path / "d", name="d", domain="movie", titles=["A", "B", "C"], splits=frames,
                      source="s", terms="t")
    assert not (tmp_path / "d").exists()
