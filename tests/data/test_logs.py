"""A researcher's own logs: any ids, own column names, csv/tsv/parquet/jsonl, duplicates, untitled items, k-core."""

from __future__ import annotations

import pandas as pd
import pyarrow.parquet as pq
import pytest

from ilora.cli.data import main
from ilora.data.datasets import load_dataset
from ilora.data.logs import Columns, read_logs
from ilora.errors import DataError


def _events() -> pd.DataFrame:
    # string ids; "007" and "7" are different items; u2 repeats one event exactly; "ghost" has no title
    rows = [("u1", "A17", "2024-01-01T10:00:00Z"), ("u1", "B2", "2024-01-02T10:00:00Z"),
            ("u2", "007", "2024-01-01T09:00:00Z"), ("u2", "007", "2024-01-01T09:00:00Z"),
            ("u2", "7", "2024-01-03T09:00:00Z"), ("u2", "ghost", "2024-01-04T09:00:00Z"),
            ("u3", "A17", "2024-01-05T09:00:00Z"), ("u2", "A17", "2024-01-06T09:00:00Z")]
    return pd.DataFrame(rows, columns=["reviewer", "asin", "when"])


def _catalogue() -> pd.DataFrame:
    return pd.DataFrame({"asin": ["A17", "B2", "007", "7", "Z9", "B2"],
                         "name": ["Dune ", "Emma\tWoodhouse", "Bond", "Seven", "Unread", "Emma Woodhouse"]})


COLUMNS = Columns(user="reviewer", item="asin", timestamp="when", title="name")


def test_rules_and_dense_ids(tmp_path):
    _events().to_csv(tmp_path / "events.tsv", sep="\t", index=False)
    _catalogue().to_csv(tmp_path / "items.tsv", sep="\t", index=False)
    out = read_logs(tmp_path / "events.tsv", tmp_path / "items.tsv", columns=COLUMNS)
    assert out.item_map["original_id"].tolist() == ["A17", "B2", "007", "7", "Z9"]  # catalogue order, text ids
    assert out.titles == ["Dune", "Emma Woodhouse", "Bond", "Seven", "Unread"]  # whitespace collapsed
    assert out.counts["catalogue_duplicate_rows"] == 1  # B2 listed twice with the same title
    assert out.counts["duplicate_events_dropped"] == 1 and out.counts["events_on_items_without_title"] == 1
    assert out.user_map["original_id"].tolist() == ["u1", "u2", "u3"]
    inter = out.interactions
    assert inter[inter.user == 1]["item"].tolist() == [2, 3, 0]  # u2: 007, 7, A17 (ghost dropped)
    assert inter["timestamp"].iloc[0] == pd.Timestamp("2024-01-01T10:00:00Z").timestamp()
    popular = read_logs(tmp_path / "events.tsv", tmp_path / "items.tsv", columns=COLUMNS, min_item=2)
    assert popular.item_map["original_id"].tolist() == ["A17"]  # the only item with >= 2 events; the rest leave
    assert len(popular.interactions) == 3 and popular.counts["items_removed_by_min_interactions"] == 3
    active = read_logs(tmp_path / "events.tsv", tmp_path / "items.tsv", columns=COLUMNS, min_user=2)
    assert active.user_map["original_id"].tolist() == ["u1", "u2"] and len(active.item_map) == 5
    with pytest.raises(DataError, match="no interactions left"):  # k-core: removing items empties every user
        read_logs(tmp_path / "events.tsv", tmp_path / "items.tsv", columns=COLUMNS, min_user=2, min_item=2)
    first = read_logs(tmp_path / "events.tsv", tmp_path / "items.tsv", columns=COLUMNS, dedupe="none")
    assert len(first.interactions) == len(inter) + 1


