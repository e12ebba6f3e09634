"""A researcher's own logs -> checked interactions with dense ids, before LLaRA's recipe (`ilora.data.build`).

Real logs have string ids (ASINs, "p17"), their own column names, tab-separated, parquet or JSON-lines files,
duplicate events and items without titles. This module reads them with stated rules, each counted:

1. columns are mapped by name (`Columns`, from flags or a small YAML); ids are read as text and stripped, so
   "007" and "7" are different ids and any hashable value works;
2. timestamps are numbers, or date-times (converted to seconds since the epoch); ratings are numbers;
3. `min_rating` keeps events with rating >= it (only when there is a rating column);
4. the catalogue (its own file, or the title column of the interactions file) gives each item id one title;
   whitespace in titles is collapsed; rows with an empty title are dropped; a repeated id with the same title
   is kept once, with another title it is refused;
5. events on items without a title (absent from the catalogue, or an empty title) are dropped: an item the
   prompt cannot name cannot be recommended;
6. duplicates: `exact` drops events identical in (user, item, timestamp) to an earlier one, `user-item` keeps
   only each user's first event on an item, `none` keeps everything;
7. `min_user` / `min_item` interactions: users and items with fewer events are removed, repeatedly, until
   every remaining user and item meets both (a k-core); removed items leave the catalogue too;
8. dense ids: items in catalogue order (items with no events stay, as in ML-100K), users in order of first
   appearance in the interactions file. The maps ship beside the dataset (`item_map.parquet`, `user_map.parquet`).

Every refusal names the file, the column and the first offending value.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from ilora.errors import DataError

FORMATS = ("csv", "tsv", "parquet", "jsonl")
EXTENSIONS = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".parquet": "parquet", ".pq": "parquet",
              ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl"}
DEDUPE = ("exact", "user-item", "none")


@dataclass(frozen=True)
class Columns:
    """Column names: interactions (`user`, `item`, `timestamp`, optional `rating`) and catalogue (`item_id`,
    `title`). `rating=None` uses a column named "rating" when there is one; `item_id=None` is `item`."""

    user: str = "user"
    item: str = "item"
    timestamp: str = "timestamp"
    rating: str | None = None
    item_id: str | None = None
    title: str = "title"

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> Columns:
        """`user: reviewerID` etc. in a small YAML mapping (unknown keys refused)."""
        path = Path(path)
        if not path.is_file():
            raise DataError(f"{path}: column map not found")
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            raise DataError(f"{path}: not a readable YAML column map ({e})") from e
        names = [f.name for f in fields(cls)]
        if not isinstance(raw, dict) or any(k not in names for k in raw):
            bad = next((k for k in raw if k not in names), raw) if isinstance(raw, dict) else raw
            raise DataError(f"{path}: unknown column-map key {bad!r} (expected some of {names})")
        if any(not isinstance(v, str) or not v for v in raw.values()):
            raise DataError(f"{path}: column names must be non-empty strings")
        return cls(**raw)

    def override(self, **given: str | None) -> Columns:
        """These columns with the non-None `given` names replacing theirs."""
        return replace(self, **{k: v for k, v in given.items() if v is not None})


@dataclass
class LogTables:
    """What `read_logs` produced: dense interactions, titles by item id, the id maps and the rule counts."""

    interactions: pd.DataFrame  # user, item (dense int64), timestamp (int64), [rating]
    titles: list[str]
    item_map: pd.DataFrame  # item_id, original_id, title
    user_map: pd.DataFrame  # user, original_id
    counts: dict[str, int]


def detect_format(path: Path, fmt: str) -> str:
    """`fmt` unless it is `auto`; then the format the file's extension names."""
    if fmt != "auto":
        if fmt not in FORMATS:
            raise DataError(f"--format must be auto or one of {list(FORMATS)}, got {fmt!r}")
        return fmt
    found = EXTENSIONS.get(path.suffix.lower())
    if found is None:
        raise DataError(f"{path}: cannot tell the format from the extension {path.suffix!r}; pass --format "
                        f"({', '.join(FORMATS)})")
    return found


