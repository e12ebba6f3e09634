"""The CPU study: does the instance-wise gate help? iLoRA K=4 vs one LoRA of the same size, on SmolLM2-135M.

    python experiments/study/run.py --validation    # learning curves and the learning-rate check (validation only)
    python experiments/study/run.py                 # the powered study: run (or resume) every run, then the results
    python experiments/study/run.py --study first   # the first study (1,024 examples, 3 seeds; complete)
    python experiments/study/run.py --table-only    # results.json, table.md, PNGs of every study from runs/*.json
    python experiments/study/run.py --write-readmes # the READMEs' generated tables from those results.json
    python experiments/study/run.py --only movielens/ilora_k4/0 --dry-run   # what would run, nothing started

Every run is `ilora-train experiment=study` (conf/experiment/study.yaml) plus its study's and its method's overrides,
so the same budget of training examples, objective and prompt hold for every method of a study. A run killed
half-way resumes from its `last.ckpt` (a new attempt directory beside the old one,
`ckpt_path=<old>/checkpoints/last.ckpt`); a finished run is kept: its per-run JSON under `<results>/runs/` is the
record (so a fresh clone, whose `outputs/` is empty, runs only what is missing; `--redo` runs recorded ones again).
The first study's MovieLens runs were also evaluated on the extended protocol (`ilora-eval
data=movielens_windows`, 2,069 windows of the same 95 users).

Precision: each run trains and tests in the precision this CPU runs natively (bf16 autocast with avx512_bf16, else
fp32; `--precision` picks one), and every method of one seed of a dataset shares the precision of that seed's first
recorded run, so a paired difference never mixes the two. A run whose seed was recorded in the other precision (or
whose checkpoint trained in it) is left for a machine that runs that precision natively, with one line saying so;
the other precision would cost 2.4-3x the time here (experiments/study/README.md).

Validation runs (`--validation`: one seed, validation on all val users every 512 examples, no test) choose the
powered study's budget and each method's learning rate; they are recorded in `validation/*.json`.

Run directories (checkpoints, logs) live under `outputs/study/` (not committed); what the results need is copied
to `<results>/runs/<dataset>__<protocol>__<method>__s<seed>.json` (metrics, per-example target ranks and users, the
learning curve, what the gate learned, wall time, the SHA-256 of the SASRec weights that steered it). The frozen
SASRec's ranks on the same examples are recorded the same way (`<dataset>__<protocol>__sasrec__s0.json`) once its
encoder is in the cache, so `--table-only` rebuilds everything from a fresh clone, no encoder needed. The analysis
(summaries, paired differences, intervals and their measured coverage, tables, plots) is `ilora.report.records`,
the same statistics as `ilora-report`.
"""

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
OUT = Path(os.environ.get("ILORA_STUDY_OUT", ROOT / "outputs" / "study"))
PINNED = HERE / "encoders"  # the SASRec weights that steer the study's runs, per dataset
EXAMPLES_PER_STEP = 8  # conf/experiment/study.yaml: micro-batches of 4, accumulated 2
VAL_EVERY = 512  # validation runs: a point every 512 training examples, on all val users
ENCODER_SEED = 0  # the SASRec that steers every run (projector inputs, gate) and is the reference row
RUN_ORDER = ("lora_k1", "ilora_k4", "uniform_k4", "frozen")  # within a seed: the main comparison first
PAIRS = (("ilora_k4", "lora_k1"), ("uniform_k4", "lora_k1"), ("ilora_k4", "uniform_k4"))
WINDOWS_DATA = {"movielens": "movielens_windows"}
METHOD_OVERRIDES = {"frozen": ["adapter=none"], "lora_k1": ["adapter=lora"], "ilora_k4": [],
                    "uniform_k4": ["gate=uniform"]}


@dataclass(frozen=True)
class Study:
    name: str
    results: Path  # runs/*.json, results.json, table.md and the PNGs
    seeds: dict[str, tuple[int, ...]]  # method -> seeds
    datasets: dict[str, tuple[str, ...]]  # dataset -> protocols (the first is the post-fit test of the run)
    overrides: tuple[str, ...] = ()  # added to every run of the study (e.g. its budget)
    extra_seeds: dict[str, dict[str, tuple[int, ...]]] = field(default_factory=dict)  # dataset -> method -> seeds
    subdir: str = ""  # its run directories: OUT / subdir
    lr: bool = False  # each (dataset, method) trains at its learning rate chosen on validation (`chosen_lr`)

    def out(self) -> Path:
        return OUT / self.subdir if self.subdir else OUT

    def methods(self) -> list[str]:
        return list(self.seeds)


