"""Suite-wide fixtures: the shared data folder, found beside the repository as CI has it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# `../shared` beside the clone (where CI puts it); ILORA_SHARED_DIR points elsewhere for other layouts.
SHARED = Path(os.environ.get("ILORA_SHARED_DIR", REPO.parent / "shared"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """`<shared>/data`. Missing: a failure under CI=true (the tests that read it must run there), else a skip."""
    data = SHARED / "data"
    if not (data / "llara").is_dir() or not (data / "raw").is_dir():
        message = f"shared data not found at {data} (expected ../shared beside the repository, or ILORA_SHARED_DIR)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)
        pytest.skip(message)
    return data
