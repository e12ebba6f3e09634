"""The CPU study: does the instance-wise gate help? iLoRA K=4 vs one LoRA of the same size, on SmolLM2-135M.

    python experiments/study/run.py                 # run (or resume) every run, then write the results
    python experiments/study/run.py --table-only    # results.json, table.md, PNGs from runs/*.json
    python experiments/study/run.py --only movielens/ilora_k4/0 --dry-run   # what would run, nothing started

Every run is `ilora-train experiment=study` (conf/experiment/study.yaml) plus its method's overrides, so the same
budget of training examples, objective and prompt hold for every method. A run killed half-way resumes from its
`last.ckpt` (a new attempt directory beside the old one, `ckpt_path=<old>/checkpoints/last.ckpt`); a finished
run is kept: its per-run JSON under `<results>/runs/` is the record (so a fresh clone, whose `outputs/` is empty,
runs only what is missing; `--redo` runs recorded ones again). MovieLens runs are trained once and evaluated on both protocols: LLaRA's (the post-fit test, 95
users) and the extended one (`ilora-eval data=movielens_windows`, 2,069 windows of the same 95 users).

Run directories (checkpoints, logs) live under `outputs/study/` (not committed); what the results need is copied
to `experiments/study/runs/<dataset>__<protocol>__<method>__s<seed>.json` (metrics, per-example target ranks
and users, the learning curve, wall time, the SHA-256 of the SASRec weights that steered it). The frozen SASRec's
ranks on the same examples are recorded the same way (`<dataset>__<protocol>__sasrec__s0.json`, with its weights'
SHA-256) once its encoder is in the cache, so `--table-only` rebuilds everything from a fresh clone, no encoder needed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
OUT = Path(os.environ.get("ILORA_STUDY_OUT", ROOT / "outputs" / "study"))
PINNED = HERE / "encoders"  # the SASRec weights that steered the recorded runs, per dataset (where committed)

# method -> (overrides of conf/experiment/study.yaml, seeds)
METHODS: dict[str, tuple[list[str], tuple[int, ...]]] = {
    "frozen": (["adapter=none"], (0,)),
    "lora_k1": (["adapter=lora"], (0, 1, 2)),
    "ilora_k4": ([], (0, 1, 2)),
    "uniform_k4": (["gate=uniform"], (0,)),
}
# dataset -> method -> seeds run beyond the method's own. Added 2026-12-05, after LastFM's first results, to test
# whether iLoRA's gain there comes from the routing: the uniform gate at 3 seeds like iLoRA. Not on MovieLens: the
# SASRec that steered its runs was not kept, and new runs steered by another encoder would not compare like with like.
EXTRA_SEEDS: dict[str, dict[str, tuple[int, ...]]] = {"lastfm": {"uniform_k4": (1, 2)}}
# dataset -> protocols it is evaluated on (the first is the post-fit test of the training run)
DATASETS: dict[str, tuple[str, ...]] = {"movielens": ("llara", "windows"), "lastfm": ("llara",)}
WINDOWS_DATA = {"movielens": "movielens_windows"}
RUN_ORDER = ("lora_k1", "ilora_k4", "uniform_k4", "frozen")  # within a seed: the main comparison first
PAIRS = (("ilora_k4", "lora_k1"), ("uniform_k4", "lora_k1"), ("ilora_k4", "uniform_k4"))
KS = (1, 5)
ENCODER_SEED = 0  # the SASRec that steers every run (projector inputs, gate) and is the reference row


def cache_dir() -> Path:
    return Path(os.environ.get("ILORA_CACHE", ROOT / ".cache"))


def encoder_dir(data: str) -> Path:
    return cache_dir() / "encoders" / data / "sasrec" / f"seed{ENCODER_SEED}"


def encoder_digest(data: str) -> str | None:
    """SHA-256 of the cached SASRec weights of `data` (None when not trained here): ties each run to its encoder."""
    from ilora.encoders.io import WEIGHTS

    path = encoder_dir(data) / WEIGHTS
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def pin_encoder(data: str, pinned_root: Path | None = None) -> None:
    """Put the study's committed SASRec of `data` (`encoders/<data>/`) in the cache before its runs train.

    Encoder training is not bit-reproducible across CPU kinds, so runs added in a later session (another machine)
    would otherwise be steered by a different encoder than the runs they are compared with. A cached encoder that
    differs from the pinned one stops the study with one line instead of being used or overwritten.
    """
    import shutil

    from ilora.encoders.io import CONFIG, WEIGHTS

    pinned = (pinned_root or PINNED) / data
    if not (pinned / WEIGHTS).is_file():
        return
    target = encoder_dir(data)
    if not (target / WEIGHTS).is_file():
        target.mkdir(parents=True, exist_ok=True)
        for name in (CONFIG, WEIGHTS):
            shutil.copyfile(pinned / name, target / name)
        return
    want = hashlib.sha256((pinned / WEIGHTS).read_bytes()).hexdigest()
    if encoder_digest(data) != want:
        raise SystemExit(f"{target}: cached SASRec differs from the study's pinned encoder {pinned} (SHA-256 "
                         f"{want[:12]}...): move the cached one away or set ILORA_CACHE to another directory")


def sasrec_file(results_dir: Path, data: str, protocol: str) -> Path:
    return results_dir / "runs" / f"{data}__{protocol}__sasrec__s{ENCODER_SEED}.json"


def run_name(data: str, method: str, seed: int) -> str:
    return f"{data}__{method}__s{seed}"


def planned(only: list[str] | None = None, datasets: list[str] | None = None, methods: list[str] | None = None,
            seeds: list[int] | None = None) -> list[tuple[str, str, int]]:
    runs = [(d, m, s) for d in DATASETS for m, (_, default) in METHODS.items()
            for s in (seeds or default + EXTRA_SEEDS.get(d, {}).get(m, ()))
            if (not datasets or d in datasets) and (not methods or m in methods)]
    # seed by seed, so that an interrupted study already holds complete paired comparisons
    order = {m: i for i, m in enumerate(RUN_ORDER)}
    runs.sort(key=lambda r: (list(DATASETS).index(r[0]), r[2], order[r[1]]))
    if only:
        keep = {tuple(o.split("/")) for o in only}
        runs = [r for r in runs if (r[0], r[1], str(r[2])) in keep]
    return runs


# ----------------------------------------------------------------------------------------------- running


def _completed(directory: Path) -> bool:
    try:
        return json.loads((directory / "status.json").read_text())["status"] == "completed"
    except (OSError, ValueError, KeyError):
        return False


def _attempts(base: Path) -> list[Path]:
    return sorted(base.glob("attempt*"), key=lambda p: int(p.name.removeprefix("attempt")))


def _call(args: list[str], log: Path, dry_run: bool) -> int:
    print("  $", " ".join(args), flush=True)
    if dry_run:
        return 0
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a", encoding="utf-8") as f:
        return subprocess.call(args, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)


def train_run(data: str, method: str, seed: int, extra: list[str], dry_run: bool) -> Path | None:
    """The completed training attempt of one run (training or resuming it first); None if it failed."""
    base = OUT / run_name(data, method, seed)
    attempts = _attempts(base)
    if attempts and _completed(attempts[-1]):
        return attempts[-1]
    resume = []
    if attempts and (attempts[-1] / "checkpoints" / "last.ckpt").is_file():
        resume = [f"ckpt_path={attempts[-1] / 'checkpoints' / 'last.ckpt'}"]
    attempt = base / f"attempt{len(attempts)}"
    args = [str(BIN / "ilora-train"), "experiment=study", f"data={data}", *METHODS[method][0], f"seed={seed}",
            *extra, *resume, f"hydra.run.dir={attempt}"]
    code = _call(args, base / "train.log", dry_run)
    return attempt if (dry_run or (code == 0 and _completed(attempt))) else None


def windows_eval(data: str, method: str, seed: int, attempt: Path, extra: list[str], eval_extra: list[str],
                 dry_run: bool) -> Path | None:
    """The extended-protocol evaluation of a trained MovieLens run (the frozen LLM: its own untrained run)."""
    target = OUT / run_name(data, method, seed) / "windows"
    if _completed(target):
        return target
    if target.exists() and not dry_run:  # an interrupted evaluation: start it again in a fresh directory
        target.rename(target.with_name(f"windows.failed{time.time_ns()}"))
    if method == "frozen":
        args = [str(BIN / "ilora-train"), "experiment=study", f"data={WINDOWS_DATA[data]}", *METHODS[method][0],
                f"seed={seed}", *extra, *eval_extra, f"hydra.run.dir={target}"]
    else:
        # index order, as every recorded run was evaluated (bf16 scores move with the batch composition)
        args = [str(BIN / "ilora-eval"), f"ckpt_path={attempt / 'checkpoints' / 'last.ckpt'}",
                f"data={WINDOWS_DATA[data]}", "data.eval_order=index", "logger=none", *eval_extra,
                f"hydra.run.dir={target}"]
    code = _call(args, target.parent / "windows.log", dry_run)
    return target if (dry_run or (code == 0 and _completed(target))) else None


# ------------------------------------------------------------------------------------------- recording


def target_ranks(predictions: Path) -> tuple[list[int], list[int], list[int]]:
    """(index, user, 1-based pessimistic rank of the target) of every test example in a predictions file."""
    import torch

    from ilora.metrics import target_rank

    rows = [json.loads(line) for line in predictions.read_text().splitlines() if line.strip()]
    rows.sort(key=lambda r: r["index"])
    ranks = target_rank(torch.tensor([r["scores"] for r in rows]), torch.tensor([r["target_index"] for r in rows]))
    return [r["index"] for r in rows], [int(r.get("user", r["index"])) for r in rows], ranks.tolist()


def _curve(attempts: list[Path]) -> list[dict]:
    rows = []
    for attempt in attempts:
        path = attempt / "curve.jsonl"
        if path.is_file():
            rows += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [{k: v for k, v in r.items() if k in ("step", "train_examples", "val/rank_hr@1", "val/rank_ndcg@5")}
            for r in rows]


def record(data: str, protocol: str, method: str, seed: int, directory: Path, attempts: list[Path]) -> dict:
    """The per-run JSON: metrics, per-example ranks, learning curve, budget and wall time."""
    import yaml

    metrics = json.loads((directory / "metrics.json").read_text())
    index, users, ranks = target_ranks(directory / "predictions_test.jsonl")
    config = yaml.safe_load((attempts[-1] / "config.yaml").read_text())
    trained = method != "frozen"
    per_step = int(config["data"]["batch_size"]) * int(config["trainer"]["accumulate_grad_batches"])
    train_wall = sum(json.loads((a / "metrics.json").read_text()).get("wall_time_s", 0.0)
                     for a in attempts if (a / "metrics.json").is_file())
    eval_wall = metrics.get("wall_time_s", 0.0) if directory not in attempts else 0.0
    return {
        "dataset": data, "protocol": protocol, "method": method, "seed": seed,
        "rank_hr@1": metrics["test/rank_hr@1"], "rank_hr@5": metrics["test/rank_hr@5"],
        "rank_ndcg@5": metrics["test/rank_ndcg@5"], "n_test": int(metrics["test/num_examples"]),
        "train_examples": int(config["trainer"]["max_steps"]) * per_step if trained else 0,
        "wall_time_s": round(train_wall + eval_wall, 1), "attempts": len(attempts),
        "machine": machine(), "recorded": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "commit": commit(),
        "load_avg_1m": round(os.getloadavg()[0], 2),  # > cores: the timing shared the machine
        "encoder_sha256": encoder_digest(data),
        "index": index, "user": users, "target_rank": ranks, "curve": _curve(attempts) if trained else [],
        "config": {"model.loss": config["model"]["loss"], "data.prompt": config["data"]["prompt"],
                   "lr": config["model"]["optimizer"]["lr"], "adapter.num_experts": config["adapter"].get("num_experts"),
                   "gate": (config.get("gate") or {}).get("_target_")},
    }


def sasrec_record(data: str, protocol: str) -> dict | None:
    """The frozen SASRec (the cached encoder of seed 0) on the protocol's test examples; None without its encoder."""
    import torch

    from ilora.data.datasets import load_dataset
    from ilora.encoders import load_encoder
    from ilora.encoders.batches import eval_tensors
    from ilora.metrics import target_rank

    digest = encoder_digest(data)
    if digest is None:
        return None
    name = WINDOWS_DATA[data] if protocol == "windows" else data
    dataset = load_dataset(ROOT / "data" / name)
    split = dataset.splits["test"]
    keep = np.flatnonzero(np.fromiter(map(len, split.history), dtype=np.int64) >= 3)  # data.min_history
    history, lengths, candidates, column = (t[keep] for t in eval_tensors(dataset, "test", 20, 0))
    encoder = load_encoder(encoder_dir(data))
    with torch.no_grad():
        ranks = target_rank(encoder(history, lengths).gather(1, candidates), column).tolist()
    users = split.user[keep] if split.user is not None else keep
    metrics = {k: float(v.mean()) for k, v in _metrics_of(np.asarray(ranks, dtype=float)).items()}
    return {"dataset": data, "protocol": protocol, "method": "sasrec", "seed": ENCODER_SEED, **metrics,
            "n_test": int(keep.size), "encoder_sha256": digest, "machine": machine(), "commit": commit(),
            "recorded": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "index": keep.tolist(), "user": [int(u) for u in users], "target_rank": ranks}


