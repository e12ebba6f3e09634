"""Rank candidates by their log-likelihood after the prompt, encoding each prompt once.

The prompt (left-padded, embeddings injected by the caller) runs through the decoder once with a KV cache.
Candidate answer segments then run against that cache, and the vocabulary head is applied only where a score
needs it: the prompt's last position (first candidate token) and each candidate token that predicts the next.

Two exact ways to share the prompt:
- "packed" (default): one row per user; the real tokens of the C segments (padding dropped: titles vary in
  length, so a [C, L] grid is mostly padding) are packed into one row with a 4D block mask (each segment
  sees the whole prompt and itself, causally) and positions that restart after the prompt. Rows are
  padded only to the longest user's packed length. The prompt's KV stays at batch B (no copy), and gated
  adapters keep B rows.
- "repeat": the cache is repeat_interleaved C times and the segments run as B*C rows (copies the prompt KV C
  times; the adapters' gate is repeat_interleaved by the layer).
The last token of a segment predicts nothing we score, so only the first L-1 tokens are fed.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

METHODS = ("packed", "repeat")


def prompt_position_ids(attention_mask: Tensor) -> Tensor:
    """Positions for a left-padded batch: 0 at each row's first real token (padding clamps to 0). [B, T]"""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def _token_logprobs(head: nn.Module, hidden: Tensor, targets: Tensor, chunk: int) -> Tensor:
    """log p(target) from hidden states [N, D] and targets [N], the [N, V] logits built `chunk` rows at a time."""
    out = []
    for start in range(0, hidden.shape[0], chunk):
        logits = head(hidden[start:start + chunk]).float()  # [n, V]
        tgt = targets[start:start + chunk, None]
        out.append((logits.gather(-1, tgt) - logits.logsumexp(-1, keepdim=True)).squeeze(-1))
    return torch.cat(out) if out else hidden.new_zeros(0, dtype=torch.float32)


