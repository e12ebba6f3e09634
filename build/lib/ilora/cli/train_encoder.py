"""`ilora-train-encoder`: train one sequential encoder on a dataset and save it where `ilora-train` looks.

`run(cfg) -> (metrics, encoder)` is plain Python (tests call it); `main` wraps it with Hydra and turns an
`IloraError` into `error: <message>` on stderr with exit status 2.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from ilora.cli import CONFIG_PATH
from ilora.cli.common import task_wrapper, write_json
from ilora.cli.runs import report_failure
from ilora.encoders.train import train_encoder
from ilora.errors import IloraError


@task_wrapper
def run(cfg: DictConfig) -> tuple[dict[str, float], Any]:
    """Train `cfg.encoder` on `cfg.data.dir`, save to `cfg.out_dir`, write metrics.json into the run dir."""
    if cfg.get("num_threads"):
        torch.set_num_threads(int(cfg.num_threads))
    metrics, encoder = train_encoder(
        data_dir=cfg.data.dir, data_name=cfg.data.name,
        encoder_cfg=OmegaConf.to_container(cfg.encoder, resolve=True), out_dir=cfg.out_dir, seed=int(cfg.seed),
        num_candidates=int(cfg.num_candidates), candidate_seed=int(cfg.candidate_seed), accelerator=cfg.accelerator,
        log_dir=cfg.paths.output_dir,
    )
    write_json(Path(cfg.paths.output_dir) / "metrics.json", metrics)
    print(f"[ilora] encoder saved to {cfg.out_dir}")
    return metrics, encoder


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="train_encoder")
def _hydra_main(cfg: DictConfig) -> float:
    try:
        metrics, _ = run(cfg)
    except IloraError as error:  # one line on stderr, status.json in the run dir, exit status 2
        report_failure(cfg, error)
        raise SystemExit(2) from None
    return metrics["test/hr@1"]


def main() -> None:
    _hydra_main()

if __name__ == "__main__":
    main()
