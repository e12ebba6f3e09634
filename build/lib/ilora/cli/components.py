"""Builds a run's parts from its config, cheapest checks first, so bad input fails before a model loads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
import lightning.pytorch as pl
import torch
from omegaconf import DictConfig, OmegaConf

from ilora.backbones import load_backbone
from ilora.data.candidates import check_num_candidates
from ilora.data.datasets import load_dataset
from ilora.encoders.cache import ensure_encoder
from ilora.encoders.io import load_encoder
from ilora.errors import ConfigError
from ilora.recommender import Recommender


def validate_config(cfg: DictConfig) -> None:
    """Impossible combinations, caught before any data or model is loaded."""
    adapter = cfg.adapter
    if adapter.get("kind", "moe_lora") == "moe_lora":
        rank, experts = int(adapter.rank), int(adapter.num_experts)
        if experts < 1:
            raise ConfigError(f"adapter.num_experts={experts} must be >= 1")
        if rank < 1:
            raise ConfigError(f"adapter.rank={rank} must be >= 1")
        if rank % experts:
            raise ConfigError(f"adapter.num_experts={experts} does not divide adapter.rank={rank}")
    accelerator = OmegaConf.select(cfg, "trainer.accelerator", default="cpu")
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"trainer.accelerator={accelerator} but no CUDA GPU is visible; this run needs a GPU (or use trainer=cpu)"
        )
    backbone_path = OmegaConf.select(cfg, "backbone.path", throw_on_missing=False)
    if OmegaConf.select(cfg, "backbone.kind") == "hf" and (
        OmegaConf.is_missing(cfg.backbone, "path") or not backbone_path or not Path(backbone_path).is_dir()
    ):
        shown = "??? (not set)" if OmegaConf.is_missing(cfg.backbone, "path") else backbone_path
        raise ConfigError(f"backbone.path={shown} is not a local model directory (e.g. backbone.path=/models/Llama-2-7b-hf)")
    if OmegaConf.select(cfg, "ckpt_path") not in (None, "last") and not Path(cfg.ckpt_path).is_file():
        raise ConfigError(f"ckpt_path={cfg.ckpt_path} does not exist")
    pad_multiple(cfg)  # model.compile and model.pad_to_multiple_of
    method = rank_method(cfg)
    if method not in ("split", "joint"):
        raise ConfigError(f"model.rank_method={method!r} is not one of split, joint, auto")
    if OmegaConf.select(cfg, "model.compile_dynamic", default=True) not in (True, False, None):
        raise ConfigError("model.compile_dynamic must be true, false or null (dynamo's automatic choice)")


def encoder_data(cfg: DictConfig) -> tuple[str, str]:
    """(name, dir) of the dataset the frozen encoder is trained on: `data.encoder_data` when set (a protocol
    that shares another dataset's train split, e.g. movielens_windows -> movielens), else the dataset itself."""
    name = OmegaConf.select(cfg, "data.encoder_data", default=None) or cfg.data.name
    directory = cfg.data.dir if name == cfg.data.name else str(Path(cfg.paths.data_dir) / name)
    return name, directory


def encoder_dir(cfg: DictConfig) -> Path:
    return Path(cfg.paths.encoder_dir) / encoder_data(cfg)[0] / cfg.encoder.name / f"seed{cfg.encoder_seed}"


def build_datamodule(cfg: DictConfig):
    """The DataModule, with the dataset checked on disk now (one clear error names the bad file)."""
    data = load_dataset(cfg.data.dir)
    num_candidates = OmegaConf.select(cfg, "data.num_candidates", default=None)
    if isinstance(num_candidates, int):  # the catalogue must supply the negatives of every example
        for split in data.splits.values():
            worst = max((len(set(h) | {int(t)}) for h, t in zip(split.history, split.target.tolist())), default=0)
            check_num_candidates(num_candidates, data.num_items, worst, f" in {cfg.data.dir}/{split.name}.parquet")
    # losses over the candidate pass train on evaluation's layout (left-padded prompts, no answer appended)
    layout = "answer" if OmegaConf.select(cfg, "model.loss", default="answer") == "answer" else "prompt"
    if is_zero_shot(cfg):  # nothing is trained, so no projector could map item embeddings: titles only
        return hydra.utils.instantiate(cfg.data, text_only=True, train_layout=layout)
    return hydra.utils.instantiate(cfg.data, train_layout=layout, pad_to_multiple_of=pad_multiple(cfg))


def compiles(cfg: DictConfig) -> bool:
    """`model.compile`: true, false or auto (on where `make bench` measured it faster: bf16 autocast on a CPU)."""
    value = OmegaConf.select(cfg, "model.compile", default=False)
    if value == "auto":
        accelerator = str(OmegaConf.select(cfg, "trainer.accelerator", default="cpu"))
        return accelerator == "cpu" and str(OmegaConf.select(cfg, "trainer.precision", default="")).startswith("bf16")
    if not isinstance(value, bool):
        raise ConfigError(f"model.compile={value!r} must be true, false or auto")
    return value


def pad_multiple(cfg: DictConfig) -> int:
    """Training batches' padding multiple: `model.pad_to_multiple_of` for a compiled step with static shapes, else 1."""
    if not compiles(cfg) or OmegaConf.select(cfg, "model.compile_dynamic", default=True) is not False:
        return 1
    multiple = int(OmegaConf.select(cfg, "model.pad_to_multiple_of", default=64))
    if multiple < 1:
        raise ConfigError(f"model.pad_to_multiple_of={multiple} must be >= 1")
    return multiple


def rank_method(cfg: DictConfig) -> str:
    """`model.rank_method`; auto = joint when compiled (one graph: no KV cache in the block), else split."""
    method = str(OmegaConf.select(cfg, "model.rank_method", default="auto"))
    return ("joint" if compiles(cfg) else "split") if method == "auto" else method


def is_zero_shot(cfg: DictConfig) -> bool:
    """`adapter=none`: the frozen LLM on text-only prompts, evaluated without training."""
    return OmegaConf.select(cfg, "adapter.kind", default="moe_lora") == "none"


def build_encoder(cfg: DictConfig):
    """The frozen sequential encoder: trained once and cached per (dataset, encoder, seed)."""
    name, directory = encoder_data(cfg)
    path = ensure_encoder(
        data_dir=directory,
        data_name=name,
        encoder_cfg=OmegaConf.to_container(cfg.encoder, resolve=True),
        out_dir=encoder_dir(cfg),
        seed=int(cfg.encoder_seed),
    )
    return load_encoder(path)


def build_backbone(cfg: DictConfig):
    options = OmegaConf.to_container(cfg.backbone, resolve=True)
    try:
        return load_backbone(**options)
    except (OSError, ValueError) as e:  # e.g. a model directory with a config but no weights or tokenizer
        message = " ".join(str(e).split())
        raise ConfigError(f"backbone.path={options.get('path')}: cannot load the model ({message})") from e


def build_model(cfg: DictConfig, *, backbone, tokenizer, encoder, num_train_examples: int | None = None) -> Recommender:
    gate_cfg = cfg.get("gate")
    if gate_cfg is not None and "num_users" in gate_cfg and gate_cfg.num_users is None:
        # the random-guidance ablation: one learned random embedding per example row
        gate_cfg = OmegaConf.merge(gate_cfg, {"num_users": int(num_train_examples or 1)})
    gate = hydra.utils.instantiate(gate_cfg) if gate_cfg else None
    model_cfg = cfg.model
    return Recommender(
        backbone=backbone,
        tokenizer=tokenizer,
        encoder=encoder,
        gate=gate,
        adapter=OmegaConf.to_container(cfg.adapter, resolve=True),
        optimizer=hydra.utils.instantiate(model_cfg.optimizer),
        scheduler=OmegaConf.to_container(model_cfg.scheduler, resolve=True) if model_cfg.scheduler else None,
        lr_multipliers=OmegaConf.to_container(model_cfg.lr_multipliers, resolve=True),
        curriculum=bool(model_cfg.curriculum),
        aux_loss_weight=float(model_cfg.aux_loss_weight),
        evaluation=evaluation_settings(cfg),
        run_config=portable_config(cfg),
        loss=str(model_cfg.get("loss", "answer")),
        rank_weight=float(model_cfg.get("rank_weight", 1.0)),
        dropout_seed=int(cfg.get("seed", 0)),
        compile=compiles(cfg),
        pad_to_multiple_of=pad_multiple(cfg),
        rank_method=rank_method(cfg),
        compile_dynamic=model_cfg.get("compile_dynamic", True),
    )


def uses_history_prompt(cfg: DictConfig) -> bool:
    return OmegaConf.select(cfg, "data.prompt", default="llara") == "history"


def evaluation_settings(cfg: DictConfig) -> dict[str, Any]:
    """`model.evaluation`, with generation off for history-only prompts (no listed set to choose from)."""
    evaluation = OmegaConf.to_container(cfg.model.evaluation, resolve=True)
    if uses_history_prompt(cfg) and evaluation.get("generate", True):
        print("[ilora] data.prompt=history lists no candidates: evaluation ranks only (no generation metrics)")
        evaluation["generate"] = False
    return evaluation


def portable_config(cfg: DictConfig) -> dict[str, Any]:
    """The run config as stored in checkpoints: unresolved (paths follow the machine that reads it), no hydra node."""
    config = OmegaConf.to_container(cfg, resolve=False)
    config.pop("hydra", None)
    return config


def build_all(cfg: DictConfig) -> dict[str, Any]:
    """Data (checked) -> encoder -> backbone -> model, each step only after the cheaper ones passed."""
    validate_config(cfg)
    datamodule = build_datamodule(cfg)
    encoder = build_encoder(cfg)
    backbone, tokenizer = build_backbone(cfg)
    # Prompts longer than the backbone's context lose their oldest history items (whole titles), unless
    # data.max_prompt_tokens sets the limit; generation needs room for its new tokens too.
    evaluation = OmegaConf.select(cfg, "model.evaluation", default=None) or {}
    generates = evaluation.get("generate", True) and not uses_history_prompt(cfg)
    reserve = int(evaluation.get("max_new_tokens", 0)) if generates else 0
    datamodule.set_tokenizer(tokenizer, context_tokens=getattr(backbone.config, "max_position_embeddings", None),
                             reserve_tokens=reserve)
    # Seed right before the trainable tensors are created: whether the encoder was trained now or read from
    # the cache must not change the adapters' initialisation (a resumed run relies on it).
    pl.seed_everything(int(cfg.get("seed", 0)), workers=True, verbose=False)
    num_train = len(datamodule.load().splits["train"]) if "train" in datamodule.load().splits else None
    model = build_model(cfg, backbone=backbone, tokenizer=tokenizer, encoder=encoder, num_train_examples=num_train)
    return {"datamodule": datamodule, "model": model, "encoder": encoder, "tokenizer": tokenizer}


def instantiate_list(section: DictConfig | None) -> list[Any]:
    """Instantiate every `_target_` entry of a config group (callbacks, loggers)."""
    if not section:
        return []
    return [hydra.utils.instantiate(c) for c in section.values() if isinstance(c, DictConfig) and "_target_" in c]