def record_sasrec(results_dir: Path, datasets: list[str] | None = None) -> None:
    """Record SASRec's ranks for every protocol with recorded runs and no SASRec record yet (its encoder cached)."""
    for data, protocols in DATASETS.items():
        if datasets and data not in datasets:
            continue
        for protocol in protocols:
            path = sasrec_file(results_dir, data, protocol)
            if path.is_file() or not any((results_dir / "runs").glob(f"{data}__{protocol}__*.json")):
                continue
            payload = sasrec_record(data, protocol)
            if payload is not None:
                path.write_text(json.dumps(payload, sort_keys=True) + "\n")


# --------------------------------------------------------------------------------------------- results


def _metrics_of(ranks: np.ndarray) -> dict[str, np.ndarray]:
    return {"rank_hr@1": (ranks <= 1).astype(float), "rank_hr@5": (ranks <= 5).astype(float),
            "rank_ndcg@5": np.where(ranks <= 5, 1.0 / np.log2(ranks + 1.0), 0.0)}


def _seed_mean(runs: list[dict]) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Per-example metric values averaged over a method's seeds (examples matched by index)."""
    index = np.asarray(runs[0]["index"])
    for r in runs[1:]:
        if r["index"] != runs[0]["index"]:
            raise SystemExit(f"{r['dataset']}/{r['protocol']}: seeds of {r['method']} scored different examples")
    values = [_metrics_of(np.asarray(r["target_rank"], dtype=float)) for r in runs]
    return index, np.asarray(runs[0]["user"]), {k: np.mean([v[k] for v in values], axis=0) for k in values[0]}


