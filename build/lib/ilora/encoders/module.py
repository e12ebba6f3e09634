"""LightningModule that trains a sequential encoder with full softmax cross-entropy (as LLaRA's SASRec).

Validation and test rank the fixed candidate lists (`scores = logits[candidates]`) and log `{stage}/hr@k`,
`{stage}/ndcg@k`, `{stage}/mrr` once per epoch from all rows together (val sets have ~100 users, so
per-batch averages would be noisy and order-dependent), plus `{stage}/loss` over all items.
"""

from __future__ import annotations

import time

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor

from ilora.encoders.base import SequentialEncoder
from ilora.metrics import ranking_metrics


class EncoderModule(L.LightningModule):
    """Wraps `encoder`; AdamW with `lr` and `weight_decay`; metrics at `ks`."""

    def __init__(self, encoder: SequentialEncoder, *, lr: float = 1e-3, weight_decay: float = 0.0,
                 ks: tuple[int, ...] = (1, 5, 10)) -> None:
        super().__init__()
        self.encoder, self.lr, self.weight_decay, self.ks = encoder, lr, weight_decay, tuple(ks)
        self._scores: list[Tensor] = []
        self._columns: list[Tensor] = []
        self._losses: list[Tensor] = []

    def training_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> Tensor:
        history, lengths, target = batch
        loss = F.cross_entropy(self.encoder(history, lengths), target)
        self.log("train/loss", loss, on_step=False, on_epoch=True, batch_size=len(target))
        return loss

    def _rank_step(self, batch: tuple[Tensor, ...]) -> None:
        history, lengths, candidates, column = batch
        logits = self.encoder(history, lengths)  # [B, N]
        self._scores.append(logits.gather(1, candidates))  # [B, C]
        self._columns.append(column)
        target = candidates.gather(1, column[:, None]).squeeze(1)
        self._losses.append(F.cross_entropy(logits, target, reduction="sum"))

    def _rank_end(self, stage: str) -> None:
        scores, columns = torch.cat(self._scores), torch.cat(self._columns)
        metrics = {f"{stage}/{k}": v for k, v in ranking_metrics(scores, columns, self.ks).items()}
        metrics[f"{stage}/loss"] = (torch.stack(self._losses).sum() / len(columns)).item()
        self.log_dict(metrics, batch_size=len(columns))
        self._scores, self._columns, self._losses = [], [], []

    def validation_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> None:
        self._rank_step(batch)

    def on_validation_epoch_end(self) -> None:
        self._rank_end("val")

    def test_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> None:
        self._rank_step(batch)

    def on_test_epoch_end(self) -> None:
        self._rank_end("test")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.encoder.parameters(), lr=self.lr, weight_decay=self.weight_decay)


class EpochPrinter(L.Callback):
    """One compact line per epoch: train loss, val loss, val HR@1 / NDCG@5 and seconds."""

    def __init__(self, prefix: str = "") -> None:
        self.prefix = prefix
        self._start = time.perf_counter()

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        m = {k: float(v) for k, v in trainer.callback_metrics.items()}
        print(
            f"{self.prefix}epoch {trainer.current_epoch:3d}  train/loss {m.get('train/loss', float('nan')):.4f}  "
            f"val/loss {m.get('val/loss', float('nan')):.4f}  val/hr@1 {m.get('val/hr@1', float('nan')):.4f}  "
            f"val/ndcg@5 {m.get('val/ndcg@5', float('nan')):.4f}  ({time.perf_counter() - self._start:.1f}s)",
            flush=True,
        )
