"""Instruction templates (one YAML file per domain under `conf/prompts/`) and their rendering.

The movie/artist/game/book files hold iLoRA's texts verbatim (their quirks documented in each file), with the
candidate count written as `{num_candidates}`; a new domain is a new YAML file, or any file given as `data.prompts`.

A template is split once into three text pieces around `[HistoryHere]` and `[CansHere]`; every item is
rendered as `" " + title` (plus a slot marker in hybrid prompts) and items are joined by ",". The collator
tokenizes exactly these pieces, so the text rendered here and the token ids it builds follow one rule.
Template choice is a pure function of (seed, epoch, example index): training spreads the three phrasings
over examples and a resumed run reproduces them; evaluation always uses template 0 (as LLaRA).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from ilora.errors import ConfigError

HISTORY_HERE = "[HistoryHere]"
CANS_HERE = "[CansHere]"
HISTORY_SLOT = "[HistoryEmb]"  # text shown where a history item embedding is injected (LLaRA's marker)
CANS_SLOT = "[CansEmb]"
_TEMPLATE_STREAM = 0x7E3A1  # keeps template draws apart from other uses of the same seed


@dataclass(frozen=True)
class PromptTemplate:
    """One instruction text with `[HistoryHere]` before `[CansHere]`, each exactly once.

    A history-only template (`data.prompt=history`) has no `[CansHere]`: the candidates are scored, never
    listed, so the prompt is about half as long; generation (which picks from a listed set) does not apply.
    """

    name: str
    text: str

    def __post_init__(self) -> None:
        counts = (self.text.count(HISTORY_HERE), self.text.count(CANS_HERE))
        if counts == (1, 0):
            return
        if counts != (1, 1) or self.text.index(HISTORY_HERE) > self.text.index(CANS_HERE):
            raise ConfigError(
                f"prompt template {self.name!r} must contain {HISTORY_HERE} then {CANS_HERE}, once each "
                f"(found {counts[0]} and {counts[1]}), or {HISTORY_HERE} alone for a history-only prompt"
            )

    @property
    def lists_candidates(self) -> bool:
        return CANS_HERE in self.text

    @property
    def parts(self) -> tuple[str, str, str]:
        """(head, middle, tail): text before the history, between history and candidates, after candidates.

        Trailing whitespace is stripped from each piece: the next piece (an item `" " + title` or the answer
        `" " + title`) brings its own leading space, so BPE never has to merge across a piece boundary.
        """
        head, rest = self.text.split(HISTORY_HERE)
        middle, tail = rest.split(CANS_HERE) if self.lists_candidates else (rest, "")
        return head.rstrip(), middle.rstrip(), tail.rstrip()

    def render(self, history: Sequence[str], candidates: Sequence[str], *, hybrid: bool = True) -> str:
        """The prompt text (display, logging, generation); hybrid prompts mark each item slot."""
        head, middle, tail = self.parts

        def items(titles: Sequence[str], slot: str) -> str:
            return ",".join(f" {t} {slot}" if hybrid else f" {t}" for t in titles)

        listed = items(candidates, CANS_SLOT) if self.lists_candidates else ""
        return head + items(history, HISTORY_SLOT) + middle + listed + tail


@dataclass(frozen=True)
class PromptSet:
    """The templates of one domain; `choose` picks one per example."""

    domain: str
    templates: tuple[PromptTemplate, ...]

    def __len__(self) -> int:
        return len(self.templates)

    def choose(self, indices: np.ndarray, *, seed: int, epoch: int, train: bool) -> np.ndarray:
        """Template index per example `[N]`: 0 in evaluation, a hash of (seed, epoch, index) in training."""
        indices = np.asarray(indices, dtype=np.int64)
        if not train or len(self.templates) == 1:
            return np.zeros(len(indices), dtype=np.int64)
        return (mix64(seed, epoch, indices, stream=_TEMPLATE_STREAM) % len(self.templates)).astype(np.int64)


def mix64(seed: int, epoch: int, indices: np.ndarray, *, stream: int) -> np.ndarray:
    """A vectorised splitmix64-style hash of (stream, seed, epoch, index) -> uint64 `[N]`.

    Independent of batch composition and dataset size (unlike drawing N numbers from one generator).
    """
    mask = (1 << 64) - 1
    key = np.uint64((stream * 0x9E3779B97F4A7C15 + seed * 0xBF58476D1CE4E5B9 + epoch * 0x94D049BB133111EB) & mask)
    with np.errstate(over="ignore"):
        z = np.asarray(indices, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15) + key
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def uniform01(seed: int, epoch: int, indices: np.ndarray, *, stream: int) -> np.ndarray:
    """Deterministic uniforms in [0, 1) `[N]` from `mix64` (53 high bits)."""
    return (mix64(seed, epoch, indices, stream=stream) >> np.uint64(11)).astype(np.float64) / float(1 << 53)


PROMPT_STYLES = ("llara", "history")
NUM_CANDIDATES = "{num_candidates}"


def prompts_dir() -> Path:
    """`$ILORA_ROOT/conf/prompts`, else the package's own `conf/prompts` (installed or in the checkout)."""
    if os.environ.get("ILORA_ROOT"):
        return Path(os.environ["ILORA_ROOT"]) / "conf" / "prompts"
    return Path(__file__).resolve().parents[1] / "conf" / "prompts"


