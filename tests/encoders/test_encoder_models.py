"""Encoder contract: shapes, padding row, padding invariance, tied logits, causality, registry errors."""

from __future__ import annotations

import pytest
import torch

from ilora.encoders import Caser, build_encoder, build_from_config
from ilora.errors import ConfigError

NUM_ITEMS, HIDDEN = 30, 16  # as the `encoder` fixture (conftest.py)


def test_shapes_and_padding_row(encoder, random_history):
    history, lengths = random_history(5, 10)
    assert encoder.hidden_dim == HIDDEN and encoder.num_items == NUM_ITEMS
    assert encoder.item_embeddings(torch.tensor([[0, 1, 2], [3, 4, NUM_ITEMS]])).shape == (2, 3, HIDDEN)
    assert torch.count_nonzero(encoder.item_embeddings(torch.tensor([NUM_ITEMS]))) == 0
    assert encoder.user_state(history, lengths).shape == (5, HIDDEN)
    assert encoder(history, lengths).shape == (5, NUM_ITEMS)


def test_logits_are_dot_products_with_item_embeddings(encoder, random_history):
    history, lengths = random_history(4, 10, min_len=1)
    expected = encoder.user_state(history, lengths) @ encoder.item_embeddings(torch.arange(NUM_ITEMS)).T
    torch.testing.assert_close(encoder(history, lengths), expected)


def test_user_state_ignores_everything_beyond_the_length(encoder, random_history):
    history, lengths = random_history(8, 10)
    garbage = history.clone()
    beyond = torch.arange(10)[None, :] >= lengths[:, None]
    garbage[beyond] = torch.randint(0, NUM_ITEMS, (int(beyond.sum()),))
    torch.testing.assert_close(encoder.user_state(garbage, lengths), encoder.user_state(history, lengths))
    short = lengths.clamp(max=6)  # a narrower window holding the same real items gives the same state
    narrow = history[:, :6].clone()
    torch.testing.assert_close(encoder.user_state(narrow, short), encoder.user_state(history, short))


def test_user_state_depends_on_the_real_items(encoder, random_history):
    history, lengths = random_history(6, 10, min_len=2)
    changed = history.clone()
    changed[torch.arange(6), lengths - 1] = (history[torch.arange(6), lengths - 1] + 1) % NUM_ITEMS
    differs = (encoder.user_state(changed, lengths) - encoder.user_state(history, lengths)).abs().amax(1)
    assert (differs > 1e-6).all()


def test_empty_history_gives_a_finite_state(encoder, random_history):
    history = torch.full((3, 10), NUM_ITEMS)
    state = encoder.user_state(history, torch.zeros(3, dtype=torch.long))
    assert torch.isfinite(state).all()


def test_padding_row_gets_no_gradient(encoder, random_history):
    encoder.train()
    history, lengths = random_history(6, 10, min_len=1)
    torch.nn.functional.cross_entropy(encoder(history, lengths), torch.randint(0, NUM_ITEMS, (6,))).backward()
    grad = encoder.items.weight.grad
    assert torch.count_nonzero(grad[NUM_ITEMS]) == 0 and torch.count_nonzero(grad[:NUM_ITEMS]) > 0


def test_caser_right_aligns_the_latest_items():
    caser = Caser(num_items=NUM_ITEMS, hidden_dim=8, max_len=4)
    history = torch.tensor([[5, 6, NUM_ITEMS, NUM_ITEMS, NUM_ITEMS], [1, 2, 3, 4, 7]])
    aligned = caser._right_align(history, torch.tensor([2, 5]))
    assert aligned.tolist() == [[NUM_ITEMS, NUM_ITEMS, 5, 6], [2, 3, 4, 7]]


def test_sasrec_window_longer_than_max_len_is_a_config_error():
    sasrec = build_encoder("sasrec", NUM_ITEMS, hidden_dim=8, max_len=4)
    with pytest.raises(ConfigError, match="max_len=4"):
        sasrec.user_state(torch.zeros(1, 6, dtype=torch.long), torch.tensor([6]))


@pytest.mark.parametrize(
    ("cfg", "match"),
    [
        ({"name": "bert4rec"}, "encoder.name='bert4rec' is unknown"),
        ({"name": "gru4rec", "num_heads": 2}, "encoder.num_heads is not a gru4rec setting"),
        ({"name": "sasrec", "hidden_dim": 10, "num_heads": 3}, "encoder.num_heads=3 does not divide"),
        ({"name": "caser", "heights": [0, 2]}, "encoder.heights"),
    ],
)
def test_bad_configs_name_the_key(cfg, match):
    with pytest.raises(ConfigError, match=match):
        build_from_config({**cfg, "train": {"lr": 1e-3}}, NUM_ITEMS)
