"""One full training step (forward, backward, AdamW) of a causal LM: iLoRA K experts vs peft LoRA, same rank.

Both sides run the recommender's loss path (`Recommender.answer_loss`): the decoder on the whole
[B, T] batch, the vocabulary head only on the answer positions, cross-entropy there. The iLoRA side also
computes its gate from a user state through a trainable linear gate, as a training step does.
FLOP utilisation (the issue's definition): 4 N tokens/s (forward 2N, backward 2N: frozen weights need no
weight gradient) / the matmul peak, N = all frozen backbone parameters (tied embedding counted once).
`flop_utilisation_matmul` is stricter: N = the decoder's linear layers only (the embedding is a lookup and
the tied head runs on answer positions only; attention scores are counted in neither).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ilora.adapters import apply_moe_lora, gate_context
from ilora.adapters.moe_lora import DEFAULT_TARGETS
from ilora.bench.peak import gemm_burst
from ilora.bench.timing import interleaved_medians


def matmul_params(model: nn.Module) -> int:
    """Weights of the decoder's nn.Linear layers (the frozen matmuls of a step); call before adapters go in."""
    return sum(m.weight.numel() for m in model.get_decoder().modules() if isinstance(m, nn.Linear))


def synthetic_batch(*, batch: int, tokens: int, answer: int, vocab: int, seed: int = 0,
                    device: str | torch.device = "cpu") -> dict[str, Tensor]:
    """input_ids / attention_mask / labels [B, T]: the last `answer` tokens of each row are the answer."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (batch, tokens), generator=g)
    labels = torch.full_like(ids, -100)
    labels[:, -answer:] = ids[:, -answer:]
    out = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    return {k: v.to(device) for k, v in out.items()}


def _autocast(lm: nn.Module, dtype: torch.dtype | None):
    device = next(lm.parameters()).device.type
    return torch.autocast(device, dtype=dtype) if dtype is not None else nullcontext()


def answer_loss(lm: nn.Module, batch: dict[str, Tensor]) -> Tensor:
    """The recommender's loss: decoder on [B, T], head only where labels != -100 (answer positions)."""
    embeds = lm.get_input_embeddings()(batch["input_ids"])  # [B, T, D]
    hidden = lm.get_decoder()(inputs_embeds=embeds, attention_mask=batch["attention_mask"],
                              use_cache=False).last_hidden_state
    targets = batch["labels"][:, 1:]
    mask = targets != -100
    logits = lm.get_output_embeddings()(hidden[:, :-1][mask])  # [N_answer, V]
    return F.cross_entropy(logits.float(), targets[mask])


def _training_step(lm: nn.Module, params: list[nn.Parameter], batch: dict[str, Tensor], *, lr: float,
                   autocast: torch.dtype | None, context: Callable[[], Any] = nullcontext,
                   loss: Callable[[nn.Module, dict[str, Tensor]], Tensor] = answer_loss) -> Callable[[], float]:
    """A closure running one AdamW step of the recommender's loss; `context()` wraps forward AND backward (with
    activation checkpointing, gated layers re-run during backward)."""
    opt = torch.optim.AdamW(params, lr=lr)
    lm.train()

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        with context():
            with _autocast(lm, autocast):
                value = loss(lm, batch)
            value.backward()
        opt.step()
        return value.item()

    return step


def ilora_step(lm: nn.Module, batch: dict[str, Tensor], *, rank: int, num_experts: int, alpha: float,
               dropout: float, user_dim: int = 64, lr: float = 2e-4, autocast: torch.dtype | None = None,
               loss: Callable[[nn.Module, dict[str, Tensor]], Tensor] = answer_loss) -> Callable[[], float]:
    """Inject MoE-LoRA into `lm` (in place) and return a closure running one training step of `loss`."""
    apply_moe_lora(lm, rank=rank, num_experts=num_experts, alpha=alpha, dropout=dropout, targets=DEFAULT_TARGETS)
    params = [p for p in lm.parameters() if p.requires_grad]
    if num_experts == 1:
        return _training_step(lm, params, batch, lr=lr, autocast=autocast, loss=loss)
    device = batch["input_ids"].device
    gate = nn.Linear(user_dim, num_experts, device=device)
    users = torch.randn(batch["input_ids"].shape[0], user_dim, generator=torch.Generator().manual_seed(1)).to(device)
    return _training_step(lm, params + list(gate.parameters()), batch, lr=lr, autocast=autocast, loss=loss,
                          context=lambda: gate_context(lm, torch.softmax(gate(users).float(), -1)))


def peft_step(lm: nn.Module, batch: dict[str, Tensor], *, rank: int, alpha: float, dropout: float,
              lr: float = 2e-4, autocast: torch.dtype | None = None) -> Callable[[], float]:
    """peft LoRA (same rank, same targets) on `lm` and a closure running one training step."""
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(DEFAULT_TARGETS))
    model = get_peft_model(lm, cfg)
    params = [p for p in model.parameters() if p.requires_grad]
    return _training_step(model.base_model.model, params, batch, lr=lr, autocast=autocast)


