"""Raw interaction logs -> the `data/<name>/` layout, following LLaRA's recipe.

Recipe (LLaRA `movielens_data` preprocessing, see shared/data/llara/SCHEMA.md):
1. optional rating filter (`rating >= min_rating`; LLaRA keeps rating > 2 for MovieLens);
2. per user, interactions in time order. We sort **stably** (ties keep file order); LLaRA used pandas'
   default quicksort, whose tie order depends on the numpy build, so tied timestamps may come out in a
   different order than in LLaRA's files;
3. one example per interaction: history = the previous <= window items, target = the interaction;
4. users (in first-appearance order) are split 8:1:1 by a seeded permutation (int(0.8n) / int(0.1n) / rest);
   train keeps every example of its users (the first one has an empty history), val/test keep only the last
   example of each held-out user.
Unlike LLaRA's reader we read `u.data` with `header=None`, so its first line is kept (LLaRA lost it as a header).
Logs other than ML-100K (any ids, own column names, csv/tsv/parquet/jsonl) pass through `ilora.data.logs` first,
which states and counts its rules (duplicates, untitled items, k-core) and remaps ids to dense ones.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from ilora.data.datasets import WINDOW, write_dataset, write_map
from ilora.data.logs import Columns, read_logs
from ilora.errors import DataError

SPLIT_FRACTIONS = (0.8, 0.1)  # train, val; test gets the rest
ML100K_SOURCE = "MovieLens-100K (GroupLens), built from raw u.data/u.item by ilora.data.build"
ML100K_TERMS = (
    "MovieLens-100K: research use only, no commercial use or redistribution without GroupLens permission; "
    "cite Harper & Konstan 2015 (see data/NOTICE.md)"
)


def sequence_examples(interactions: pd.DataFrame, window: int = WINDOW) -> pd.DataFrame:
    """One row per interaction: `user`, `history` (previous <= window items), `target` (+ ratings when present).

    `interactions` must already be in per-user time order (users contiguous).
    """
    users = interactions["user"].to_numpy(np.int64)
    items = interactions["item"].to_numpy(np.int64).tolist()
    n = len(users)
    new_user = np.ones(n, dtype=bool)
    new_user[1:] = users[1:] != users[:-1]
    start = np.maximum.accumulate(np.where(new_user, np.arange(n), 0))
    begin = np.maximum(start, np.arange(n) - window).tolist()
    ends = range(n)
    out = {"user": users, "history": [items[a:b] for a, b in zip(begin, ends)], "target": np.asarray(items)}
    if "rating" in interactions.columns:
        ratings = interactions["rating"].to_numpy(np.int64)
        listed = ratings.tolist()
        out["history_ratings"] = [listed[a:b] for a, b in zip(begin, ends)]
        out["target_rating"] = ratings
    return pd.DataFrame(out)


def split_users(users_in_order: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seeded 8:1:1 user split; each part keeps the users' first-appearance order."""
    n = len(users_in_order)
    n_train, n_val = int(SPLIT_FRACTIONS[0] * n), int(SPLIT_FRACTIONS[1] * n)
    perm = np.random.default_rng(seed).permutation(n)
    parts = (perm[:n_train], perm[n_train:n_train + n_val], perm[n_train + n_val:])
    return tuple(users_in_order[np.sort(p)] for p in parts)


