"""`ilora-export ckpt_path=... out=DIR`: a checkpoint's adapter as a peft LoRA directory, plus projector and gate.

The LLaRA-side parts peft has no notion of travel beside the adapter: `ilora_projector.safetensors` (item
embeddings -> token embeddings), `ilora_gate.safetensors` (K>1) and `ilora_export.json` (what was exported and
how to use it). An iLoRA checkpoint exports for one fixed gate (conf/export.yaml), since a fixed mixture of
rank-r/K experts is one rank-r LoRA.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import save_file

from ilora.adapters import gate_context
from ilora.adapters.export import export_peft, max_logit_difference
from ilora.cli import CONFIG_PATH
from ilora.cli.common import check_output, staged_output, task_wrapper, write_json
from ilora.cli.components import build_all, build_backbone
from ilora.cli.eval import model_config
from ilora.cli.runs import check_checkpoint_fits, load_trained_weights, run_or_exit
from ilora.data.datasets import pad_histories
from ilora.errors import ConfigError, DataError

GATE_MODES = "mean | uniform | user:<id> | row:<n>"


def _check_gate_choice(choice: str) -> None:
    kind, _, value = str(choice).partition(":")
    if kind in ("mean", "uniform") and not value:
        return
    if kind in ("user", "row") and value.strip().lstrip("-").isdigit():
        return
    raise ConfigError(f"gate_from={choice!r} is not one of {GATE_MODES}")


@torch.no_grad()
def fixed_gate(model: Any, datamodule: Any, choice: str, split_name: str) -> torch.Tensor:
    """The gate [K] to fold into the export, from the split's sequences through the model's encoder and gate."""
    K = model.num_experts
    kind, _, value = str(choice).partition(":")
    if kind == "uniform":
        return torch.full((K,), 1.0 / K)
    data = datamodule.load()
    if split_name not in data.splits:
        raise ConfigError(f"split={split_name} is not one of {sorted(data.splits)}")
    split = data.splits[split_name]
    if kind == "mean":
        rows = np.flatnonzero(np.fromiter(map(len, split.history), dtype=np.int64) >= datamodule.hparams.min_history)
    elif kind == "user":
        if split.user is None:
            raise DataError(f"{split_name}.parquet has no user column: use gate_from=row:<n>")
        rows = np.flatnonzero(split.user == int(value))[-1:]
        if not rows.size:
            raise DataError(f"gate_from={choice}: user {value} has no sequence in {split_name}.parquet")
    else:
        rows = np.asarray([int(value)])
        if not 0 <= rows[0] < len(split):
            raise DataError(f"gate_from={choice}: {split_name}.parquet has rows 0..{len(split) - 1}")
    if not rows.size:
        raise DataError(f"{split_name}.parquet has no sequence with >= {datamodule.hparams.min_history} items")
    weights = []
    for start in range(0, rows.size, 4096):
        chunk = rows[start:start + 4096]
        history, lengths = pad_histories([split.history[i] for i in chunk], data.padding_id, data.window)
        batch = {"history": torch.from_numpy(history), "history_len": torch.from_numpy(lengths),
                 "index": torch.from_numpy(chunk)}
        weights.append(model.gate_weights(batch).float())
    return torch.cat(weights).mean(0)


@task_wrapper
def export(cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    out = Path(str(cfg.out))
    run_cfg = model_config(cfg)
    run_cfg.trainer = {"accelerator": "cpu"}  # no Trainer: a GPU-trained checkpoint exports on a CPU
    if OmegaConf.select(run_cfg, "adapter.kind", default="moe_lora") == "none":
        raise ConfigError(f"checkpoint {cfg.ckpt_path} was trained with adapter=none: there is no adapter to export")
    _check_gate_choice(cfg.gate_from)
    check_checkpoint_fits(run_cfg, cfg.ckpt_path)
    guard = dict(name=f"out={out}", hint="choose another directory or pass force=true", inputs=[str(cfg.ckpt_path)])
    check_output(out, bool(cfg.force), **guard)  # before anything loads
    with staged_output(out, bool(cfg.force), **guard) as staging:
        summary, parts = _export_into(cfg, run_cfg, staging)
    return summary, parts


def _export_into(cfg: DictConfig, run_cfg: DictConfig, out: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Everything `export` writes, into `out` (the staging folder)."""
    parts = build_all(run_cfg)
    model = parts["model"]
    load_trained_weights(model, cfg.ckpt_path)
    gate = fixed_gate(model, parts["datamodule"], str(cfg.gate_from), str(cfg.split)) if model.num_experts > 1 else None
    backbone_path = OmegaConf.select(run_cfg, "backbone.path", default=None)
    peft_config = export_peft(model.backbone, out, gate=gate, base_model_name_or_path=backbone_path)
    save_file({k: v.detach().float().contiguous() for k, v in model.projector.state_dict().items()},
              str(out / "ilora_projector.safetensors"))
    if model.gate is not None:
        save_file({k: v.detach().float().contiguous() for k, v in model.gate.state_dict().items()},
                  str(out / "ilora_gate.safetensors"))
    summary: dict[str, Any] = {
        "format": "ilora-export/1", "ckpt_path": str(cfg.ckpt_path),
        "backbone": OmegaConf.to_container(run_cfg.backbone, resolve=True),
        "adapter": {"num_experts": model.num_experts, "rank": int(run_cfg.adapter.rank),
                    "alpha": float(run_cfg.adapter.alpha), "peft_lora_alpha": peft_config["lora_alpha"]},
        "gate": {"choice": str(cfg.gate_from) if gate is not None else None, "split": str(cfg.split),
                 "weights": gate.tolist() if gate is not None else None},
        "projector": {"file": "ilora_projector.safetensors", "in_dim": model.encoder.hidden_dim,
                      "out_dim": model.backbone.config.hidden_size,
                      "module": "Linear(in,out) -> GELU -> Linear(out,out) (ilora.projector.ItemProjector)"},
        "encoder": {"name": str(run_cfg.encoder.name), "seed": int(run_cfg.encoder_seed),
                    "data": str(run_cfg.data.name)},
        "prompts": {"domain": parts["datamodule"].domain, "style": str(run_cfg.data.prompt)},
        "how_to_use": (
            "base = AutoModelForCausalLM.from_pretrained(<backbone>); model = PeftModel.from_pretrained(base, DIR). "
            "Text-only prompts work as they are. LLaRA prompts put projector(encoder.item_embeddings(item_ids)) "
            "into inputs_embeds at each [HistoryEmb]/[CansEmb] slot (ilora.recommender.Recommender.embed). "
            "With K>1 the adapter holds the fixed gate in gate.weights; per-user routing needs ilora itself "
            "(ilora_gate.safetensors maps the encoder's user state to the gate)."
        ),
    }
    if bool(cfg.verify):
        from peft import PeftModel

        fresh, tokenizer = build_backbone(run_cfg)
        theirs = PeftModel.from_pretrained(fresh, str(out)).eval()
        prompt = parts["datamodule"].titles[:8]
        ids = torch.tensor([tokenizer(", ".join(prompt))["input_ids"][:64]])
        context = gate_context(model.backbone, gate[None]) if gate is not None else contextlib.nullcontext()
        with context:
            summary["verify_max_abs_logit_difference"] = max_logit_difference(model.backbone, theirs, ids)
        summary["verify_tokens"] = int(ids.shape[1])
    write_json(out / "ilora_export.json", summary)
    return summary, parts


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="export")
def _hydra_main(cfg: DictConfig) -> None:
    summary, _ = run_or_exit(export, cfg)
    print(f"[ilora] exported {summary['adapter']} to {cfg.out} (peft LoRA; gate {summary['gate']['weights']})")
    if "verify_max_abs_logit_difference" in summary:
        print(f"[ilora] peft reload: max |logit difference| {summary['verify_max_abs_logit_difference']:.2e} "
              f"over {summary['verify_tokens']} tokens")


def main() -> None:
    _hydra_main()


if __name__ == "__main__":
    main()