def prompt_file(domain: str, source: str | os.PathLike | None = None) -> Path:
    """The YAML file of a domain's templates: `source` (a path, or a name under conf/prompts), else the domain's."""
    if source is not None:
        path = Path(source)
        if _is_file_path(source):
            if not path.is_file():
                raise ConfigError(f"data.prompts={str(source)!r}: prompt file not found")
            return path
        domain = str(source)
    path = prompts_dir() / f"{domain}.yaml"
    if not path.is_file():
        have = sorted(p.stem for p in prompts_dir().glob("*.yaml"))
        what = f"data.prompts={domain!r}" if source is not None else f"data.domain={domain!r}"
        raise ConfigError(f"{what} has no prompt templates: {path} not found (have {have}); "
                          f"add conf/prompts/{domain}.yaml or point data.prompts at a YAML file")
    return path


def absolute_source(source: str | None) -> str | None:
    """A `data.prompts` file path made absolute (checkpoints then find it from any directory); names unchanged."""
    if source is None:
        return None
    return str(Path(str(source)).resolve()) if _is_file_path(source) else str(source)


def _is_file_path(source: str | os.PathLike) -> bool:
    """`data.prompts` names a file (a YAML suffix or a folder in it), not a domain under conf/prompts."""
    path = Path(str(source))
    return path.suffix in (".yaml", ".yml") or len(path.parts) > 1


@functools.lru_cache(maxsize=64)
def _read_prompt_file(path: Path, mtime: float) -> dict[str, tuple[str, ...]]:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: not a readable YAML prompt file ({e})") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping with a 'llara' list of templates (and optionally 'history')")
    unknown = sorted(set(raw) - set(PROMPT_STYLES))
    if unknown:
        raise ConfigError(f"{path}: unknown key {unknown[0]!r} (expected {list(PROMPT_STYLES)})")
    out = {}
    for style, texts in raw.items():
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) and t.strip() for t in texts):
            raise ConfigError(f"{path}: {style!r} must be a non-empty list of template strings")
        out[style] = tuple(texts)
    return out


def get_prompts(domain: str, template: int | None = None, style: str = "llara", *, num_candidates: int = 20,
                source: str | os.PathLike | None = None) -> PromptSet:
    """The templates of `style` from the domain's YAML (`conf/prompts/<domain>.yaml`, or `source`), with
    `{num_candidates}` filled in; only template `template` when set. A ConfigError names the bad key or file."""
    if style not in PROMPT_STYLES:
        raise ConfigError(f"data.prompt={style!r} is not one of {sorted(PROMPT_STYLES)}")
    path = prompt_file(domain, source)
    texts = _read_prompt_file(path.resolve(), path.stat().st_mtime).get(style)
    if texts is None:
        raise ConfigError(f"{path}: no {style!r} templates (data.prompt={style} needs them)")
    templates = tuple(PromptTemplate(f"{path.stem}{i}", t.replace(NUM_CANDIDATES, str(num_candidates)))
                      for i, t in enumerate(texts))
    for t in templates:
        if t.lists_candidates != (style == "llara"):
            raise ConfigError(f"{path}: {style!r} template {t.name!r} must {'' if style == 'llara' else 'not '}"
                              f"contain {CANS_HERE}")
    prompts = PromptSet(domain, templates)
    if template is None:
        return prompts
    if not 0 <= template < len(prompts):
        raise ConfigError(f"data.template={template} out of range: domain {domain!r} has {len(prompts)} templates")
    return PromptSet(domain, (prompts.templates[template],))