# The first study (2026-12-04/05): 1,024 training examples (the recipe's 128 steps), lr 1e-3 for every method,
# 3 seeds. Uniform-gate seeds 1 and 2 on LastFM were added after LastFM's first results, to test whether iLoRA's
# gain there came from the routing. Complete; kept as recorded.
FIRST = Study(
    name="first", results=HERE, seeds={"frozen": (0,), "lora_k1": (0, 1, 2), "ilora_k4": (0, 1, 2), "uniform_k4": (0,)},
    datasets={"movielens": ("llara", "windows"), "lastfm": ("llara",)},
    extra_seeds={"lastfm": {"uniform_k4": (1, 2)}})
# The powered study (issue 24): the budget chosen on the validation curves, each method at its own learning rate
# chosen on validation, 8 seeds of LoRA and iLoRA (more where the power calculation says so), the uniform gate at 3.
# Seeds start at 1: seed 0 is the validation runs' seed, and its run at the chosen rate was picked for scoring best
# on validation, so it would bring that selection into the comparison (the frozen LLM trains nothing).
BUDGET = 4096
POWERED = Study(
    name="powered", results=HERE / "powered",
    seeds={"frozen": (0,), "lora_k1": tuple(range(1, 9)), "ilora_k4": tuple(range(1, 9)), "uniform_k4": (1, 2, 3)},
    datasets={"movielens": ("llara",), "lastfm": ("llara",)},
    overrides=(f"trainer.max_steps={BUDGET // EXAMPLES_PER_STEP}",
               f"trainer.val_check_interval={VAL_EVERY // 4}", "data.limit_val_examples=null"),
    subdir="powered", lr=True)
STUDIES = {s.name: s for s in (FIRST, POWERED)}
DEFAULT_STUDY = "powered"
# kept for callers of the first study's plan
METHODS = {m: (METHOD_OVERRIDES[m], seeds) for m, seeds in FIRST.seeds.items()}
DATASETS = FIRST.datasets

# Validation runs (one seed each, no test): learning curves to 4,096 examples at lr 1e-3, and the learning-rate
# check at the budget (3e-4 / 1e-3 / 3e-3; the curves are its 1e-3 points).
VALIDATION_DIR = HERE / "validation"
CURVE_EXAMPLES = 4096
LR_GRID = (3e-4, 1e-3, 3e-3)


def validation_plan() -> list[tuple[str, str, int, float, int]]:
    """(dataset, method, seed, lr, training examples) of every validation run, curves first."""
    runs = [(d, m, 0, 1e-3, CURVE_EXAMPLES) for d in ("movielens", "lastfm") for m in ("lora_k1", "ilora_k4")]
    runs += [(d, m, 0, lr, BUDGET) for d in ("movielens", "lastfm") for m in ("lora_k1", "ilora_k4")
             for lr in LR_GRID if (lr, BUDGET) != (1e-3, CURVE_EXAMPLES)]
    return runs


def lr_name(lr: float) -> str:
    mantissa, exponent = f"{lr:.0e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def validation_name(data: str, method: str, seed: int, lr: float, examples: int) -> str:
    return f"{data}__{method}__s{seed}__lr{lr_name(lr)}__b{examples}"


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
            seeds: list[int] | None = None, study: Study = FIRST) -> list[tuple[str, str, int]]:
    runs = [(d, m, s) for d in study.datasets for m, default in study.seeds.items()
            for s in (seeds or default + study.extra_seeds.get(d, {}).get(m, ()))
            if (not datasets or d in datasets) and (not methods or m in methods)]
    # seed by seed, datasets side by side, so that an interrupted study already holds complete paired comparisons
    order = {m: i for i, m in enumerate(RUN_ORDER)}
    runs.sort(key=lambda r: (r[2], list(study.datasets).index(r[0]), order[r[1]]))
    if only:
        keep = {tuple(o.split("/")) for o in only}
        runs = [r for r in runs if (r[0], r[1], str(r[2])) in keep]
    return runs


class CheckPending(Exception):
    """A run's learning rate is not chosen yet: its learning-rate check has not been recorded."""


def chosen_lr(data: str, method: str, directory: Path | None = None, missing_ok: bool = False) -> float | None:
    """The learning rate of `method` on `data` with the best validation HR@1 at the budget (ties: val MRR), from
    the recorded learning-rate check (the rule of `validation_summary`); `CheckPending` naming what is missing
    (None with `missing_ok`)."""
    from ilora.report import records as analysis

    paths = [(directory or VALIDATION_DIR) / f"{validation_name(data, method, 0, lr, BUDGET)}.json" for lr in LR_GRID]
    missing = [p.name for p in paths if not p.is_file()]
    if not missing:
        (row,) = analysis.validation_summary([json.loads(p.read_text()) for p in paths], BUDGET, LR_GRID)["lr_check"]
        if row["chosen"] is not None:
            return row["chosen"]
        missing = [f"{validation_name(data, method, 0, float(lr), BUDGET)}.json has no validation at {BUDGET:,} "
                   "examples" for lr in row.get("no_final_point", [])]
    if missing_ok:
        return None
    raise CheckPending(f"{'; '.join(missing)}: the learning-rate check of {data}/{method} is not recorded yet")


