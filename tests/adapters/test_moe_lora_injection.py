"""apply_moe_lora on a tiny random Llama: targeting, freezing, generate with the KV cache, training, state."""

import pytest
import torch

from ilora.adapters import (
    MoELoRALinear,
    adapter_state_dict,
    apply_moe_lora,
    count_parameters,
    disable_adapters,
    gate_context,
    load_adapter_state_dict,
    merge,
    moe_lora_layers,
    trainable_parameters,
    unmerge,
)
from ilora.errors import CheckpointError, ConfigError

K = 4


def inject(model, **kw):
    names = apply_moe_lora(model, rank=8, num_experts=K, alpha=16, **kw)
    with torch.no_grad():
        for _, layer in moe_lora_layers(model):
            layer.lora_B.normal_(std=0.5)  # make the experts matter
    return names


def gates(b):
    return torch.softmax(3 * torch.randn(b, K), dim=-1)


def test_targets_replace_suffixes_and_freeze_the_rest(tiny_llama):
    model = tiny_llama()
    names = apply_moe_lora(model, rank=8, num_experts=K, alpha=16)
    assert len(names) == 2 * 7 and all(isinstance(model.get_submodule(n), MoELoRALinear) for n in names)
    assert not isinstance(model.lm_head, MoELoRALinear)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith(("lora_A", "lora_B")) for n in trainable)
    n_train, n_total = count_parameters(model)
    assert n_train == sum(p.numel() for p in trainable_parameters(model))
    assert 0 < n_train < n_total
    with pytest.raises(ConfigError, match="matches no"):  # wrapped layers are not re-wrapped
        apply_moe_lora(model, rank=8, num_experts=K, alpha=16, target_regex=r".*\.base")


def test_regex_targets_and_no_match_error(tiny_llama):
    model = tiny_llama()
    names = apply_moe_lora(
        model, rank=4, num_experts=2, alpha=8, target_regex=r"model\.layers\.1\.self_attn\.(q|v)_proj"
    )
    assert names == ["model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.v_proj"]
    with pytest.raises(ConfigError, match=r"adapter.targets=\['query'\] matches no nn.Linear.*q_proj"):
        apply_moe_lora(tiny_llama(), rank=8, num_experts=K, alpha=16, targets=["query"])


@torch.no_grad()
def test_generate_with_kv_cache_matches_stepwise_full_forward(tiny_llama):
    model = tiny_llama()
    inject(model)
    ids = torch.randint(3, 96, (2, 6))
    g = gates(2)
    steps = 4
    with gate_context(model, g):
        out = model.generate(
            ids,
            max_new_tokens=steps,
            min_new_tokens=steps,
            do_sample=False,
            output_logits=True,
            return_dict_in_generate=True,
            pad_token_id=0,
        )
        seq = ids
        for t in range(steps):
            logits = model(seq).logits[:, -1]
            torch.testing.assert_close(out.logits[t], logits, atol=1e-4, rtol=1e-4)
            seq = torch.cat([seq, logits.argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out.sequences, seq)
    with disable_adapters(model):  # the gates change the continuation's logits
        base_logits = model(seq).logits
    assert not torch.allclose(base_logits, model_logits(model, seq, g), atol=1e-3)


def model_logits(model, seq, g):
    with gate_context(model, g):
        return model(seq).logits


@torch.no_grad()
def test_beam_search_expands_gate_per_sequence(tiny_llama):
    model = tiny_llama()
    inject(model)
    ids = torch.randint(3, 96, (2, 5))
    g = gates(2)
    kw = dict(
        max_new_tokens=3,
        min_new_tokens=3,
        num_beams=2,
        num_return_sequences=2,
        do_sample=False,
        pad_token_id=0,
    )
    with gate_context(model, g):
        both = model.generate(ids, **kw)
    for i in range(2):
        with gate_context(model, g[i : i + 1]):
            alone = model.generate(ids[i : i + 1], **kw)
        assert torch.equal(both[2 * i : 2 * i + 2], alone)


def test_per_layer_gate_mapping(tiny_llama):
    model = tiny_llama()
    inject(model)
    ids = torch.randint(3, 96, (2, 5))
    g = gates(2)
    names = [n for n, _ in moe_lora_layers(model)]
    with torch.no_grad():
        shared = model_logits(model, ids, g)
        torch.testing.assert_close(model_logits(model, ids, dict.fromkeys(names, g)), shared)
        other = {n: (g if i else gates(2)) for i, n in enumerate(names)}
        assert not torch.allclose(model_logits(model, ids, other), shared)
    with pytest.raises(ConfigError, match="missing"):
        with gate_context(model, {names[0]: g}):
            pass
    with pytest.raises(ConfigError, match=r"gate \[B, 4\]"):
        with gate_context(model, torch.ones(2, 3)):
            pass


def test_two_adamw_steps_change_only_lora_tensors(tiny_llama):
    model = tiny_llama().train()
    inject(model, dropout=0.1)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW(trainable_parameters(model), lr=1e-2)
    ids = torch.randint(3, 96, (2, 6))
    for _ in range(2):
        with gate_context(model, gates(2)):
            loss = model(ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    for n, p in model.named_parameters():
        changed = not torch.equal(p, before[n])
        assert changed == n.endswith(("lora_A", "lora_B")), n


def test_adapter_state_round_trip_and_errors(tiny_llama):
    src, dst = tiny_llama(), tiny_llama()
    inject(src)
    apply_moe_lora(dst, rank=8, num_experts=K, alpha=16)
    sd = adapter_state_dict(src)
    assert len(sd) == 2 * 14 and all(k.endswith(("lora_A", "lora_B")) for k in sd)
    assert set(sd) <= set(src.state_dict())
    load_adapter_state_dict(dst, sd)
    ids, g = torch.randint(3, 96, (2, 5)), gates(2)
    with torch.no_grad():
        torch.testing.assert_close(model_logits(dst, ids, g), model_logits(src, ids, g))
    with pytest.raises(CheckpointError, match="1 missing"):
        load_adapter_state_dict(dst, {k: v for i, (k, v) in enumerate(sd.items()) if i})
    bad = dict(sd)
    key = next(iter(bad))
    bad[key] = bad[key][:4]
    with pytest.raises(CheckpointError, match=key):
        load_adapter_state_dict(dst, bad)


@torch.no_grad()
def test_model_merge_for_one_user(tiny_llama):
    model = tiny_llama()
    inject(model)
    ids, g = torch.randint(3, 96, (1, 5)), gates(1)
    gated = model_logits(model, ids, g)
    originals = {n: layer.base.weight.clone() for n, layer in moe_lora_layers(model)}
    merge(model, g)
    torch.testing.assert_close(model(ids).logits, gated, atol=1e-4, rtol=1e-4)
    with pytest.raises(ConfigError, match="already merged"):
        merge(model, g)
    unmerge(model)
    assert all(torch.equal(layer.base.weight, originals[n]) for n, layer in moe_lora_layers(model))
