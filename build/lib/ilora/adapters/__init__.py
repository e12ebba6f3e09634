"""Instance-wise LoRA: the MoE-LoRA layer, its injection into causal LMs, and the sequence-guided gates."""

from ilora.adapters.dropout import DropoutMasks, dropout_masks
from ilora.adapters.gates import (
    Gate,
    LinearGate,
    MLPGate,
    NoisyGate,
    RandomGate,
    TopKGate,
    UniformGate,
    gate_entropy,
    load_balancing_loss,
)
from ilora.adapters.moe_lora import (
    DEFAULT_TARGETS,
    MoELoRALinear,
    adapter_state_dict,
    apply_moe_lora,
    count_parameters,
    disable_adapters,
    gate_context,
    load_adapter_state_dict,
    merge,
    moe_lora_layers,
    trainable_parameters,
    unmerge,
)

__all__ = [
    "DEFAULT_TARGETS",
    "DropoutMasks",
    "Gate",
    "LinearGate",
    "MLPGate",
    "MoELoRALinear",
    "NoisyGate",
    "RandomGate",
    "TopKGate",
    "UniformGate",
    "adapter_state_dict",
    "apply_moe_lora",
    "count_parameters",
    "disable_adapters",
    "dropout_masks",
    "gate_context",
    "gate_entropy",
    "load_adapter_state_dict",
    "load_balancing_loss",
    "merge",
    "moe_lora_layers",
    "trainable_parameters",
    "unmerge",
]
