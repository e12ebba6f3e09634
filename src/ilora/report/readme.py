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

_BLOCK = re.compile(r"<!-- generated: (?P<key>\w[\w/-]*) -->\n(?P<body>.*?)<!-- end: (?P<end>\w[\w/-]*) -->", re.DOTALL)
_OPEN = re.compile(r"<!-- generated: (\w[\w/-]*) -->")


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
    empty block). A key missing from `blocks`, or a marker without its end, is an error naming it."""
    opened = _OPEN.findall(text)
    found = list(_BLOCK.finditer(text))
    if len(found) != len(opened):
        closed = {m["key"] for m in found}
        key = next((k for k in opened if k not in closed), opened[-1] if opened else "?")
        raise ValueError(f"{where}: generated block {key!r} has no '<!-- end: {key} -->' after it")
    for m in found:
        if m["key"] != m["end"]:
            raise ValueError(f"{where}: generated block {m['key']!r} ends with 'end: {m['end']}'")
        if m["key"] not in blocks:
            raise ValueError(f"{where}: generated block {m['key']!r} is unknown (known: {', '.join(sorted(blocks))})")

    def body(m: re.Match) -> str:
        block = blocks[m["key"]].strip("\n")
        inner = f"\n{block}\n\n" if block else ""
        return f"<!-- generated: {m['key']} -->\n{inner}<!-- end: {m['key']} -->"

    return _BLOCK.sub(body, text)
