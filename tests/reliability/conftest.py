"""Reliability suite fixtures: the CLI fixtures of tests/cli (real Hydra configs, tiny random Llama, tiny
dataset) plus helpers that run the real entry points, in-process (`_hydra_main` with sys.argv patched) or as
subprocesses, and a tiny trained checkpoint shared by the checkpoint, predict and resume tests."""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location("ilora_tests_cli_conftest", Path(__file__).parents[1] / "cli" / "conftest.py")
_cli = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_cli)

# The same fixtures as tests/cli (pytest registers fixtures found in a conftest's namespace).
tiny_data_dir = _cli.tiny_data_dir
encoder_cache = _cli.encoder_cache
shared_cache = _cli.shared_cache
compose_cfg = _cli.compose_cfg
train_cfg = _cli.train_cfg
compose_config = _cli.compose_config
TINY = _cli.TINY


def tiny_args(data_dir: Path, encoder_dir: Path, log_dir: Path) -> list[str]:
    """Command-line overrides for a tiny CPU run (the TINY list of tests/cli, as a user would type them)."""
    return [*TINY, f"data.dir={data_dir}", "data.name=tiny", f"paths.encoder_dir={encoder_dir}",
            f"paths.log_dir={log_dir}"]


@pytest.fixture
def tiny(tiny_data_dir, encoder_cache, tmp_path) -> Callable[..., list[str]]:
    """`tiny(data_dir=None) -> overrides` for the tiny dataset (or a corrupted copy of it)."""

    def make(data_dir: Path | None = None) -> list[str]:
        return tiny_args(data_dir or tiny_data_dir, encoder_cache, tmp_path / "outputs")

    return make


class CliResult:
    def __init__(self, code: int | None, out: str, err: str) -> None:
        self.code, self.out, self.err = code, out, err

    @property
    def err_lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.strip()]


@pytest.fixture
def run_main(monkeypatch, capsys) -> Callable[..., CliResult]:
    """`run_main(tool, *args) -> CliResult`: the real `_hydra_main` of ilora.cli.<tool>, in this process."""
    import importlib

    def run(tool: str, *args: str) -> CliResult:
        module = importlib.import_module(f"ilora.cli.{tool}")
        monkeypatch.setattr(sys, "argv", [f"ilora-{tool}", *args])
        capsys.readouterr()
        code: int | None = 0
        try:
            module._hydra_main()
        except SystemExit as e:
            code = e.code
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


def cli_command(tool: str, *args: str, prelude: str = "") -> list[str]:
    """The console script `ilora-<tool>` as a subprocess command; `prelude` is Python run first (fault injection)."""
    code = f"import sys\n{prelude}\nfrom ilora.cli.{tool} import main\nsys.argv[0] = 'ilora-{tool}'\nmain()"
    return [sys.executable, "-c", code, *args]


@pytest.fixture(scope="session")
def cli():
    return cli_command


def tree_digest(*roots: Path) -> dict[str, str]:
    """sha256 of every file under `roots` (to prove that existing outputs and inputs were left untouched)."""
    digest = {}
    for root in roots:
        for path in sorted(p for p in Path(root).rglob("*") if p.is_file()):
            digest[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return digest


@pytest.fixture(scope="session")
def digest():
    return tree_digest


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, tiny_data_dir, encoder_cache) -> Path:
    """One tiny run trained with the W&B logger (offline): `<run>/checkpoints/last.ckpt` at step 4."""
    import os

    from ilora.cli.train import train

    os.environ.setdefault("WANDB_MODE", "offline")
    root = tmp_path_factory.mktemp("trained")
    overrides = [*tiny_args(tiny_data_dir, encoder_cache, root / "outputs"), "logger=wandb",
                 "model.evaluation.generate=false", "test_ckpt=last"]
    cfg = compose_config("train", overrides, root / "outputs" / "train" / "runs" / "first")
    train(cfg)
    return Path(cfg.paths.output_dir)
