"""Generated blocks in a README: tables written from results.json between markers, so prose and numbers cannot drift.

    <!-- generated: powered/summary -->
    ...replaced by `fill`...
    <!-- end: powered/summary -->

A key names a block (`<study>/summary`, `<study>/details`, `<study>/coverage`, `<study>/power`, `validation`); the
text around the markers is the author's and is never touched.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

_MARKER = re.compile(r"<!-- (?P<kind>generated|end): (?P<key>\w[\w/-]*) -->")


def study_blocks(name: str, results: dict) -> dict[str, str]:
    """The README blocks of one study's results.json; coverage and power are empty until a panel has two seeds of
    both methods."""
    from ilora.report import dynamics
    from ilora.report import records as analysis

    return {f"{name}/summary": analysis.readme_tables(results),
            f"{name}/details": dynamics.details_table(results),
            f"{name}/coverage": analysis.coverage_table(results["coverage"]) if results.get("coverage") else "",
            f"{name}/power": analysis.power_table(results["power"]) if results.get("power") else ""}


def fill(text: str, blocks: Mapping[str, str], where: str = "README") -> str:
    """`text` with every marked block's body replaced by `blocks[key]` (a blank line either side; nothing for an
    empty block). Markers must pair up in order, each key known: otherwise a ValueError names the marker."""
    markers = list(_MARKER.finditer(text))
    out, at = [], 0
    for i in range(0, len(markers), 2):
        opening, end = markers[i], markers[i + 1] if i + 1 < len(markers) else None
        key = opening["key"]
        if opening["kind"] != "generated":
            raise ValueError(f"{where}: '<!-- end: {key} -->' has no '<!-- generated: {key} -->' before it")
        if end is None or end["kind"] != "end":
            raise ValueError(f"{where}: generated block {key!r} has no '<!-- end: {key} -->' after it")
        if end["key"] != key:
            raise ValueError(f"{where}: generated block {key!r} ends with 'end: {end['key']}'")
        if key not in blocks:
            raise ValueError(f"{where}: generated block {key!r} is unknown (known: {', '.join(sorted(blocks))})")
        block = blocks[key].strip("\n")
        out += [text[at:opening.end()], "\n", f"\n{block}\n\n" if block else "", end[0]]
        at = end.end()
    return "".join(out) + text[at:]
