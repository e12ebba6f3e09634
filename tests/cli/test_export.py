"""ilora-export: checkpoints become peft LoRA adapters that reproduce our logits (K=1 exactly, K=4 for one gate)."""

from __future__ import annotations

import contextlib
import copy
import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file

from ilora.adapters import apply_moe_lora, gate_context
from ilora.adapters.export import export_peft
from ilora.backbones import tiny_random_model
from ilora.cli.export import export
from ilora.cli.train import train
from ilora.errors import ConfigError

TOLERANCE = 1e-5  # fp32 logits; the fold B diag(g) is exact up to float rounding


def _random_adapter(num_experts: int) -> tuple[torch.nn.Module, torch.nn.Module]:
    base = tiny_random_model(300, seed=0)
    ours = copy.deepcopy(base)
    apply_moe_lora(ours, rank=8, num_experts=num_experts, alpha=16, targets=("q_proj", "v_proj", "down_proj"))
    generator = torch.Generator().manual_seed(1)
    for name, p in ours.named_parameters():
        if "lora_B" in name:  # B starts at zero: give it values so the adapter changes the logits
            p.data.copy_(torch.randn(p.shape, generator=generator) * 0.05)
    return base.eval(), ours.eval()


@pytest.mark.parametrize("num_experts", [1, 4])
def test_peft_reproduces_our_logits(tmp_path, num_experts):
    base, ours = _random_adapter(num_experts)
    gate = torch.tensor([0.1, 0.2, 0.3, 0.4]) if num_experts > 1 else None
    config = export_peft(ours, tmp_path, gate=gate)
    assert set(config["target_modules"]) == {"down_proj", "q_proj", "v_proj"}
    theirs = PeftModel.from_pretrained(copy.deepcopy(base), str(tmp_path)).eval()
    ids = torch.randint(0, 300, (2, 19), generator=torch.Generator().manual_seed(2))
    gated = gate_context(ours, gate[None].expand(2, -1)) if gate is not None else contextlib.nullcontext()
    with torch.no_grad(), gated:
        ours_logits = ours(input_ids=ids).logits
    with torch.no_grad():
        peft_logits, base_logits = theirs(input_ids=ids).logits, base(input_ids=ids).logits
    assert (ours_logits - base_logits).abs().max() > 0.1  # the adapter matters: the comparison can fail
    assert (ours_logits - peft_logits).abs().max() < TOLERANCE
    if num_experts > 1:  # another gate gives other logits: the fold used this gate, not an average of experts
        with torch.no_grad(), gate_context(ours, torch.tensor([[0.7, 0.1, 0.1, 0.1]]).expand(2, -1)):
            assert (ours(input_ids=ids).logits - peft_logits).abs().max() > 10 * TOLERANCE


def test_an_ilora_adapter_needs_one_gate(tmp_path):
    _, ours = _random_adapter(4)
    with pytest.raises(ConfigError, match="one fixed gate"):
        export_peft(ours, tmp_path)


@pytest.mark.parametrize("experts,gate", [(1, "mean"), (4, "user:3")])
def test_cli_exports_a_trained_checkpoint(train_cfg, compose_cfg, tmp_path, experts, gate):
    cfg = train_cfg(f"adapter.num_experts={experts}", "model.optimizer.lr=5e-2")
    train(cfg)
    ckpt = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    out = tmp_path / "adapter"
    summary, parts = export(compose_cfg("export", [f"ckpt_path={ckpt}", f"out={out}", f"gate_from={gate}"],
                                        tmp_path / "export_run"))
    assert {"adapter_config.json", "adapter_model.safetensors", "ilora_projector.safetensors",
            "ilora_export.json"} <= {p.name for p in out.iterdir()}
    assert summary["verify_max_abs_logit_difference"] < TOLERANCE
    written = json.loads((out / "ilora_export.json").read_text())
    assert written["adapter"]["num_experts"] == experts
    projector = load_file(str(out / "ilora_projector.safetensors"))
    assert torch.equal(projector["net.0.weight"], parts["model"].projector.net[0].weight.detach())
    if experts > 1:
        weights = torch.tensor(written["gate"]["weights"])
        split = parts["datamodule"].load().splits["train"]
        row = int((torch.from_numpy(split.user) == 3).nonzero().max())  # user 3's last training sequence
        history = torch.tensor([split.history[row]])
        with torch.no_grad():
            expected = parts["model"].gate(parts["model"].encoder.user_state(history, torch.tensor([history.shape[1]])))
        assert torch.allclose(weights, expected[0], atol=1e-6)
        assert (out / "ilora_gate.safetensors").is_file()
    # an existing export is never overwritten without force=true
    with pytest.raises(ConfigError, match="exists and is not empty"):
        export(compose_cfg("export", [f"ckpt_path={ckpt}", f"out={out}"], tmp_path / "export_run2"))
