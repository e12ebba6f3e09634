"""The LightningModule: a frozen LLM fitted with MoE-LoRA, steered per user by a frozen sequential encoder.

A batch's walk (docs/ARCHITECTURE.md has the batch keys):
`z = encoder.user_state(history)`; `g = gate(z)` [B, K]; `x = embed(tokens)`;
`x[slot] = projector(encoder.item_embeddings(slot_items))` (one index_put);
`with gate_context(backbone, g): h = decoder(inputs_embeds=x)`; the vocabulary head runs only on the answer
positions (it is a fifth of SmolLM2's compute). Evaluation scores all candidates on the prompt's KV cache
(ranking) and/or generates greedily and parses the answer as LLaRA does (generation).

Checkpoints hold only what training changes (adapters, projector, gate) plus the loop state; the frozen
backbone and encoder are rebuilt from their own sources, and `on_load_checkpoint` checks the fit.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import get_cosine_with_min_lr_schedule_with_warmup

from ilora.adapters import apply_moe_lora, dropout_masks, gate_context
from ilora.adapters.gates import gate_entropy, load_balancing_loss
from ilora.compiled import compile_blocks
from ilora.errors import CheckpointError, ConfigError, IloraError
from ilora.evaluation.generation import generate_answers, generation_metrics, parse_choice
from ilora.evaluation.ranking import TRAIN_METHODS, candidate_token_logprobs, score_candidates
from ilora.metrics import cluster_bootstrap_ci, per_example_hits, ranking_metrics
from ilora.projector import ItemProjector
from ilora.state import check_state_fits


class NonFiniteLossError(IloraError):
    """The training loss became NaN/inf: the run stops before that step's update (no checkpoint is written)."""


# answer: LLaRA/iLoRA's SFT loss on the target title; rank: listwise cross-entropy of the softmax over the
# candidates' log-likelihoods (the scores evaluation ranks by); answer+rank: answer + rank_weight * rank.
LOSSES = ("answer", "rank", "answer+rank")
EVAL_DEFAULTS = {
    "rank": True, "generate": True, "generate_on_val": True, "length_normalize": False, "max_new_tokens": 64,
}