def method_overrides(study: Study, data: str, method: str, dry_run: bool = False) -> list[str]:
    lr = []
    if study.lr and method != "frozen":
        # the uniform-gate control is iLoRA without routing: it trains at iLoRA's rate
        chosen = chosen_lr(data, "ilora_k4" if method == "uniform_k4" else method, missing_ok=dry_run)
        lr = [f"model.optimizer.lr={chosen if chosen is not None else 'PENDING_LR_CHECK'}"]
    return [*METHOD_OVERRIDES[method], *study.overrides, *lr]


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


PRECISIONS = {"bf16": ("bf16-mixed", "bfloat16"), "fp32": ("32-true", "float32")}  # trainer.precision, backbone.dtype


def precision_overrides(precision: str) -> list[str]:
    trainer, backbone = PRECISIONS[precision]
    return [f"trainer.precision={trainer}", f"backbone.dtype={backbone}"]


def config_precision(config: dict) -> str:
    """bf16 or fp32: the precision a run's resolved config.yaml trained in (bf16-mixed autocast counts as bf16)."""
    return "bf16" if str(config["trainer"]["precision"]).startswith("bf16") else "fp32"


def attempt_precision(attempt: Path) -> str | None:
    import yaml

    path = attempt / "config.yaml"
    return config_precision(yaml.safe_load(path.read_text())) if path.is_file() else None


def seed_precision(results_dir: Path, data: str, seed: int) -> str | None:
    """The precision of the trained runs recorded for `seed` of `data` (every method of a seed shares one: a paired
    difference never mixes bf16 and fp32); None while none is recorded. Records that disagree stop the study."""
    from ilora.report import dynamics

    records = [json.loads(p.read_text()) for p in sorted((results_dir / "runs").glob(f"{data}__*__s{seed}.json"))]
    found = dynamics.precision_by_seed(records).get(data, {})
    if len(found) > 1:
        raise SystemExit(f"{results_dir / 'runs'}: seed {seed} of {data} mixes precisions ({', '.join(found)} in "
                         f"{data}__*__s{seed}.json); its paired differences would too")
    return next(iter(found), None)


def train_run(base: Path, overrides: list[str], extra: list[str], dry_run: bool) -> Path | None:
    """The completed training attempt under `base` (training or resuming it first); None if it failed."""
    attempts = _attempts(base)
    if attempts and _completed(attempts[-1]):
        return attempts[-1]
    # the newest last.ckpt: an attempt stopped before its first save (a session ending while it loaded) has none,
    # and must not send the run back to step 0
    saved = [a / "checkpoints" / "last.ckpt" for a in reversed(attempts) if (a / "checkpoints" / "last.ckpt").is_file()]
    resume = [f"ckpt_path={saved[0]}"] if saved else []
    attempt = base / f"attempt{len(attempts)}"
    args = [str(BIN / "ilora-train"), "experiment=study", *overrides, *extra, *resume, f"hydra.run.dir={attempt}"]
    code = _call(args, base / "train.log", dry_run)
    return attempt if (dry_run or (code == 0 and _completed(attempt))) else None


def windows_eval(study: Study, data: str, method: str, seed: int, attempt: Path, extra: list[str],
                 eval_extra: list[str], dry_run: bool) -> Path | None:
    """The extended-protocol evaluation of a trained MovieLens run (the frozen LLM: its own untrained run)."""
    target = study.out() / run_name(data, method, seed) / "windows"
    if _completed(target):
        return target
    if target.exists() and not dry_run:  # an interrupted evaluation: start it again in a fresh directory
        target.rename(target.with_name(f"windows.failed{time.time_ns()}"))
    if method == "frozen":
        args = [str(BIN / "ilora-train"), "experiment=study", f"data={WINDOWS_DATA[data]}",
                *method_overrides(study, data, method, dry_run), f"seed={seed}", *extra, *eval_extra,
                f"hydra.run.dir={target}"]
    else:
        # index order, as every recorded run was evaluated (bf16 scores move with the batch composition)
        args = [str(BIN / "ilora-eval"), f"ckpt_path={attempt / 'checkpoints' / 'last.ckpt'}",
                f"data={WINDOWS_DATA[data]}", "data.eval_order=index", "logger=none", *eval_extra,
                f"hydra.run.dir={target}"]
    code = _call(args, target.parent / "windows.log", dry_run)
    return target if (dry_run or (code == 0 and _completed(target))) else None


