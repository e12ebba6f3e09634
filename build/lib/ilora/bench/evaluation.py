"""Evaluation cost on real test users: candidate ranking vs encoding the prompts alone, and generation.

`rank_cost_vs_prefill`: for each eval batch, the prompt prefill (decoder with KV cache + the head on the
last position, the first thing both ranking and generation do) and the full ranking (`score_candidates`:
prompt once, all C candidates packed on its cache) are timed back to back, alternating which goes first;
the ratio is the sum over batches. Generation: LLaRA-style greedy decoding that stops at the first newline
vs the reference's fixed budget of 64 new tokens (stops only when every row emits eos), also interleaved
per batch; both are parsed as LLaRA does, so both HR@1s are reported.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

import torch
from torch import nn

from ilora.evaluation.generation import generate_answers, generation_metrics, line_tables, parse_choice
from ilora.evaluation.ranking import prompt_position_ids, score_candidates
from ilora.metrics import ranking_metrics


@torch.no_grad()
def prefill(backbone: nn.Module, embeds: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Encode left-padded prompts once (KV cache kept, as ranking/generation do); next-token log-probs [B, V]."""
    mask = attention_mask.long()
    out = backbone.get_decoder()(inputs_embeds=embeds, attention_mask=mask,
                                 position_ids=prompt_position_ids(mask), use_cache=True)
    return torch.log_softmax(backbone.get_output_embeddings()(out.last_hidden_state[:, -1]).float(), -1)


def _timed(fn) -> tuple[float, Any]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


@torch.no_grad()
def evaluation_costs(model: nn.Module, batches: Sequence[Mapping[str, Any]], *, max_new_tokens: int = 64,
                     generate_batches: int | None = None,
                     warmup_batch: Mapping[str, Any] | None = None) -> dict[str, float]:
    """Ranking vs prefill over `batches` (eval batches), and newline-stopped vs fixed-64 generation over the
    first `generate_batches` of them (None: all; 0: none).

    `model` is a `Recommender` (embed, gate_weights, gated, backbone, tokenizer). `warmup_batch`, when
    given, runs every path once untimed first. The generation line tables are built before any timing.
    """
    model.eval()
    backbone, tokenizer = model.backbone, model.tokenizer
    line_tables(tokenizer, backbone.config.vocab_size)  # built once per tokenizer; not part of any timing
    n_gen = len(batches) if generate_batches is None else generate_batches
    times = {"prefill": 0.0, "rank": 0.0, "gen_newline": 0.0, "gen_fixed": 0.0}
    scores, targets, gen_targets, choices = [], [], [], {"gen_newline": [], "gen_fixed": []}
    users, gen_users = 0, 0
    for i, batch in enumerate(([warmup_batch] if warmup_batch is not None else []) + list(batches)):
        timed = warmup_batch is None or i > 0
        generate = i - (warmup_batch is not None) < n_gen  # the warm-up batch generates too
        embeds, gate = model.embed(batch), model.gate_weights(batch)
        mask = batch["attention_mask"]
        with model.gated(gate):
            jobs = {
                "prefill": partial(prefill, backbone, embeds, mask),
                "rank": partial(score_candidates, backbone, inputs_embeds=embeds, attention_mask=mask,
                                cand_input_ids=batch["cand_input_ids"],
                                cand_attention_mask=batch["cand_attention_mask"]),
            }
            if generate:
                gen = partial(generate_answers, backbone, tokenizer, inputs_embeds=embeds, attention_mask=mask,
                              max_new_tokens=max_new_tokens)
                jobs["gen_newline"] = gen
                jobs["gen_fixed"] = partial(gen, stop_at_newline=False)
            names = list(jobs)
            shift = i % len(names)  # alternate which side runs first
            results = {}
            for name in names[shift:] + names[:shift]:
                seconds, results[name] = _timed(jobs[name])
                if timed:
                    times[name] += seconds
        if not timed:
            continue
        users += len(batch["index"])
        scores.append(results["rank"].float().cpu())
        targets.append(torch.as_tensor(batch["target_index"]))
        gen_users += len(batch["index"]) if generate else 0
        gen_targets += [int(t) for t in batch["target_index"]] if generate else []
        for name in choices if generate else ():
            choices[name] += [parse_choice(t, titles) for t, titles in zip(results[name], batch["candidate_titles"])]
    target = torch.cat(targets)
    out = {
        "eval_users": users,
        "prefill_s": times["prefill"], "rank_s": times["rank"],
        "rank_cost_vs_prefill": times["rank"] / times["prefill"],
        "rank_hr@1": float(ranking_metrics(torch.cat(scores), target, ks=(1,))["hr@1"]),
    }
    if gen_users:
        out["gen_users"] = gen_users
        for name in ("gen_newline", "gen_fixed"):
            m = generation_metrics(choices[name], gen_targets)
            out[f"{name}_s"] = times[name]
            out[f"{name}_users_per_s"] = gen_users / times[name]
            out[f"{name}_hr@1_valid"] = m["hr@1_valid"]
            out[f"{name}_hr@1_all"] = m["hr@1_all"]
            out[f"{name}_valid_ratio"] = m["valid_ratio"]
        out["gen_speedup_vs_fixed64"] = times["gen_fixed"] / times["gen_newline"]
    return out