def build_splits(
    interactions: pd.DataFrame, *, seed: int = 0, window: int = WINDOW, user_split: tuple | None = None,
    eval_windows: str = "last",
) -> dict[str, pd.DataFrame]:
    """interactions (`user`, `item`, `timestamp`, optional `rating`; items dense) -> {train, val, test} frames.

    `user_split` = (train, val, test) user ids overrides the seeded split (e.g. LLaRA's recovered one).
    `eval_windows`: `last` (LLaRA: each held-out user's last interaction) or `all` (every interaction of a
    held-out user, each with its own preceding history: the extended protocol).
    """
    if eval_windows not in ("last", "all"):
        raise DataError(f"eval_windows={eval_windows!r} must be 'last' or 'all'")
    order = pd.unique(interactions["user"])
    rank = pd.Series(np.arange(len(order)), index=order)
    frame = interactions.assign(_rank=rank.loc[interactions["user"]].to_numpy())
    frame = frame.sort_values(["_rank", "timestamp"], kind="stable").drop(columns="_rank")
    examples = sequence_examples(frame.reset_index(drop=True), window)
    train_u, val_u, test_u = user_split if user_split is not None else split_users(np.asarray(order), seed)
    last = ~examples["user"].duplicated(keep="last") if eval_windows == "last" else np.ones(len(examples), bool)
    return {
        "train": examples[examples["user"].isin(train_u)].reset_index(drop=True),
        "val": examples[last & examples["user"].isin(val_u)].reset_index(drop=True),
        "test": examples[last & examples["user"].isin(test_u)].reset_index(drop=True),
    }


def llara_movie_title(raw: str) -> str:
    """LLaRA's MovieLens title: drop the last 7 characters (" (1995)"), move ", The"/", A"/", An" to the front.

    Exactly LLaRA's rule (quirks kept: item 1411 keeps "(19", an ", A" inside a title also moves), except that
    surrounding whitespace is stripped and a title left empty keeps its raw text (item 266 "unknown").
    """
    title = raw[:-7]
    for article in (", The", ", A", ", An"):
        if article in title:
            title = article[2:] + " " + title.replace(article, "")
    return title.strip() or raw.strip()


def read_ml100k_titles(path: str | os.PathLike) -> list[str]:
    """LLaRA-style titles from ML-100K `u.item` (`|`-separated, latin-1), indexed by movie id - 1."""
    path = Path(path)
    items = _read_ml100k(path, "items")
    if not np.array_equal(items["item"].to_numpy(), np.arange(1, len(items) + 1)):
        raise DataError(f"{path}: movie ids must be 1..{len(items)} in file order")
    return [llara_movie_title(t) for t in items["title"].astype(str)]


def _read_ml100k(path: Path, kind: str) -> pd.DataFrame:
    if not path.is_file():
        raise DataError(f"{path}: {kind} file not found")
    try:
        if kind == "interactions":
            return pd.read_csv(path, sep="\t", header=None, names=["user", "item", "rating", "timestamp"])
        frame = pd.read_csv(path, sep="|", header=None, encoding="latin-1", usecols=[0, 1])
        return frame.set_axis(["item", "title"], axis=1)
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot parse {kind} as ml100k ({e})") from e


def is_ml100k(interactions_path: str | os.PathLike, items_path: str | os.PathLike | None, fmt: str) -> bool:
    """`--format ml100k`, or `auto` with ML-100K's own file names (`*.data` + `*.item`)."""
    if fmt != "auto":
        return fmt == "ml100k"
    return Path(interactions_path).suffix == ".data" and items_path is not None and Path(items_path).suffix == ".item"