def _per_seed(seeds_a: list[int], values_a: np.ndarray, seeds_b: list[int], values_b: np.ndarray) -> dict:
    """Mean difference per seed that both methods ran ({seed: a - b}; values [seeds, N]): the spread of training
    runs, unpooled."""
    row_b = {seed: i for i, seed in enumerate(seeds_b)}
    return {str(seed): float(values_a[i].mean() - values_b[row_b[seed]].mean())
            for i, seed in enumerate(seeds_a) if seed in row_b}


def summarise(runs: list[dict], sasrec: dict[str, dict]) -> dict:
    from ilora.metrics import cluster_bootstrap_ci, seed_user_bootstrap_ci

    summary, paired = [], []
    for data, protocols in DATASETS.items():
        for protocol in protocols:
            by_method = {m: [r for r in runs if (r["dataset"], r["protocol"], r["method"]) == (data, protocol, m)]
                         for m in METHODS}
            by_method = {m: sorted(v, key=lambda r: r["seed"]) for m, v in by_method.items() if v}
            key = f"{data}/{protocol}"
            if key in sasrec and by_method:  # on exactly the examples the LLM runs scored
                scored = set(next(iter(by_method.values()))[0]["index"])
                rows = [i for i, index in enumerate(sasrec[key]["index"]) if index in scored]
                by_method["sasrec"] = [{**{k: [sasrec[key][k][i] for i in rows] for k in ("index", "user", "target_rank")},
                                        "dataset": data, "protocol": protocol, "method": "sasrec", "seed": 0}]
            means = {}
            for method, members in by_method.items():
                index, users, values = _seed_mean(members)
                means[method] = (index, users, values)
                row = {"dataset": data, "protocol": protocol, "method": method, "seeds": [r["seed"] for r in members],
                       "n_test": int(index.size), "n_users": int(np.unique(users).size)}
                if method == "sasrec":  # the encoder that steered the LLM runs, or only one trained like it?
                    steering = {r.get("encoder_sha256") for m, rs in by_method.items() if m != "sasrec" for r in rs}
                    row["encoder_of_the_runs"] = (None if None in steering
                                                  else steering == {sasrec[key].get("encoder_sha256")})
                for metric, per_example in values.items():
                    per_seed = [float(_metrics_of(np.asarray(r["target_rank"], float))[metric].mean()) for r in members]
                    row[metric] = float(per_example.mean())
                    row[f"{metric}_seed_std"] = statistics.stdev(per_seed) if len(per_seed) > 1 else None
                    row[f"{metric}_ci95"] = list(cluster_bootstrap_ci(per_example, users))
                summary.append(row)
            for a, b in PAIRS:
                if a not in means or b not in means:
                    continue
                (ia, ua, va), (ib, _, vb) = means[a], means[b]
                common, at_a, at_b = np.intersect1d(ia, ib, return_indices=True)
                entry = {"dataset": data, "protocol": protocol, "difference": f"{a} - {b}",
                         "n_test": int(common.size), "n_users": int(np.unique(ua[at_a]).size)}
                seeds_a, seeds_b = ([r["seed"] for r in by_method[m]] for m in (a, b))
                entry["seeds"] = [seeds_a, seeds_b]
                for metric in ("rank_hr@1", "rank_ndcg@5"):
                    diff = va[metric][at_a] - vb[metric][at_b]
                    low, high = cluster_bootstrap_ci(diff, ua[at_a])
                    runs_a, runs_b = (np.stack([_metrics_of(np.asarray(r["target_rank"], float))[metric][at]
                                                for r in by_method[m]]) for m, at in ((a, at_a), (b, at_b)))
                    both_low, both_high = seed_user_bootstrap_ci(runs_a, runs_b, ua[at_a])
                    entry[metric] = {"mean": float(diff.mean()), "ci95": [low, high], "half_width": (high - low) / 2,
                                     # training noise too: resamples each method's seeds as well as the users
                                     "ci95_seeds_users": [both_low, both_high],
                                     "per_seed": _per_seed(seeds_a, runs_a, seeds_b, runs_b)}
                paired.append(entry)
    return {"summary": summary, "paired": paired}


