"""The lent GPU's one call: CUDA faults first, then the numbers (run by device_run.sh, which sets the paths).

Steps, each in a child process with its own time limit inside one overall deadline, each recorded whatever
happens to the others (the output is what comes back from a 15-minute lease, so one failure must not hide the rest):

1. `environment`: Python, torch, CUDA device, the versions of the libraries the image brings.
2. `train` and `resume`: a real `ilora-train` through the Lightning Trainer on CUDA (bf16-mixed), SmolLM2's shape
   with random weights, the real tokenizer, MovieLens with the pinned SASRec, a few dozen steps with validation and
   a test on a few users (generation included), `last.ckpt` written, then resumed for more steps.
3. `bench_gpu`: the bench's layer and step ratios on CUDA bf16 (SmolLM2 shape) and the Llama-2-7B-shaped iLoRA
   step time and peak memory at micro-batch 1 / 4 / 8 with and without gradient checkpointing.
4. `ilora_bench`: training examples/s for the default config and the study recipe, eager and compiled.

`--dry-run` runs the same steps on the CPU with tiny shapes (the test suite does). Results: `$OUT/device_run.json`
and `device_run.md`, the benches' JSON, and the tails of the logs (at most 8 files come back).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PINNED_ENCODER = ROOT / "experiments" / "study" / "encoders" / "movielens"
GPU_LIMITS = {"train": 120, "resume": 75, "bench_gpu": 150, "ilora_bench": 200}  # seconds, inside the deadline
DRY_LIMITS = {"train": 400, "resume": 300, "bench_gpu": 300, "ilora_bench": 600}


def tokenizer_dir() -> Path | None:
    """The carried tokenizer (`.whl/tokenizer`, or under $DEVICE_PAYLOAD), else None (the GGUF cache provides it)."""
    carried = Path(os.environ.get("DEVICE_PAYLOAD") or ROOT / ".whl") / "tokenizer"
    return carried if (carried / "tokenizer.json").is_file() else None


def train_overrides(dry_run: bool, tokenizer: Path | None) -> list[str]:
    common = ["data=movielens", "logger=csv", "trainer.val_check_interval=8", "callbacks.last_checkpoint.every_n_train_steps=8",
              "data.limit_val_examples=16", "data.limit_test_examples=16", "model.evaluation.max_new_tokens=16"]
    carried = [f"backbone.path={tokenizer}"] if tokenizer else []  # the carried tokenizer, not the GGUF
    if dry_run:
        return [*common, "backbone=tiny_random", *carried, "trainer=cpu", "trainer.precision=32-true",
                "data.batch_size=2", "data.eval_batch_size=4", "model.compile=false"]
    return [*common, "backbone=smollm2_shape", *carried, "trainer=gpu"]


def bench_overrides(dry_run: bool, tokenizer: Path | None) -> list[str]:
    carried = [f"backbone.path={tokenizer}"] if tokenizer else []
    if dry_run:
        return carried  # ilora-bench --dry-run brings its own tiny backbone and data
    return ["trainer=gpu", "backbone=smollm2_shape", "model.compile=true", *carried]


class Steps:
    def __init__(self, work: Path, deadline: float, limits: dict[str, int]) -> None:
        self.work, self.deadline, self.limits = work, deadline, limits
        self.record: dict[str, dict] = {}

    def run(self, name: str, cmd: list[str], env: dict[str, str] | None = None) -> dict:
        left = self.deadline - time.monotonic()
        limit = min(self.limits[name], max(left, 0))
        log = self.work / f"{name}.log"
        entry: dict = {"command": " ".join(cmd), "limit_s": round(limit)}
        if limit < 10:
            entry.update(status="skipped", reason="the overall deadline was reached")
        else:
            start = time.monotonic()
            with log.open("w") as out:
                try:
                    code = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, timeout=limit,
                                          env={**os.environ, **(env or {})}, cwd=ROOT).returncode
                    entry["status"] = "ok" if code == 0 else f"failed (exit {code})"
                except subprocess.TimeoutExpired:
                    entry["status"] = f"timed out after {limit:.0f} s"
            entry["seconds"] = round(time.monotonic() - start, 1)
            entry["log_tail"] = log.read_text(errors="replace")[-1500:] if entry["status"] != "ok" else ""
        self.record[name] = entry
        print(f"[device] {name}: {entry['status']} ({entry.get('seconds', 0)} s)", flush=True)
        return entry


def environment() -> dict:
    import importlib.metadata as md

    import torch

    env = {"python": sys.version.split()[0], "torch": torch.__version__, "cuda": torch.version.cuda,
           "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"}
    for name in ("lightning", "transformers", "peft", "torchmetrics", "hydra-core", "omegaconf", "scipy"):
        try:
            env[name] = md.version(name)
        except md.PackageNotFoundError:
            env[name] = None
    import hydra

    env["hydra_from"] = str(Path(hydra.__file__).parent)  # the carried wheel's copy on the device
    if torch.cuda.is_available():
        env["gpu_memory_gb"] = round(torch.cuda.get_device_properties(0).total_memory / 1e9, 1)
    return env


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _steps_of(run_dir: Path) -> int | None:
    from ilora.checkpoints import read_checkpoint

    last = run_dir / "checkpoints" / "last.ckpt"
    return int(read_checkpoint(last)["global_step"]) if last.is_file() else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="the same steps on the CPU with tiny shapes")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or ROOT / "outputs" / "device_run"))
    parser.add_argument("--work", type=Path, default=None, help="run directories (default: a temporary folder)")
    parser.add_argument("--deadline", type=float, default=float(os.environ.get("DEVICE_DEADLINE_S", 450)),
                        help="seconds for all steps together (default 450: the call's 8 minutes, start included)")
    parser.add_argument("--only", nargs="*", default=None, help="steps to run (default: all)")
    args = parser.parse_args(argv)
    started = time.monotonic()
    import tempfile

    work = args.work or Path(tempfile.mkdtemp(prefix="device_run."))
    work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    steps = Steps(work, started + (1e9 if args.dry_run else args.deadline), DRY_LIMITS if args.dry_run else GPU_LIMITS)
    only = set(args.only or GPU_LIMITS)
    results: dict = {"dry_run": args.dry_run, "environment": environment(), "steps": steps.record}
    if not args.dry_run:
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("device_run: no CUDA device here; --dry-run checks the steps on the CPU")

    # the pinned SASRec steers the LLM (training one would spend the lease); a private cache keeps it apart
    cache = work / "cache"
    encoder = cache / "encoders" / "movielens" / "sasrec" / "seed0"
    if not encoder.is_dir():
        shutil.copytree(PINNED_ENCODER, encoder)
    if args.dry_run and tokenizer_dir() is None:  # here: the tokenizer comes from the GGUF cache
        (cache / "backbones").mkdir(parents=True, exist_ok=True)
        source = ROOT / ".cache" / "backbones" / "smollm2_135m"
        link = cache / "backbones" / "smollm2_135m"
        if source.is_dir() and not link.exists():
            link.symlink_to(source)
    env = {"ILORA_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    tokenizer = tokenizer_dir()
    python = sys.executable

    if "train" in only:
        first, second = work / "train", work / "resume"
        overrides = train_overrides(args.dry_run, tokenizer)
        steps.run("train", [python, "-m", "ilora.cli.train", *overrides, "trainer.max_steps=24" if not args.dry_run
                            else "trainer.max_steps=4", f"hydra.run.dir={first}"], env)
        if (first / "checkpoints" / "last.ckpt").is_file():
            steps.run("resume", [python, "-m", "ilora.cli.train", *overrides,
                                 "trainer.max_steps=32" if not args.dry_run else "trainer.max_steps=6",
                                 f"ckpt_path={first / 'checkpoints' / 'last.ckpt'}", f"hydra.run.dir={second}"], env)
        results["train"] = {
            "steps_first": _steps_of(first), "steps_resumed": _steps_of(second),
            "metrics_first": _read_json(first / "metrics.json"), "metrics_resumed": _read_json(second / "metrics.json"),
            "status_first": _read_json(first / "status.json"), "status_resumed": _read_json(second / "status.json")}
    if "bench_gpu" in only:
        steps.run("bench_gpu", [python, str(ROOT / "experiments" / "bench" / "bench_gpu.py"), "--out",
                                str(work / "bench_gpu"), *(["--dry-run"] if args.dry_run else ["--random-weights"])], env)
        results["bench_gpu"] = _read_json(work / "bench_gpu" / "bench_gpu.json")
    if "ilora_bench" in only:
        steps.run("ilora_bench", [python, "-m", "ilora.cli.bench", "--out", str(work / "bench"), "--baseline",
                                  "--train-examples", "16" if not args.dry_run else "4",
                                  *(["--dry-run"] if args.dry_run else []), *bench_overrides(args.dry_run, tokenizer)],
                  env)
        results["ilora_bench"] = _read_json(work / "bench" / "bench.json")
    results["seconds"] = round(time.monotonic() - started, 1)

    # at most 8 files come back from the device: the summary, the benches' own files, the logs
    (args.out / "device_run.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    (args.out / "device_run.md").write_text(markdown(results))
    for name, source in (("bench_gpu.json", work / "bench_gpu" / "bench_gpu.json"),
                         ("bench.json", work / "bench" / "bench.json")):
        if source.is_file():
            shutil.copyfile(source, args.out / name)
    with (args.out / "logs.txt").open("w") as logs:
        for log in sorted(work.glob("*.log")):
            logs.write(f"===== {log.name} (last 4,000 characters)\n{log.read_text(errors='replace')[-4000:]}\n")
    print(markdown(results), flush=True)
    return 0 if all(s["status"] == "ok" for s in steps.record.values()) else 1


def markdown(results: dict) -> str:
    env = results["environment"]
    lines = [f"# Device run ({'dry run, CPU' if results['dry_run'] else env['device']})", "",
             f"Python {env['python']}, torch {env['torch']} (CUDA {env['cuda']}), lightning {env['lightning']}, "
             f"transformers {env['transformers']}, peft {env['peft']}; {results['seconds']} s in all.", "",
             "| step | status | seconds |", "|---|---|---|"]
    for name, step in results["steps"].items():
        lines.append(f"| {name} | {step['status']} | {step.get('seconds', '-')} |")
    train = results.get("train") or {}
    if train:
        metrics = train.get("metrics_resumed") or train.get("metrics_first") or {}
        lines += ["", f"Training: {train.get('steps_first')} steps, resumed to {train.get('steps_resumed')}; "
                      f"test rank HR@1 {metrics.get('test/rank_hr@1', float('nan')):.3f} on random weights (noise)."]
    bench = results.get("ilora_bench") or {}
    keys = [k for k in ("train_examples_per_s_baseline", "train_examples_per_s", "train_examples_per_s_study_baseline",
                        "train_examples_per_s_study", "layer_ratio", "step_ratio_vs_peft") if k in bench]
    if keys:
        lines += ["", "| ilora-bench | value |", "|---|---|", *(f"| `{k}` | {bench[k]:.4g} |" for k in keys)]
    gpu = results.get("bench_gpu") or {}
    for row in gpu.get("llama2_7b_shape", []):
        if row is gpu["llama2_7b_shape"][0]:
            lines += ["", "| Llama-2-7B shape, iLoRA K=4 | micro-batch | step s | peak GB |", "|---|---|---|---|"]
        lines.append(f"| {'checkpointing' if row['checkpointing'] else 'no checkpointing'} | {row['micro_batch']} | "
                     f"{row.get('step_s', row.get('error', '-'))} | {row.get('peak_mem_gb', '-')} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