def build_dataset(
    interactions_path: str | os.PathLike,
    items_path: str | os.PathLike | None,
    out: str | os.PathLike,
    *,
    fmt: str = "auto",
    min_rating: float | None = None,
    seed: int = 0,
    name: str | None = None,
    domain: str = "movie",
    columns: Columns | None = None,
    dedupe: str = "exact",
    min_user: int = 0,
    min_item: int = 0,
) -> dict[str, int]:
    """Build `out/` from raw logs; returns {split: rows} plus the counts of every rule applied.

    ml100k: `u.data` (tab, no header) + `u.item` (`|`, latin-1), item id = movie id - 1, LLaRA-style titles,
    user ids as in the file. Any other log (csv/tsv/parquet/jsonl; `ilora.data.logs` states the rules): any ids,
    remapped to dense ones with `item_map.parquet` / `user_map.parquet` written beside the dataset.
    `min_rating`: keep rating >= it; None = the format's own rule (LLaRA's rating >= 3 for ML-100K, no filter for any
    other log), a negative value = no filter. The result says which rule ran (`rating_filter`).
    """
    inter_path = Path(interactions_path)
    counts: dict[str, int] = {}
    maps: dict[str, pd.DataFrame] = {}
    ml100k = is_ml100k(interactions_path, items_path, fmt)
    if min_rating is None:
        min_rating, rule = (ML100K_MIN_RATING, "LLaRA's ML-100K rule") if ml100k else (None, "")
    else:
        rule = "--min-rating"
        min_rating = None if min_rating < 0 else float(min_rating)
    rating_filter = f"rating >= {min_rating:g} ({rule})" if min_rating is not None else "off (no --min-rating)"
    if ml100k:
        if items_path is None:
            raise DataError("--format ml100k needs --items (u.item)")
        inter, items = read_ml100k_logs(interactions_path, items_path, min_rating=min_rating)
        titles, source, terms = items["title"].astype(str).tolist(), ML100K_SOURCE, ML100K_TERMS
        sources = f"{inter_path.name} + {Path(items_path).name} (format ml100k)"
    else:
        tables = read_logs(interactions_path, items_path, columns=columns or Columns(), fmt=fmt, min_rating=min_rating,
                           dedupe=dedupe, min_user=min_user, min_item=min_item)
        inter, titles, counts = tables.interactions, tables.titles, tables.counts
        maps = {"item_map": tables.item_map, "user_map": tables.user_map}
        source, terms = f"built from {inter_path.name}", "see source"
        sources = f"{inter_path.name}" + (f" + {Path(items_path).name}" if items_path is not None else "")
    splits = build_splits(inter, seed=seed)
    notes = [
        f"built from {sources}, min_rating={min_rating}, seed={seed}",
        "per-user stable time sort; user split int(0.8n)/int(0.1n)/rest; val/test = last interaction per user",
    ]
    if maps:
        notes.append(f"rules (ilora.data.logs): dedupe={dedupe}, min_user={min_user}, min_item={min_item}; "
                     f"counts {counts}; ids remapped: item_map.parquet, user_map.parquet")
    write_dataset(out, name=name or Path(out).name, domain=domain, titles=titles, splits=splits, source=source,
                  terms=terms, notes=notes)
    for stem, frame in maps.items():
        write_map(Path(out) / f"{stem}.parquet", frame)
    return {**{k: len(v) for k, v in splits.items()}, **counts, "rating_filter": rating_filter}


ML100K_MIN_RATING = 3.0  # LLaRA keeps MovieLens ratings > 2


def read_ml100k_logs(interactions_path: str | os.PathLike, items_path: str | os.PathLike, *,
                     min_rating: float | None = ML100K_MIN_RATING) -> tuple[pd.DataFrame, pd.DataFrame]:
    """ML-100K interactions (`user`, `item`, `timestamp`, `rating`, rating-filtered, item = movie id - 1) and
    items (`item`, `title`, LLaRA's titles)."""
    inter_path, item_path = Path(interactions_path), Path(items_path)
    inter = _read_ml100k(inter_path, "interactions")
    _read_ml100k(item_path, "items")
    inter["item"] = inter["item"] - 1
    titles = read_ml100k_titles(item_path)
    items = pd.DataFrame({"item": np.arange(len(titles)), "title": titles})
    if min_rating is not None:
        inter = inter[inter["rating"] >= min_rating]
    bad = (inter["item"] < 0) | (inter["item"] >= len(items))
    if bad.any():
        raise DataError(f"{inter_path}: column 'item': movie id {int(inter['item'][bad].iloc[0]) + 1} is not in "
                        f"{item_path}")
    if inter.empty:
        raise DataError(f"{inter_path}: no interactions left after the rating filter (--min-rating {min_rating})")
    return inter.astype({"user": np.int64, "item": np.int64}), items
