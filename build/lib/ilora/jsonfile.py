"""Small JSON metadata files (dataset meta.json, encoder config.json): read once, type-checked, one-line errors."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ilora.errors import IloraError


def read_json_object(path: Path, keys: Sequence[tuple[str, type]], error: type[IloraError], *,
                     missing: str = "file not found") -> dict[str, Any]:
    """The JSON object in `path`, with each (key, type) present and of that type (bools are not ints).

    Every problem raises `error` naming the file: `missing` when it does not exist, invalid JSON, not an
    object, or the first key of the wrong type.
    """
    if not path.is_file():
        raise error(f"{path}: {missing}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise error(f"{path}: not valid JSON ({e})") from e
    if not isinstance(data, dict):
        raise error(f"{path}: expected a JSON object, got {type(data).__name__}")
    for key, kind in keys:
        value = data.get(key)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise error(f"{path}: key {key!r} must be a {kind.__name__}, got {value!r}")
    return data
