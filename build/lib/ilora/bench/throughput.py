"""Training examples per second of a real config on real batches, and where the step's time goes.

`train_throughput` runs the Recommender's own loss (`training_loss`, the gate, the item slots) on micro-batches
from the config's DataModule, with backward, gradient accumulation and AdamW steps as `ilora-train` does,
under the precision the trainer would use (bf16 autocast or fp32). It reports examples/s after one warm-up
optimiser step and the share of padding in what the decoder processed: the [B, T] prompt (+ answer) grid, and
for the candidate losses also the packed candidate rows (each padded to the batch's longest).
`profile_step` is torch.profiler's top operators (self CPU time) over a few micro-batches of the same loop.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterable, Iterator, Mapping
from contextlib import nullcontext
from typing import Any

import torch
from torch import Tensor


def padding_counts(batch: Mapping[str, Any]) -> tuple[int, int]:
    """(real tokens, processed positions) of one training micro-batch as the loss runs it."""
    mask = batch["attention_mask"]
    real, total = int(mask.sum()), mask.numel()
    if "cand_attention_mask" in batch and "labels" not in batch:  # prompt layout: + the packed candidate rows
        fed = batch["cand_attention_mask"][:, :, :-1].reshape(mask.shape[0], -1).sum(-1)  # tokens fed per row
        real, total = real + int(fed.sum()), total + int(fed.max()) * mask.shape[0]
    return real, total


def _autocast(precision: str):
    return torch.autocast("cpu", dtype=torch.bfloat16) if str(precision).startswith("bf16") else nullcontext()


class _Loop:
    """Micro-batch -> loss -> backward; an AdamW step every `accumulate` micro-batches (as the Trainer does)."""

    def __init__(self, model: Any, precision: str, accumulate: int, lr: float = 1e-4) -> None:
        self.model, self.precision, self.accumulate = model.train(), precision, accumulate
        params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=lr) if params else None
        self.seen = 0

    def __call__(self, batch: Mapping[str, Tensor]) -> float:
        with _autocast(self.precision), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*self.trainer.*")  # its self.log calls have no trainer here
            loss = self.model.training_loss(batch, self.model.gate_weights(batch))
        if self.optimizer is not None:
            (loss / self.accumulate).backward()
        self.seen += 1
        if self.optimizer is not None and self.seen % self.accumulate == 0:
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())


def _warmed_loop(model: Any, batches: Iterable[Mapping[str, Any]], precision: str,
                 accumulate: int) -> tuple[_Loop, Iterator[Mapping[str, Any]]]:
    """The loop after one warm-up optimiser step (allocator, autocast caches, AdamW state), and the batches left."""
    loop, it = _Loop(model, precision, accumulate), iter(batches)
    for _ in range(accumulate):
        loop(next(it))
    return loop, it


def _graphs() -> int:
    from ilora.compiled import compile_stats

    return compile_stats()["graphs"]


def train_throughput(model: Any, batches: Iterable[Mapping[str, Any]], *, precision: str, accumulate: int,
                     examples: int) -> dict[str, float]:
    """Examples/s over `examples` training examples after one warm-up optimiser step, and the padding share.

    A compiled model compiles again when it meets a new shape: micro-batches during which a graph was compiled
    are timed apart (`compile_s`, `compile_micro_batches`) and replaced by as many further ones, so
    `examples_per_s` is the steady pace; `examples_per_s_with_compile` counts everything.
    """
    started = time.perf_counter()
    loop, it = _warmed_loop(model, batches, precision, accumulate)
    warmup_s = time.perf_counter() - started
    done = real = total = 0
    seconds = compile_s = 0.0
    compiling = 0
    while done < examples:
        batch = next(it)
        graphs, start = _graphs(), time.perf_counter()
        loop(batch)
        spent = time.perf_counter() - start
        if _graphs() != graphs:
            compile_s, compiling = compile_s + spent, compiling + 1
            continue
        seconds += spent
        done += len(batch["index"])
        r, t = padding_counts(batch)
        real, total = real + r, total + t
    return {"examples": done, "seconds": seconds, "examples_per_s": done / seconds,
            "examples_per_s_with_compile": done / (seconds + compile_s), "compile_s": compile_s,
            "compile_micro_batches": compiling, "warmup_s": warmup_s,
            "padding_share": 1.0 - real / total, "tokens_per_example": real / done}


def profile_step(model: Any, batches: Iterable[Mapping[str, Any]], *, precision: str, accumulate: int,
                 micro_batches: int, rows: int = 25) -> tuple[str, list[dict[str, Any]]]:
    """torch.profiler's top `rows` operators by self CPU time over `micro_batches` (after one warm-up step)."""
    from torch.profiler import ProfilerActivity, profile

    loop, it = _warmed_loop(model, batches, precision, accumulate)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(micro_batches):
            loop(next(it))
    averages = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in averages) or 1.0
    top = sorted(averages, key=lambda e: e.self_cpu_time_total, reverse=True)[:rows]
    table = [{"op": e.key, "self_cpu_share": e.self_cpu_time_total / total,
              "self_cpu_ms": e.self_cpu_time_total / 1e3, "calls": e.count} for e in top]
    return averages.table(sort_by="self_cpu_time_total", row_limit=rows), table