def read_table(path: str | os.PathLike, fmt: str, kind: str) -> pd.DataFrame:
    """The file as a frame, ids kept as text (csv/tsv are read as strings; empty fields become missing)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: {kind} file not found")
    fmt = detect_format(path, fmt)
    try:
        if fmt in ("csv", "tsv"):
            return pd.read_csv(path, sep="," if fmt == "csv" else "\t", dtype=str, keep_default_na=False,
                               na_values=[""], encoding="utf-8")
        if fmt == "parquet":
            return pd.read_parquet(path)
        return pd.read_json(path, lines=True, dtype=False)
    except (ValueError, OSError, pd.errors.ParserError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot parse {kind} as {fmt} ({e})") from e


def _require(frame: pd.DataFrame, columns: list[str], path: Path, kind: str) -> None:
    for column in columns:
        if column not in frame.columns:
            raise DataError(f"{path}: {kind} column {column!r} not found (have {list(frame.columns)}); "
                            "map it with --columns or the --*-col flags")
        empty = frame[column].isna().to_numpy() | (frame[column].astype(str).str.strip() == "").to_numpy()
        if empty.any():
            row = int(np.flatnonzero(empty)[0])
            raise DataError(f"{path}: column {column!r} is empty at row {row} ({int(empty.sum())} empty in all)")


def _ids(series: pd.Series) -> pd.Series:
    """Ids as stripped text; integral floats (parquet/JSON numbers) print without '.0'."""
    def text(v: object) -> str:
        if isinstance(v, float) and v.is_integer():
            return str(int(v))
        return str(v).strip()
    return series.map(text)


def _numbers(series: pd.Series, path: Path, column: str) -> pd.Series:
    values = pd.to_numeric(series, errors="coerce")
    if values.isna().any():
        first = series[values.isna()].iloc[0]
        raise DataError(f"{path}: column {column!r} is not numeric (first offending value {first!r})")
    return values


def _timestamps(series: pd.Series, path: Path, column: str) -> pd.Series:
    """Seconds since the epoch: numbers as they are (int64 when integral); date-times (a datetime column of any
    unit or zone, or date-time strings) converted. A datetime column is never read as its integer ticks."""
    if isinstance(series.dtype, pd.DatetimeTZDtype) or pd.api.types.is_datetime64_any_dtype(series.dtype):
        times = pd.to_datetime(series, utc=True)
    else:
        numbers = pd.to_numeric(series, errors="coerce")
        if not numbers.isna().any():
            return numbers.astype(np.int64) if (numbers % 1 == 0).all() else numbers
        try:
            times = pd.to_datetime(series.astype(str), utc=True, errors="coerce", format="mixed")
        except (ValueError, TypeError):
            times = pd.Series(pd.NaT, index=series.index)
    if times.isna().any():
        first = series[times.isna()].iloc[0]
        raise DataError(f"{path}: column {column!r} holds neither numbers nor date-times "
                        f"(first offending value {first!r})")
    return (times - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)


def _catalogue(frame: pd.DataFrame, id_col: str, title_col: str, path: Path, counts: dict[str, int]) -> pd.DataFrame:
    """(original_id, title) per item in first-appearance order, one title per id."""
    _require(frame, [id_col], path, "catalogue")
    if title_col not in frame.columns:
        raise DataError(f"{path}: catalogue column {title_col!r} not found (have {list(frame.columns)}); "
                        "map it with --title-col or --columns")
    titles = frame[title_col].map(lambda t: " ".join(str(t).split()) if pd.notna(t) else "")
    items = pd.DataFrame({"original_id": _ids(frame[id_col]), "title": titles})
    untitled = items["title"] == ""
    counts["catalogue_rows_without_title"] = int(untitled.sum())
    items = items[~untitled]
    conflict = items.groupby("original_id", sort=False)["title"].transform("nunique") > 1
    if conflict.any():
        bad = items[conflict].iloc[0]["original_id"]
        shown = items[items["original_id"] == bad]["title"].unique()[:2].tolist()
        raise DataError(f"{path}: column {id_col!r}: item {bad!r} has more than one title ({shown})")
    before = len(items)
    items = items.drop_duplicates("original_id").reset_index(drop=True)
    counts["catalogue_duplicate_rows"] = before - len(items)
    return items


def _k_core(inter: pd.DataFrame, min_user: int, min_item: int) -> pd.DataFrame:
    while True:
        keep = np.ones(len(inter), dtype=bool)
        if min_user > 1:
            keep &= inter.groupby("user")["item"].transform("size").to_numpy() >= min_user
        if min_item > 1:
            keep &= inter.groupby("item")["user"].transform("size").to_numpy() >= min_item
        if keep.all():
            return inter
        inter = inter[keep]


def read_logs(interactions_path: str | os.PathLike, items_path: str | os.PathLike | None, *,
              columns: Columns = Columns(), fmt: str = "auto", min_rating: float | None = None,
              dedupe: str = "exact", min_user: int = 0, min_item: int = 0) -> LogTables:
    """Apply the module's rules to a log (and catalogue); see the module docstring."""
    if dedupe not in DEDUPE:
        raise DataError(f"--dedupe must be one of {list(DEDUPE)}, got {dedupe!r}")
    if min_user < 0 or min_item < 0:
        raise DataError("--min-user-interactions and --min-item-interactions must be >= 0")
    inter_path = Path(interactions_path)
    raw = read_table(inter_path, fmt, "interactions")
    counts = {"events_read": len(raw)}
    _require(raw, [columns.user, columns.item, columns.timestamp], inter_path, "interactions")
    rating_col = columns.rating or ("rating" if "rating" in raw.columns else None)
    if columns.rating and columns.rating not in raw.columns:
        raise DataError(f"{inter_path}: rating column {columns.rating!r} not found (have {list(raw.columns)})")
    inter = pd.DataFrame({"user": _ids(raw[columns.user]), "original_item": _ids(raw[columns.item]),
                          "timestamp": _timestamps(raw[columns.timestamp], inter_path, columns.timestamp)})
    if rating_col is not None:
        _require(raw, [rating_col], inter_path, "interactions")
        inter["rating"] = _numbers(raw[rating_col], inter_path, rating_col)
        if min_rating is not None:
            low = inter["rating"] < min_rating
            counts["events_below_min_rating"] = int(low.sum())
            inter = inter[~low]

    if items_path is None:  # titles ride in the interactions file
        catalogue = _catalogue(raw, columns.item, columns.title, inter_path, counts)
    else:
        items_path = Path(items_path)
        catalogue = _catalogue(read_table(items_path, fmt, "items"), columns.item_id or columns.item, columns.title,
                               items_path, counts)
    if catalogue.empty:
        raise DataError(f"{items_path or inter_path}: no item has a title (column {columns.title!r})")

    position = pd.Series(np.arange(len(catalogue)), index=catalogue["original_id"].to_numpy())
    titled = inter["original_item"].isin(position.index)
    counts["events_on_items_without_title"] = int((~titled).sum())
    inter = inter[titled].assign(item=lambda f: position.loc[f["original_item"]].to_numpy())
    before = len(inter)
    if dedupe == "exact":
        inter = inter.drop_duplicates(["user", "item", "timestamp"])
    elif dedupe == "user-item":
        inter = inter.sort_values("timestamp", kind="stable").drop_duplicates(["user", "item"]).sort_index()
    counts["duplicate_events_dropped"] = before - len(inter)
    before, users_before, items_before = len(inter), inter["user"].nunique(), inter["item"].nunique()
    inter = _k_core(inter, min_user, min_item)
    counts["events_removed_by_min_interactions"] = before - len(inter)
    counts["users_removed_by_min_interactions"] = users_before - inter["user"].nunique()
    counts["items_removed_by_min_interactions"] = items_before - inter["item"].nunique()
    if inter.empty:
        raise DataError(f"{inter_path}: no interactions left after the rules (counts: {counts})")

    kept_items = np.arange(len(catalogue))
    if min_item > 0:  # items under the threshold leave the catalogue too
        kept_items = np.unique(inter["item"].to_numpy())
    dense_item = np.full(len(catalogue), -1, dtype=np.int64)
    dense_item[kept_items] = np.arange(len(kept_items))
    user_order = pd.unique(inter["user"])
    dense_user = pd.Series(np.arange(len(user_order)), index=user_order)
    out = pd.DataFrame({"user": dense_user.loc[inter["user"]].to_numpy(),
                        "item": dense_item[inter["item"].to_numpy()],
                        "timestamp": inter["timestamp"].to_numpy()})
    if "rating" in inter.columns and (inter["rating"] % 1 == 0).all():
        out["rating"] = inter["rating"].to_numpy().astype(np.int64)
    counts.update(events_kept=len(out), users=len(user_order), items=len(kept_items))
    item_map = pd.DataFrame({"item_id": np.arange(len(kept_items)),
                             "original_id": catalogue["original_id"].to_numpy()[kept_items],
                             "title": catalogue["title"].to_numpy()[kept_items]})
    user_map = pd.DataFrame({"user": np.arange(len(user_order)), "original_id": np.asarray(user_order, dtype=object)})
    return LogTables(out, item_map["title"].tolist(), item_map, user_map, counts)
