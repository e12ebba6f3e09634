"""Datasets on disk (`data/<name>/`): load, validate and write the parquet layout of docs/ARCHITECTURE.md.

Every check runs before any training starts and fails with one line naming the file and the problem,
because a bad id found halfway through an epoch costs hours. Lists are converted through the arrow
offsets (no per-row Python parsing), so the 68k-row MovieLens train split loads in well under a second.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ilora import project_root
from ilora.errors import DataError
from ilora.jsonfile import read_json_object

KNOWN_DATASETS = ("movielens", "lastfm", "steam", "movielens_windows")
DOMAIN_PATTERN = re.compile(r"[A-Za-z0-9_-]+")  # names conf/prompts/<domain>.yaml
WINDOW = 10
SPLIT_NAMES = ("train", "val", "test")
_HISTORY_TYPE = pa.list_(pa.int64())


@dataclass(frozen=True)
class Split:
    """One split of one dataset: `history[i]` (real ids, oldest first, no padding) precedes `target[i]`."""

    name: str
    history: list[list[int]]
    target: np.ndarray
    user: np.ndarray | None

    def __len__(self) -> int:
        return len(self.target)


@dataclass(frozen=True)
class RecData:
    """A validated dataset: titles indexed by item id, `padding_id == num_items` (as LLaRA)."""

    name: str
    domain: str
    num_items: int
    padding_id: int
    window: int
    titles: list[str]
    meta: dict
    splits: dict[str, Split]


def default_data_dir() -> Path:
    """`$ILORA_DATA`, else `$ILORA_ROOT/data`, else `data/` of the checkout (or of the current directory)."""
    if os.environ.get("ILORA_DATA"):
        return Path(os.environ["ILORA_DATA"])
    if os.environ.get("ILORA_ROOT"):
        return Path(os.environ["ILORA_ROOT"]) / "data"
    return project_root() / "data"


def resolve_dataset_dir(directory: str | os.PathLike) -> Path:
    """A path is used as given; a bare known name (`movielens`) resolves under `default_data_dir()`."""
    path = Path(directory)
    if path.is_dir():
        return path
    if len(path.parts) == 1 and not path.suffix:
        if str(path) not in KNOWN_DATASETS:
            raise DataError(
                f"unknown dataset name {str(path)!r}: expected one of {list(KNOWN_DATASETS)} or a directory path"
            )
        path = default_data_dir() / str(path)
    if not path.is_dir():
        raise DataError(f"{path}: dataset directory not found; point data.dir=<dataset folder> or the ILORA_DATA "
                        "environment variable (the folder holding movielens/, lastfm/, ...) at it, or create it with "
                        "`ilora-data import-llara`")
    return path


def _read_table(path: Path) -> pa.Table:
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"{path}: not a readable parquet file ({e})") from e
    if table.num_rows == 0:
        raise DataError(f"{path}: file is empty (0 rows)")
    return table


def _int_column(table: pa.Table, column: str, where: Path, *, required: bool = True) -> np.ndarray | None:
    """The integer column as int64, refusing nulls/NaN and non-integer types."""
    if column not in table.column_names:
        if required:
            raise DataError(f"{where}: missing column {column!r} (have {table.column_names})")
        return None
    col = table.column(column)
    if not pa.types.is_integer(col.type):
        raise DataError(f"{where}: column {column!r} must be integer, got {col.type}")
    if col.null_count:
        raise DataError(f"{where}: column {column!r} has {col.null_count} null/NaN values")
    return col.to_numpy().astype(np.int64, copy=False)


def _list_column(table: pa.Table, column: str, where: Path) -> tuple[np.ndarray, np.ndarray]:
    """(flat values int64, offsets [N+1]) of a list<int> column, refusing null lists and null entries."""
    if column not in table.column_names:
        raise DataError(f"{where}: missing column {column!r} (have {table.column_names})")
    col = table.column(column)
    if not (pa.types.is_list(col.type) or pa.types.is_large_list(col.type)) or not pa.types.is_integer(
        col.type.value_type
    ):
        raise DataError(f"{where}: column {column!r} must be list<int64>, got {col.type}")
    if col.null_count:
        raise DataError(f"{where}: column {column!r} has {col.null_count} null lists")
    arr = col.combine_chunks()
    flat = pc.list_flatten(arr)
    if flat.null_count:
        raise DataError(f"{where}: column {column!r} has {flat.null_count} null/NaN item ids")
    lengths = pc.list_value_length(arr).to_numpy(zero_copy_only=False).astype(np.int64)
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return flat.to_numpy(zero_copy_only=False).astype(np.int64, copy=False), offsets


def _check_ids(ids: np.ndarray, num_items: int, where: Path, what: str) -> None:
    bad = (ids < 0) | (ids >= num_items)
    if bad.any():
        raise DataError(
            f"{where}: {int(bad.sum())} {what} item ids outside 0..{num_items - 1} "
            f"(e.g. {int(ids[bad][0])}; the padding id {num_items} must not be stored)"
        )


def _split_from_table(table: pa.Table, name: str, num_items: int, window: int, where: Path) -> Split:
    flat, offsets = _list_column(table, "history", where)
    target = _int_column(table, "target", where)
    user = _int_column(table, "user", where, required=False)
    lengths = np.diff(offsets)
    if (lengths > window).any():
        raise DataError(
            f"{where}: {int((lengths > window).sum())} histories longer than the window {window} "
            f"(longest {int(lengths.max())})"
        )
    _check_ids(flat, num_items, where, "history")
    _check_ids(target, num_items, where, "target")
    if "history_ratings" in table.column_names:
        _, rating_offsets = _list_column(table, "history_ratings", where)
        if not np.array_equal(rating_offsets, offsets):
            raise DataError(f"{where}: history_ratings lengths differ from history lengths")
    values = flat.tolist()
    history = [values[a:b] for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist())]
    return Split(name=name, history=history, target=target, user=user)


def _titles_from_table(table: pa.Table, num_items: int, where: Path) -> list[str]:
    item_id = _int_column(table, "item_id", where)
    if "title" not in table.column_names:
        raise DataError(f"{where}: missing column 'title' (have {table.column_names})")
    title_col = table.column("title")
    if not (pa.types.is_string(title_col.type) or pa.types.is_large_string(title_col.type)):
        raise DataError(f"{where}: column 'title' must be string, got {title_col.type}")
    if title_col.null_count:
        raise DataError(f"{where}: column 'title' has {title_col.null_count} null titles")
    unique, counts = np.unique(item_id, return_counts=True)
    if (counts > 1).any():
        raise DataError(f"{where}: duplicate item ids (e.g. {int(unique[counts > 1][0])})")
    _check_ids(item_id, num_items, where, "item")
    if len(unique) != num_items:
        missing = np.setdiff1d(np.arange(num_items), unique)
        raise DataError(f"{where}: titles missing for {len(missing)} of {num_items} item ids (e.g. {int(missing[0])})")
    titles = [""] * num_items
    for i, t in zip(item_id.tolist(), title_col.to_pylist()):
        titles[i] = t
    return titles


def _read_meta(path: Path) -> dict:
    keys = (("name", str), ("domain", str), ("num_items", int), ("padding_id", int), ("window", int))
    meta = read_json_object(path, keys, DataError)
    if meta["num_items"] < 1:
        raise DataError(f"{path}: num_items must be >= 1, got {meta['num_items']}")
    if meta["padding_id"] != meta["num_items"]:
        raise DataError(f"{path}: padding_id must equal num_items ({meta['num_items']}), got {meta['padding_id']}")
    if meta["window"] < 1:
        raise DataError(f"{path}: window must be >= 1, got {meta['window']}")
    return meta


def load_dataset(directory: str | os.PathLike, splits: Sequence[str] = SPLIT_NAMES) -> RecData:
    """Load and fully validate `directory` (or a known name such as `"movielens"`)."""
    root = resolve_dataset_dir(directory)
    meta = _read_meta(root / "meta.json")
    num_items, window = meta["num_items"], meta["window"]
    items_path = root / "items.parquet"
    titles = _titles_from_table(_read_table(items_path), num_items, items_path)
    loaded = {}
    for name in splits:
        path = root / f"{name}.parquet"
        if not path.is_file():
            have = sorted(p.stem for p in root.glob("*.parquet") if p.stem not in MAPS)
            raise DataError(f"{path}: split {name!r} not found (have {have})")
        loaded[name] = _split_from_table(_read_table(path), name, num_items, window, path)
    _check_maps(root, num_items, loaded)
    return RecData(
        name=meta["name"], domain=meta["domain"], num_items=num_items, padding_id=meta["padding_id"],
        window=window, titles=titles, meta=meta, splits=loaded,
    )


MAPS = {"item_map": "item_id", "user_map": "user"}  # dense id -> the log's own id, when the build remapped ids


def _check_maps(root: Path, num_items: int, splits: Mapping[str, Split]) -> None:
    """`item_map.parquet` / `user_map.parquet`, when present: one row per dense id 0..n-1, distinct original ids."""
    for stem, key in MAPS.items():
        path = root / f"{stem}.parquet"
        if not path.is_file():
            continue
        table = _read_table(path)
        ids = _int_column(table, key, path)
        if "original_id" not in table.column_names or table.column("original_id").null_count:
            raise DataError(f"{path}: column 'original_id' missing or with nulls")
        if not np.array_equal(ids, np.arange(len(ids))):
            raise DataError(f"{path}: column {key!r} must be 0..{len(ids) - 1} in order")
        original = table.column("original_id").to_pylist()
        if len(set(original)) != len(original):
            raise DataError(f"{path}: column 'original_id' has duplicates")
        if stem == "item_map" and len(ids) != num_items:
            raise DataError(f"{path}: {len(ids)} rows for {num_items} items")
        if stem == "user_map":
            for split in splits.values():
                if split.user is not None and len(split.user) and int(split.user.max()) >= len(ids):
                    raise DataError(f"{path}: user {int(split.user.max())} of split {split.name!r} is not mapped")


def original_item_ids(directory: str | os.PathLike) -> list[str] | None:
    """The log's own item ids by dense id (`item_map.parquet`), or None when the build kept the ids as they were."""
    path = resolve_dataset_dir(directory) / "item_map.parquet"
    return _read_table(path).column("original_id").to_pylist() if path.is_file() else None