@pytest.mark.parametrize("fmt", ["csv", "parquet", "jsonl"])
def test_formats_and_titles_in_the_same_file(tmp_path, fmt):
    events = _events().merge(_catalogue().drop_duplicates("asin"), on="asin", how="left").fillna({"name": ""})
    events["stars"] = [5, 4, 3, 3, 1, 5, 2, 4]
    path = tmp_path / f"log.{fmt}"
    {"csv": lambda: events.to_csv(path, index=False), "parquet": lambda: events.to_parquet(path),
     "jsonl": lambda: events.to_json(path, orient="records", lines=True)}[fmt]()
    out = read_logs(path, None, columns=COLUMNS.override(rating="stars"), min_rating=3)
    assert out.counts["events_below_min_rating"] == 2
    assert set(out.item_map["original_id"]) == {"A17", "B2", "007", "7"}  # the titled items the file mentions
    assert "rating" in out.interactions and out.interactions["rating"].min() >= 3


def test_refusals_name_file_column_and_value(tmp_path):
    cat = tmp_path / "items.tsv"
    _catalogue().to_csv(cat, sep="\t", index=False)
    bad_time = _events().assign(when=["2024-01-01", "soon"] + ["2024-01-02"] * 6)
    bad_time.to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(DataError, match=r"t\.csv: column 'when' holds neither numbers nor date-times.*'soon'"):
        read_logs(tmp_path / "t.csv", cat, columns=COLUMNS)
    _events().to_csv(tmp_path / "e.csv", index=False)
    with pytest.raises(DataError, match=r"e\.csv: interactions column 'user' not found"):
        read_logs(tmp_path / "e.csv", cat)
    _events().assign(reviewer=["u1", ""] + ["u2"] * 6).to_csv(tmp_path / "gap.csv", index=False)
    with pytest.raises(DataError, match=r"gap\.csv: column 'reviewer' is empty at row 1"):
        read_logs(tmp_path / "gap.csv", cat, columns=COLUMNS)
    _catalogue().assign(name=["Dune", "Emma", "Bond", "Seven", "Unread", "Other"]).to_csv(
        tmp_path / "clash.tsv", sep="\t", index=False)
    with pytest.raises(DataError, match=r"clash\.tsv: column 'asin': item 'B2' has more than one title"):
        read_logs(tmp_path / "e.csv", tmp_path / "clash.tsv", columns=COLUMNS)
    _events().assign(stars=["5", "x"] + ["3"] * 6).to_csv(tmp_path / "r.csv", index=False)
    with pytest.raises(DataError, match=r"r\.csv: column 'stars' is not numeric \(first offending value 'x'\)"):
        read_logs(tmp_path / "r.csv", cat, columns=COLUMNS.override(rating="stars"))
    (tmp_path / "log.xlsx").write_text("x")
    with pytest.raises(DataError, match=r"log\.xlsx: cannot tell the format"):
        read_logs(tmp_path / "log.xlsx", cat, columns=COLUMNS)
    (tmp_path / "cols.yaml").write_text("user: reviewer\nitm: asin\n")
    with pytest.raises(DataError, match="unknown column-map key 'itm'"):
        Columns.from_yaml(tmp_path / "cols.yaml")


def test_cli_build_writes_maps_and_counts(tmp_path, capsys):
    events = pd.concat([_events().assign(reviewer=lambda f, i=i: f.reviewer + f"_{i}") for i in range(10)])
    events.to_csv(tmp_path / "events.tsv", sep="\t", index=False)
    _catalogue().to_csv(tmp_path / "items.tsv", sep="\t", index=False)
    (tmp_path / "cols.yaml").write_text("user: reviewer\nitem: asin\ntimestamp: when\ntitle: name\n")
    out = tmp_path / "books"
    assert main(["build", "--interactions", str(tmp_path / "events.tsv"), "--items", str(tmp_path / "items.tsv"),
                 "--columns", str(tmp_path / "cols.yaml"), "--out", str(out), "--domain", "book"]) == 0
    printed = capsys.readouterr().out
    assert "duplicate_events_dropped: 10" in printed and "events_on_items_without_title: 10" in printed
    data = load_dataset(out)
    assert data.domain == "book" and data.titles[2] == "Bond"
    item_map = pq.read_table(out / "item_map.parquet").to_pandas()
    assert item_map["original_id"].tolist()[:4] == ["A17", "B2", "007", "7"]
    users = pq.read_table(out / "user_map.parquet").to_pandas()
    assert len(users) == 30 and users["original_id"].iloc[0] == "u1_0"
    assert main(["check", str(out)]) == 0
    pq.write_table(pq.read_table(out / "item_map.parquet").slice(0, 3), out / "item_map.parquet")
    assert main(["check", str(out)]) == 2
    assert "item_map.parquet: 3 rows for 5 items" in capsys.readouterr().err


