"""Nothing a user has is destroyed: `--force` writes beside the old output and swaps only after success, and an
output folder that holds one of the inputs is refused (issue 23). Each case lost data before the change."""

from __future__ import annotations

import pandas as pd
import pytest

from ilora.cli.data import main as data_main
from ilora.data.datasets import load_dataset


def assert_clean_failure(result, fragment: str) -> None:
    assert result.code == 2 and "Traceback" not in result.err, result.err[-2000:]
    assert len(result.err_lines) == 1 and fragment in result.err_lines[0], result.err


def _own_log(folder):
    folder.mkdir(parents=True, exist_ok=True)
    rows = [(f"u{u}", f"i{(u + k) % 7}", 1_700_000_000 + 60 * k) for u in range(12) for k in range(5)]
    pd.DataFrame(rows, columns=["user", "item", "timestamp"]).to_csv(folder / "log.csv", index=False)
    pd.DataFrame({"item": [f"i{i}" for i in range(7)], "title": [f"Title {i}" for i in range(7)]}).to_csv(
        folder / "catalog.csv", index=False)
    return folder / "log.csv", folder / "catalog.csv"


def _build(log, catalog, out, *extra):
    return data_main(["build", "--interactions", str(log), "--items", str(catalog), "--out", str(out), *extra])


def test_an_output_folder_holding_the_inputs_is_refused_even_with_force(tmp_path, capsys, digest):
    log, catalog = _own_log(tmp_path / "D")
    before = digest(tmp_path / "D")
    assert _build(log, catalog, tmp_path / "D", "--force") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"contains the input {log}" in err[0] and str(tmp_path / "D") in err[0]
    assert digest(tmp_path / "D") == before


def test_a_failed_forced_rebuild_leaves_the_good_dataset_whole(tmp_path, capsys, digest):
    log, catalog = _own_log(tmp_path / "logs")
    out = tmp_path / "data"
    assert _build(log, catalog, out) == 0
    good = digest(out)
    assert _build(log, catalog, out, "--force", "--user-col", "no_such_column") == 2
    assert "no_such_column" in capsys.readouterr().err
    assert digest(out) == good and load_dataset(out).num_items == 7
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging folder left


def test_a_forced_rebuild_replaces_everything(tmp_path):
    log, catalog = _own_log(tmp_path / "logs")
    out = tmp_path / "data"
    assert _build(log, catalog, out) == 0
    (out / "stale.txt").write_text("from an older build")
    assert _build(log, catalog, out, "--force", "--seed", "1") == 0
    assert not (out / "stale.txt").exists() and load_dataset(out).name == "data"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_export_into_the_checkpoint_folder_is_refused(run_main, trained_run, tmp_path, digest):
    checkpoints = trained_run / "checkpoints"
    before = digest(checkpoints)
    result = run_main("export", f"ckpt_path={checkpoints / 'last.ckpt'}", f"out={checkpoints}", "force=true",
                      f"hydra.run.dir={tmp_path / 'run'}")
    assert_clean_failure(result, f"out={checkpoints} contains the input {checkpoints / 'last.ckpt'}")
    assert digest(checkpoints) == before


@pytest.mark.parametrize("when", ["fails", "succeeds"])
def test_forced_export_swaps_only_a_complete_output(run_main, trained_run, tmp_path, monkeypatch, when):
    out = tmp_path / "export"
    out.mkdir()
    (out / "keep.txt").write_text("an earlier export")
    if when == "fails":
        import ilora.cli.export as export

        def broken(*args, **kwargs):
            raise RuntimeError("disk full")

        monkeypatch.setattr(export, "save_file", broken)
        result = run_main("export", f"ckpt_path={trained_run / 'checkpoints' / 'last.ckpt'}", f"out={out}",
                          "force=true", f"hydra.run.dir={tmp_path / 'run'}")
        assert result.code != 0 and "disk full" in result.err
        assert [p.name for p in out.iterdir()] == ["keep.txt"]  # the earlier export, untouched
    else:
        result = run_main("export", f"ckpt_path={trained_run / 'checkpoints' / 'last.ckpt'}", f"out={out}",
                          "force=true", f"hydra.run.dir={tmp_path / 'run'}")
        assert result.code == 0, result.err[-2000:]
        assert not (out / "keep.txt").exists() and (out / "ilora_export.json").is_file()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