# ------------------------------------------------------------------------------------------- recording


def read_test(predictions: Path) -> tuple[list[int], list[int], list[int], np.ndarray | None]:
    """(index, user, 1-based pessimistic rank of the target, gate weights [N, K] or None) of every test example."""
    import torch

    from ilora.metrics import target_rank

    rows = [json.loads(line) for line in predictions.read_text().splitlines() if line.strip()]
    rows.sort(key=lambda r: r["index"])
    ranks = target_rank(torch.tensor([r["scores"] for r in rows]), torch.tensor([r["target_index"] for r in rows]))
    gates = np.asarray([r["gate"] for r in rows], dtype=float) if rows and "gate" in rows[0] else None
    return [r["index"] for r in rows], [int(r.get("user", r["index"])) for r in rows], ranks.tolist(), gates


def gate_summary(gates: np.ndarray | None) -> dict | None:
    """What the gate learned on the test users: entropy (nats; log K = uniform), each expert's mean weight and its
    spread across users, and how often each expert is a user's top one (a user whose top weight several experts
    share counts 1/m to each of the m: a uniform gate has no top expert, and argmax would name the first).
    None for methods without a gate."""
    if gates is None or gates.ndim != 2 or gates.shape[1] < 2:
        return None
    entropy = -(gates * np.log(np.clip(gates, 1e-12, None))).sum(1)
    tied = np.isclose(gates, gates.max(1, keepdims=True), rtol=1e-5, atol=0)
    top = (tied / tied.sum(1, keepdims=True)).mean(0)
    return {"entropy_mean": float(entropy.mean()), "entropy_min": float(entropy.min()),
            "entropy_uniform": float(np.log(gates.shape[1])), "weight_mean": gates.mean(0).tolist(),
            "weight_std_across_users": gates.std(0).tolist(), "top_expert_share": top.tolist()}


def _curve(attempts: list[Path]) -> list[dict]:
    """The run's validation points over all its attempts, one per training-example count: an attempt resumed from
    a save made before a point logs that point again, and the later attempt's is the run's."""
    points = {}
    for attempt in attempts:
        path = attempt / "curve.jsonl"
        if path.is_file():
            for line in path.read_text().splitlines():
                if line.strip():
                    row = json.loads(line)
                    points[row["train_examples"]] = row
    keep = ("step", "train_examples", "val/num_examples", "val/rank_hr@1", "val/rank_hr@5", "val/rank_ndcg@5",
            "val/rank_mrr", "val/gate_entropy")
    return [{k: v for k, v in r.items() if k in keep} for _, r in sorted(points.items())]


def _attempt_seconds(attempt: Path) -> float:
    """One attempt's wall time: its metrics.json when it finished; when it was stopped (a session ending), from its
    start (config.yaml, written as it starts) to the last file it wrote, so the work it did still counts."""
    metrics = attempt / "metrics.json"
    if metrics.is_file():
        return json.loads(metrics.read_text()).get("wall_time_s", 0.0)
    start = attempt / "config.yaml"
    if not start.is_file():
        return 0.0
    written = [p.stat().st_mtime for p in attempt.rglob("*") if p.is_file()]
    return max(max(written) - start.stat().st_mtime, 0.0)


def _wall_time(attempts: list[Path]) -> float:
    """Seconds of training over every attempt of a run, the stopped ones included."""
    return sum(_attempt_seconds(a) for a in attempts)


def _provenance(data: str, precision: str | None = None) -> dict:
    """Where and when a record was made: machine (with the precision the run used), commit, time, load (> cores:
    the timing shared the machine) and the SHA-256 of the SASRec weights that steered the run."""
    return {"machine": machine(precision), "commit": commit(), "recorded": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "load_avg_1m": round(os.getloadavg()[0], 2), "encoder_sha256": encoder_digest(data)}


