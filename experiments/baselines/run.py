"""Baseline sweep: SASRec, GRU4Rec, Caser x MovieLens, LastFM x seeds 0-2 with the default recipes.

    python experiments/baselines/run.py                      # everything (resumes: finished runs are kept)
    python experiments/baselines/run.py --data movielens     # one dataset (run two such processes in parallel)
    python experiments/baselines/run.py --table-only         # rebuild results.json and README table

Each run trains with conf/encoder/<name>.yaml exactly as `ilora-train-encoder data=<d> encoder=<e> seed=<s>`
would, saves the encoder under .cache/encoders/<d>/<e>/seed<s> (where `ilora-train` looks for it), and
writes runs/<d>_<e>_seed<s>.json. The table adds a bootstrap 95% interval of test HR@1 over test users
(per-user hits averaged over the seeds, then users resampled).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")

import torch  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from ilora.data.datasets import load_dataset  # noqa: E402
from ilora.encoders import load_encoder  # noqa: E402
from ilora.encoders.batches import eval_tensors  # noqa: E402
from ilora.encoders.train import train_encoder  # noqa: E402
from ilora.metrics import bootstrap_ci, per_example_hits  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
DATASETS, ENCODERS, SEEDS = ("movielens", "lastfm"), ("sasrec", "gru4rec", "caser"), (0, 1, 2)
# LLaRA (Liao et al., SIGIR 2024) Table 2, HR@1 on the same 20-candidate protocol (their candidate draws).
LLARA_HR1 = {("movielens", "sasrec"): 0.3444, ("movielens", "gru4rec"): 0.3750, ("movielens", "caser"): 0.3861,
             ("lastfm", "sasrec"): 0.2233, ("lastfm", "gru4rec"): 0.2616, ("lastfm", "caser"): 0.2233}
KEYS = ("test/hr@1", "test/hr@5", "test/ndcg@5", "test/ndcg@10", "test/mrr", "val/hr@1")


def encoder_dir(data: str, name: str, seed: int) -> Path:
    cache = Path(os.environ.get("ILORA_CACHE", ROOT / ".cache"))
    return cache / "encoders" / data / name / f"seed{seed}"


def run_one(data: str, name: str, seed: int) -> dict:
    encoder_cfg = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "encoder" / f"{name}.yaml"), resolve=True)
    metrics, _ = train_encoder(data_dir=ROOT / "data" / data, data_name=data, encoder_cfg=encoder_cfg,
                               out_dir=encoder_dir(data, name, seed), seed=seed)
    config = json.loads((encoder_dir(data, name, seed) / "config.json").read_text())
    command = f"ilora-train-encoder data={data} encoder={name} seed={seed}"
    return {"data": data, "encoder": name, "seed": seed, "command": command, "metrics": metrics,
            "train": config["train"], "hparams": config["hparams"]}


def test_hits(data: str, name: str, seed: int) -> torch.Tensor:
    """Per-user test HR@1 `[N]` of a saved encoder on the fixed candidates."""
    dataset = load_dataset(ROOT / "data" / data)
    history, lengths, candidates, column = eval_tensors(dataset, "test", 20, 0)
    with torch.no_grad():
        scores = load_encoder(encoder_dir(data, name, seed))(history, lengths).gather(1, candidates)
    return per_example_hits(scores, column, k=1)


def table(runs: list[dict]) -> tuple[list[dict], str]:
    rows, lines = [], [
        "| dataset | model | HR@1 | HR@5 | NDCG@5 | HR@1 95% CI (users) | LLaRA HR@1 | best epoch | s/run |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for data in DATASETS:
        for name in ENCODERS:
            group = sorted((r for r in runs if (r["data"], r["encoder"]) == (data, name)), key=lambda r: r["seed"])
            if not group:
                continue
            stats = {k: (statistics.mean(r["metrics"][k] for r in group),
                         statistics.stdev(r["metrics"][k] for r in group) if len(group) > 1 else 0.0) for k in KEYS}
            hits = torch.stack([test_hits(data, name, r["seed"]) for r in group]).mean(0)
            low, high = bootstrap_ci(hits)
            rows.append({"data": data, "encoder": name, "seeds": [r["seed"] for r in group],
                         "mean_std": stats, "test_hr@1_ci95": [low, high], "llara_hr@1": LLARA_HR1[(data, name)]})
            epochs = ",".join(str(r["train"]["best_epoch"]) for r in group)
            seconds = statistics.mean(r["train"]["seconds"] for r in group)
            cells = " | ".join(f"{stats[k][0]:.4f} ± {stats[k][1]:.4f}" for k in KEYS[:3])
            lines.append(f"| {data} | {name} | {cells} | "
                         f"[{low:.3f}, {high:.3f}] | {LLARA_HR1[(data, name)]:.4f} | {epochs} | {seconds:.0f} |")
    return rows, "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", nargs="*", default=list(DATASETS), choices=DATASETS)
    parser.add_argument("--encoders", nargs="*", default=list(ENCODERS), choices=ENCODERS)
    parser.add_argument("--seeds", nargs="*", type=int, default=list(SEEDS))
    parser.add_argument("--table-only", action="store_true")
    parser.add_argument("--force", action="store_true", help="rerun runs that already have a result file")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("ILORA_THREADS", "1")))
    (HERE / "runs").mkdir(exist_ok=True)
    if not args.table_only:
        for data in args.data:
            for name in args.encoders:
                for seed in args.seeds:
                    path = HERE / "runs" / f"{data}_{name}_seed{seed}.json"
                    if path.exists() and not args.force:
                        continue
                    path.write_text(json.dumps(run_one(data, name, seed), indent=2, sort_keys=True) + "\n")
    runs = [json.loads(p.read_text()) for p in sorted((HERE / "runs").glob("*.json"))]
    rows, text = table(runs)
    (HERE / "results.json").write_text(json.dumps({"runs": runs, "summary": rows}, indent=2, sort_keys=True) + "\n")
    (HERE / "table.md").write_text(text + "\n")
    print(text, file=sys.stdout)


if __name__ == "__main__":
    main()
