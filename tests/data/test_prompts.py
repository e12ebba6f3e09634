"""Prompt templates: golden renders, verbatim texts, deterministic template choice."""

import numpy as np
import pytest

from ilora.data.prompts import PromptTemplate, get_prompts
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
    for domain in ("movie", "artist", "game", "book"):
        for t in get_prompts(domain).templates:
            expected = (t.text.replace("[HistoryHere]", "A [HistoryEmb], B [HistoryEmb]")
                        .replace("[CansHere]", "C [CansEmb], D [CansEmb]").rstrip())
            assert t.render(["A", "B"], ["C", "D"]) == expected


@pytest.mark.parametrize("domain,source", [("movie", "movie"), ("artist", "artist"), ("game", "game"),
                                           ("book", "read")])
def test_yaml_templates_render_ilora_files_verbatim(domain, source, shared_data):
    """conf/prompts/<domain>.yaml with the default 20 candidates is iLoRA's prompt file, line for line."""
    lines = (shared_data / "llara" / "prompts" / f"{source}.txt").read_text(encoding="utf-8").split("\n")
    lines = [line for line in lines if line.strip()]
    assert [t.text for t in get_prompts(domain).templates] == lines


def test_num_candidates_fills_the_placeholder_and_the_artist_quirk_stays():
    movie = [t.text for t in get_prompts("movie", num_candidates=50).templates]
    assert "following 50 movie titles" in movie[0] and "following 50 movie titles" in movie[1]
    assert not any("20" in t for t in movie)
    artist = get_prompts("artist", num_candidates=50).templates[1].text
    assert "10 music artist names" in artist  # iLoRA's own text, kept verbatim


def test_a_new_domain_is_a_yaml_file(tmp_path):
    path = tmp_path / "podcast.yaml"
    path.write_text('llara:\n  - "Heard [HistoryHere]. Pick one of {num_candidates}: [CansHere]. Answer: "\n'
                    'history:\n  - "Heard [HistoryHere]. Next: "\n')
    p = get_prompts("podcast", source=str(path), num_candidates=5)
    assert p.templates[0].render(["A"], ["B", "C"], hybrid=False) == "Heard A. Pick one of 5: B, C. Answer:"
    assert get_prompts("podcast", style="history", source=str(path)).templates[0].render(["A"], []) == (
        "Heard A [HistoryEmb]. Next:")
    with pytest.raises(ConfigError, match="no 'history' templates"):
        (tmp_path / "only.yaml").write_text('llara:\n  - "[HistoryHere] [CansHere]"\n')
        get_prompts("x", style="history", source=str(tmp_path / "only.yaml"))
    with pytest.raises(ConfigError, match="must not contain"):
        (tmp_path / "mixed.yaml").write_text('history:\n  - "[HistoryHere] [CansHere]"\n')
        get_prompts("x", style="history", source=str(tmp_path / "mixed.yaml"))
    with pytest.raises(ConfigError, match="unknown key 'prompt'"):
        (tmp_path / "typo.yaml").write_text('prompt:\n  - "[HistoryHere] [CansHere]"\n')
        get_prompts("x", source=str(tmp_path / "typo.yaml"))
    with pytest.raises(ConfigError, match="not a readable YAML"):
        (tmp_path / "broken.yaml").write_text('llara: [\n')
        get_prompts("x", source=str(tmp_path / "broken.yaml"))
    with pytest.raises(ConfigError, match="prompt file not found"):
        get_prompts("x", source=str(tmp_path / "missing.yaml"))


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
    with pytest.raises(ConfigError, match="data.domain='books'.*conf/prompts/books.yaml not found"):
        get_prompts("books")
    with pytest.raises(ConfigError, match="data.template=3"):
        get_prompts("movie", template=3)
    assert get_prompts("movie", template=2).templates == (get_prompts("movie").templates[2],)
    with pytest.raises(ConfigError, match="bad"):
        PromptTemplate("bad", "no history [CansHere]")
    with pytest.raises(ConfigError, match="swapped"):
        PromptTemplate("swapped", "[CansHere] then [HistoryHere]")
