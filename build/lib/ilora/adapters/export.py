"""Our MoE-LoRA adapters as a peft LoRA adapter directory: exact for K=1, and for K>1 exact for one fixed gate.

With the gate fixed, the K experts are one rank-r LoRA:
    s * B diag(repeat_interleave(g, r/K)) A = s * B' A,   B' = B diag(repeat_interleave(g, r/K)),
and peft computes (lora_alpha / r) * B A, so `lora_alpha = s * r` keeps our scaling with no rescaled weights
(for K=1 and scaling="expert" that is our own alpha). peft writes the config; the weights are saved under the
key layout peft reads back (`base_model.model.<module>.lora_{A,B}.weight`), which the round-trip test checks.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from ilora.adapters.moe_lora import MoELoRALinear, moe_lora_layers
from ilora.errors import ConfigError

ADAPTER_WEIGHTS = "adapter_model.safetensors"


def folded_factors(layer: MoELoRALinear, gate: Tensor | None) -> tuple[Tensor, Tensor]:
    """(A [r, in], B' [out, r]) with the fixed gate `[K]` folded into B (K=1: no gate needed)."""
    if layer.merged:
        raise ConfigError("cannot export a merged MoE-LoRA layer; unmerge it first")
    A, B = layer.lora_A.detach().float(), layer.lora_B.detach().float()
    if layer.num_experts == 1:
        return A.clone(), B.clone()
    if gate is None or gate.shape != (layer.num_experts,):
        raise ConfigError(f"an iLoRA adapter with {layer.num_experts} experts exports for one fixed gate [K]; "
                          "choose one (ilora-export gate_from=mean or gate_from=user:<id>)")
    weights = gate.detach().float().to(B.device).repeat_interleave(layer.expert_rank)  # [r]
    return A.clone(), B * weights[None, :]


def _targets(model: nn.Module, names: list[str]) -> list[str]:
    """Module-name suffixes when they pick exactly the adapted layers, else the full names."""
    suffixes = sorted({n.rsplit(".", 1)[-1] for n in names})
    matched = {n for n, m in model.named_modules() if n.rsplit(".", 1)[-1] in suffixes
               and isinstance(m, (nn.Linear, MoELoRALinear)) and not n.endswith(".base")}
    return suffixes if matched == set(names) else sorted(names)


def export_peft(model: nn.Module, out_dir: str | Path, *, gate: Tensor | None = None,
                base_model_name_or_path: str | None = None) -> dict:
    """Write `adapter_config.json` + `adapter_model.safetensors` for `peft.PeftModel.from_pretrained(base, out_dir)`.

    `model`: the backbone carrying our layers (its plain base is what peft wraps). Returns the config written.
    """
    from peft import LoraConfig

    layers = dict(moe_lora_layers(model))
    if not layers:
        raise ConfigError("the model has no MoE-LoRA layers to export (adapter=none?)")
    kinds = {(m.rank, m.num_experts, m.scaling) for m in layers.values()}
    if len(kinds) != 1:
        raise ConfigError(f"layers differ in (rank, experts, scaling): {sorted(kinds)}; peft needs one LoRA config")
    rank, _, scaling = kinds.pop()
    dropout = next(iter(layers.values())).dropout
    state = {}
    for name, layer in layers.items():
        A, B = folded_factors(layer, gate)
        state[f"base_model.model.{name}.lora_A.weight"] = A.contiguous().cpu()
        state[f"base_model.model.{name}.lora_B.weight"] = B.contiguous().cpu()
    config = LoraConfig(r=rank, lora_alpha=scaling * rank, target_modules=_targets(model, list(layers)),
                        lora_dropout=float(getattr(dropout, "p", 0.0)), bias="none", task_type="CAUSAL_LM",
                        base_model_name_or_path=base_model_name_or_path)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(str(out))
    save_file(state, str(out / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    return config.to_dict()


@torch.no_grad()
def max_logit_difference(ours: nn.Module, theirs: nn.Module, input_ids: Tensor) -> float:
    """Largest |logit difference| between two causal LMs on the same tokens (fp32 logits)."""
    a = ours(input_ids=input_ids).logits.float()
    b = theirs(input_ids=input_ids).logits.float()
    return float((a - b).abs().max())