def write_map(path: Path, frame: pd.DataFrame) -> None:
    """An id map (`item_map` / `user_map`): dense ids int64, original ids as text, other columns as given."""
    table = pa.table({c: pa.array(frame[c].astype(str).tolist()) if c in ("original_id", "title")
                      else pa.array(frame[c].to_numpy().astype(np.int64)) for c in frame.columns})
    pq.write_table(table, path)


def pad_histories(history: Sequence[Sequence[int]], padding_id: int, window: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad histories to `[N, window]` with `padding_id`; returns (matrix int64 [N, W], lengths int64 [N])."""
    lengths = np.fromiter(map(len, history), dtype=np.int64, count=len(history))
    if len(lengths) and lengths.max(initial=0) > window:
        raise DataError(f"history of length {int(lengths.max())} exceeds the window {window}")
    flat = np.fromiter((i for h in history for i in h), dtype=np.int64, count=int(lengths.sum()))
    out = np.full((len(history), window), padding_id, dtype=np.int64)
    rows = np.repeat(np.arange(len(history)), lengths)
    cols = np.arange(len(flat)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    out[rows, cols] = flat
    return out, lengths


def _list_array(values: Iterable, where: str) -> pa.Array:
    try:
        return pa.array([list(map(int, v)) for v in values], type=_HISTORY_TYPE)
    except (TypeError, ValueError, pa.ArrowException) as e:
        raise DataError(f"{where}: cannot convert to list<int64> ({e})") from e


def _split_table(frame: pd.DataFrame, where: str) -> pa.Table:
    """Arrow table with the contract's types; optional columns kept only when present."""
    for column in ("history", "target"):
        if column not in frame.columns:
            raise DataError(f"{where}: missing column {column!r} (have {list(frame.columns)})")
    columns = {"history": _list_array(frame["history"], f"{where}.history")}
    for column in ("target", "user", "target_rating"):
        if column in frame.columns:
            if frame[column].isna().any():
                raise DataError(f"{where}: column {column!r} has null/NaN values")
            columns[column] = pa.array(frame[column].to_numpy().astype(np.int64))
    if "history_ratings" in frame.columns:
        columns["history_ratings"] = _list_array(frame["history_ratings"], f"{where}.history_ratings")
    order = ["user", "history", "history_ratings", "target", "target_rating"]
    return pa.table({c: columns[c] for c in order if c in columns})


def write_dataset(
    directory: str | os.PathLike,
    *,
    name: str,
    domain: str,
    titles: Sequence[str],
    splits: Mapping[str, pd.DataFrame],
    source: str,
    terms: str,
    notes: Sequence[str] = (),
    window: int = WINDOW,
) -> None:
    """Validate, then write `{split}.parquet`, `items.parquet` and `meta.json` into `directory`.

    Everything is checked in memory first (same rules as `load_dataset`), so a bad frame leaves no files.
    """
    root = Path(directory)
    if not isinstance(domain, str) or not DOMAIN_PATTERN.fullmatch(domain):
        raise DataError(f"{root}: domain must be a name of letters, digits, '_' or '-' (conf/prompts/<domain>.yaml), "
                        f"got {domain!r}")
    num_items = len(titles)
    if num_items < 1 or any(not isinstance(t, str) for t in titles):
        raise DataError(f"{root}: titles must be a non-empty list of strings, one per item id")
    items = pa.table({"item_id": pa.array(np.arange(num_items, dtype=np.int64)), "title": pa.array(list(titles))})
    tables = {}
    for split, frame in splits.items():
        where = root / f"{split}.parquet"
        if len(frame) == 0:
            raise DataError(f"{where}: split {split!r} is empty")
        table = _split_table(frame, str(where))
        _split_from_table(table, split, num_items, window, where)
        tables[split] = table
    meta = {
        "name": name, "domain": domain, "num_items": num_items, "padding_id": num_items, "window": window,
        "source": source, "terms": terms, "splits": {s: t.num_rows for s, t in tables.items()}, "notes": list(notes),
    }
    root.mkdir(parents=True, exist_ok=True)
    for split, table in tables.items():
        pq.write_table(table, root / f"{split}.parquet")
    pq.write_table(items, root / "items.parquet")
    (root / "meta.json").write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

