"""Instruction templates (iLoRA's "20 titles" variants, one set per domain) and their rendering.

A template is split once into three text pieces around `[HistoryHere]` and `[CansHere]`; every item is
rendered as `" " + title` (plus a slot marker in hybrid prompts) and items are joined by ",". The collator
tokenizes exactly these pieces, so the text rendered here and the token ids it builds follow one rule.
Template choice is a pure function of (seed, epoch, example index): training spreads the three phrasings
over examples and a resumed run reproduces them; evaluation always uses template 0 (as LLaRA).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

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


def _set(domain: str, *texts: str) -> PromptSet:
    return PromptSet(domain, tuple(PromptTemplate(f"{domain}{i}", t) for i, t in enumerate(texts)))


# Verbatim from iLoRA's prompt files (data/llara/prompts/{movie,artist,game}.txt), including their quirks
# (the artist set's second template says "10 music artist names").
PROMPTS: dict[str, PromptSet] = {
    "movie": _set(
        "movie",
        "This user has watched [HistoryHere] in the previous. Please predict the next movie this user will watch. "
        "Choose the answer from the following 20 movie titles: [CansHere]. Answer: ",
        "This user has watched [HistoryHere] in the previous. Given the following 20 movie titles: [CansHere], "
        "recommend one movie for this user to watch next. The movie title you recommend is: ",
        "The visit history of this user is: [HistoryHere]. Recommend a next movie for this user to watch from the "
        "following movie title set: [CansHere]. The recommendation should contain one movie title only. "
        "Recommendation:",
    ),
    "artist": _set(
        "artist",
        "This user has listened to [HistoryHere] in the previous. Please predict the next music artist this user "
        "will listen to. The artist name candidates are [CansHere]. Choose only one artist from the candidates. "
        "The answer is ",
        "This user has listened to [HistoryHere] in the previous. Given the following 10 music artist names, "
        "[CansHere], recommend one artist for this user to listen to next. The artist name you recommend is ",
        "The listening history of this user is [HistoryHere]. Recommend the next music artist for this user to "
        "listen to from the following artist name set, [CansHere]. The recommendation should contain one "
        "artist's name only. The recommendation is ",
    ),
    "game": _set(
        "game",
        "This user has played [HistoryHere] in the previous. Please predict the next game this user will play. "
        "The game title candidates are [CansHere]. Choose only one game from the candidates. The answer is ",
        "This user has played [HistoryHere] in the previous. Given the following 20 game titles, [CansHere], "
        "recommend one game for this user to play next. The game title you recommend is ",
        "The visit history of this user is [HistoryHere]. Recommend a next game for this user to play from the "
        "following game title set, [CansHere]. The recommendation should contain one game title only. "
        "The recommendation is ",
    ),
}


# `data.prompt=history`: the first sentences of template 0 above, with the question closed instead of a listed set.
HISTORY_PROMPTS: dict[str, PromptSet] = {
    "movie": _set("movie", "This user has watched [HistoryHere] in the previous. Please predict the next movie this "
                           "user will watch. Answer: "),
    "artist": _set("artist", "This user has listened to [HistoryHere] in the previous. Please predict the next music "
                             "artist this user will listen to. The answer is "),
    "game": _set("game", "This user has played [HistoryHere] in the previous. Please predict the next game this user "
                         "will play. The answer is "),
}
PROMPT_STYLES = {"llara": PROMPTS, "history": HISTORY_PROMPTS}


def get_prompts(domain: str, template: int | None = None, style: str = "llara") -> PromptSet:
    """The domain's templates of `style` (`llara`: candidates listed, as the papers; `history`: history only),
    or only template `template` when set (ConfigError names the bad key)."""
    if style not in PROMPT_STYLES:
        raise ConfigError(f"data.prompt={style!r} is not one of {sorted(PROMPT_STYLES)}")
    if domain not in PROMPT_STYLES[style]:
        raise ConfigError(f"data.domain={domain!r} has no prompt templates; expected one of {sorted(PROMPTS)}")
    prompts = PROMPT_STYLES[style][domain]
    if template is None:
        return prompts
    if not 0 <= template < len(prompts):
        raise ConfigError(f"data.template={template} out of range: domain {domain!r} has {len(prompts)} templates")
    return PromptSet(domain, (prompts.templates[template],))
