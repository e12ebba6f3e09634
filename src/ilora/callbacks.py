"""Lightning callbacks for what researchers watch (expert use per user) and for runs that survive interruption
(a checkpoint on SIGTERM, W&B runs that continue on resume)."""

from __future__ import annotations

import json
import os
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException


def _wandb_loggers(trainer: pl.Trainer) -> list[WandbLogger]:
    return [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]


class GateMonitor(Callback):
    """After each validation: per-expert utilisation and a heatmap of expert weights for fixed users.

    The users are the first `num_users` examples of the evaluation split (by index), so the heatmaps of
    successive validations compare like with like. Scalars go to every logger; the histogram and the
    image go to W&B only. It runs at `on_validation_end`, after the module has gathered the epoch's records
    (callbacks' `on_validation_epoch_end` runs before the module's), so it writes to the loggers directly.
    """

    def __init__(self, *, num_users: int = 16) -> None:
        self.num_users = num_users

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        result = getattr(pl_module, "eval_results", {}).get("val")
        if not result or "gate" not in result["records"][0]:
            return
        gates = torch.tensor([r["gate"] for r in result["records"]])  # [N, K]
        utilisation = torch.bincount(gates.argmax(-1), minlength=gates.shape[1]).float() / gates.shape[0]
        shares = {f"val/expert_{k}_top_share": float(share) for k, share in enumerate(utilisation)}
        for logger in trainer.loggers:
            logger.log_metrics(shares, step=trainer.global_step)
        for logger in _wandb_loggers(trainer):
            self._log_wandb(logger, gates, utilisation, trainer.global_step)

    def _log_wandb(self, logger: WandbLogger, gates: torch.Tensor, utilisation: torch.Tensor, step: int) -> None:
        import wandb

        figure = gate_heatmap(gates[: self.num_users])
        logger.experiment.log(
            {
                "val/expert_utilisation": wandb.Histogram(
                    np_histogram=(utilisation.numpy(), list(range(len(utilisation) + 1)))
                ),
                "val/gate_heatmap": wandb.Image(figure),
                "trainer/global_step": step,
            }
        )
        import matplotlib.pyplot as plt

        plt.close(figure)


