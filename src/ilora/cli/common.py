"""What every entry point shares: clean failure, run-directory bookkeeping, metrics.json."""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import DictConfig, OmegaConf

from ilora.errors import ConfigError, IloraError

F = TypeVar("F", bound=Callable[..., Any])


def check_output(path: Path, force: bool, *, name: str, hint: str, inputs: Sequence[str | Path] = ()) -> None:
    """Refuse a non-empty output `path` unless forced (`name` and `hint` make the message), and refuse an output
    that contains (or is) one of the `inputs` whatever `force` says: replacing it would destroy them."""
    resolved = path.resolve()
    for item in inputs:
        source = Path(item).resolve()
        if source == resolved or resolved in source.parents:
            raise ConfigError(f"{name} contains the input {item}: write the output somewhere else")
    if path.exists() and (not path.is_dir() or any(path.iterdir())) and not force:
        raise ConfigError(f"{name} exists and is not empty; {hint}")


@contextlib.contextmanager
def staged_output(path: Path, force: bool, *, name: str, hint: str,
                  inputs: Sequence[str | Path] = ()) -> Iterator[Path]:
    """Write an output folder safely: checks as `check_output`, then yields a temporary sibling to write into; on
    success the old `path` (if any) is moved aside, the new one renamed in, and only then the old one deleted. On
    failure the temporary folder is removed and `path` is untouched: `--force` never destroys before the new
    output is complete."""
    check_output(path, force, name=name, hint=hint, inputs=inputs)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if path.exists() or path.is_symlink():
        old = path.parent / f".{path.name}.old-{os.getpid()}"
        path.rename(old)
    tmp.rename(path)
    if old is not None:
        shutil.rmtree(old) if old.is_dir() and not old.is_symlink() else old.unlink()


def task_wrapper(task: F) -> F:
    """Run a task so that loggers are always closed and the run directory is always printed.

    A user-facing `IloraError` propagates (the `main` wrapper turns it into one line and exit code 2);
    anything else propagates with its traceback, after the loggers were finished.
    """

    @functools.wraps(task)
    def wrapped(cfg: DictConfig) -> Any:
        start = time.time()
        try:
            return task(cfg)
        finally:
            close_loggers()
            out = OmegaConf.select(cfg, "paths.output_dir", default=None)
            print(f"[ilora] {cfg.get('task_name', 'task')} finished in {time.time() - start:.1f}s; run dir: {out}")

    return wrapped  # type: ignore[return-value]


def close_loggers() -> None:
    """Finish an open W&B run (a crashed run still gets synced-able files)."""
    if "wandb" in sys.modules:
        import wandb

        if wandb.run is not None:
            wandb.finish()


def exit_on_user_error(main: Callable[[], Any]) -> Callable[[], Any]:
    """Console-script wrapper: an `IloraError` prints one line `error: ...` and exits with status 2."""

    @functools.wraps(main)
    def wrapped() -> Any:
        try:
            return main()
        except IloraError as e:
            print(f"error: {e}", file=sys.stderr)
            raise SystemExit(2) from None

    return wrapped


def is_rank_zero() -> bool:
    """True in the launching process (ranks > 0 of a multi-process run must not write run files)."""
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0


def write_json(path: str | Path, payload: Mapping[str, Any]) -> None:
    """Write JSON atomically (temp file, then rename) so a crash never leaves half a file."""
    write_text_atomic(path, json.dumps(payload, indent=2, sort_keys=True, default=_jsonable) + "\n")


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write through a temporary sibling named after this process, then rename: neither a crash nor a second
    process writing the same file (two study lanes) ever leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def flat_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """Plain floats (NaN for values that are not numbers) with stable names."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        try:
            out[key] = float(value.item() if hasattr(value, "item") else value)
        except (TypeError, ValueError):
            out[key] = math.nan
    return out
