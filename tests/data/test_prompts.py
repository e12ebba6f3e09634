"""Prompt templates: golden renders, verbatim texts, deterministic template choice."""

import numpy as np
import pytest

from ilora.data.prompts import PROMPTS, PromptTemplate, get_prompts
from ilora.errors import ConfigError


def test_movie_template0_golden_hybrid_and_text():
    t = get_prompts("movie").templates[0]
    hybrid = t.render(["Toy Story", "Heat"], ["Fargo", "Casino"])
    assert hybrid == (
        "This user has watched Toy Story [HistoryEmb], Heat [HistoryEmb] in the previous. Please predict the next "
        "movie this user will watch. Choose the answer from the following 20 movie titles: Fargo [CansEmb], "
        "Casino [CansEmb]. Answer:"
    )
    text = t.render(["Toy Story", "Heat"], ["Fargo", "Casino"], hybrid=False)
    assert text == (
        "This user has watched Toy Story, Heat in the previous. Please predict the next movie this user will watch. "
        "Choose the answer from the following 20 movie titles: Fargo, Casino. Answer:"
    )


def test_artist_template2_golden():
    t = get_prompts("artist").templates[2]
    assert t.render(["Enigma"], ["Morcheeba", "Air"], hybrid=False) == (
        "The listening history of this user is Enigma. Recommend the next music artist for this user to listen to "
        "from the following artist name set, Morcheeba, Air. The recommendation should contain one artist's name "
        "only. The recommendation is"
    )


def test_render_equals_llara_replace_rule():
    """LLaRA: replace the placeholders with ", ".join(title + " [Emb]") and strip the trailing space."""
    for prompts in PROMPTS.values():
        for t in prompts.templates:
            expected = (t.text.replace("[HistoryHere]", "A [HistoryEmb], B [HistoryEmb]")
                        .replace("[CansHere]", "C [CansEmb], D [CansEmb]").rstrip())
            assert t.render(["A", "B"], ["C", "D"]) == expected


@pytest.mark.parametrize("domain", ["movie", "artist", "game"])
def test_templates_verbatim_from_ilora_files(domain, shared_data):
    lines = (shared_data / "llara" / "prompts" / f"{domain}.txt").read_text(encoding="utf-8").split("\n")
    lines = [line for line in lines if line.strip()]
    assert [t.text for t in PROMPTS[domain].templates] == lines


def test_train_choice_deterministic_per_seed_epoch_index():
    p = get_prompts("game")
    idx = np.arange(600)
    a = p.choose(idx, seed=0, epoch=0, train=True)
    assert np.array_equal(a, p.choose(idx, seed=0, epoch=0, train=True))
    assert set(a.tolist()) == {0, 1, 2}
    assert not np.array_equal(a, p.choose(idx, seed=0, epoch=1, train=True))
    assert not np.array_equal(a, p.choose(idx, seed=1, epoch=0, train=True))
    # one example's template does not depend on the rest of the batch
    assert p.choose(idx[[17, 3]], seed=0, epoch=0, train=True).tolist() == [a[17], a[3]]
    assert p.choose(idx, seed=0, epoch=0, train=False).tolist() == [0] * 600


def test_bad_domain_template_and_text_raise_config_error():
    with pytest.raises(ConfigError, match="data.domain='book'"):
        get_prompts("book")
    with pytest.raises(ConfigError, match="data.template=3"):
        get_prompts("movie", template=3)
    assert get_prompts("movie", template=2).templates == (PROMPTS["movie"].templates[2],)
    with pytest.raises(ConfigError, match="bad"):
        PromptTemplate("bad", "no history [CansHere]")
    with pytest.raises(ConfigError, match="swapped"):
        PromptTemplate("swapped", "[CansHere] then [HistoryHere]")
