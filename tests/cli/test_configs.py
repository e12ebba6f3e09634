"""Every experiment and group config composes and instantiates (compose API), and impossible ones fail early."""

from __future__ import annotations

from pathlib import Path

import hydra
import pytest
import torch

from ilora.cli import CONFIG_DIR
from ilora.cli.components import validate_config
from ilora.errors import ConfigError

EXPERIMENTS = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))
GATES = sorted(p.stem for p in (CONFIG_DIR / "gate").glob("*.yaml"))


def test_expected_groups_exist():
    for group, names in {
        "data": {"movielens", "lastfm", "steam"},
        "backbone": {"smollm2_135m", "llama2_7b", "tiny_random", "hf"},
        "adapter": {"ilora", "lora", "none"},
        "gate": {"linear", "mlp", "topk", "noisy", "random", "uniform"},
        "encoder": {"sasrec", "gru4rec", "caser"},
        "trainer": {"cpu", "gpu", "ddp", "ddp_cpu", "fsdp"},
        "logger": {"wandb", "csv", "tensorboard", "none"},
        "experiment": {"quick", "paper_movielens", "paper_lastfm", "paper_steam"},
    }.items():
        assert names <= {p.stem for p in (CONFIG_DIR / group).glob("*.yaml")}, group


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_instantiates(experiment, compose_cfg, tmp_path):
    cfg = compose_cfg("train", [f"experiment={experiment}"], tmp_path / "run")
    datamodule = hydra.utils.instantiate(cfg.data)
    assert datamodule.num_items > 0 and Path(cfg.data.dir).is_dir()
    optimizer = hydra.utils.instantiate(cfg.model.optimizer)(params=[torch.nn.Parameter(torch.zeros(1))])
    assert optimizer.param_groups[0]["lr"] == cfg.model.optimizer.lr
    gate = hydra.utils.instantiate(cfg.gate)(in_dim=8, num_experts=cfg.adapter.num_experts)
    assert gate(torch.randn(3, 8)).sum(-1).allclose(torch.ones(3))
    for callback in cfg.callbacks.values():
        hydra.utils.instantiate(callback)
    if experiment.startswith("paper_"):
        assert cfg.adapter.rank == 8 and cfg.adapter.num_experts == 4 and cfg.adapter.alpha == 32
        assert cfg.data.batch_size * cfg.trainer.accumulate_grad_batches == 128
        with pytest.raises(ConfigError, match="GPU|backbone.path"):  # needs both; says which is missing
            validate_config(cfg)
    else:
        validate_config(cfg)


@pytest.mark.parametrize("gate", [g for g in GATES if g != "random"])
def test_gate_configs_build(gate, compose_cfg, tmp_path):
    cfg = compose_cfg("train", [f"gate={gate}"], tmp_path / "run")
    weights = hydra.utils.instantiate(cfg.gate)(in_dim=8, num_experts=4)(torch.randn(5, 8))
    assert weights.shape == (5, 4) and torch.allclose(weights.sum(-1), torch.ones(5))


def test_paper_config_names_the_missing_backbone_path(compose_cfg, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # pretend a GPU: the path is the next problem
    cfg = compose_cfg("train", ["experiment=paper_movielens"], tmp_path / "run")
    with pytest.raises(ConfigError, match=r"backbone.path=\?\?\? \(not set\)"):
        validate_config(cfg)


@pytest.mark.parametrize(("overrides", "message"), [
    (["adapter.num_experts=3"], "adapter.num_experts=3 does not divide adapter.rank=8"),
    (["adapter.num_experts=0"], "adapter.num_experts=0 must be >= 1"),
    (["trainer=gpu"], "no CUDA GPU is visible"),
    (["model.compile=sometimes"], "model.compile='sometimes' must be true, false or auto"),
    (["model.compile=true", "model.compile_dynamic=false", "model.pad_to_multiple_of=0"],
     "model.pad_to_multiple_of=0 must be >= 1"),
    (["model.rank_method=dense"], "model.rank_method='dense' is not one of split, joint, auto"),
])
def test_impossible_configs_fail_before_loading_anything(overrides, message, compose_cfg, tmp_path):
    if "trainer=gpu" in overrides and torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    cfg = compose_cfg("train", overrides, tmp_path / "run")
    with pytest.raises(ConfigError, match=message):
        validate_config(cfg)


@pytest.mark.parametrize(("overrides", "compiled", "method", "multiple"), [
    (["trainer.precision=bf16-mixed"], True, "joint", 1),  # auto: on with bf16 autocast on a CPU
    (["trainer.precision=32-true"], False, "split", 1),  # auto: off in fp32 (not measured faster there)
    (["trainer.precision=bf16-mixed", "model.compile=false"], False, "split", 1),
    (["trainer.precision=32-true", "model.compile=true", "model.compile_dynamic=false"], True, "joint", 64),
    (["trainer.precision=bf16-mixed", "model.rank_method=split"], True, "split", 1),
])
def test_compile_auto_and_what_follows_from_it(overrides, compiled, method, multiple, compose_cfg, tmp_path):
    from ilora.cli.components import compiles, pad_multiple, rank_method

    cfg = compose_cfg("train", overrides, tmp_path / "run")
    validate_config(cfg)
    assert (compiles(cfg), rank_method(cfg), pad_multiple(cfg)) == (compiled, method, multiple)
