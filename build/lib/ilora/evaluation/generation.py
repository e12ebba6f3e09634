"""Greedy generation from injected prompt embeddings, and LLaRA's parsing of the answer into a candidate choice.

LLaRA/iLoRA score generation as follows (LLaRA `model/model_interface.py`, `calculate_hr1`): decode with special
tokens skipped, strip, keep the first line, lower-case it; the answer is valid when exactly one candidate title
(stripped, lower-cased) is a substring of that line, and correct when that title is the target's. HR@1 there is
correct / valid; we also report correct / all.

Generation stops per row at the first newline that follows some text (LLaRA strips leading whitespace before
taking the first line, so leading newlines do not end the answer), or at eos.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
from torch import Tensor, nn
from transformers import StoppingCriteria, StoppingCriteriaList

from ilora.evaluation.ranking import cache_kwarg

_TABLES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def line_tables(tokenizer, vocab_size: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Per-token flags [V] (bool): has a newline, has text before its first newline, has any text.

    Built once per tokenizer by decoding every id on its own (byte-level pieces decode as replacement chars).
    """
    V = max(len(tokenizer), vocab_size or 0)
    cached = _TABLES.get(tokenizer)
    if cached is not None and cached[0].numel() >= V:
        return cached
    ids = [[i] for i in range(len(tokenizer))]
    backend = getattr(tokenizer, "backend_tokenizer", None)  # the Rust tokenizer decodes in batch ~10x faster
    pieces = (backend.decode_batch(ids, skip_special_tokens=False) if backend is not None
              else tokenizer.batch_decode(ids, clean_up_tokenization_spaces=False))
    newline, text_first, text = (torch.zeros(V, dtype=torch.bool) for _ in range(3))
    newline[: len(pieces)] = torch.tensor(["\n" in p for p in pieces])
    text_first[: len(pieces)] = torch.tensor([p.split("\n", 1)[0].strip() != "" for p in pieces])
    text[: len(pieces)] = torch.tensor([p.strip() != "" for p in pieces])
    tables = (newline, text_first, text)
    try:
        _TABLES[tokenizer] = tables
    except TypeError:  # not weak-referenceable: just do not cache
        pass
    return tables


class StopAtFirstLine(StoppingCriteria):
    """Stop a row once it emits a newline after some non-whitespace text (LLaRA's first line is then complete).

    Stateless: looks at the generated ids `[B, n]` (only new tokens, since generation starts from embeddings).
    """

    def __init__(self, tables: tuple[Tensor, Tensor, Tensor]):
        self.newline, self.text_first, self.text = tables

    def __call__(self, input_ids: Tensor, scores: Tensor, **kwargs) -> Tensor:
        newline, text_first, text = (t.to(input_ids.device) for t in (self.newline, self.text_first, self.text))
        last, before = input_ids[:, -1], input_ids[:, :-1]
        seen_text = text[before].any(-1) if before.shape[1] else torch.zeros_like(last, dtype=torch.bool)
        return newline[last] & (seen_text | text_first[last])  # [B]


@torch.no_grad()
def generate_answers(model: nn.Module, tokenizer, *, inputs_embeds: Tensor, attention_mask: Tensor,
                     max_new_tokens: int = 64, stop_at_newline: bool = True, prompt_cache: Any = None) -> list[str]:
    """Greedy answers for a LEFT-padded batch: inputs_embeds [B, T, D], attention_mask [B, T] -> B strings.

    With `stop_at_newline` each string is LLaRA's first line (stripped); otherwise the whole stripped text.
    `prompt_cache`: a KV cache already holding the first T-1 prompt tokens (`score_candidates(...,
    keep_prompt_cache=True)`), so only the last prompt token is encoded here. It is consumed (extended).
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens} must be >= 1")
    criteria = StoppingCriteriaList()
    if stop_at_newline:
        criteria.append(StopAtFirstLine(line_tables(tokenizer, model.config.vocab_size)))
    generated = model.generate(
        inputs_embeds=inputs_embeds,
        attention_mask=attention_mask.to(inputs_embeds.device),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        stopping_criteria=criteria,
        **({} if prompt_cache is None else {cache_kwarg(model): prompt_cache}),
    )  # [B, n]: only new tokens when generating from embeddings
    texts = tokenizer.batch_decode(generated, skip_special_tokens=True, clean_up_tokenization_spaces=False)
    return [first_line(t) for t in texts] if stop_at_newline else [t.strip() for t in texts]


def first_line(text: str) -> str:
    """LLaRA's answer line: strip, then everything before the first newline."""
    return text.strip().split("\n")[0]


def parse_choice(text: str, candidate_titles: list[str]) -> int:
    """Index of the only candidate title found (case-insensitive substring) in the answer's first line, else -1.

    As LLaRA: if a title is a substring of another candidate's title (e.g. "Alien" and "Aliens"), an answer
    naming the longer one contains both and is invalid (-1); naming the shorter one is valid. Duplicate titles
    in one list always make an answer that names them invalid.
    """
    line = first_line(text).lower().strip()
    found = [i for i, title in enumerate(candidate_titles) if title.strip().lower() in line]
    return found[0] if len(found) == 1 else -1


def generation_metrics(choices, target_index) -> dict[str, float]:
    """valid_ratio, hr@1_valid (correct / valid, LLaRA's HR@1; 0 when nothing is valid) and hr@1_all (correct / N).

    choices [N] (parse_choice results, -1 = invalid), target_index [N].
    """
    choices, target = torch.as_tensor(choices).long().flatten(), torch.as_tensor(target_index).long().flatten()
    if choices.numel() == 0 or choices.shape != target.shape:
        raise ValueError(f"choices {tuple(choices.shape)} and target_index {tuple(target.shape)} must be equal, N > 0")
    valid = choices >= 0
    correct = (valid & (choices == target)).sum().item()
    n_valid = valid.sum().item()
    return {
        "valid_ratio": n_valid / choices.numel(),
        "hr@1_valid": correct / n_valid if n_valid else 0.0,
        "hr@1_all": correct / choices.numel(),
    }