def record(data: str, protocol: str, method: str, seed: int, directory: Path, attempts: list[Path]) -> dict:
    """The per-run JSON: metrics, per-example ranks, learning curve, budget and wall time."""
    import yaml

    metrics = json.loads((directory / "metrics.json").read_text())
    index, users, ranks, gates = read_test(directory / "predictions_test.jsonl")
    config = yaml.safe_load((attempts[-1] / "config.yaml").read_text())
    trained = method != "frozen"
    per_step = int(config["data"]["batch_size"]) * int(config["trainer"]["accumulate_grad_batches"])
    train_wall = _wall_time(attempts)
    eval_wall = metrics.get("wall_time_s", 0.0) if directory not in attempts else 0.0
    return {
        "dataset": data, "protocol": protocol, "method": method, "seed": seed,
        "rank_hr@1": metrics["test/rank_hr@1"], "rank_hr@5": metrics["test/rank_hr@5"],
        "rank_ndcg@5": metrics["test/rank_ndcg@5"], "n_test": int(metrics["test/num_examples"]),
        "train_examples": int(config["trainer"]["max_steps"]) * per_step if trained else 0,
        "wall_time_s": round(train_wall + eval_wall, 1), "attempts": len(attempts),
        **_provenance(data, config_precision(config)),
        "index": index, "user": users, "target_rank": ranks, "curve": _curve(attempts) if trained else [],
        "gate": gate_summary(gates),
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
    from ilora.report.records import METRICS
    from ilora.report.statistics import metric_values

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
    metrics = {m: float(metric_values(np.asarray(ranks), m).mean()) for m in METRICS}
    return {"dataset": data, "protocol": protocol, "method": "sasrec", "seed": ENCODER_SEED, **metrics,
            "n_test": int(keep.size), "encoder_sha256": digest, "machine": machine(), "commit": commit(),
            "recorded": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "index": keep.tolist(), "user": [int(u) for u in users], "target_rank": ranks}


def record_sasrec(study: Study, datasets: list[str] | None = None) -> None:
    """Record SASRec's ranks for every protocol with recorded runs and no SASRec record yet (its encoder cached)."""
    results_dir = study.results
    for data, protocols in study.datasets.items():
        if datasets and data not in datasets:
            continue
        for protocol in protocols:
            path = sasrec_file(results_dir, data, protocol)
            if path.is_file() or not any((results_dir / "runs").glob(f"{data}__{protocol}__*.json")):
                continue
            payload = sasrec_record(data, protocol)
            if payload is not None:
                path.write_text(json.dumps(payload, sort_keys=True) + "\n")


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


def native_precision() -> str:
    """bf16 where this CPU has avx512_bf16 (about 3x fp32 there), else fp32 (emulated bf16: about 2.4x slower)."""
    from ilora.backbones import cpu_has_avx512_bf16

    return "bf16" if cpu_has_avx512_bf16() else "fp32"


def machine(precision: str | None = None) -> dict:
    """The CPU, its cores, whether it runs bf16 natively, and the precision used (default: the native one)."""
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    native = native_precision()
    return {"cpu": model, "cores": os.cpu_count(), "avx512_bf16": native == "bf16", "precision": precision or native}


def _write(path: Path, text: str) -> None:
    from ilora.cli.common import write_text_atomic  # two lanes may rebuild at once: never a torn file

    write_text_atomic(path, text)


def write_results(study: Study, runs: list[dict], sasrec: dict[str, dict], coverage: bool = True) -> dict:
    from ilora.report import dynamics
    from ilora.report import records as analysis

    panels = [(d, p) for d, ps in study.datasets.items() for p in ps]
    methods = list(study.seeds)
    results = {"study": study.name, "recipe": "conf/experiment/study.yaml", "overrides": list(study.overrides),
               "machine": machine(), **analysis.summarise(runs, sasrec, panels, methods, PAIRS),
               "runs": [{k: r[k] for k in ("dataset", "protocol", "method", "seed", "rank_hr@1", "rank_hr@5",
                                           "rank_ndcg@5", "n_test", "train_examples", "wall_time_s", "machine",
                                           "gate", "config") if k in r} for r in runs]}
    first_protocol = {d: ps[0] for d, ps in study.datasets.items()}
    results["curves"] = dynamics.curves([r for r in runs if r["protocol"] == first_protocol[r["dataset"]]])
    results["gate"] = dynamics.gate_use(runs)
    results["cpu_hours"] = dynamics.cpu_hours(runs, first_protocol)
    results["precision_by_seed"] = dynamics.precision_by_seed(runs)
    results["paired_by_precision"] = dynamics.paired_by_precision(results["paired"], results["precision_by_seed"])
    if coverage:
        results["coverage"] = analysis.coverage(runs, panels, PAIRS[0])
        results["power"] = analysis.power(results["paired"], target=0.03)
    _write(study.results / "results.json", json.dumps(results, indent=2, sort_keys=True) + "\n")
    notes = {r.get("encoder_of_the_runs") for r in results["summary"] if r["method"] == "sasrec"}
    footnotes = "".join(f"\n{SASREC_FOOTNOTES[k]}" for k in (False, None) if k in notes)
    _write(study.results / "table.md", analysis.table(results, SASREC_NOTES) + "\n" + footnotes + "\n"
           + dynamics.details_table(results))
    analysis.plot(results, runs, study.results, panels, methods)
    return results


SASREC_NOTES = {True: "", False: " (†)", None: " (‡)"}
SASREC_FOOTNOTES = {False: "(†) a SASRec trained with the same recipe and seed, not the weights that steered these "
                           "runs (SHA-256 differs: retrained on another machine).\n",
                    None: "(‡) SASRec trained with the same recipe and seed; some runs did not record their encoder's "
                          "SHA-256, so whether it is the very encoder that steered them is not known.\n"}


def rebuild(study: Study, coverage: bool = True) -> dict | None:
    """results.json, table.md and the PNGs of `study` from its runs/*.json (None when no run has finished)."""
    records = [json.loads(p.read_text()) for p in sorted((study.results / "runs").glob("*.json"))]
    runs = [r for r in records if r["method"] != "sasrec"]
    if not runs:
        return None
    sasrec = {f"{r['dataset']}/{r['protocol']}": r for r in records if r["method"] == "sasrec"}
    for key in sorted({f"{r['dataset']}/{r['protocol']}" for r in runs} - set(sasrec)):
        print(f"[study] {key}: no SASRec record ({sasrec_file(study.results, *key.split('/')).name}); its row is left "
              f"out until `run.py --datasets {key.split('/')[0]}` runs with the encoder in the cache", flush=True)
    return write_results(study, runs, sasrec, coverage)


# ----------------------------------------------------------------------------------------- validation runs


def validation_overrides(data: str, method: str, seed: int, lr: float, examples: int) -> list[str]:
    return [f"data={data}", *METHOD_OVERRIDES[method], f"seed={seed}", f"model.optimizer.lr={lr}",
            f"trainer.max_steps={examples // EXAMPLES_PER_STEP}", f"trainer.val_check_interval={VAL_EVERY // 4}",
            "data.limit_val_examples=null", "data.limit_test_examples=1", "logger=csv"]


def validation_record(data: str, method: str, seed: int, lr: float, examples: int, attempts: list[Path]) -> dict:
    """A validation run's curve (every 512 examples, all val users), budget, wall time and machine."""
    return {"dataset": data, "method": method, "seed": seed, "lr": lr, "train_examples": examples,
            "val_every": VAL_EVERY, "curve": _curve(attempts), "wall_time_s": round(_wall_time(attempts), 1),
            "attempts": len(attempts), "threads": os.environ.get("OMP_NUM_THREADS"), **_provenance(data)}


def run_validation(only: list[str] | None, extra: list[str], dry_run: bool, lane: tuple[int, int]) -> None:
    plan = validation_plan()
    if only:
        plan = [r for r in plan if validation_name(*r) in only]
    VALIDATION_DIR.mkdir(parents=True, exist_ok=True)
    for i, run in enumerate(plan):
        name = validation_name(*run)
        path = VALIDATION_DIR / f"{name}.json"
        if path.is_file() or i % lane[1] != lane[0]:
            continue
        print(f"[study] validation {name}", flush=True)
        if not dry_run:
            pin_encoder(run[0])
        base = OUT / "validation" / name
        attempt = train_run(base, validation_overrides(*run), extra, dry_run)
        if dry_run:
            continue
        if attempt is None:
            print(f"[study] validation {name} FAILED: see {base}/train.log", flush=True)
            continue
        from ilora.report.records import point_at

        record = validation_record(*run, _attempts(base))
        _write(path, json.dumps(record, indent=1, sort_keys=True) + "\n")
        if point_at(record["curve"], run[4]) is None:
            print(f"[study] validation {name}: no validation point at {run[4]:,} examples (a stop during it, under "
                  "code before its fix): the learning-rate check leaves it out", flush=True)
        write_validation()


def write_validation() -> dict | None:
    """validation/summary.json, summary.md and curves.png from validation/*.json."""
    from ilora.report import records as analysis

    found = [json.loads(p.read_text()) for p in sorted(VALIDATION_DIR.glob("*__b*.json"))]
    if not found:
        return None
    summary = analysis.validation_summary(found, budget=BUDGET, grid=LR_GRID)
    _write(VALIDATION_DIR / "summary.json", json.dumps(summary, indent=2, sort_keys=True) + "\n")
    _write(VALIDATION_DIR / "summary.md", analysis.validation_table(summary) + "\n")
    analysis.plot_validation(found, VALIDATION_DIR / "curves.png")
    return summary


# ------------------------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", choices=list(STUDIES), default=None,
                        help=f"which study to run (default: {DEFAULT_STUDY}); --table-only without it: all")
    parser.add_argument("--validation", action="store_true", help="run the validation runs (curves, lr check)")
    parser.add_argument("--only", nargs="*", help="dataset/method/seed triples to run (validation: run names)")
    parser.add_argument("--datasets", nargs="*", help="default: all of the study's")
    parser.add_argument("--methods", nargs="*", choices=list(METHOD_OVERRIDES), help="default: all")
    parser.add_argument("--seeds", nargs="*", type=int, help="default: each method's own seeds")
    parser.add_argument("--lane", default="0/1", help="i/n: run only every n-th planned run from the i-th "
                        "(two lanes of one thread each use 2 cores best)")
    parser.add_argument("--results", type=Path, default=None, help="where runs/*.json, results.json, table.md, PNGs "
                        "go (default: the study's folder)")
    parser.add_argument("--table-only", action="store_true", help="rebuild the results from <results>/runs/*.json")
    parser.add_argument("--no-coverage", action="store_true", help="skip the coverage simulation (about a minute)")
    parser.add_argument("--readme", action="store_true", help="print the README's tables of the study's results.json")
    parser.add_argument("--write-readmes", action="store_true", help="rewrite the generated blocks of README.md and "
                        "the study README from every study's results.json and the validation summary")
    parser.add_argument("--precision", choices=["native", *PRECISIONS], default="native", help="bf16 or fp32 "
                        "for the runs started here (native: bf16 where the CPU has avx512_bf16, else fp32); a seed "
                        "keeps the precision its recorded runs used")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    parser.add_argument("--redo", action="store_true", help="run again the runs already recorded in <results>/runs")
    parser.add_argument("--extra", nargs="*", default=[], help="overrides added to every ilora-train run")
    parser.add_argument("--eval-extra", nargs="*", default=[], help="overrides added to every ilora-eval run")
    args = parser.parse_args(argv)
    try:
        lane = tuple(int(x) for x in args.lane.split("/"))
        assert len(lane) == 2 and 0 <= lane[0] < lane[1]
    except (ValueError, AssertionError):
        parser.error(f"--lane {args.lane}: expected i/n with 0 <= i < n")
    if args.validation:
        run_validation(args.only, args.extra, args.dry_run, lane)
        if not args.dry_run:
            print(analysis_table(write_validation()))
        return 0
    names = [args.study] if args.study else (list(STUDIES) if args.table_only else [DEFAULT_STUDY])
    if args.readme:
        from ilora.report.readme import study_blocks

        for name in names:
            path = (args.results or STUDIES[name].results) / "results.json"
            if not path.is_file():
                print(f"{path}: not yet")
                continue
            for key, block in study_blocks(name, json.loads(path.read_text())).items():
                if block:
                    print(f"<!-- {key} -->\n{block.strip(chr(10))}\n")
        return 0
    if args.write_readmes:
        if args.results is not None or args.study is not None:
            parser.error("--write-readmes fills the READMEs from every study's own results.json: drop "
                         "--results / --study")
        return write_readmes()
    waiting = 0
    for name in names:
        study = STUDIES[name]
        if args.results is not None:
            study = Study(**{**study.__dict__, "results": args.results})
        unknown = set(args.datasets or ()) - set(study.datasets)
        if unknown:
            parser.error(f"--datasets {' '.join(sorted(unknown))}: not in the {name} study ({', '.join(study.datasets)})")
        (study.results / "runs").mkdir(parents=True, exist_ok=True)
        if not args.table_only:
            waiting += run_study(study, args, lane)
        if args.dry_run:
            continue
        if not args.table_only:
            record_sasrec(study, args.datasets)
        results = rebuild(study, coverage=not args.no_coverage)
        print(f"[study] {name}: " + (f"{study.results / 'table.md'}" if results else "no finished runs yet"))
    if args.table_only and not args.study and not args.results:
        write_validation()
    if waiting:
        print(f"[study] {waiting} run(s) wait for their learning-rate check: run `python experiments/study/run.py "
              f"--validation` first, then this again", flush=True)
    return 1 if waiting else 0