class Recommender(pl.LightningModule):
    """iLoRA / LoRA / frozen-LLM recommender on one code path.

    Args (keyword-only, ready-built collaborators):
        backbone: a frozen Hugging Face causal LM (its weights are never trained here).
        tokenizer: the backbone's tokenizer (generation decodes with it).
        encoder: a frozen sequential encoder (`item_embeddings`, `user_state`, `hidden_dim`).
        gate: a partial `Gate(in_dim=..., num_experts=...)` or a built gate; ignored unless K > 1.
        adapter: `{kind: moe_lora|none, rank, num_experts, alpha, dropout, scaling, targets, target_regex}`.
        optimizer: a partial optimizer (`torch.optim.AdamW` with lr, weight_decay), given parameter groups.
        scheduler: `{warmup_ratio, min_lr_ratio?}` for transformers' warmup + cosine; None for a constant LR.
        lr_multipliers: `{projector: 1.0, gate: 1.0}` relative to the optimizer's lr (adapters use 1.0).
        curriculum: LLaRA's curriculum: hybrid prompts with probability step / total steps (else always hybrid).
        aux_loss_weight: weight of the gate load-balancing loss (0 = off, as the paper).
        loss: `answer` (SFT on the target title, right-padded prompt + answer batches), `rank` (softmax
            cross-entropy over the candidates' log-likelihoods, summed or per-token mean as
            `evaluation.length_normalize`, from one packed forward in evaluation's layout; left-padded prompt
            batches) or `answer+rank` (both from that one forward: answer + rank_weight * rank).
        evaluation: `{rank, generate, generate_on_val, length_normalize, max_new_tokens}` (validation can skip
            generation: checkpoint selection uses the ranking HR@1).
        run_config: the resolved run config (plain dict), stored in checkpoints for `ilora-eval`.
        dropout_seed: the run seed that keys the adapters' dropout masks (None: torch's initial seed, which
            `seed_everything` sets); each training micro-batch's masks are a function of it, the optimiser step
            and the batch index, so a resumed run replays them exactly.
        compile: `torch.compile` each decoder block's training forward (`ilora.compiled`); evaluation stays eager.
        rank_method: how the rank losses run the candidate pass (`candidate_token_logprobs`: `split`, prompt then
            candidates on its KV cache; `joint`, one pass under a dense mask, no cache).
        pad_to_multiple_of: the packed candidate rows of the rank losses are padded to a multiple of this (the
            DataModule pads the prompts likewise), so a compiled step meets few shapes.
    """

    def __init__(
        self,
        *,
        backbone: nn.Module,
        tokenizer: Any,
        encoder: nn.Module,
        gate: Callable[..., nn.Module] | nn.Module | None,
        adapter: Mapping[str, Any],
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Mapping[str, Any] | None = None,
        lr_multipliers: Mapping[str, float] | None = None,
        curriculum: bool = False,
        aux_loss_weight: float = 0.0,
        evaluation: Mapping[str, Any] | None = None,
        run_config: Mapping[str, Any] | None = None,
        loss: str = "answer",
        rank_weight: float = 1.0,
        dropout_seed: int | None = None,
        compile: bool = False,
        pad_to_multiple_of: int = 1,
        rank_method: str = "split",
        compile_dynamic: bool | None = False,
    ) -> None:
        super().__init__()
        if loss not in LOSSES:
            raise ConfigError(f"model.loss={loss!r} is not one of {', '.join(LOSSES)}")
        if not rank_weight >= 0:
            raise ConfigError(f"model.rank_weight={rank_weight} must be >= 0")
        self.loss_kind, self.rank_weight = loss, float(rank_weight)
        self.save_hyperparameters({"run_config": dict(run_config or {})})
        self.backbone = backbone.train()  # adapter dropout on in training; frozen weights are unaffected
        self.tokenizer = tokenizer
        self.encoder = encoder.eval().requires_grad_(False)
        self.adapter_cfg = dict(adapter)
        self.dropout_seed = int(torch.initial_seed() if dropout_seed is None else dropout_seed)
        self.num_experts = self._apply_adapter(self.adapter_cfg)
        self.gate = self._build_gate(gate) if self.num_experts > 1 else None
        self.pad_to_multiple_of = int(pad_to_multiple_of)
        if rank_method not in TRAIN_METHODS:
            raise ConfigError(f"model.rank_method={rank_method!r} is not one of {', '.join(TRAIN_METHODS)}")
        self.rank_method = rank_method
        self.compiled_blocks = compile_blocks(self.backbone, dynamic=compile_dynamic) if compile else 0
        self.projector = ItemProjector(in_dim=encoder.hidden_dim, out_dim=backbone.config.hidden_size)
        if self.num_experts == 0:  # adapter=none: the zero-shot frozen LLM trains nothing, not even the projector
            self.projector.requires_grad_(False)
        self.optimizer_factory = optimizer
        self.scheduler_cfg = check_scheduler(scheduler)
        self.lr_multipliers = {"projector": 1.0, "gate": 1.0, **(lr_multipliers or {})}
        self.curriculum = curriculum
        self.aux_loss_weight = aux_loss_weight
        self.eval_cfg = {**EVAL_DEFAULTS, **(evaluation or {})}
        self.strict_loading = False  # the frozen backbone/encoder are not in our checkpoints
        self.eval_results: dict[str, dict[str, Any]] = {}
        self._eval_records: list[dict[str, Any]] = []
        self._resumed_rng_state: Tensor | None = None
        self._truncated: dict[str, set[int]] = {}
        self._step_losses: list[Tensor] = []

    # ----------------------------------------------------------------- construction
    def _apply_adapter(self, cfg: dict[str, Any]) -> int:
        kind = cfg.get("kind", "moe_lora")
        if kind == "none":
            return 0
        if kind != "moe_lora":
            raise ConfigError(f"adapter.kind={kind!r} is unknown; use moe_lora or none")
        apply_moe_lora(
            self.backbone,
            rank=int(cfg["rank"]),
            num_experts=int(cfg["num_experts"]),
            alpha=float(cfg["alpha"]),
            dropout=float(cfg.get("dropout", 0.0)),
            targets=tuple(cfg.get("targets") or ()),
            target_regex=cfg.get("target_regex"),
            scaling=cfg.get("scaling", "expert"),
            dropout_seed=self.dropout_seed,
        )
        return int(cfg["num_experts"])

    def _build_gate(self, gate: Callable[..., nn.Module] | nn.Module | None) -> nn.Module:
        if gate is None:
            raise ConfigError(f"adapter.num_experts={self.num_experts} needs a gate; set gate=linear (or another)")
        if isinstance(gate, nn.Module):
            return gate
        return gate(in_dim=self.encoder.hidden_dim, num_experts=self.num_experts)

    def train(self, mode: bool = True) -> Recommender:
        """Keep the frozen encoder in eval mode (no dropout) whatever Lightning switches."""
        super().train(mode)
        self.encoder.eval()
        return self

    # ----------------------------------------------------------------- forward pieces
    def embed(self, batch: Mapping[str, Tensor]) -> Tensor:
        """Token embeddings with projected item embeddings written into the slots: [B, T, D]."""
        embeds = self.backbone.get_input_embeddings()(batch["input_ids"])
        if batch["slot_pos"].numel():
            items = self.encoder.item_embeddings(batch["slot_items"])  # [S, D_rec]
            vectors = self.projector(items).to(embeds.dtype)  # [S, D]
            embeds = embeds.index_put((batch["slot_batch"], batch["slot_pos"]), vectors)
        return embeds

    def gate_weights(self, batch: Mapping[str, Tensor]) -> Tensor | None:
        """Per-sequence expert weights [B, K] from the frozen encoder's user state (None without a gate)."""
        if self.gate is None:
            return None
        with torch.no_grad():
            z = self.encoder.user_state(batch["history"], batch["history_len"])  # [B, D_rec]
        num_users = getattr(self.gate, "num_users", None)  # the random-guidance ablation keys on the example row
        if num_users:
            return self.gate(z.float(), user_index=batch["index"] % num_users)
        return self.gate(z.float())

    def gated(self, gate: Tensor | None) -> contextlib.AbstractContextManager:
        """The gate for this batch reaches every MoE-LoRA layer through a context, not through kwargs."""
        if self.num_experts == 0 or gate is None:
            return contextlib.nullcontext()
        return gate_context(self.backbone, gate)

    def answer_loss(self, batch: Mapping[str, Tensor], embeds: Tensor, gate: Tensor | None) -> Tensor:
        """Cross-entropy on the answer tokens only; the LM head runs on those positions alone."""
        with self.gated(gate):
            hidden = self.backbone.base_model(  # no KV cache: training needs none (and it pins a compiled block)
                inputs_embeds=embeds, attention_mask=causal_mask_or_none(batch["attention_mask"]), use_cache=False,
            ).last_hidden_state  # [B, T, D]
        targets = batch["labels"][:, 1:]  # position t predicts token t + 1
        mask = targets != -100
        logits = self.backbone.get_output_embeddings()(hidden[:, :-1][mask])  # [N_answer, V]
        return F.cross_entropy(logits.float(), targets[mask])

    # ----------------------------------------------------------------- training
    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        if self._resumed_rng_state is not None:  # continue the random stream (adapter dropout) where it stopped
            torch.set_rng_state(self._resumed_rng_state)
            self._resumed_rng_state = None
        datamodule = getattr(self.trainer, "datamodule", None)
        if self.curriculum and datamodule is not None and hasattr(datamodule, "hybrid_probability"):
            total = max(int(self.trainer.estimated_stepping_batches), 1)
            datamodule.hybrid_probability = min(1.0, self.global_step / total)

    def note_truncated(self, stage: str, batch: Mapping[str, Any]) -> None:
        """Remember which examples of `stage` had history items dropped to fit the prompt limit."""
        seen = self._truncated.setdefault(stage, set())
        if "truncated_index" in batch:  # a host-side list: no device sync per micro-batch
            seen.update(batch["truncated_index"])
        elif "truncated" in batch:
            seen.update(batch["index"][batch["truncated"]].tolist())

    def truncated_counts(self) -> dict[str, int]:
        """Distinct examples per stage whose prompt was shortened at least once (this process's share under DDP)."""
        return {stage: len(rows) for stage, rows in self._truncated.items()}

    def candidate_losses(self, batch: Mapping[str, Tensor], embeds: Tensor, gate: Tensor | None) -> tuple[Tensor, Tensor]:
        """(rank loss, answer loss) from one packed pass over a left-padded prompt batch and its candidates.

        The scores are the ones evaluation ranks by (sum, or per-token mean with `length_normalize`); the answer
        loss is the target segment's mean token negative log-likelihood, as `answer_loss` on the same text.
        """
        with self.gated(gate):
            token_lp = candidate_token_logprobs(
                self.backbone, inputs_embeds=embeds, attention_mask=batch["attention_mask"],
                cand_input_ids=batch["cand_input_ids"], cand_attention_mask=batch["cand_attention_mask"],
                method=self.rank_method, pad_to=self.pad_to_multiple_of,
            )  # [B, C, L]
        lengths = batch["cand_attention_mask"].sum(-1)  # [B, C]
        scores = token_lp.sum(-1)
        if self.eval_cfg["length_normalize"]:
            scores = scores / lengths.clamp(min=1)
        target = batch["target_index"]
        rows = torch.arange(len(target), device=target.device)
        answer = -token_lp[rows, target].sum() / lengths[rows, target].sum().clamp(min=1)
        return F.cross_entropy(scores, target), answer

    def training_loss(self, batch: Mapping[str, Tensor], gate: Tensor | None) -> Tensor:
        embeds = self.embed(batch)
        if self.loss_kind == "answer":
            return self.answer_loss(batch, embeds, gate)
        rank, answer = self.candidate_losses(batch, embeds, gate)
        batch_size = batch["input_ids"].shape[0]
        self.log("train/rank_loss", rank, batch_size=batch_size)
        self.log("train/answer_loss", answer, batch_size=batch_size)
        return rank if self.loss_kind == "rank" else answer + self.rank_weight * rank

    def training_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> Tensor:
        self.note_truncated("train", batch)
        masks = dropout_masks(self.backbone)
        if masks is not None:  # this micro-batch's dropout masks: a function of (seed, step, batch), not of history
            masks.at(self.global_step, batch_idx)
        gate = self.gate_weights(batch)
        loss = self.training_loss(batch, gate)
        batch_size = batch["input_ids"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=batch_size)
        if gate is not None:
            if self.aux_loss_weight > 0:
                aux = load_balancing_loss(gate)
                self.log("train/aux_loss", aux, batch_size=batch_size)
                loss = loss + self.aux_loss_weight * aux
            self.log("train/gate_entropy", gate_entropy(gate).mean(), batch_size=batch_size)
            for k, w in enumerate(gate.detach().mean(0)):
                self.log(f"train/expert_{k}_weight", w, batch_size=batch_size)
        self._step_losses.append(loss.detach())  # checked once per optimiser step: no host sync per micro-batch
        return loss

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Stop before a non-finite loss reaches the weights: one host sync per optimiser step, not per micro-batch."""
        losses, self._step_losses = self._step_losses, []
        if not losses:
            return
        stacked = torch.stack([loss.float() for loss in losses])
        finite = torch.isfinite(stacked)
        if not bool(finite.all()):
            bad = stacked[~finite][0].item()
            raise NonFiniteLossError(
                f"non-finite training loss {bad} at global step {self.global_step} "
                f"(epoch {self.current_epoch}); lower model.optimizer.lr or check the data"
            )

    def configure_optimizers(self) -> Any:
        base_lr = self._base_lr()
        groups = [
            {"params": self._params_of("adapter"), "lr": base_lr},
            {"params": self._params_of("projector"), "lr": base_lr * self.lr_multipliers["projector"]},
            {"params": self._params_of("gate"), "lr": base_lr * self.lr_multipliers["gate"]},
        ]
        optimizer = self.optimizer_factory(params=[g for g in groups if g["params"]])
        if not self.scheduler_cfg:
            return optimizer
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        warmup = int(math.ceil(float(self.scheduler_cfg.get("warmup_ratio", 0.05)) * total))
        scheduler = get_cosine_with_min_lr_schedule_with_warmup(
            optimizer, num_warmup_steps=warmup, num_training_steps=total,
            min_lr_rate=float(self.scheduler_cfg.get("min_lr_ratio", 0.0)),
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def _base_lr(self) -> float:
        keywords = getattr(self.optimizer_factory, "keywords", {}) or {}
        if "lr" not in keywords:
            raise ConfigError("model.optimizer needs an explicit lr (e.g. model.optimizer.lr=2e-4)")
        return float(keywords["lr"])

    def _params_of(self, part: str) -> list[nn.Parameter]:
        if part == "projector":
            return [p for p in self.projector.parameters() if p.requires_grad]
        if part == "gate":
            return [] if self.gate is None else [p for p in self.gate.parameters() if p.requires_grad]
        return [p for p in self.backbone.parameters() if p.requires_grad]

    # ----------------------------------------------------------------- evaluation
    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        self.note_truncated("val", batch)
        self._eval_records.extend(self.evaluate_batch(batch, generate=bool(self.eval_cfg["generate_on_val"])))

    def test_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        self.note_truncated("test", batch)
        self._eval_records.extend(self.evaluate_batch(batch))

    @torch.no_grad()
    def evaluate_batch(self, batch: Mapping[str, Any], generate: bool = True) -> list[dict[str, Any]]:
        """Rank and/or generate for one left-padded eval batch; one record per example."""
        embeds, gate = self.embed(batch), self.gate_weights(batch)
        users = batch["user"] if "user" in batch else batch["index"]
        columns = [batch["index"], users, batch["target_index"], batch["candidates"]]
        index, user, target, candidates = (c.tolist() for c in columns)  # one copy each, not one per element
        records = [{"index": i, "user": u, "target_index": t, "candidates": c}
                   for i, u, t, c in zip(index, user, target, candidates)]
        generate = bool(self.eval_cfg["generate"] and generate)
        prompt_cache = None  # ranking's prompt KV cache, reused by generation (the prompt is encoded once)
        with self.gated(gate):
            if self.eval_cfg["rank"]:
                ranked = score_candidates(
                    self.backbone,
                    inputs_embeds=embeds,
                    attention_mask=batch["attention_mask"],
                    cand_input_ids=batch["cand_input_ids"],
                    cand_attention_mask=batch["cand_attention_mask"],
                    length_normalize=bool(self.eval_cfg["length_normalize"]),
                    keep_prompt_cache=generate,
                )
                scores, prompt_cache = ranked if generate else (ranked, None)
                for record, row in zip(records, scores.float().cpu().tolist()):
                    record["scores"] = row
            if generate:
                texts = generate_answers(
                    self.backbone,
                    self.tokenizer,
                    inputs_embeds=embeds,
                    attention_mask=batch["attention_mask"],
                    max_new_tokens=int(self.eval_cfg["max_new_tokens"]),
                    prompt_cache=prompt_cache,
                )
                for record, text, titles in zip(records, texts, batch["candidate_titles"]):
                    record["generated"] = text
                    record["choice"] = parse_choice(text, titles)
        if gate is not None:
            for record, g in zip(records, gate.float().cpu().tolist()):
                record["gate"] = g
        return records

    def on_validation_epoch_start(self) -> None:
        self._eval_records = []

    def on_test_epoch_start(self) -> None:
        self._eval_records = []

    def on_validation_epoch_end(self) -> None:
        self._finish_eval("val")

    def on_test_epoch_end(self) -> None:
        self._finish_eval("test")

    def _finish_eval(self, stage: str) -> None:
        records = self._gather_records(self._eval_records)
        self._eval_records = []
        if not records:
            return
        metrics = summarize(records, prefix=f"{stage}/")
        self.log_dict(metrics, sync_dist=False, rank_zero_only=False)
        self.eval_results[stage] = {"metrics": metrics, "records": records}
        if self.trainer.is_global_zero and not self.trainer.sanity_checking:
            self._write_predictions(stage, records)

    def _gather_records(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """All ranks' records, each test example exactly once (samplers pad the last batch with repeats)."""
        if self.trainer.world_size > 1 and torch.distributed.is_initialized():
            everyone: list[list[dict[str, Any]] | None] = [None] * self.trainer.world_size
            torch.distributed.all_gather_object(everyone, records)
            records = [r for part in everyone for r in (part or [])]
        unique = {r["index"]: r for r in records}
        return [unique[i] for i in sorted(unique)]

    def _write_predictions(self, stage: str, records: list[dict[str, Any]]) -> None:
        out_dir = Path(self.trainer.default_root_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / f"predictions_{stage}.jsonl"
        tmp = path.with_suffix(".jsonl.tmp")
        with tmp.open("w", encoding="utf-8") as f:
            for record in records:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
        tmp.replace(path)

    # ----------------------------------------------------------------- checkpoints
    def trainable_state_keys(self) -> set[str]:
        """State-dict keys that training changes: trainable parameters plus gate/projector buffers."""
        keys = {name for name, p in self.named_parameters() if p.requires_grad}
        for prefix, module in (("projector.", self.projector), ("gate.", self.gate)):
            if module is not None:
                keys |= {prefix + name for name, _ in module.named_buffers()}
        return keys

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        keep = self.trainable_state_keys()
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}
        checkpoint["ilora_format"] = 1
        checkpoint["torch_rng_state"] = torch.get_rng_state()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("state_dict")
        if not isinstance(state, Mapping):
            raise CheckpointError("checkpoint has no state_dict: not an ilora training checkpoint")
        expected = {k: v.shape for k, v in self.state_dict().items() if k in self.trainable_state_keys()}
        check_state_fits(state, expected, what="checkpoint",
                         hint="different backbone/adapter/gate? check adapter.rank / adapter.num_experts / backbone")
        self._resumed_rng_state = checkpoint.get("torch_rng_state")


