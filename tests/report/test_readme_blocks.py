"""The READMEs' generated blocks: only the marked bodies change, and a broken marker is named before any write."""

from __future__ import annotations

import re

import pytest

from ilora.report.readme import fill

TEXT = """# Title

Prose before, kept as written.

<!-- generated: s/summary -->

| old | table |

<!-- end: s/summary -->

Prose between.

<!-- generated: s/power -->
<!-- end: s/power -->

The end.
"""


def test_fill_replaces_only_the_marked_bodies_and_is_idempotent():
    filled = fill(TEXT, {"s/summary": "| new | table |\n|---|---|\n", "s/power": "power table\n"})
    assert "| old | table |" not in filled and "| new | table |\n|---|---|\n\n<!-- end: s/summary -->" in filled
    assert "<!-- generated: s/power -->\n\npower table\n\n<!-- end: s/power -->" in filled
    for prose in ("# Title\n\nProse before, kept as written.\n\n", "\n\nProse between.\n\n", "\n\nThe end.\n"):
        assert prose in filled
    assert fill(filled, {"s/summary": "| new | table |\n|---|---|\n", "s/power": "power table\n"}) == filled
    emptied = fill(filled, {"s/summary": "| new | table |\n|---|---|\n", "s/power": ""})
    assert "<!-- generated: s/power -->\n<!-- end: s/power -->" in emptied  # a block not yet available


@pytest.mark.parametrize("text, message", [
    (TEXT.replace("<!-- end: s/power -->", ""), "'s/power' has no '<!-- end: s/power -->'"),
    (TEXT.replace("<!-- end: s/summary -->", ""), "'s/summary' has no '<!-- end: s/summary -->'"),
    (TEXT.replace("<!-- generated: s/summary -->", ""), "'<!-- end: s/summary -->' has no '<!-- generated: s/summary"),
    (TEXT.replace("<!-- end: s/power -->", "<!-- end: s/summary -->"), "'s/power' ends with 'end: s/summary'"),
    (TEXT.replace("s/power", "s/powr"), "'s/powr' is unknown"),
])
def test_a_broken_or_unknown_marker_is_named(text, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        fill(text, {"s/summary": "x\n", "s/power": ""}, where="README.md")