READMES = (ROOT / "README.md", HERE / "README.md")


def write_readmes() -> int:
    """Fill the `<!-- generated: key -->` blocks of `READMES` (`ilora.report.readme`) from the committed results;
    a README is rewritten (atomically) only where a block changed."""
    from ilora.cli.common import write_text_atomic
    from ilora.report import records as analysis
    from ilora.report.readme import fill, study_blocks

    blocks = {}
    for name, study in STUDIES.items():
        path = study.results / "results.json"
        if path.is_file():
            blocks.update(study_blocks(name, json.loads(path.read_text())))
    summary = VALIDATION_DIR / "summary.json"
    if summary.is_file():
        blocks["validation"] = analysis.validation_table(json.loads(summary.read_text()))
    texts = {readme: readme.read_text() for readme in READMES}
    try:  # every README checked before any is written
        filled = {readme: fill(text, blocks, where=str(readme)) for readme, text in texts.items()}
    except ValueError as error:
        print(f"[study] {error}", file=sys.stderr)
        return 2
    for readme, text in filled.items():
        print(f"[study] {readme}: " + ("rewritten" if text != texts[readme] else "current"))
        if text != texts[readme]:
            write_text_atomic(readme, text)
    return 0


def analysis_table(summary: dict | None) -> str:
    from ilora.report import records as analysis

    return analysis.validation_table(summary) if summary else "[study] no validation run recorded yet"


