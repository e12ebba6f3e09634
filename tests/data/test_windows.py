"""The extended MovieLens protocol: rebuilt from the raw logs it equals the shipped data/movielens_windows."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ilora.cli.data import main
from ilora.data.datasets import load_dataset


@pytest.fixture(scope="module")
def rebuilt(tmp_path_factory, shared_data):
    out = tmp_path_factory.mktemp("windows") / "movielens_windows"
    raw, llara = shared_data / "raw" / "ml-100k", shared_data / "llara" / "movielens"
    assert main(["build-windows", "--interactions", str(raw / "u.data"), "--items", str(raw / "u.item"),
                 "--user-split", str(llara / "user_split.json"), "--train", "data/movielens", "--out", str(out)]) == 0
    return load_dataset(out), json.loads((llara / "user_split.json").read_text())


def test_rebuild_equals_the_shipped_split(rebuilt):
    built, _ = rebuilt
    shipped = load_dataset("movielens_windows")
    assert built.titles == shipped.titles and built.num_items == 1682
    for split in ("train", "val", "test"):
        assert built.splits[split].history == shipped.splits[split].history, split
        assert np.array_equal(built.splits[split].target, shipped.splits[split].target)
        assert np.array_equal(built.splits[split].user, shipped.splits[split].user)


def test_train_is_llaras_and_windows_cover_every_held_out_user(rebuilt):
    built, users = rebuilt
    llara = load_dataset("movielens")
    assert built.splits["train"].history == llara.splits["train"].history
    assert np.array_equal(built.splits["train"].target, llara.splits["train"].target)
    train_users = set(built.splits["train"].user.tolist())
    for split, key, most in (("val", "val_users", 6), ("test", "test_users", 24)):
        part = built.splits[split]
        assert set(part.user.tolist()) == set(users[key]) and not set(users[key]) & train_users
        assert min(map(len, part.history)) >= 3
        assert np.bincount(np.unique(part.user, return_inverse=True)[1]).max() == most
    assert len(built.splits["test"]) >= 2000


def test_refusals_name_the_problem(tmp_path, capsys, shared_data):
    raw = shared_data / "raw" / "ml-100k"
    bad = tmp_path / "split.json"
    bad.write_text('{"train_users": [1]}')
    assert main(["build-windows", "--interactions", str(raw / "u.data"), "--items", str(raw / "u.item"),
                 "--user-split", str(bad), "--train", "data/movielens", "--out", str(tmp_path / "o")]) == 2
    assert "split.json: not a user split" in capsys.readouterr().err and not (tmp_path / "o").exists()
