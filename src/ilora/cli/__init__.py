"""Thin Hydra entry points. Importing this package prepares the process for offline, reproducible runs:
no hub lookups (nothing here can reach one), W&B offline unless WANDB_MODE says otherwise, and the
`${ilora_root:}` resolver used by conf/paths/default.yaml."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from omegaconf import OmegaConf

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Intentional states that Lightning warns about on every run: the frozen encoder stays in eval mode, and a
# deprecation inside Lightning's own pytree helper that users cannot act on.
warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")

CONFIG_DIR = Path(__file__).resolve().parents[3] / "conf"


def project_root() -> str:
    """The checkout holding conf/ (an editable install), else the current directory."""
    root = CONFIG_DIR.parent
    return str(root if CONFIG_DIR.is_dir() else Path.cwd())


def cpu_precision() -> str:
    """bf16 autocast only where the CPU runs bf16 natively (avx512_bf16); elsewhere it is emulated and ~25x slower."""
    from ilora.backbones import cpu_has_avx512_bf16  # lazy: transformers only when a config asks

    return "bf16-mixed" if cpu_has_avx512_bf16() else "32-true"


def wandb_offline() -> bool:
    """W&B stays offline unless the user asked for WANDB_MODE=online (then `wandb login` credentials apply)."""
    return os.environ.get("WANDB_MODE", "offline") != "online"


if not OmegaConf.has_resolver("ilora_wandb_offline"):
    OmegaConf.register_new_resolver("ilora_wandb_offline", wandb_offline)
if not OmegaConf.has_resolver("ilora_root"):
    OmegaConf.register_new_resolver("ilora_root", project_root)
if not OmegaConf.has_resolver("ilora_cpu_precision"):
    OmegaConf.register_new_resolver("ilora_cpu_precision", cpu_precision)