def step_ratio(lm: nn.Module, *, batch: int = 4, tokens: int = 340, answer: int = 12, rank: int = 8,
               num_experts: int = 4, alpha: float = 32.0, dropout: float = 0.1, repeats: int = 5,
               warmup: int = 1, peak_size: int = 2048, autocast: torch.dtype | None = None) -> dict[str, float]:
    """Median step seconds of iLoRA K=num_experts, iLoRA K=1 and peft LoRA on copies of `lm` (frozen base).

    A `peak_size`-square GEMM burst (in the backbone's dtype) takes its turn among the steps, so the
    matmul peak is measured under the same load as the steps. Returns step_s_*, the ratios vs peft,
    tokens/s, achieved and peak FLOP/s and flop_utilisation.
    """
    weight = next(lm.parameters())
    data = synthetic_batch(batch=batch, tokens=tokens, answer=answer, vocab=lm.config.vocab_size,
                           device=weight.device)
    n = matmul_params(lm)
    frozen = sum(p.numel() for p in lm.parameters())  # parameters() yields a tied tensor once
    common = dict(rank=rank, alpha=alpha, dropout=dropout, autocast=autocast)
    steps = {
        f"ilora_k{num_experts}": ilora_step(copy.deepcopy(lm), data, num_experts=num_experts, **common),
        "ilora_k1": ilora_step(copy.deepcopy(lm), data, num_experts=1, **common),
        "peft": peft_step(copy.deepcopy(lm), data, **common),
    }
    steps["gemm"], gemm_flops = gemm_burst(peak_size, dtype=autocast or weight.dtype, device=weight.device)
    med = interleaved_medians(steps, repeats=repeats, warmup=warmup, device=weight.device)
    ours = med[f"ilora_k{num_experts}"]
    tokens_per_s = batch * tokens / ours
    out = {
        "step_s_ilora": ours, "step_s_ilora_k1": med["ilora_k1"], "step_s_peft": med["peft"],
        "step_ratio_vs_peft": ours / med["peft"], "step_ratio_k1_vs_peft": med["ilora_k1"] / med["peft"],
        "train_tokens_per_s": tokens_per_s, "frozen_params": frozen, "matmul_params": n,
        "achieved_flops": 4 * frozen * tokens_per_s, "peak_flops": gemm_flops / med["gemm"],
    }
    out["flop_utilisation"] = out["achieved_flops"] / out["peak_flops"]
    out["flop_utilisation_matmul"] = 4 * n * tokens_per_s / out["peak_flops"]
    return out


def rank_vs_answer_step(lm: nn.Module, *, batch: int = 4, prompt: int = 328, answer: int = 12,
                        candidates: int = 20, rank: int = 8, num_experts: int = 4, alpha: float = 32.0,
                        dropout: float = 0.1, repeats: int = 3, warmup: int = 1,
                        autocast: torch.dtype | None = None) -> dict[str, float]:
    """iLoRA K training steps on the same users: the rank loss (prompt + `candidates` segments of `answer` tokens,
    one packed forward, `Recommender.candidate_losses`' layout) vs the answer loss (prompt + the target's segment).

    `rank_token_ratio` is what the rank step has to process more (prompt + packed candidate tokens over prompt +
    answer); `rank_step_vs_tokens` = rank_step_ratio / rank_token_ratio (1 = the extra costs only its tokens).
    """
    from ilora.evaluation.ranking import candidate_token_logprobs

    weight = next(lm.parameters())
    g = torch.Generator().manual_seed(0)
    vocab = lm.config.vocab_size
    prompt_ids = torch.randint(0, vocab, (batch, prompt), generator=g).to(weight.device)
    cand_ids = torch.randint(0, vocab, (batch, candidates, answer), generator=g).to(weight.device)
    target = torch.randint(0, candidates, (batch,), generator=g).to(weight.device)
    answer_data = {"input_ids": torch.cat([prompt_ids, cand_ids[torch.arange(batch), target]], 1)}
    answer_data["attention_mask"] = torch.ones_like(answer_data["input_ids"])
    labels = torch.full_like(answer_data["input_ids"], -100)
    labels[:, -answer:] = answer_data["input_ids"][:, -answer:]
    answer_data["labels"] = labels
    ones = torch.ones_like(prompt_ids)

    def rank_loss(model: nn.Module, _: dict[str, Tensor]) -> Tensor:
        lp = candidate_token_logprobs(model, inputs_embeds=model.get_input_embeddings()(prompt_ids),
                                      attention_mask=ones, cand_input_ids=cand_ids,
                                      cand_attention_mask=torch.ones_like(cand_ids))
        return F.cross_entropy(lp.sum(-1), target)

    common = dict(rank=rank, num_experts=num_experts, alpha=alpha, dropout=dropout, autocast=autocast)
    steps = {"answer": ilora_step(copy.deepcopy(lm), answer_data, **common),
             "rank": ilora_step(copy.deepcopy(lm), answer_data, loss=rank_loss, **common)}
    med = interleaved_medians(steps, repeats=repeats, warmup=warmup, device=weight.device)
    token_ratio = (prompt + candidates * (answer - 1)) / (prompt + answer)
    ratio = med["rank"] / med["answer"]
    return {"rank_step_s": med["rank"], "answer_step_s": med["answer"], "rank_step_ratio": ratio,
            "rank_token_ratio": token_ratio, "rank_step_vs_tokens": ratio / token_ratio}