def _pack_segments(seg_mask: Tensor, multiple: int = 1) -> tuple[Tensor, Tensor]:
    """Where each packed token comes from: `order` [B, M] (index into the flattened C*L' grid; real tokens
    first, in segment order) and `valid` [B, M] (False for row padding); M = most real tokens of a user, rounded
    up to `multiple` (a compiled step then sees few shapes).

    seg_mask [B, C, L'] (1 = real token).
    """
    flat = seg_mask.reshape(seg_mask.shape[0], -1).bool()  # [B, C*L']
    counts = flat.sum(-1)
    width = max(int(counts.max()), 1) if counts.numel() else 1
    width = -(-width // multiple) * multiple
    order = torch.sort((~flat).to(torch.int8), dim=-1, stable=True).indices[:, :width]  # [B, M]
    if order.shape[1] < width:  # rounding went past the grid: extra columns are padding (valid is False there)
        order = torch.cat([order, order.new_zeros(order.shape[0], width - order.shape[1])], dim=1)
    valid = torch.arange(width, device=flat.device)[None] < counts[:, None]
    return order, valid


def _packed_block_mask(prompt_mask: Tensor, seg: Tensor, off: Tensor, valid: Tensor, dtype: torch.dtype) -> Tensor:
    """Additive 4D mask [B, 1, M, T + M]: a packed token sees the prompt's real tokens and the earlier tokens of
    its own segment. prompt_mask [B, T]; seg, off, valid [B, M] (segment, offset in it, real token)."""
    B, M = seg.shape
    block = (seg[:, :, None] == seg[:, None, :]) & (off[:, None, :] <= off[:, :, None])  # [B, M, M] query x key
    cand = block & valid[:, None, :]  # padding keys are hidden
    prompt = prompt_mask.bool()[:, None, :].expand(B, M, -1)  # [B, M, T]
    allowed = torch.cat([prompt, cand], dim=-1)[:, None]  # [B, 1, M, T + M]
    zero = torch.zeros((), dtype=dtype, device=seg.device)
    return torch.where(allowed, zero, torch.finfo(dtype).min)


def _decoder_and_head(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    decoder, head = model.get_decoder(), model.get_output_embeddings()
    if decoder is None or head is None:
        raise TypeError(f"{type(model).__name__} exposes no decoder/output head (get_decoder/get_output_embeddings)")
    return decoder, head


def cache_kwarg(decoder: nn.Module) -> str:
    """transformers 5.2x renamed the decoder's `past_key_values` argument to `cache`; accept either."""
    return "cache" if "cache" in inspect.signature(decoder.forward).parameters else "past_key_values"


def _check_shapes(inputs_embeds: Tensor, attention_mask: Tensor, cand_ids: Tensor, cand_mask: Tensor) -> None:
    B, T = inputs_embeds.shape[:2]
    if inputs_embeds.dim() != 3 or tuple(attention_mask.shape) != (B, T):
        raise ValueError(f"inputs_embeds {tuple(inputs_embeds.shape)} and attention_mask "
                         f"{tuple(attention_mask.shape)} must be [B, T, D] and [B, T]")
    if cand_ids.dim() != 3 or cand_ids.shape[0] != B or cand_ids.shape != cand_mask.shape:
        raise ValueError(f"cand_input_ids {tuple(cand_ids.shape)} and cand_attention_mask "
                         f"{tuple(cand_mask.shape)} must both be [B={B}, C, L]")


@torch.no_grad()
def score_candidates(model: nn.Module, *, inputs_embeds: Tensor, attention_mask: Tensor, cand_input_ids: Tensor,
                     cand_attention_mask: Tensor, length_normalize: bool = False, method: str = "packed",
                     head_chunk: int = 1024, keep_prompt_cache: bool = False) -> Tensor | tuple[Tensor, Any]:
    """Summed (or per-token mean) log-likelihood of each candidate segment after its prompt.

    inputs_embeds [B, T, D] (LEFT-padded prompt), attention_mask [B, T], cand_input_ids / cand_attention_mask
    [B, C, L] (RIGHT-padded segments) -> scores [B, C] (float32). A segment with no real token scores 0.
    `keep_prompt_cache`: return (scores, cache) with the cache cropped back to the prompt's first T-1 tokens, so
    that generation can continue from it instead of encoding the prompt again (None for method="repeat",
    whose cache was expanded to B*C rows).
    """
    if method not in METHODS:
        raise ValueError(f"method={method!r} is not one of {METHODS}")
    _check_shapes(inputs_embeds, attention_mask, cand_input_ids, cand_attention_mask)
    decoder, head = _decoder_and_head(model)
    device = inputs_embeds.device
    attention_mask = attention_mask.to(device).long()
    cand_ids, cand_mask = cand_input_ids.to(device), cand_attention_mask.to(device).long()
    B, C, L = cand_ids.shape

    out = decoder(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                  position_ids=prompt_position_ids(attention_mask), use_cache=True)
    cache_arg = cache_kwarg(decoder)
    cache = getattr(out, cache_arg)
    first = F.log_softmax(head(out.last_hidden_state[:, -1]).float(), dim=-1)  # [B, V]
    token_lp = torch.zeros(B, C, L, dtype=torch.float32, device=device)
    token_lp[:, :, 0] = first.gather(-1, cand_ids[:, :, 0])  # [B, C]

    if L > 1:
        seg_ids, seg_mask = cand_ids[:, :, :-1], cand_mask[:, :, :-1]  # inputs [B, C, L-1]
        scored = cand_mask[:, :, 1:].bool()  # which next tokens are real [B, C, L-1]
        start = attention_mask.sum(-1)  # prompt lengths [B]
        if method == "packed":
            order, valid = _pack_segments(seg_mask)  # [B, M]
            seg, off = order // (L - 1), order % (L - 1)
            packed_ids = seg_ids.reshape(B, -1).gather(1, order)  # [B, M]
            hidden = decoder(
                inputs_embeds=model.get_input_embeddings()(packed_ids).to(inputs_embeds.dtype),
                attention_mask=_packed_block_mask(attention_mask, seg, off, valid, inputs_embeds.dtype),
                position_ids=start[:, None] + off,  # [B, M]
                use_cache=True, **{cache_arg: cache},
            ).last_hidden_state  # [B, M, D]
            next_ids = cand_ids[:, :, 1:].reshape(B, -1).gather(1, order)
            take = scored.reshape(B, -1).gather(1, order) & valid  # packed tokens whose next token is scored
            flat_lp = torch.zeros(B, C * (L - 1), dtype=torch.float32, device=device)
            rows = torch.arange(B, device=device)[:, None].expand(B, order.shape[1])
            flat_lp[rows[take], order[take]] = _token_logprobs(head, hidden[take], next_ids[take], head_chunk)
            token_lp[:, :, 1:] = flat_lp.view(B, C, L - 1)
        else:
            cache.batch_repeat_interleave(C)
            embeds = model.get_input_embeddings()(seg_ids).to(inputs_embeds.dtype)  # [B, C, L-1, D]
            offsets = torch.arange(L - 1, device=device)
            hidden = decoder(
                inputs_embeds=embeds.reshape(B * C, L - 1, -1),
                attention_mask=torch.cat([attention_mask.repeat_interleave(C, 0), seg_mask.reshape(B * C, -1)], -1),
                position_ids=(start.repeat_interleave(C)[:, None] + offsets[None]),  # [B*C, L-1]
                use_cache=True, **{cache_arg: cache},
            ).last_hidden_state.reshape(B, C, L - 1, -1)
            token_lp[:, :, 1:][scored] = _token_logprobs(head, hidden[scored], cand_ids[:, :, 1:][scored], head_chunk)

    token_lp = token_lp * cand_mask
    scores = token_lp.sum(-1)
    if length_normalize:
        scores = scores / cand_mask.sum(-1).clamp(min=1)
    if not keep_prompt_cache:
        return scores
    if method != "packed" and L > 1:
        return scores, None
    cache.crop(-(cache.get_seq_length() - (inputs_embeds.shape[1] - 1)))  # negative: remove that many tokens
    return scores, cache


TRAIN_METHODS = ("split", "joint")


def candidate_token_logprobs(model: nn.Module, *, inputs_embeds: Tensor, attention_mask: Tensor,
                             cand_input_ids: Tensor, cand_attention_mask: Tensor, method: str = "split",
                             pad_to: int = 1) -> Tensor:
    """Per-token log-likelihoods `[B, C, L]` of every candidate segment after its prompt, with gradients.

    The training side of `score_candidates`, in the same packed layout (the real tokens of the C segments packed
    into one row per user behind a block mask, positions restarting after the prompt). Padding tokens of a
    segment get log-probability 0. Summing over L gives `score_candidates`' scores (tested).
    - "split" (default): the prompt runs first, moved to the left edge of its row so that plain causal attention
      is exact for it (no mask: the fast causal kernel, which skips the blocks above the diagonal); the packed
      segments then run against its KV cache, which autograd differentiates through. Attention costs about
      T^2/2 + M(T + M) query-key pairs instead of (T + M)^2.
    - "joint": ONE decoder call over [prompt, packed segments] with a dense 4D mask [B, 1, T + M, T + M]: what
      "split" must equal (tested), and the path under activation checkpointing (which turns the cache off).
    """
    if method not in TRAIN_METHODS:
        raise ValueError(f"method={method!r} is not one of {TRAIN_METHODS}")
    _check_shapes(inputs_embeds, attention_mask, cand_input_ids, cand_attention_mask)
    decoder, head = _decoder_and_head(model)
    device, dtype = inputs_embeds.device, inputs_embeds.dtype
    attention_mask = attention_mask.to(device).long()
    cand_ids, cand_mask = cand_input_ids.to(device), cand_attention_mask.to(device).long()
    B, C, L = cand_ids.shape
    T = inputs_embeds.shape[1]
    start = attention_mask.sum(-1)  # prompt lengths [B]
    rows = torch.arange(B, device=device)

    if L > 1:
        order, valid = _pack_segments(cand_mask[:, :, :-1], pad_to)  # [B, M]
        seg, off = order // (L - 1), order % (L - 1)
        packed_ids = cand_ids[:, :, :-1].reshape(B, -1).gather(1, order)
    else:
        order = seg = off = torch.zeros(B, 0, dtype=torch.long, device=device)
        valid = torch.zeros(B, 0, dtype=torch.bool, device=device)
        packed_ids = order
    M = order.shape[1]
    packed_embeds = model.get_input_embeddings()(packed_ids).to(dtype)
    if method == "split" and getattr(decoder, "gradient_checkpointing", False) and decoder.training:
        method = "joint"  # checkpointed layers run without a KV cache

    if method == "split":
        # left-padded -> left-aligned: real token j of row b sits at j (+ the padding after it, never attended)
        source = (torch.arange(T, device=device)[None] + (T - start)[:, None]).clamp(max=T - 1)  # [B, T]
        aligned = inputs_embeds.gather(1, source[..., None].expand(-1, -1, inputs_embeds.shape[-1]))
        positions = torch.arange(T, device=device)[None].expand(B, T)
        out = decoder(inputs_embeds=aligned, position_ids=positions, use_cache=True)
        cache_arg = cache_kwarg(decoder)
        last = out.last_hidden_state[rows, start - 1]  # [B, D]: the prompt's last real token
        prompt_keys = torch.arange(T, device=device)[None].expand(B, T) < start[:, None]  # [B, T], left-aligned
        cand_hidden = decoder(
            inputs_embeds=packed_embeds, attention_mask=_packed_block_mask(prompt_keys, seg, off, valid, dtype),
            position_ids=start[:, None] + off, use_cache=True, **{cache_arg: getattr(out, cache_arg)},
        ).last_hidden_state if M else last[:, None, :0]  # [B, M, D]
    else:
        prompt_keys = attention_mask.bool()
        block = (seg[:, :, None] == seg[:, None, :]) & (off[:, None, :] <= off[:, :, None]) & valid[:, None, :]
        block = block | torch.eye(M, dtype=torch.bool, device=device)[None]  # padding queries see themselves
        causal = torch.ones(T, T, dtype=torch.bool, device=device).tril()
        top = torch.cat([causal[None] & prompt_keys[:, None, :] | torch.eye(T, dtype=torch.bool, device=device)[None],
                         torch.zeros(B, T, M, dtype=torch.bool, device=device)], dim=-1)  # prompt rows [B, T, T + M]
        bottom = torch.cat([prompt_keys[:, None, :].expand(B, M, T), block], dim=-1)
        allowed = torch.cat([top, bottom], dim=1)[:, None]  # [B, 1, T + M, T + M]
        embeds = torch.cat([inputs_embeds, packed_embeds], dim=1)
        positions = torch.cat([prompt_position_ids(attention_mask), start[:, None] + off], dim=1)
        mask = torch.where(allowed, torch.zeros((), dtype=dtype, device=device), torch.finfo(dtype).min)
        hidden = decoder(inputs_embeds=embeds, attention_mask=mask, position_ids=positions,
                         use_cache=False).last_hidden_state
        last, cand_hidden = hidden[:, T - 1], hidden[:, T:]

    first = F.log_softmax(head(last).float(), dim=-1)  # [B, V]: every segment's first token
    token_lp = torch.zeros(B, C, L, dtype=torch.float32, device=device)
    token_lp = token_lp.index_put((rows[:, None].expand(B, C), torch.arange(C, device=device)[None].expand(B, C),
                                   torch.zeros(B, C, dtype=torch.long, device=device)),
                                  first.gather(-1, cand_ids[:, :, 0]))
    if M:
        next_ids = cand_ids[:, :, 1:].reshape(B, -1).gather(1, order)
        take = cand_mask[:, :, 1:].bool().reshape(B, -1).gather(1, order) & valid  # next token is real
        logits = head(cand_hidden[take]).float()  # [N, V]
        lp = logits.gather(-1, next_ids[take][:, None]).squeeze(-1) - logits.logsumexp(-1)
        flat_rows = rows[:, None].expand(B, M)[take]
        flat_pos = order[take]
        token_lp = token_lp.index_put((flat_rows, flat_pos // (L - 1), flat_pos % (L - 1) + 1), lp)
    return token_lp * cand_mask
