"""Tensors and loaders for encoder training: whole batches are sliced at once (no per-example Python).

Train rows are `(history [W], length, target)` for examples with at least one history item; evaluation rows
are `(history, length, candidates [C], target_index)` with the fixed seeded candidates of `ilora.data`.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler

from ilora.data.candidates import eval_candidates, target_index
from ilora.data.datasets import RecData, pad_histories
from ilora.errors import DataError


class TensorBatches(Dataset):
    """Indexed by a list of row ids (from a BatchSampler), returns the tuple of those rows of each tensor."""

    def __init__(self, *tensors: Tensor) -> None:
        self.tensors = tensors

    def __len__(self) -> int:
        return len(self.tensors[0])

    def __getitem__(self, rows: list[int]) -> tuple[Tensor, ...]:
        index = torch.as_tensor(rows)
        return tuple(t[index] for t in self.tensors)


def _histories(data: RecData, split: str) -> tuple[Tensor, Tensor]:
    history, lengths = pad_histories(data.splits[split].history, data.padding_id, data.window)
    return torch.from_numpy(history), torch.from_numpy(lengths)  # fresh arrays: writable


def train_tensors(data: RecData) -> tuple[Tensor, Tensor, Tensor]:
    """`(history [N, W], lengths [N], target [N])` of train examples with a non-empty history."""
    history, lengths = _histories(data, "train")
    keep = lengths > 0
    if not keep.any():
        raise DataError(f"dataset {data.name!r}: train split has no example with a non-empty history")
    target = torch.from_numpy(data.splits["train"].target.copy())
    return history[keep], lengths[keep], target[keep]


def eval_tensors(data: RecData, split: str, num_candidates: int, seed: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """`(history, lengths, candidates [N, C], target_index [N])` on the fixed candidate lists of `split`."""
    history, lengths = _histories(data, split)
    candidates = eval_candidates(data.splits[split], data.num_items, num_candidates=num_candidates, seed=seed)
    column = target_index(candidates, data.splits[split].target)
    return history, lengths, torch.from_numpy(candidates), torch.from_numpy(column)


def loader(tensors: tuple[Tensor, ...], batch_size: int, *, shuffle: bool, seed: int = 0) -> DataLoader:
    """A DataLoader yielding whole batches (`batch_size=None`: the sampler already groups rows)."""
    dataset = TensorBatches(*tensors)
    generator = torch.Generator().manual_seed(seed)
    base = RandomSampler(dataset, generator=generator) if shuffle else SequentialSampler(dataset)
    return DataLoader(dataset, sampler=BatchSampler(base, batch_size, drop_last=False), batch_size=None)
