"""Raw logs -> splits (LLaRA recipe) and the ilora-data CLI's error and overwrite behaviour."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from ilora.cli.data import main
from ilora.data.build import build_dataset, build_splits
from ilora.data.datasets import load_dataset


def _log():
    # user 5 appears first; user 1 has a timestamp tie (items 3 and 4 at t=20) that must keep file order
    return pd.DataFrame({
        "user": [5, 1, 5, 1, 1, 5] + [u for u in range(10, 20) for _ in range(3)],
        "item": [0, 2, 1, 3, 4, 2] + [i % 6 for i in range(30)],
        "timestamp": [3, 10, 1, 20, 20, 2] + list(range(30)),
        "rating": [5, 4, 3, 5, 1, 4] + [3] * 30,
    })


def test_build_splits_recipe():
    splits = build_splits(_log(), seed=0, window=2)
    everything = pd.concat(splits.values())
    assert len(splits["train"]) + len(splits["val"]) + len(splits["test"]) < len(_log())  # held-out: last only
    users = [set(s["user"]) for s in splits.values()]
    assert [len(u) for u in users] == [9, 1, 2]  # int(0.8*12), int(0.1*12), rest
    assert not (users[0] & users[1] or users[0] & users[2] or users[1] & users[2])
    assert everything["history"].map(len).max() == 2
    rows = pd.concat([build_splits(_log(), seed=s, window=2)["train"] for s in range(20)])
    u5 = rows[rows.user == 5].drop_duplicates("target")
    assert u5["target"].tolist() == [1, 2, 0] and u5["history"].tolist() == [[], [1], [1, 2]]
    u1 = rows[rows.user == 1].drop_duplicates("target")
    assert u1["target"].tolist() == [2, 3, 4] and u1["history"].tolist() == [[], [2], [2, 3]]
    assert u1["history_ratings"].tolist() == [[], [4], [4, 5]]
    assert not build_splits(_log(), seed=0)["test"].equals(build_splits(_log(), seed=1)["test"])


def test_build_csv_and_cli_guards(tmp_path, capsys):
    log = _log()
    log.to_csv(tmp_path / "log.csv", index=False)
    pd.DataFrame({"item": range(6), "title": [f"T{i}" for i in range(6)]}).to_csv(tmp_path / "items.csv", index=False)
    args = ["build", "--interactions", str(tmp_path / "log.csv"), "--items", str(tmp_path / "items.csv"),
            "--out", str(tmp_path / "out"), "--format", "csv", "--min-rating", "3"]
    assert main(args) == 0
    data = load_dataset(tmp_path / "out")
    kept = int((log.rating >= 3).sum())
    assert data.titles[5] == "T5" and sum(map(len, data.splits.values())) <= kept
    assert main(args) == 2 and "pass --force" in capsys.readouterr().err
    assert main([*args, "--force", "--seed", "1"]) == 0
    bad = tmp_path / "bad.csv"
    log.drop(columns="timestamp").to_csv(bad, index=False)
    assert main(["build", "--interactions", str(bad), "--items", str(tmp_path / "items.csv"), "--out",
                 str(tmp_path / "o2"), "--format", "csv"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "bad.csv: interactions column 'timestamp' not found" in err
    assert not (tmp_path / "o2").exists()
    assert main(["check", str(tmp_path / "nope")]) == 2


def test_ml100k_build_matches_llara_shape(tmp_path, shared_data):
    """Our ML-100K build keeps u.data's first line: 82,520 kept interactions (LLaRA 82,519), 943 users."""
    ML100K, LLARA_ML = shared_data / "raw" / "ml-100k", shared_data / "llara" / "movielens"  # noqa: N806
    rows = build_dataset(ML100K / "u.data", ML100K / "u.item", tmp_path / "ml", seed=0)
    assert (rows["val"], rows["test"]) == (94, 95)
    built, shipped = load_dataset(tmp_path / "ml"), load_dataset("movielens")
    assert built.titles == shipped.titles
    n_users = sum(len(set(s.user.tolist())) for s in built.splits.values())
    lengths = np.fromiter(map(len, built.splits["train"].history), dtype=np.int64)
    assert n_users == 943 and (lengths == 0).sum() == 754
    users = json.loads((LLARA_ML / "user_split.json").read_text())
    assert sorted(built.splits["test"].user.tolist()) != sorted(users["test_users"])  # our seed, not LLaRA's
    raw = pd.read_csv(ML100K / "u.data", sep="\t", header=None, names=["user", "item", "rating", "timestamp"])
    raw = raw[raw.rating >= 3].assign(item=lambda f: f.item - 1)
    assert len(raw) == 82_520
    llara_split = build_splits(raw, user_split=(users["train_users"], users["val_users"], users["test_users"]))
    assert len(llara_split["train"]) == 68_388 + 1  # LLaRA lost u.data's first line (user 196, a train user)
    assert llara_split["test"]["user"].tolist() == shipped.splits["test"].user.tolist()