def _dated(frame: pd.DataFrame, when) -> pd.DataFrame:
    return frame.assign(when=when)


@pytest.mark.parametrize("store", ["parquet datetime64[ns]", "parquet datetime64[us]", "parquet tz-aware",
                                   "jsonl iso", "jsonl epoch", "csv iso"])
def test_timestamps_are_seconds_since_the_epoch_whatever_the_storage(tmp_path, store):
    """2024-01-01T10:00:00Z is 1704103200 s whether stored as a datetime column, a string or a number."""
    events = _events()
    iso = pd.to_datetime(events["when"], utc=True)
    seconds = ((iso - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)).tolist()
    assert seconds[0] == 1704103200
    if store.startswith("parquet"):
        unit = "us" if "[us]" in store else "ns"
        when = iso.dt.tz_convert("Europe/Paris") if "tz-aware" in store else iso.dt.tz_localize(None).astype(
            f"datetime64[{unit}]")
        path = tmp_path / "events.parquet"
        _dated(events, when).to_parquet(path)
    elif store == "jsonl iso":
        path = tmp_path / "events.jsonl"
        events.to_json(path, orient="records", lines=True)
    elif store == "jsonl epoch":
        path = tmp_path / "events.jsonl"
        _dated(events, seconds).to_json(path, orient="records", lines=True)
    else:
        path = tmp_path / "events.csv"
        events.to_csv(path, index=False)
    _catalogue().to_csv(tmp_path / "items.tsv", sep="\t", index=False)
    out = read_logs(path, tmp_path / "items.tsv", columns=COLUMNS, dedupe="none")
    got = out.interactions.sort_values("timestamp")["timestamp"].tolist()
    assert got[0] == 1704103200 - 3600  # u2's 09:00 event is the earliest
    assert set(got) <= set(seconds)


@pytest.mark.parametrize(("flag", "kept", "rule"), [
    ([], 3, "off (no --min-rating)"),  # an own log keeps every event, 0/1 feedback included
    (["--min-rating", "1"], 2, "rating >= 1 (--min-rating)"),
])
def test_rating_filter_only_when_asked_for_own_logs(tmp_path, capsys, flag, kept, rule):
    rows = [(f"u{u}", item, f"2024-01-0{d}T00:00:00Z", r) for u in range(10)
            for item, d, r in (("A17", 1, 1), ("B2", 2, 0), ("7", 3, 1))]
    pd.DataFrame(rows, columns=["reviewer", "asin", "when", "rating"]).to_csv(tmp_path / "e.csv", index=False)
    _catalogue().to_csv(tmp_path / "items.tsv", sep="\t", index=False)
    (tmp_path / "cols.yaml").write_text("user: reviewer\nitem: asin\ntimestamp: when\ntitle: name\n")
    out = tmp_path / "out"
    assert main(["build", "--interactions", str(tmp_path / "e.csv"), "--items", str(tmp_path / "items.tsv"),
                 "--columns", str(tmp_path / "cols.yaml"), "--out", str(out), *flag]) == 0
    assert f"rating_filter: {rule}" in capsys.readouterr().out
    data = load_dataset(out)
    per_user = {len(h) + 1 for split in data.splits.values() for h in split.history}
    assert max(per_user) == kept