def check_scheduler(scheduler: Mapping[str, Any] | None) -> dict[str, float] | None:
    """`{warmup_ratio, min_lr_ratio}` both in [0, 1]; unknown keys are a ConfigError (not silently ignored)."""
    if not scheduler:
        return None
    scheduler = dict(scheduler)
    unknown = sorted(set(scheduler) - {"warmup_ratio", "min_lr_ratio"})
    if unknown:
        raise ConfigError(f"model.scheduler.{unknown[0]} is not a scheduler setting (warmup_ratio, min_lr_ratio)")
    for key, value in scheduler.items():
        if not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
            raise ConfigError(f"model.scheduler.{key}={value!r} must be a number in [0, 1]")
    return {k: float(v) for k, v in scheduler.items()}


def causal_mask_or_none(attention_mask: Tensor) -> Tensor | None:
    """None when every row is right-padded (ones, then zeros): causal attention alone is then exact for the real
    tokens, and SDPA takes its mask-free path (no [B, 1, T, T] mask, grouped-query heads not repeated)."""
    if attention_mask.shape[1] < 2 or bool((attention_mask[:, 1:] <= attention_mask[:, :-1]).all()):
        return None
    return attention_mask


def summarize(records: list[dict[str, Any]], prefix: str = "") -> dict[str, float]:
    """Flat metrics from eval records: `rank_*` (always valid) and `gen_*` (LLaRA's parsing)."""
    metrics: dict[str, float] = {}
    target_index = torch.tensor([r["target_index"] for r in records])
    if "scores" in records[0]:
        scores = torch.tensor([r["scores"] for r in records])
        for name, value in ranking_metrics(scores, target_index, ks=(1, 5, 10)).items():
            metrics[f"{prefix}rank_{name}"] = float(value)
        users = [r.get("user", r["index"]) for r in records]  # windows of one user are resampled together
        low, high = cluster_bootstrap_ci(per_example_hits(scores, target_index, 1).numpy(), np.asarray(users))
        metrics[f"{prefix}rank_hr@1_ci_low"], metrics[f"{prefix}rank_hr@1_ci_high"] = float(low), float(high)
    if "choice" in records[0]:
        choices = torch.tensor([r["choice"] for r in records])
        for name, value in generation_metrics(choices, target_index).items():
            metrics[f"{prefix}gen_{name}"] = float(value)
    if "gate" in records[0]:
        gates = torch.tensor([r["gate"] for r in records])
        metrics[f"{prefix}gate_entropy"] = float(gate_entropy(gates).mean())
    metrics[f"{prefix}num_examples"] = float(len(records))
    return metrics