def commit() -> str | None:
    """The code's git commit (runs are results only when made with committed code); None outside a checkout."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "src", "conf",
                                "experiments/study/run.py"], cwd=ROOT, capture_output=True, text=True, timeout=10)
    except OSError:
        return None
    if head.returncode:
        return None
    return head.stdout.strip() + ("+uncommitted" if dirty.stdout.strip() else "")


def machine() -> dict:
    from ilora.backbones import cpu_has_avx512_bf16

    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    bf16 = cpu_has_avx512_bf16()
    return {"cpu": model, "cores": os.cpu_count(), "avx512_bf16": bf16, "precision": "bf16" if bf16 else "fp32"}


def write_results(runs: list[dict], sasrec: dict[str, dict], results_dir: Path) -> dict:
    results = {"machine": machine(), "study": "conf/experiment/study.yaml", **summarise(runs, sasrec),
               "runs": [{k: r[k] for k in ("dataset", "protocol", "method", "seed", "rank_hr@1", "rank_hr@5",
                                           "rank_ndcg@5", "n_test", "train_examples", "wall_time_s", "machine")
                         if k in r} for r in runs]}
    (results_dir / "results.json").write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    (results_dir / "table.md").write_text(table(results) + "\n")
    plot(results, runs, results_dir)
    return results


SASREC_NOTE = {True: "", False: " (†)", None: " (‡)"}


def table(results: dict) -> str:
    lines = ["| dataset | protocol | method | seeds | n test (users) | HR@1 [95% CI, users] | HR@5 | NDCG@5 |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results["summary"]:
        low, high = r["rank_hr@1_ci95"]
        std = f" ± {r['rank_hr@1_seed_std']:.3f}" if r["rank_hr@1_seed_std"] is not None else ""
        method = r["method"] + (SASREC_NOTE[r["encoder_of_the_runs"]] if r["method"] == "sasrec" else "")
        lines.append(f"| {r['dataset']} | {r['protocol']} | {method} | {len(r['seeds'])} | {r['n_test']} "
                     f"({r['n_users']}) | {r['rank_hr@1']:.3f}{std} [{low:.3f}, {high:.3f}] | {r['rank_hr@5']:.3f} | "
                     f"{r['rank_ndcg@5']:.3f} |")
    notes = {r["encoder_of_the_runs"] for r in results["summary"] if r["method"] == "sasrec"}
    if False in notes:
        lines += ["", "(†) a SASRec trained with the same recipe and seed, not the weights that steered these runs "
                  "(SHA-256 differs: retrained on another machine)."]
    if None in notes:
        lines += ["", "(‡) SASRec trained with the same recipe and seed; some runs did not record their encoder's "
                  "SHA-256, so whether it is the very encoder that steered them is not known."]
    lines += ["", "Paired differences on the same examples. `users`: 95% interval resampling users (training runs "
              "fixed); `seeds+users`: resampling each method's seeds too (training noise; only as wide as the seeds "
              "allow: with one seed per method it equals `users`).", "",
              "| dataset | protocol | paired difference | seeds | HR@1 | [users] | [seeds+users] | NDCG@5 [seeds+users] | "
              "n test (users) |", "|---|---|---|---|---|---|---|---|---|"]
    for p in results["paired"]:
        hr, nd = p["rank_hr@1"], p["rank_ndcg@5"]
        both = hr.get("ci95_seeds_users", hr["ci95"])
        nd_both = nd.get("ci95_seeds_users", nd["ci95"])
        seeds = "/".join(str(len(s)) for s in p.get("seeds", []))
        lines.append(f"| {p['dataset']} | {p['protocol']} | {p['difference']} | {seeds} | {hr['mean']:+.3f} | "
                     f"[{hr['ci95'][0]:+.3f}, {hr['ci95'][1]:+.3f}] | [{both[0]:+.3f}, {both[1]:+.3f}] | "
                     f"{nd['mean']:+.3f} [{nd_both[0]:+.3f}, {nd_both[1]:+.3f}] | {p['n_test']} ({p['n_users']}) |")
    return "\n".join(lines)


def plot(results: dict, runs: list[dict], results_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(d, p) for d, ps in DATASETS.items() for p in ps]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.6), squeeze=False)
    for ax, (data, protocol) in zip(axes[0], panels):
        rows = [r for r in results["summary"] if (r["dataset"], r["protocol"]) == (data, protocol)]
        for i, r in enumerate(rows):
            low, high = r["rank_hr@1_ci95"]
            ax.errorbar([i], [r["rank_hr@1"]], yerr=[[r["rank_hr@1"] - low], [high - r["rank_hr@1"]]], fmt="o",
                        capsize=3)
        ax.axhline(0.05, ls=":", color="grey", label="chance (1/20)")
        ax.set_xticks(range(len(rows)), [r["method"] for r in rows], rotation=30, fontsize=8)
        ax.set(title=f"{data} ({protocol})", ylabel="test HR@1 (95% CI, users)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(results_dir / "hr1.png", dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 1 + 0.4 * max(len(results["paired"]), 1)))
    for y, p in enumerate(results["paired"]):
        m = p["rank_hr@1"]
        ax.errorbar([m["mean"]], [y], xerr=[[m["mean"] - m["ci95"][0]], [m["ci95"][1] - m["mean"]]], fmt="o", capsize=3)
    ax.axvline(0, color="grey", lw=1)
    ax.set_yticks(range(len(results["paired"])),
                  [f"{p['dataset']}/{p['protocol']}: {p['difference']}" for p in results["paired"]], fontsize=7)
    ax.set(xlabel="paired HR@1 difference (95% CI, users resampled)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(results_dir / "paired_hr1.png", dpi=120)
    plt.close(fig)

    trained = [r for r in runs if r["curve"] and r["protocol"] == "llara"]
    data_names = sorted({r["dataset"] for r in trained}) or ["(none)"]
    fig, axes = plt.subplots(1, len(data_names), figsize=(5 * len(data_names), 3.6), squeeze=False)
    colours = {m: f"C{i}" for i, m in enumerate(METHODS)}
    for ax, data in zip(axes[0], data_names):
        for r in (r for r in trained if r["dataset"] == data):
            ax.plot([c["train_examples"] for c in r["curve"]], [c["val/rank_hr@1"] for c in r["curve"]], marker=".",
                    color=colours[r["method"]], label=f"{r['method']} s{r['seed']}")
        ax.set(title=f"{data}: fixed validation subset", xlabel="training examples seen", ylabel="val HR@1")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(results_dir / "learning_curves.png", dpi=120)
    plt.close(fig)


def rebuild(results_dir: Path) -> dict | None:
    """results.json, table.md and the PNGs from runs/*.json (None when no run has finished)."""
    records = [json.loads(p.read_text()) for p in sorted((results_dir / "runs").glob("*.json"))]
    runs = [r for r in records if r["method"] != "sasrec"]
    if not runs:
        return None
    sasrec = {f"{r['dataset']}/{r['protocol']}": r for r in records if r["method"] == "sasrec"}
    for key in sorted({f"{r['dataset']}/{r['protocol']}" for r in runs} - set(sasrec)):
        print(f"[study] {key}: no SASRec record ({sasrec_file(results_dir, *key.split('/')).name}); its row is left "
              f"out until `run.py --datasets {key.split('/')[0]}` runs with the encoder in the cache", flush=True)
    return write_results(runs, sasrec, results_dir)


# ------------------------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="dataset/method/seed triples to run (default: all)")
    parser.add_argument("--datasets", nargs="*", choices=list(DATASETS), help="default: all")
    parser.add_argument("--methods", nargs="*", choices=list(METHODS), help="default: all")
    parser.add_argument("--seeds", nargs="*", type=int, help="default: each method's own seeds")
    parser.add_argument("--results", type=Path, default=HERE, help="where runs/*.json, results.json, table.md, PNGs go")
    parser.add_argument("--table-only", action="store_true", help="rebuild the results from <results>/runs/*.json")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    parser.add_argument("--redo", action="store_true", help="run again the runs already recorded in <results>/runs")
    parser.add_argument("--extra", nargs="*", default=[], help="overrides added to every ilora-train run")
    parser.add_argument("--eval-extra", nargs="*", default=[], help="overrides added to every ilora-eval run")
    args = parser.parse_args(argv)
    results_dir = args.results
    (results_dir / "runs").mkdir(parents=True, exist_ok=True)
    if not args.table_only:
        for data, method, seed in planned(args.only, args.datasets, args.methods, args.seeds):
            recorded = [results_dir / "runs" / f"{data}__{p}__{method}__s{seed}.json" for p in DATASETS[data]]
            if all(path.is_file() for path in recorded) and not args.redo:  # finished, e.g. in an earlier session
                print(f"[study] {data}/{method}/seed{seed}: recorded in {recorded[0].parent}, kept", flush=True)
                continue
            print(f"[study] {data}/{method}/seed{seed}", flush=True)
            if not args.dry_run:
                pin_encoder(data)
            attempt = train_run(data, method, seed, args.extra, args.dry_run)
            if attempt is None:
                print(f"[study] {data}/{method}/seed{seed} FAILED: see {OUT / run_name(data, method, seed)}/train.log")
                continue
            evaluated = {"llara": attempt}
            if "windows" in DATASETS[data]:
                evaluated["windows"] = windows_eval(data, method, seed, attempt, args.extra, args.eval_extra,
                                                    args.dry_run)
            if args.dry_run:
                continue
            attempts = _attempts(OUT / run_name(data, method, seed))
            for protocol, directory in evaluated.items():
                if directory is not None:
                    payload = record(data, protocol, method, seed, directory, attempts)
                    path = results_dir / "runs" / f"{data}__{protocol}__{method}__s{seed}.json"
                    path.write_text(json.dumps(payload, sort_keys=True) + "\n")
            record_sasrec(results_dir, [data])
            rebuild(results_dir)  # results.json always shows every run finished so far
    if args.dry_run:
        return 0
    if not args.table_only:
        record_sasrec(results_dir, args.datasets)
    results = rebuild(results_dir)
    print(table(results) if results else "[study] no finished runs yet")
    return 0


if __name__ == "__main__":
    sys.exit(main())
