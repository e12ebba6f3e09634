"""trainer=ddp_cpu: two gloo processes; every test user is counted exactly once, as in a single process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def test_ddp_cpu_gathers_each_test_user_once(tiny_base, tiny_data_dir, encoder_cache, tmp_path):
    common = [
        *tiny_base, "trainer.max_steps=2", "trainer.limit_train_batches=2", "trainer.limit_val_batches=0",
        f"data.dir={tiny_data_dir}", "data.name=tiny", "data.limit_test_examples=5", f"paths.encoder_dir={encoder_cache}",
        "model.evaluation.max_new_tokens=4", "test_ckpt=last",
    ]
    run_dir = tmp_path / "ddp"
    script = Path(sys.executable).with_name("ilora-train")  # Lightning relaunches rank 1 from the real script
    done = subprocess.run([str(script), "trainer=ddp_cpu", f"hydra.run.dir={run_dir}", *common],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["test/num_examples"] == 5  # 5 users over 2 ranks: the sampler pads one, the gather drops it
    rows = [json.loads(line) for line in (run_dir / "predictions_test.jsonl").read_text().splitlines()]
    assert sorted(r["index"] for r in rows) == sorted({r["index"] for r in rows}) and len(rows) == 5

    # The same checkpoint evaluated by one process gives the same numbers.
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    code = "import sys; from ilora.cli.eval import main; sys.argv[0] = 'ilora-eval'; main()"
    single = tmp_path / "single"
    done = subprocess.run([sys.executable, "-c", code, f"ckpt_path={ckpt}", "trainer.precision=32-true", "logger=none",
                           f"hydra.run.dir={single}"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    alone = json.loads((single / "metrics.json").read_text())
    for key in ("test/num_examples", "test/rank_hr@1", "test/rank_mrr", "test/gen_valid_ratio"):
        assert abs(alone[key] - metrics[key]) < 1e-6, key
    assert Path(single / "status.json").is_file()
