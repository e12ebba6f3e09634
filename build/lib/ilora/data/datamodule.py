"""`RecDataModule`: a dataset directory -> prompt batches for training, validation, testing and inference.

The backbone owns the tokenizer, so the entry point hands it over before `setup`:
`datamodule.set_tokenizer(tokenizer)`. Item facts the model needs (`num_items`, `padding_id`, `titles`,
`window`, `domain`) are readable right after construction (first access loads the dataset, about a second).

Determinism: train candidates and templates are functions of (seed, epoch, example index) and the train
order is a seeded permutation per epoch, so a resumed run sees the same data. The epoch travels with every
index (the train sampler yields `(epoch, index)` pairs), which keeps it right inside DataLoader workers.
The sampler is a `DistributedSampler`, so Lightning calls its `set_epoch` each epoch (also on resume) and
does not replace it under DDP. Without a trainer, call `set_epoch(epoch)` before iterating.
Curriculum: set `datamodule.hybrid_probability` (see `ilora.data.collate`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import lightning as L
import numpy as np
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from ilora.data.candidates import eval_candidates, train_candidates
from ilora.data.collate import PromptCollator
from ilora.data.datasets import RecData, Split, load_dataset
from ilora.data.prompts import PromptSet, get_prompts
from ilora.errors import ConfigError, DataError

EVAL_ORDERS = ("length", "index")


class PromptExamples(Dataset):
    """Rows of one split kept after filtering; `rows[i]` is the example's index in the split file.

    Eval: `candidates` is the fixed `[N, C]` matrix. Train: `candidates is None` and items are fetched as
    `(epoch, i)` so candidates are re-drawn per epoch.
    """

    def __init__(self, split: Split, rows: np.ndarray, candidates: np.ndarray | None, *,
                 num_items: int, num_candidates: int, seed: int) -> None:
        self.split, self.rows, self.candidates = split, rows, candidates
        self.num_items, self.num_candidates, self.seed = num_items, num_candidates, seed

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        epoch, i = key if isinstance(key, tuple) else (0, key)
        row = int(self.rows[i])
        history, target = self.split.history[row], int(self.split.target[row])
        if self.candidates is None:
            cands = train_candidates(history, target, self.num_items, self.num_candidates,
                                     seed=self.seed, epoch=epoch, index=row)
        else:
            cands = self.candidates[i]
        user = int(self.split.user[row]) if self.split.user is not None else row
        return {"index": row, "user": user, "epoch": epoch, "history": history, "target": target,
                "candidates": cands}


class EpochSampler(DistributedSampler):
    """Seeded shuffle per epoch (shard by rank) that yields `(epoch, index)` pairs.

    `skip` (a callable giving a number of examples) lets a run resumed in the middle of an epoch continue
    with the examples it had not seen, so it ends with the same weights as an uninterrupted run.
    """

    def __init__(self, *args: Any, skip: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.skip = skip

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch, start = self.epoch, int(self.skip()) if self.skip else 0
        return ((epoch, i) for i in list(super().__iter__())[start:])


class LengthOrder(Sampler[int]):
    """Evaluation order by decreasing prompt size, so a batch holds prompts of similar length (less left padding
    in the prefill, narrower packed candidate rows). Records are put back in index order before metrics and
    predictions are written. In fp32 the scores do not depend on the order (3e-5 on a trained checkpoint); in
    bf16 every score carries rounding that moves with the batch composition (up to ~0.5 nats there, as between
    bf16 and fp32), so compare runs evaluated the same way. The longest batch comes first, so a too-large
    `eval_batch_size` fails at once rather than at the end."""

    def __init__(self, sizes: Sequence[int]) -> None:
        self.order = [int(i) for i in np.argsort(-np.asarray(sizes, dtype=np.int64), kind="stable")]

    def __iter__(self) -> Iterator[int]:
        return iter(self.order)

    def __len__(self) -> int:
        return len(self.order)


class RecDataModule(L.LightningDataModule):
    """Interaction histories -> instruction prompts; see the module docstring for the hand-over protocol.

    `batch_size` and `eval_batch_size` are global (divided by the world size); `min_history` drops examples
    with shorter real histories (LLaRA keeps `len_seq >= 3`); `domain` / `template` override the prompt set
    (default: the dataset's domain, all its templates); `prompts`: the templates' YAML file (a path, or a name
    under conf/prompts; default conf/prompts/<domain>.yaml); `prompt`: `llara` (candidates listed, as the papers) or
    `history` (history only; candidates are scored, never listed); `train_layout`: `answer` (prompt + answer,
    right-padded, for the answer loss) or `prompt` (left-padded prompts, for losses over the candidate pass);
    `pad_to_multiple_of`: training batches are padded to a multiple of this many tokens (a compiled step then
    meets a few shapes instead of one per batch; the entry point sets it with `model.compile`);
    `eval_order`: `length` (evaluation batches group prompts of similar size, see `LengthOrder`) or `index`;
    `limit_*` keep the first rows for smoke runs; `encoder_data` (read by the entry points, not here) names the
    dataset whose trained encoder steers this one when they share a train split.
    """

    def __init__(
        self,
        dir: str,
        name: str | None = None,
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        num_candidates: int = 20,
        min_history: int = 3,
        seed: int = 0,
        num_workers: int = 0,
        domain: str | None = None,
        template: int | None = None,
        max_prompt_tokens: int | None = None,
        terminator: str | list[int] | None = None,
        text_only: bool = False,
        prompt: str = "llara",
        prompts: str | None = None,
        train_layout: str = "answer",
        pad_to_multiple_of: int = 1,
        eval_order: str = "length",
        encoder_data: str | None = None,
        limit_train_examples: int | None = None,
        limit_val_examples: int | None = None,
        limit_test_examples: int | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        for key, value, low in (("batch_size", batch_size, 1), ("eval_batch_size", eval_batch_size, 1),
                                ("num_candidates", num_candidates, 1), ("min_history", min_history, 0),
                                ("num_workers", num_workers, 0), ("limit_train_examples", limit_train_examples, 1),
                                ("limit_val_examples", limit_val_examples, 1), ("limit_test_examples", limit_test_examples, 1)):
            if value is not None and (not isinstance(value, int) or value < low):
                raise ConfigError(f"data.{key}={value!r} must be an integer >= {low}")
        if eval_order not in EVAL_ORDERS:
            raise ConfigError(f"data.eval_order={eval_order!r} is not one of {', '.join(EVAL_ORDERS)}")
        self.tokenizer: Any = None
        self._title_tokens: np.ndarray | None = None  # tokens per title, for LengthOrder
        self._context: tuple[int | None, int] = (None, 0)
        self._data: RecData | None = None
        self._hybrid_probability = 1.0
        self._epoch = 0
        self._sampler: EpochSampler | None = None
        self.datasets: dict[str, PromptExamples] = {}
        self.collators: dict[str, PromptCollator] = {}

    # ---- hand-over and item facts -------------------------------------------------------------------
    def set_tokenizer(self, tokenizer: Any, *, context_tokens: int | None = None, reserve_tokens: int = 0) -> None:
        """Give the backbone's tokenizer; required before `setup` (collators are built there).

        `context_tokens` (the backbone's context length) bounds prompts when `max_prompt_tokens` is null:
        the oldest history items are dropped whole so prompt + answer (or `reserve_tokens` generated) fit.
        """
        self.tokenizer = tokenizer
        self._title_tokens = None
        self._context = (context_tokens, reserve_tokens)
        self.collators = {}

    def load(self) -> RecData:
        """Load and validate the dataset once (cheap to call again)."""
        if self._data is None:
            data = load_dataset(self.hparams.dir)
            if self.hparams.name is not None and data.name != self.hparams.name:
                raise ConfigError(f"data.name={self.hparams.name!r} but {self.hparams.dir}/meta.json says {data.name!r}")
            self.prompt_set(data)  # fail now if bad
            self._data = data
        return self._data

    def domain_of(self, data: RecData) -> str:
        return self.hparams.domain or data.domain

    def prompt_set(self, data: RecData) -> PromptSet:
        """The templates in force: `data.prompts` (a file or a name under conf/prompts), else the domain's."""
        return get_prompts(self.domain_of(data), self.hparams.template, self.hparams.prompt,
                           num_candidates=self.hparams.num_candidates, source=self.hparams.prompts)

    num_items = property(lambda self: self.load().num_items)
    padding_id = property(lambda self: self.load().padding_id)
    titles = property(lambda self: self.load().titles)
    window = property(lambda self: self.load().window)
    domain = property(lambda self: self.domain_of(self.load()))

    @property
    def hybrid_probability(self) -> float:
        """Probability that a train batch is hybrid (item slots) rather than text-only; 1.0 by default."""
        return self._hybrid_probability

    @hybrid_probability.setter
    def hybrid_probability(self, p: float) -> None:
        self._hybrid_probability = float(p)
        if "train" in self.collators:
            self.collators["train"].hybrid_probability = float(p)

    @property
    def prompt_token_limit(self) -> int | None:
        """The prompt length limit in force (`max_prompt_tokens`, else derived from the backbone's context)."""
        if self.collators:
            return next(iter(self.collators.values())).max_prompt_tokens
        return self.hparams.max_prompt_tokens

    def set_epoch(self, epoch: int) -> None:
        """Epoch for train candidates and order when no trainer drives the sampler."""
        self._epoch = int(epoch)
        if self._sampler is not None:
            self._sampler.set_epoch(self._epoch)

    # ---- Lightning hooks ------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        """Build the per-split example sets and collators (needs `set_tokenizer` first)."""
        if self.tokenizer is None:
            raise ConfigError("RecDataModule.setup needs a tokenizer: call datamodule.set_tokenizer(tokenizer) first")
        data = self.load()
        for split, limit in (("train", self.hparams.limit_train_examples), ("val", self.hparams.limit_val_examples),
                             ("test", self.hparams.limit_test_examples)):
            if split not in data.splits:
                continue
            if split not in self.datasets:
                self.datasets[split] = self._examples(data, data.splits[split], limit, train=split == "train")
            if split not in self.collators:
                self.collators[split] = self._collator("train" if split == "train" else "eval")

    def _examples(self, data: RecData, split: Split, limit: int | None, *, train: bool) -> PromptExamples:
        lengths = np.fromiter(map(len, split.history), dtype=np.int64, count=len(split))
        rows = np.flatnonzero(lengths >= self.hparams.min_history)
        if limit is not None:
            rows = rows[:limit]
        if len(rows) == 0:
            raise DataError(
                f"{self.hparams.dir}/{split.name}.parquet: no examples with >= data.min_history="
                f"{self.hparams.min_history} history items"
            )
        cands = None
        if not train:
            cands = eval_candidates(split, data.num_items, self.hparams.num_candidates, self.hparams.seed)[rows]
        return PromptExamples(split, rows, cands, num_items=data.num_items,
                              num_candidates=self.hparams.num_candidates, seed=self.hparams.seed)

    def _collator(self, mode: str) -> PromptCollator:
        data = self.load()
        return PromptCollator(
            self.tokenizer, titles=data.titles, padding_id=data.padding_id, window=data.window,
            prompts=self.prompt_set(data), mode=mode,
            layout=self.hparams.train_layout if mode == "train" else "prompt", seed=self.hparams.seed,
            terminator=self.hparams.terminator, max_prompt_tokens=self.hparams.max_prompt_tokens,
            context_tokens=self._context[0], reserve_tokens=self._context[1],
            text_only=self.hparams.text_only, hybrid_probability=self._hybrid_probability,
            pad_to_multiple_of=self.hparams.pad_to_multiple_of if mode == "train" else 1,
        )

    def _resume_offset(self) -> int:
        """Examples of the current epoch already trained on (non-zero only when resuming mid-epoch).

        Lightning restores the epoch loop's batch progress before it iterates the train loader, so the
        completed-batch count of the epoch is known when the sampler starts.
        """
        trainer = self.trainer
        if trainer is None or not trainer.training:  # only the fit loop's own iteration resumes mid-epoch
            return 0
        done = trainer.fit_loop.epoch_loop.batch_progress.current.completed
        return done * self.per_device("batch_size")

    def _world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)

    def per_device(self, key: str) -> int:
        """Global `data.<key>` divided by the world size (ConfigError when it does not divide)."""
        value = self.hparams[key] if self.hparams[key] is not None else self.hparams.batch_size
        world, _ = self._world()
        if value % world:
            raise ConfigError(f"data.{key}={value} is not divisible by the world size {world}")
        return value // world

    def _loader(self, split: str) -> DataLoader:
        if split not in self.datasets:
            raise ConfigError(f"split {split!r} is not set up (dataset splits: {sorted(self.load().splits)})")
        train = split == "train"
        world, rank = self._world()
        sampler = None
        if train:
            sampler = EpochSampler(self.datasets[split], num_replicas=world, rank=rank, shuffle=True,
                                   seed=self.hparams.seed, skip=self._resume_offset)
            sampler.set_epoch(self._epoch)
            self._sampler = sampler
        elif self.hparams.eval_order == "length":
            sampler = LengthOrder(self.prompt_sizes(split))
        return DataLoader(
            self.datasets[split], batch_size=self.per_device("batch_size" if train else "eval_batch_size"),
            sampler=sampler, shuffle=False, collate_fn=self.collators[split], num_workers=self.hparams.num_workers,
        )

    def prompt_sizes(self, split: str) -> list[int]:
        """Each example's size for `LengthOrder`: the tokens of its history and candidate titles (what varies
        between prompts; the template and item slots are about the same for all)."""
        titles = self.load().titles
        if self._title_tokens is None:
            ids = self.tokenizer([" " + t for t in titles], add_special_tokens=False)["input_ids"]
            self._title_tokens = np.fromiter(map(len, ids), dtype=np.int64, count=len(titles))
        dataset = self.datasets[split]
        return [int(self._title_tokens[np.asarray(dataset.split.history[int(r)], dtype=np.int64)].sum()
                    + self._title_tokens[np.asarray(dataset.candidates[i], dtype=np.int64)].sum())
                for i, r in enumerate(dataset.rows)]

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    # ---- inference ---------------------------------------------------------------------------------------
    def build_inference_batch(
        self, history_ids: Sequence[Sequence[int]], candidate_ids: Sequence[Sequence[int]],
        target: Sequence[int] | None = None,
    ) -> dict[str, Any]:
        """An eval batch (left-padded prompts) for arbitrary users; `target`/`target_index` are -1 when unknown."""
        data = self.load()
        if self.tokenizer is None:
            raise ConfigError("build_inference_batch needs a tokenizer: call datamodule.set_tokenizer(tokenizer)")
        if len(history_ids) != len(candidate_ids) or not history_ids:
            raise DataError(f"need one candidate list per history, got {len(history_ids)} and {len(candidate_ids)}")
        examples = []
        for i, (hist, cands) in enumerate(zip(history_ids, candidate_ids)):
            hist, cands = [int(h) for h in hist], [int(c) for c in cands]
            if not hist:
                raise DataError(f"inference example {i}: empty history")
            if len(hist) > data.window:
                raise DataError(f"inference example {i}: history of {len(hist)} items exceeds the window {data.window}")
            if not cands or len(set(cands)) != len(cands):
                raise DataError(f"inference example {i}: candidates must be a non-empty list of distinct ids")
            bad = [x for x in hist + cands if not 0 <= x < data.num_items]
            if bad:
                raise DataError(f"inference example {i}: unknown item id {bad[0]} (valid 0..{data.num_items - 1})")
            examples.append({"index": i, "history": hist, "target": -1 if target is None else int(target[i]),
                             "candidates": np.asarray(cands, dtype=np.int64)})
        if len({len(e["candidates"]) for e in examples}) != 1:
            raise DataError("inference examples must all have the same number of candidates")
        if "inference" not in self.collators:
            self.collators["inference"] = self._collator("eval")
        return self.collators["inference"](examples)
