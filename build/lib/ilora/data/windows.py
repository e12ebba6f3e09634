"""The extended MovieLens protocol: LLaRA's train split, and every next-item window of the held-out users.

LLaRA evaluates each of its 94 val / 95 test users once (their last interaction), so one HR@1 carries a 95%
interval of about +-0.09. This protocol keeps LLaRA's train split exactly (the shipped `train.parquet`) and
LLaRA's user split (`user_split.json`), and rebuilds val/test from the raw ML-100K logs with LLaRA's recipe
(rating > 2, per-user stable time order, history = the previous <= 10 items), keeping every window of a
held-out user whose history has at least `min_history` items. Evaluating all of them (~8,000 test windows)
is too slow for a CPU study, so a seeded subset of up to `per_user` windows per user is kept (a user with
fewer keeps all); intervals then resample users, each with all of its windows.
No val/test user has an interaction in train (checked).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from ilora.data.build import ML100K_TERMS, build_splits, read_ml100k_logs
from ilora.data.datasets import load_dataset, write_dataset
from ilora.errors import DataError

_SUBSET_STREAM = 0x51DE  # keeps the subset draw apart from other uses of the seed


def sample_windows(frame: pd.DataFrame, per_user: int | None, seed: int) -> pd.DataFrame:
    """Up to `per_user` windows per user (seeded per user, time order kept); None keeps every window."""
    if per_user is None:
        return frame.reset_index(drop=True)
    keep = []
    for user, rows in frame.groupby("user", sort=False).indices.items():
        rng = np.random.default_rng(np.random.SeedSequence([seed, _SUBSET_STREAM, int(user)]))
        keep.append(np.sort(rng.permutation(rows)[:per_user]) if len(rows) > per_user else rows)
    return frame.iloc[np.sort(np.concatenate(keep))].reset_index(drop=True)


def build_window_dataset(
    interactions_path: str | os.PathLike, items_path: str | os.PathLike, user_split_path: str | os.PathLike,
    train_dir: str | os.PathLike, out: str | os.PathLike, *, min_history: int = 3, val_per_user: int | None = 6,
    test_per_user: int | None = 24, seed: int = 0, name: str = "movielens_windows",
) -> dict[str, int]:
    """Write the extended protocol to `out/`; returns {split: rows}."""
    inter, items = read_ml100k_logs(interactions_path, items_path, min_rating=3)
    try:
        users = json.loads(Path(user_split_path).read_text(encoding="utf-8"))
        split = tuple(np.asarray(users[k], dtype=np.int64) for k in ("train_users", "val_users", "test_users"))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(f"{user_split_path}: not a user split with train_users/val_users/test_users ({e})") from e
    shipped = load_dataset(train_dir, splits=("train",))
    titles = items["title"].astype(str).tolist()
    if shipped.titles != titles:
        raise DataError(f"{train_dir}: its titles differ from {items_path}'s; build from the same ML-100K copy")
    frames = build_splits(inter, user_split=split, eval_windows="all")
    train = pd.read_parquet(Path(train_dir) / "train.parquet")
    held_out = set(split[1].tolist()) | set(split[2].tolist())
    leaked = held_out & set(train["user"].tolist())
    if leaked:
        raise DataError(f"{train_dir}/train.parquet holds interactions of held-out users (e.g. {min(leaked)})")
    out_splits = {"train": train}
    for part, per_user in (("val", val_per_user), ("test", test_per_user)):
        frame = frames[part][frames[part]["history"].map(len) >= min_history]
        out_splits[part] = sample_windows(frame, per_user, seed)
    counts = {k: len(v) for k, v in out_splits.items()}
    notes = [
        f"train = {Path(train_dir).name}/train.parquet (LLaRA's train split, unchanged)",
        f"val/test = every window with >= {min_history} history items of LLaRA's {len(split[1])} val / "
        f"{len(split[2])} test users (user_split.json), rebuilt from {Path(interactions_path).name} with LLaRA's "
        "recipe (rating > 2, stable per-user time order, history <= 10)",
        f"subset: up to {val_per_user} (val) / {test_per_user} (test) windows per user, seed {seed}; "
        f"{counts['val']} val / {counts['test']} test windows over {frames['val']['user'].nunique()} / "
        f"{frames['test']['user'].nunique()} users",
    ]
    write_dataset(out, name=name, domain="movie", titles=titles, splits=out_splits,
                  source="MovieLens-100K (GroupLens) + LLaRA's user split and train split; ilora.data.windows",
                  terms=ML100K_TERMS, notes=notes)
    return counts
