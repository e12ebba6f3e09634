"""`data/<split>_prompts_truncated` counts distinct examples, once, whatever the epochs and DataLoader workers."""

from __future__ import annotations

import pytest

from ilora.backbones import load_tokenizer
from ilora.cli.components import build_datamodule
from ilora.cli.train import train


def _eval_prompt_lengths(cfg, shared_cache, split):
    """Full (untruncated) eval prompt lengths of `split`, rendered one example at a time."""
    datamodule = build_datamodule(cfg)
    datamodule.set_tokenizer(load_tokenizer(cache_dir=shared_cache / "backbones" / "smollm2_135m"))
    datamodule.setup()
    examples, collate = datamodule.datasets[split], datamodule.collators[split]
    return [int(collate([examples[i]])["attention_mask"].sum()) for i in range(len(examples))]


@pytest.mark.parametrize("workers", [0, 2])
def test_truncation_counts_distinct_examples_across_epochs_and_workers(workers, train_cfg, shared_cache):
    probe = train_cfg(run="probe")
    val, test = (_eval_prompt_lengths(probe, shared_cache, s) for s in ("val", "test"))
    limit = sorted(val + test)[len(val + test) // 2]
    expected = {"val": sum(n > limit for n in val), "test": sum(n > limit for n in test)}
    assert 0 < expected["val"] + expected["test"] < len(val) + len(test)
    cfg = train_cfg(f"data.max_prompt_tokens={limit}", f"data.num_workers={workers}", "trainer.max_epochs=3",
                    "trainer.max_steps=-1", "trainer.limit_train_batches=2", "callbacks.last_checkpoint.every_n_train_steps=100")
    metrics, objects = train(cfg)
    assert objects["trainer"].current_epoch == 3  # three validations ran, and the test once
    assert metrics["data/val_prompts_truncated"] == expected["val"]
    assert metrics["data/test_prompts_truncated"] == expected["test"]
    assert 0 < metrics["data/train_prompts_truncated"] <= 3 * 2 * 4  # at most the distinct train rows seen
