"""A tiny synthetic dataset for tests: real layout, real validation, seconds to build.

Titles are two distinct words ("Amber Falcon"), chosen so no title is a substring of another: LLaRA's
validity rule (exactly one candidate title inside the generated line) then behaves as on real data.
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd

from ilora.data.build import build_splits
from ilora.data.datasets import write_dataset

_ADJECTIVES = (
    "Amber", "Bitter", "Cosmic", "Dusty", "Electric", "Frozen", "Golden", "Hidden", "Iron", "Jolly",
    "Kind", "Lunar", "Misty", "Noble", "Opal", "Purple", "Quiet", "Rusty", "Silver", "Tidal",
)
_NOUNS = (
    "Falcon", "Garden", "Harbor", "Island", "Jungle", "Kettle", "Lantern", "Meadow", "Nomad", "Orchard",
    "Pirate", "Quarry", "River", "Saddle", "Tower", "Valley", "Wizard", "Yacht", "Zephyr", "Bridge",
)


def tiny_titles(num_items: int) -> list[str]:
    """`num_items` (<= 400) distinct two-word titles, none a substring of another."""
    if num_items > len(_ADJECTIVES) * len(_NOUNS):
        raise ValueError(f"tiny_titles supports at most {len(_ADJECTIVES) * len(_NOUNS)} items, got {num_items}")
    return [f"{_ADJECTIVES[i % len(_ADJECTIVES)]} {_NOUNS[i // len(_ADJECTIVES)]}" for i in range(num_items)]


def make_tiny_dataset(
    directory: str | os.PathLike,
    num_items: int = 30,
    num_users: int = 20,
    seed: int = 0,
    *,
    min_len: int = 4,
    max_len: int = 14,
    name: str = "tiny",
    domain: str = "movie",
) -> str:
    """Write a synthetic dataset (LLaRA recipe: 8:1:1 users, val/test = last interaction) and return its path.

    Each user watches `min_len..max_len` distinct items in a random order with ratings 3..5, so histories,
    empty train histories, full windows and MovieLens-style rating columns all occur.
    """
    rng = np.random.default_rng(seed)
    lengths = rng.integers(min_len, min(max_len, num_items - 1) + 1, size=num_users)
    users = np.repeat(np.arange(num_users, dtype=np.int64), lengths)
    items = np.concatenate([rng.permutation(num_items)[:n] for n in lengths]).astype(np.int64)
    timestamps = np.concatenate([np.arange(n) for n in lengths]).astype(np.int64) + 1_000
    ratings = rng.integers(3, 6, size=len(items)).astype(np.int64)
    frame = pd.DataFrame({"user": users, "item": items, "rating": ratings, "timestamp": timestamps})
    write_dataset(
        directory, name=name, domain=domain, titles=tiny_titles(num_items), splits=build_splits(frame, seed=seed),
        source="synthetic (ilora.data.synthetic.make_tiny_dataset)", terms="synthetic, no terms",
        notes=[f"synthetic: {num_users} users, {num_items} items, seed {seed}"],
    )
    return os.fspath(directory)


PODCAST_PROMPTS = """\
# A new domain is this file: LLaRA-style templates ([HistoryHere] then [CansHere]) and a history-only one.
llara:
  - "This listener has played [HistoryHere]. Which of these {num_candidates} episodes comes next: [CansHere]? Answer: "
  - "Recently played: [HistoryHere]. Pick the next episode from [CansHere]. The episode is "
history:
  - "This listener has played [HistoryHere]. The next episode is "
"""


def write_raw_log(directory: str | os.PathLike, *, num_items: int = 60, num_users: int = 80, seed: int = 0) -> dict:
    """A researcher's raw log as it arrives (for the onboarding walkthrough and its test), in `directory`:

    `plays.tsv` (columns listener, episode, played_at as ISO date-times, stars; string ids; one duplicated
    event per 10 users; events on 2 episodes missing from the catalogue), `episodes.tsv` (a TSV catalogue:
    episode, episode_title), `columns.yaml` (the column map) and `podcast.yaml` (a new prompt domain).
    Returns the paths and the catalogue's titles.
    """
    rng = np.random.default_rng(seed)
    root = os.fspath(directory)
    os.makedirs(root, exist_ok=True)
    ids = [f"ep-{rng.integers(16**5):05x}-{i}" for i in range(num_items)]
    titles = [f"Episode {i}: {t}" for i, t in enumerate(tiny_titles(num_items))]
    rows = []
    for u in range(num_users):
        n = int(rng.integers(6, 16))
        watched = rng.permutation(num_items)[:n]
        start = np.datetime64("2024-03-01T08:00:00") + np.timedelta64(int(rng.integers(0, 86_400)), "s")
        for k, i in enumerate(watched):
            when = str(start + np.timedelta64(3600 * k, "s")) + "Z"
            rows.append((f"listener-{u:03d}", ids[i], when, int(rng.integers(1, 6))))
        if u % 10 == 0:
            rows.append(rows[-1])  # a logging glitch: the same event twice
    rows += [("listener-000", "ep-unknown-1", "2024-03-05T08:00:00Z", 5),
             ("listener-001", "ep-unknown-2", "2024-03-05T09:00:00Z", 4)]
    pd.DataFrame(rows, columns=["listener", "episode", "played_at", "stars"]).to_csv(
        os.path.join(root, "plays.tsv"), sep="\t", index=False)
    pd.DataFrame({"episode": ids, "episode_title": titles}).to_csv(os.path.join(root, "episodes.tsv"), sep="\t",
                                                                  index=False)
    with open(os.path.join(root, "columns.yaml"), "w", encoding="utf-8") as f:
        f.write("user: listener\nitem: episode\ntimestamp: played_at\nrating: stars\ntitle: episode_title\n")
    with open(os.path.join(root, "podcast.yaml"), "w", encoding="utf-8") as f:
        f.write(PODCAST_PROMPTS)
    return {"dir": root, "titles": titles}