def gate_heatmap(gates: torch.Tensor) -> Any:
    """A users x experts heatmap of gate weights (matplotlib figure)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(1.2 + 0.5 * gates.shape[1], 1.0 + 0.25 * gates.shape[0]))
    image = axis.imshow(gates.numpy(), vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
    axis.set_xlabel("expert")
    axis.set_ylabel("test user")
    axis.set_xticks(range(gates.shape[1]))
    figure.colorbar(image, ax=axis)
    figure.tight_layout()
    return figure


class LearningCurve(Callback):
    """After every validation: one line `{step, train_examples, val/...}` appended to `<dirpath>/curve.jsonl`.

    `train_examples` counts the examples trained on so far (all processes); it is part of the callback's
    checkpoint state, so a resumed run (which writes into its own new directory) continues the count there.
    Validation runs every `trainer.val_check_interval` training batches on `data.limit_val_examples` fixed
    examples (the first rows of the val split).
    """

    def __init__(self, *, dirpath: str, filename: str = "curve.jsonl") -> None:
        self.path = os.path.join(dirpath, filename)
        self.train_examples = 0

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self.train_examples += int(len(batch["index"])) * trainer.world_size

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero or trainer.state.fn != "fit":
            return
        result = getattr(pl_module, "eval_results", {}).get("val")
        if not result:
            return
        line = {"step": trainer.global_step, "train_examples": self.train_examples, **result["metrics"]}
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(line, sort_keys=True) + "\n")

    def state_dict(self) -> dict[str, Any]:
        return {"train_examples": self.train_examples}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.train_examples = int(state_dict.get("train_examples", 0))


class WandbRunId(Callback):
    """Stores the W&B run id in every checkpoint, so a resumed run continues the same W&B run."""

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        loggers = _wandb_loggers(trainer)
        if loggers:
            checkpoint["wandb_run_id"] = str(loggers[0].version)


class BestCheckpoint(ModelCheckpoint):
    """Lightning's `ModelCheckpoint` whose best-checkpoint choice survives a resume into a new run directory.

    A resumed run writes beside the original (never into it), and Lightning reloads `best_model_score` only when
    the dirpath is unchanged: the first validation after a resume became "best" whatever its score, and
    `test_ckpt=best` tested the best since the resume. Here the score, path and top-k set are carried over from the
    checkpoint whatever the dirpath (when the best file still exists), and a file outside this run's own directory
    is never deleted when a better one replaces it: the original run keeps its files.
    """

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        previous = state_dict.get("dirpath", self.dirpath)
        if previous == self.dirpath or not state_dict.get("best_model_path"):
            super().load_state_dict(state_dict)
            return
        self.best_model_path = state_dict["best_model_path"]
        if not os.path.isfile(self.best_model_path):  # moved or deleted: nothing to compare against
            return
        self.best_model_score = state_dict["best_model_score"]
        self.best_k_models = {k: v for k, v in (state_dict.get("best_k_models") or {}).items() if os.path.isfile(k)}
        self.kth_best_model_path = state_dict.get("kth_best_model_path", self.kth_best_model_path)
        self.kth_value = state_dict.get("kth_value", self.kth_value)

    def _remove_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        own = os.path.abspath(str(self.dirpath)) if self.dirpath else None
        if own is not None and os.path.dirname(os.path.abspath(filepath)) != own:
            return  # an earlier run's file (carried over on resume): it stays
        super()._remove_checkpoint(trainer, filepath)


def validates_after_this_batch(trainer: pl.Trainer) -> bool:
    """Whether the fit loop validates right after the current training batch (ask from `on_train_batch_end`).

    Lightning reads a checkpoint saved at such a batch's end as already validated: a resume from it fast-forwards
    past that validation. A run stopped during the validation (a session ending, a kill) then never logs that
    point, the final one included, so saves at these batches wait until the validation has ended.
    """
    if trainer.state.fn != "fit" or trainer.sanity_checking:
        return False
    fetcher = getattr(trainer.fit_loop, "_data_fetcher", None)
    return fetcher is not None and bool(trainer.fit_loop.epoch_loop._should_check_val_fx(fetcher))


class LastCheckpoint(ModelCheckpoint):
    """Lightning's `ModelCheckpoint` for the periodic `last.ckpt`, whose save at a step followed by validation is
    made after that validation (see `validates_after_this_batch`); a resume from it goes on without validating
    again. Checkpoint callbacks run after the others, so the validation's curve line is written first."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._after_validation = False

    @property
    def state_key(self) -> str:
        # the key of a plain ModelCheckpoint: checkpoints saved before this class (runs in progress) resume quietly
        return super().state_key.replace(type(self).__qualname__, "ModelCheckpoint", 1)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if validates_after_this_batch(trainer):
            due = self._every_n_train_steps >= 1 and trainer.global_step % self._every_n_train_steps == 0
            self._after_validation = self._after_validation or due
            return
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Nothing: `LastCheckpointOnStop` owns the end-of-fit save. Lightning's own (when no periodic save came)
        went to a `last-v1.ckpt` beside it, holding a finished-epoch loop state that a resume with a larger
        `max_steps` cannot train on."""

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if self._after_validation and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        if not trainer.sanity_checking:
            self._after_validation = False


class LastCheckpointOnStop(Callback):
    """Keep `<dirpath>/<filename>.ckpt` (default `last.ckpt`) current whenever fit stops: at its end and on SIGTERM.

    The periodic `last_checkpoint` writes every `every_n_train_steps`, and Lightning's own end-of-fit save of
    `last.ckpt` is skipped once any periodic one was written, so a run that ended between two saves left stale
    weights for `test_ckpt=last`. This saves after the batch that reaches `max_steps`, or after the validation
    that follows that batch (see `validates_after_this_batch`; the loop state then reads "mid-epoch", exactly as
    a periodic save at that step would, so a resume with a larger `max_steps` continues the epoch), and at the end
    of fit when the epochs ran out. Listed after `LearningCurve`, whose line for that validation it must follow.
    On SIGTERM, Lightning's signal connector raises `SIGTERMException` at the end of the current batch;
    `on_exception` saves there (through the trainer's CheckpointIO, so atomically). Other exceptions save nothing:
    the last periodic checkpoint stays the last good one.

    A SIGTERM in the middle of a gradient-accumulation window is held until the window's last micro-batch (at most
    `accumulate_grad_batches - 1` more): the gradients accumulated so far are not in a checkpoint, so a save
    mid-window would resume with a partial gradient. Saved at the optimiser-step boundary, the resumed run replays
    the uninterrupted one exactly (the dropout masks are keyed by step and batch, tested).
    """

    def __init__(self, *, dirpath: str, filename: str = "last") -> None:
        self.path = os.path.join(dirpath, f"{filename}.ckpt")
        self._saved_step = -1
        self._held_sigterm = False
        self._after_validation = False

    def _save(self, trainer: pl.Trainer) -> None:
        if trainer.global_step > 0 and trainer.global_step != self._saved_step:
            trainer.save_checkpoint(self.path)
            self._saved_step = trainer.global_step

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        if 0 < trainer.max_steps <= trainer.global_step:
            if validates_after_this_batch(trainer):  # saved when that validation ends, so a resume runs it
                self._after_validation = True
            else:
                self._save(trainer)
        signals = getattr(trainer, "_signal_connector", None)
        if signals is None:
            return
        mid_window = trainer.fit_loop.epoch_loop._should_accumulate()
        if signals.received_sigterm and mid_window:  # Lightning would stop after this micro-batch: not yet
            signals.received_sigterm, self._held_sigterm = False, True
        elif self._held_sigterm and not mid_window:  # the window is complete: stop (and save) now
            signals.received_sigterm, self._held_sigterm = True, False

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._after_validation and not trainer.sanity_checking:
            self._after_validation = False
            self._save(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._save(trainer)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, SIGTERMException) and trainer.state.fn == "fit":
            trainer.save_checkpoint(self.path)


def usable_callbacks(callbacks: list[Callback], loggers: list[Any]) -> list[Callback]:
    """Drop callbacks that need a logger (LearningRateMonitor) from a run without one, saying so once."""
    from lightning.pytorch.callbacks import LearningRateMonitor

    if loggers:
        return callbacks
    dropped = [c for c in callbacks if isinstance(c, LearningRateMonitor)]
    if dropped:
        print("[ilora] logger=none: the learning-rate monitor is off (it writes to a logger)")
    return [c for c in callbacks if c not in dropped]