def precision_clash(study: Study, data: str, seed: int, base: Path, precision: str) -> str | None:
    """Why a run cannot start in `precision` here: its seed was recorded, or its checkpoint trained, in the other
    (a paired difference must not mix them; a resumed run must not switch); None when it can."""
    recorded = seed_precision(study.results, data, seed)
    if recorded not in (None, precision):
        return f"{recorded} machine: seed {seed} of {data} was recorded in {recorded}"
    started = next((p for a in reversed(_attempts(base)) if (p := attempt_precision(a))), None)
    if started not in (None, precision):
        return f"{started} machine: its checkpoint under {base} trained in {started}"
    return None


def run_study(study: Study, args: argparse.Namespace, lane: tuple[int, int]) -> int:
    """Train, evaluate and record the lane's planned runs; the number left waiting for a learning-rate check (one
    line each: the runs whose rate is chosen go on, so a dataset's seeds can start before the other's check ends)."""
    waiting = 0
    precision = native_precision() if args.precision == "native" else args.precision
    asked = [e.split("=", 1)[1] for e in args.extra if e.startswith("trainer.precision=")]
    if asked:  # --extra trainer.precision=... has the last word over --precision
        precision = config_precision({"trainer": {"precision": asked[-1]}})
    for i, (data, method, seed) in enumerate(planned(args.only, args.datasets, args.methods, args.seeds, study)):
        if i % lane[1] != lane[0]:
            continue
        protocols = study.datasets[data]
        recorded = [study.results / "runs" / f"{data}__{p}__{method}__s{seed}.json" for p in protocols]
        if all(path.is_file() for path in recorded) and not args.redo:  # finished, e.g. in an earlier session
            print(f"[study] {data}/{method}/seed{seed}: recorded in {recorded[0].parent}, kept", flush=True)
            continue
        try:
            overrides = [f"data={data}", *method_overrides(study, data, method, args.dry_run), f"seed={seed}"]
        except CheckPending as pending:
            print(f"[study] {data}/{method}/seed{seed} waits: {pending}", flush=True)
            waiting += 1
            continue
        base = study.out() / run_name(data, method, seed)
        if method != "frozen" and (clash := precision_clash(study, data, seed, base, precision)):
            print(f"[study] {data}/{method}/seed{seed} left for a {clash} (this one runs {precision})", flush=True)
            continue
        if args.precision != "native":  # native: the config's own rule (trainer.precision, backbone.dtype=auto)
            overrides += precision_overrides(precision)
        print(f"[study] {study.name} {data}/{method}/seed{seed} ({precision})", flush=True)
        if not args.dry_run:
            pin_encoder(data)
        attempt = train_run(base, overrides, args.extra, args.dry_run)
        if attempt is None:
            print(f"[study] {data}/{method}/seed{seed} FAILED: see {base}/train.log", flush=True)
            continue
        evaluated = {protocols[0]: attempt}
        if "windows" in protocols:
            evaluated["windows"] = windows_eval(study, data, method, seed, attempt, args.extra, args.eval_extra,
                                                args.dry_run)
        if args.dry_run:
            continue
        attempts = _attempts(base)
        for protocol, directory in evaluated.items():
            if directory is not None:
                payload = record(data, protocol, method, seed, directory, attempts)
                _write(study.results / "runs" / f"{data}__{protocol}__{method}__s{seed}.json",
                       json.dumps(payload, sort_keys=True) + "\n")
        record_sasrec(study, [data])
        # results.json always shows every run finished so far, as `--table-only` would rebuild it (the coverage
        # simulation adds about a minute once both methods of a pair have two seeds)
        rebuild(study, coverage=not args.no_coverage)
    return waiting


if __name__ == "__main__":
    sys.exit(main())
