"""Thin Hydra entry points. Importing this package prepares the process for offline, reproducible runs:
no hub lookups (nothing here can reach one), W&B offline unless WANDB_MODE says otherwise, and the
`${ilora_root:}` resolver used by conf/paths/default.yaml."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from omegaconf import OmegaConf

import ilora

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Intentional states that Lightning warns about on every run: the frozen encoder stays in eval mode, and a
# deprecation inside Lightning's own pytree helper that users cannot act on.
warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
# A mid-epoch resume is exact here: the training sampler skips the examples the run had already seen
# (`ilora.data.datamodule.EpochSampler`; tests/cli/test_sweep_and_resume.py kills a run and matches the weights of
# an uninterrupted one), so Lightning's warning that such a resume "can cause unreliable results" is wrong for it.
warnings.filterwarnings("ignore", message=r"You're resuming from a checkpoint that ended before the epoch ended")

# The configs ship inside the package (`conf/` at the repository root links here), so an installed wheel finds
# them too; users add their own folder with `--config-dir DIR` or `hydra.searchpath=[file://DIR]`.
CONFIG_DIR = Path(__file__).resolve().parents[1] / "conf"
CONFIG_PATH = "pkg://ilora.conf"


def project_root() -> str:
    """`${ilora_root:}`: the checkout, or the current directory for an installed package (`ilora.project_root`)."""
    return str(ilora.project_root())


def cpu_precision() -> str:
    """bf16 autocast only where the CPU runs bf16 natively (avx512_bf16); elsewhere it is emulated and ~25x slower."""
    from ilora.backbones import cpu_has_avx512_bf16  # lazy: transformers only when a config asks

    return "bf16-mixed" if cpu_has_avx512_bf16() else "32-true"


def wandb_offline() -> bool:
    """W&B stays offline unless the user asked for WANDB_MODE=online (then `wandb login` credentials apply)."""
    return os.environ.get("WANDB_MODE", "offline") != "online"


def _multirun():
    """Hydra's config of this job when it runs inside a multirun, else None."""
    from hydra.core.hydra_config import HydraConfig

    from ilora.cli.runs import run_mode_is_multirun  # lazy: resolvers run long after this package is imported

    return HydraConfig.get() if run_mode_is_multirun() else None


def sweep_group(default: str) -> str:
    """W&B group: every job of one multirun shares `<task>-<sweep folder>` (e.g. train-2026-12-06_23-33-21-...);
    a single run keeps `default`."""
    hydra = _multirun()
    return f"{hydra.job.name}-{Path(str(hydra.sweep.dir)).name}" if hydra else default


def sweep_tags(tags) -> list[str]:
    """The run's tags, plus in a multirun each of the job's overrides (cut to W&B's 64 characters)."""
    hydra = _multirun()
    return [*(tags or []), *((str(o)[:64] for o in hydra.overrides.task) if hydra else ())]


for _name, _resolver in (("ilora_sweep_group", sweep_group), ("ilora_sweep_tags", sweep_tags)):
    if not OmegaConf.has_resolver(_name):
        OmegaConf.register_new_resolver(_name, _resolver)
if not OmegaConf.has_resolver("ilora_wandb_offline"):
    OmegaConf.register_new_resolver("ilora_wandb_offline", wandb_offline)
if not OmegaConf.has_resolver("ilora_root"):
    OmegaConf.register_new_resolver("ilora_root", project_root)
if not OmegaConf.has_resolver("ilora_cpu_precision"):
    OmegaConf.register_new_resolver("ilora_cpu_precision", cpu_precision)
