"""Collation: examples -> the token batch of docs/ARCHITECTURE.md (ids, labels, item slots, candidates).

Token ids are built by concatenating cached pieces, never by tokenizing a whole prompt: each template's
three text pieces and every title (`" " + title`, special tokens split so a title stays text) are tokenized
once. The answer is the target's title piece plus the terminator, so the label boundary is exact and the
candidate segments `cand_input_ids` are the very tokens training teaches the model to emit.

Curriculum (LLaRA): a train batch is hybrid (one placeholder slot after every item title, to be overwritten
by the projected item embedding) with probability `collator.hybrid_probability`, otherwise text-only (no
slots, S=0). The LightningModule sets it each step, e.g. in `on_train_batch_start`:
`self.trainer.datamodule.hybrid_probability = step / total_steps`. The draw is a hash of
(seed, epoch, first example index), so a resumed run repeats it. With num_workers > 0 the workers hold a
copy of the collator, so the value only reaches them when they are re-created (each epoch unless
persistent_workers); with num_workers=0 (default) it applies from the next batch fetched (Lightning
prefetches one batch, so the schedule lags one step). Eval batches are hybrid unless `text_only`.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import chain
from typing import Any

import numpy as np
import torch

from ilora.data.prompts import PromptSet, uniform01
from ilora.errors import ConfigError, DataError

IGNORE_INDEX = -100
_HYBRID_STREAM = 0x4B1D


def pad_sequences(seqs: Sequence[Sequence[int]], pad_value: int, *, left: bool,
                  multiple: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad id lists to `[N, L]` (L = longest, rounded up to `multiple`) on the left or right; (ids, mask) longs."""
    lengths = np.fromiter(map(len, seqs), dtype=np.int64, count=len(seqs))
    width = -(-int(lengths.max(initial=0)) // multiple) * multiple
    flat = np.fromiter(chain.from_iterable(seqs), dtype=np.int64, count=int(lengths.sum()))
    rows = np.repeat(np.arange(len(seqs)), lengths)
    cols = np.arange(len(flat)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    if left:
        cols += np.repeat(width - lengths, lengths)
    ids = np.full((len(seqs), width), pad_value, dtype=np.int64)
    mask = np.zeros((len(seqs), width), dtype=np.int64)
    ids[rows, cols] = flat
    mask[rows, cols] = 1
    return torch.from_numpy(ids), torch.from_numpy(mask)


class PromptCollator:
    """Turns examples `{"index", "epoch", "history", "target", "candidates"}` into a batch dict.

    `mode="train"`: prompt + answer, right-padded, `labels` on the answer only.
    `mode="eval"`: prompt only, left-padded (generation and KV-shared ranking), no `labels`.
    Both carry `cand_input_ids [B, C, Lc]` and the item slots `slot_batch/slot_pos/slot_items [S]`.
    `max_prompt_tokens`: drop the oldest history items (whole titles) until the prompt fits; the batch's
    `truncated [B]` (bool) marks the examples shortened (the module counts distinct ones: the collator keeps no
    count, since DataLoader workers collate in copies of it). When it is None and `context_tokens` (the
    backbone's context length) is given, the limit is derived: the context minus the longest continuation,
    i.e. max(longest answer segment, `reserve_tokens` for generation).
    """

    def __init__(
        self,
        tokenizer: Any,
        *,
        titles: Sequence[str],
        padding_id: int,
        window: int,
        prompts: PromptSet,
        mode: str = "train",
        seed: int = 0,
        terminator: str | Sequence[int] | None = None,
        slot_token_id: int | None = None,
        max_prompt_tokens: int | None = None,
        context_tokens: int | None = None,
        reserve_tokens: int = 0,
        text_only: bool = False,
        hybrid_probability: float = 1.0,
        layout: str | None = None,
        pad_to_multiple_of: int = 1,
    ) -> None:
        if mode not in ("train", "eval"):
            raise ConfigError(f"collator mode={mode!r} must be 'train' or 'eval'")
        layout = layout or ("answer" if mode == "train" else "prompt")
        if layout not in ("answer", "prompt") or (mode == "eval" and layout == "answer"):
            raise ConfigError(f"collator layout={layout!r} must be 'answer' (training) or 'prompt'")
        self.with_answer = layout == "answer"
        if int(pad_to_multiple_of) < 1:
            raise ConfigError(f"pad_to_multiple_of={pad_to_multiple_of} must be >= 1")
        self.pad_multiple = int(pad_to_multiple_of)
        if max_prompt_tokens is not None and max_prompt_tokens < 1:
            raise ConfigError(f"data.max_prompt_tokens={max_prompt_tokens} must be >= 1 or null")
        self.train = mode == "train"
        self.titles = list(titles)
        self.padding_id, self.window, self.prompts, self.seed = padding_id, window, prompts, seed
        self.max_prompt_tokens, self.text_only = max_prompt_tokens, text_only
        self.hybrid_probability = hybrid_probability

        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if self.pad_id is None:
            raise ConfigError("the tokenizer has neither a pad nor an eos token; set one on the backbone's tokenizer")
        if slot_token_id is None:
            slot_token_id = tokenizer.unk_token_id if tokenizer.unk_token_id is not None else self.pad_id
        self.slot_id = int(slot_token_id)
        self.terminator = self._terminator_ids(tokenizer, terminator)

        def encode(texts: list[str], split_special: bool) -> list[list[int]]:
            out = tokenizer(texts, add_special_tokens=False, split_special_tokens=split_special)
            return [list(ids) for ids in out["input_ids"]]

        with_special = tokenizer("a", add_special_tokens=True)["input_ids"]
        without = tokenizer("a", add_special_tokens=False)["input_ids"]
        self.prefix = list(with_special[: with_special.index(without[0])]) if without[0] in with_special else []
        self.title_ids = encode([" " + t for t in self.titles], True) if self.titles else []
        self.separator = encode([","], False)[0]
        self.parts = [encode(list(t.parts), False) for t in prompts.templates]
        self.lists_candidates = [t.lists_candidates for t in prompts.templates]
        if self.max_prompt_tokens is None and context_tokens is not None:
            longest = max(max(map(len, self.title_ids), default=0) + len(self.terminator), int(reserve_tokens))
            self.max_prompt_tokens = int(context_tokens) - longest
            if self.max_prompt_tokens < 1:
                raise ConfigError(f"the backbone's context of {context_tokens} tokens leaves no room for a prompt "
                                  f"after a {longest}-token answer; lower model.evaluation.max_new_tokens")

    @staticmethod
    def _terminator_ids(tokenizer: Any, terminator: str | Sequence[int] | None) -> list[int]:
        if terminator is None:
            if tokenizer.eos_token_id is None:
                raise ConfigError("the tokenizer has no eos token; set data.terminator (a string or token ids)")
            return [int(tokenizer.eos_token_id)]
        if isinstance(terminator, str):
            ids = list(tokenizer(terminator, add_special_tokens=False)["input_ids"])
        else:
            ids = [int(i) for i in terminator]
        if not ids:
            raise ConfigError(f"data.terminator={terminator!r} tokenizes to no tokens")
        return ids

    def answer_ids(self, item: int) -> list[int]:
        """Tokens the model is trained to emit for `item`: `" " + title` then the terminator."""
        return self.title_ids[item] + self.terminator

    def _items(self, items: Sequence[int], hybrid: bool, ids: list[int], slots: list[int]) -> None:
        """Append `" title"[slot]` pieces joined by "," to `ids`; record slot offsets in `slots`."""
        for j, item in enumerate(items):
            if j:
                ids += self.separator
            ids += self.title_ids[item]
            if hybrid:
                slots.append(len(ids))
                ids.append(self.slot_id)

    def _fit_history(self, history: list[int], cands: Sequence[int], parts: list[list[int]], hybrid: bool) -> int:
        """How many oldest history items to drop so the prompt fits `max_prompt_tokens` (whole titles only)."""
        if self.max_prompt_tokens is None:
            return 0
        sep = len(self.separator)
        cost = [len(self.title_ids[i]) + hybrid for i in history]
        cand_cost = sum(len(self.title_ids[i]) + hybrid for i in cands) + sep * max(len(cands) - 1, 0)
        total = len(self.prefix) + sum(map(len, parts)) + cand_cost + sum(cost) + sep * max(len(cost) - 1, 0)
        excess = total - self.max_prompt_tokens
        if excess <= 0:
            return 0
        saved = np.cumsum(cost) + sep * np.arange(1, len(cost) + 1)  # tokens saved by dropping k = 1..n items
        if len(cost):
            saved[-1] -= sep  # the last item dropped takes no separator with it
        k = int(np.searchsorted(saved, excess)) + 1  # smallest k with saved[k-1] >= excess
        if k > len(cost):
            raise ConfigError(
                f"data.max_prompt_tokens={self.max_prompt_tokens} is shorter than the prompt without any history "
                f"({total - int(saved[-1]) if len(cost) else total} tokens); raise it"
            )
        return k

    def __call__(self, examples: Sequence[dict]) -> dict[str, Any]:
        """Examples -> batch; see docs/ARCHITECTURE.md for every key (plus `hybrid: bool`)."""
        if not examples:
            raise DataError("cannot collate an empty batch")
        index = np.array([int(e["index"]) for e in examples], dtype=np.int64)
        epoch = int(examples[0].get("epoch", 0))
        cands = np.stack([np.asarray(e["candidates"], dtype=np.int64) for e in examples])  # [B, C]
        target = np.array([int(e["target"]) for e in examples], dtype=np.int64)
        histories = [list(e["history"]) for e in examples]
        hybrid = self._hybrid(epoch, int(index[0]))
        templates = self.prompts.choose(index, seed=self.seed, epoch=epoch, train=self.train)

        seqs, labels_from, slot_rows, slot_offsets, slot_items, truncated = [], [], [], [], [], []
        for b, (hist, row, t) in enumerate(zip(histories, cands.tolist(), templates.tolist())):
            head, middle, tail = self.parts[t]
            listed = row if self.lists_candidates[t] else []
            drop = self._fit_history(hist, listed, self.parts[t], hybrid)
            truncated.append(drop > 0)
            shown = hist[drop:]
            ids, slots = self.prefix + head, []
            self._items(shown, hybrid, ids, slots)
            ids += middle
            self._items(listed, hybrid, ids, slots)
            ids += tail
            labels_from.append(len(ids))
            if self.with_answer:
                ids += self.answer_ids(int(target[b]))
            seqs.append(ids)
            slot_rows += [b] * len(slots)
            slot_offsets += slots
            slot_items += shown + listed if hybrid else []

        input_ids, attention_mask = pad_sequences(seqs, self.pad_id, left=not self.with_answer,
                                                  multiple=self.pad_multiple)
        rows = torch.tensor(slot_rows, dtype=torch.long)
        shift = (input_ids.shape[1] - attention_mask.sum(1) if not self.with_answer
                 else torch.zeros(len(seqs), dtype=torch.long))
        batch: dict[str, Any] = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "slot_batch": rows,
            "slot_pos": torch.tensor(slot_offsets, dtype=torch.long) + shift[rows],
            "slot_items": torch.tensor(slot_items, dtype=torch.long),
        }
        if self.with_answer:
            positions = torch.arange(input_ids.shape[1])
            answer = (positions[None, :] >= torch.tensor(labels_from)[:, None]) & attention_mask.bool()
            batch["labels"] = torch.where(answer, input_ids, IGNORE_INDEX)
        batch.update(self._item_keys(histories, cands, target, index))
        batch["hybrid"] = hybrid
        batch["truncated"] = torch.tensor(truncated, dtype=torch.bool)
        batch["truncated_index"] = [int(i) for i, t in zip(index.tolist(), truncated) if t]  # stays on the host
        batch["user"] = self.user_ids(examples)
        return batch

    def _hybrid(self, epoch: int, first_index: int) -> bool:
        if self.text_only:
            return False
        if not self.train:
            return True
        p = float(self.hybrid_probability)
        return bool(uniform01(self.seed, epoch, np.array([first_index]), stream=_HYBRID_STREAM)[0] < p)

    def _item_keys(
        self, histories: list[list[int]], cands: np.ndarray, target: np.ndarray, index: np.ndarray
    ) -> dict[str, Any]:
        """Encoder inputs, candidate ids/titles/answer segments, target column, example index."""
        lengths = np.fromiter(map(len, histories), dtype=np.int64, count=len(histories))
        if lengths.max(initial=0) > self.window:
            raise DataError(f"history of length {int(lengths.max())} exceeds the window {self.window}")
        history = torch.full((len(histories), self.window), self.padding_id, dtype=torch.long)
        hist_ids, _ = pad_sequences(histories, self.padding_id, left=False)
        history[:, : hist_ids.shape[1]] = hist_ids
        hit = cands == target[:, None]
        target_index = np.where(hit.any(1), hit.argmax(1), -1)
        flat = cands.reshape(-1).tolist()
        cand_ids, cand_mask = pad_sequences([self.answer_ids(c) for c in flat], self.pad_id, left=False)
        b, c = cands.shape
        return {
            "history": history,
            "history_len": torch.from_numpy(lengths),
            "candidates": torch.from_numpy(cands),
            "target": torch.from_numpy(target),
            "target_index": torch.from_numpy(target_index.astype(np.int64)),
            "candidate_titles": [[self.titles[i] for i in row] for row in cands.tolist()],
            "cand_input_ids": cand_ids.view(b, c, -1),
            "cand_attention_mask": cand_mask.view(b, c, -1),
            "index": torch.from_numpy(index),
        }

    @staticmethod
    def user_ids(examples: Sequence[dict]) -> torch.Tensor:
        """`[B]` user ids (the example's own index when the split names no users)."""
        return torch.tensor([int(e.get("user", e["index"])) for e in examples], dtype=torch.long)
