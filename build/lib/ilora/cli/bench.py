"""`ilora-bench`: cost of iLoRA against LoRA and against this machine's own limits; writes bench.json + bench.md.

Order: a short `ilora-train` child run first (peak RSS, its checkpoints; on a fresh clone it also builds the
encoder and the dequantised backbone caches), then in this process the layer, the training step, the matmul
peak and evaluation on the trained checkpoint. `--dry-run` does all of it on a tiny random backbone and a
synthetic dataset in seconds (the test suite runs it).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from ilora.cli import CONFIG_DIR

DRY_RUN = [
    "backbone=tiny_random", "trainer.precision=32-true", "data.batch_size=2", "data.eval_batch_size=2",
    "data.num_candidates=5", "encoder.hidden_dim=16", "encoder.train.max_epochs=1",
    "encoder.train.batch_size=64", "model.evaluation.max_new_tokens=4",
]


def compose(overrides: list[str], run_dir: Path):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import open_dict

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = hydra_compose(config_name="train", overrides=overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(run_dir)
    GlobalHydra.instance().clear()
    return cfg


def _eval_batches(datamodule, users: int) -> list[dict[str, Any]]:
    datamodule.setup("test")
    batches, seen = [], 0
    for batch in datamodule.test_dataloader():
        batches.append(batch)
        seen += len(batch["index"])
        if seen >= users:
            break
    return batches


def _training_setup(overrides: list[str], run_dir: Path) -> dict[str, Any]:
    """A config's model and an endless stream of its training micro-batches, plus its precision and accumulation."""
    from ilora.cli.components import build_all

    cfg = compose(overrides, run_dir)
    parts = build_all(cfg)
    datamodule = parts["datamodule"]
    datamodule.setup("fit")

    def batches():
        epoch = 0
        while True:
            datamodule.set_epoch(epoch)
            yield from datamodule.train_dataloader()
            epoch += 1

    return {"model": parts["model"], "batches": batches(), "precision": str(cfg.trainer.precision),
            "accumulate": int(cfg.trainer.accumulate_grad_batches), "batch_size": int(cfg.data.batch_size)}


# today's (before issue 22) eager path: no compile, the split rank pass, micro-batches of 2 (default) and 4 (study)
BASELINE = {
    "": ["model.compile=false", "model.rank_method=split", "data.batch_size=2", "trainer.accumulate_grad_batches=4"],
    "_study": ["model.compile=false", "model.rank_method=split", "data.batch_size=4",
               "trainer.accumulate_grad_batches=2"],
}


def _setup_summary(train: dict[str, Any]) -> str:
    model = train["model"]
    compiled = f"compiled ({model.compiled_blocks} blocks)" if model.compiled_blocks else "eager"
    return (f"{compiled}, micro-batch {train['batch_size']} x {train['accumulate']}, rank pass {model.rank_method}, "
            f"{train['precision']}")


def measure_case(overrides: list[str], run_dir: str, examples: int) -> dict[str, Any]:
    """One throughput measurement in this process (the micro-batch table runs each case in a child process, so
    that its peak RSS is its own)."""
    import resource

    from ilora.bench.throughput import train_throughput
    from ilora.compiled import compile_stats

    train = _training_setup(overrides, Path(run_dir))
    measured = train_throughput(train["model"], train["batches"], precision=train["precision"],
                                accumulate=train["accumulate"], examples=examples)
    return {**measured, **compile_stats(), "setup": _setup_summary(train),
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6}


def micro_batch_table(overrides: list[str], run_dir: Path, *, sizes: list[int], examples: int,
                      threads: int | None) -> list[dict[str, Any]]:
    """Examples/s and peak RSS at each micro-batch size, eager and compiled, for both recipes (8 examples per
    optimiser step where the size divides 8)."""
    import json
    import subprocess
    import sys

    rows = []
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    for recipe, extra in (("default", []), ("study", ["experiment=study"])):
        for size in sizes:
            for compiled in (False, True):
                case = [*extra, *overrides, f"data.batch_size={size}",
                        f"trainer.accumulate_grad_batches={max(8 // size, 1)}", f"model.compile={str(compiled).lower()}"]
                code = ("import json, sys; from ilora.cli.bench import measure_case; "
                        f"print('RESULT ' + json.dumps(measure_case({case!r}, {str(run_dir)!r}, {max(examples, size)})))")
                done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
                line = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")]
                row = {"recipe": recipe, "micro_batch": size, "compiled": compiled}
                if done.returncode or not line:
                    row["error"] = (done.stderr.strip().splitlines() or ["no output"])[-1][:200]
                else:
                    row.update(json.loads(line[0][len("RESULT "):]))
                print(f"[bench] {row}", flush=True)
                rows.append(row)
    return rows


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from ilora.adapters.bench import layer_ratio
    from ilora.backbones import resolve_dtype
    from ilora.bench import footprint, report
    from ilora.bench.evaluation import evaluation_costs
    from ilora.bench.step import rank_vs_answer_step, step_ratio
    from ilora.bench.throughput import profile_step, train_throughput
    from ilora.bench.timing import machine
    from ilora.checkpoints import read_checkpoint
    from ilora.cli.components import build_all, build_backbone
    from ilora.compiled import compile_stats

    out_dir = Path(args.out).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"machine": machine(), "dry_run": args.dry_run}
    overrides = list(args.overrides)
    if args.dry_run:
        from ilora.data.synthetic import make_tiny_dataset

        data_dir = out_dir / "data"
        if not (data_dir / "meta.json").is_file():
            make_tiny_dataset(data_dir, num_items=40, num_users=60, seed=0)
        overrides = [*DRY_RUN, f"data.dir={data_dir}", "data.name=tiny",
                     f"paths.encoder_dir={out_dir / 'encoders'}", *overrides]
    if args.threads:
        torch.set_num_threads(args.threads)
    results["machine"]["threads"] = torch.get_num_threads()
    started = time.perf_counter()

    run_dir = Path(tempfile.mkdtemp(prefix="train-", dir=out_dir))
    print(f"[bench] short training run -> {run_dir}", flush=True)
    run = footprint.short_training_run(run_dir, overrides, threads=args.threads)
    ckpt = Path(run.pop("ckpt_path"))  # the best (model) checkpoint: what evaluation loads
    run.pop("resume_ckpt_path")
    results.update(run)

    cfg = compose(overrides, run_dir)
    parts = build_all(cfg)
    model = parts["model"]
    model.load_state_dict(read_checkpoint(ckpt)["state_dict"], strict=False)
    lm, _ = build_backbone(cfg)  # a clean copy of the frozen backbone for the step bench
    results["backbone_bytes"] = footprint.parameter_bytes(lm)
    results["ckpt_ratio"] = results["ckpt_bytes"] / results["backbone_bytes"]
    results["resume_ckpt_ratio"] = results["resume_ckpt_bytes"] / results["backbone_bytes"]
    dtype = resolve_dtype(cfg.backbone.dtype, cfg.backbone.device)
    results["precision"] = str(dtype).replace("torch.", "")

    print("[bench] layer", flush=True)
    mode = "bf16" if dtype == torch.bfloat16 else "fp32"
    layer = (layer_ratio(batch=2, tokens=8, in_features=16, out_features=24, repeats=3, warmup=1, modes=(mode,))
             if args.dry_run else layer_ratio(repeats=args.layer_repeats, warmup=3, modes=(mode,)))[mode]
    results.update(layer_ratio=layer["ratio"], layer_s_moe=layer["moe_s"], layer_s_peft=layer["peft_s"])

    print("[bench] training step", flush=True)
    shape = dict(batch=2, tokens=24, answer=4) if args.dry_run else dict(batch=4, tokens=340, answer=12)
    results.update(step_ratio(lm, repeats=1 if args.dry_run else args.step_repeats, warmup=1,
                              peak_size=256 if args.dry_run else 2048, **shape))
    print("[bench] rank-loss step", flush=True)
    rank_shape = dict(batch=2, prompt=12, answer=3, candidates=4) if args.dry_run else dict(batch=4, prompt=328,
                                                                                            answer=12, candidates=20)
    results.update(rank_vs_answer_step(lm, repeats=1 if args.dry_run else args.step_repeats, warmup=1, **rank_shape))
    del lm

    print("[bench] evaluation", flush=True)
    batches = _eval_batches(parts["datamodule"], args.users)
    per_batch = int(len(batches[0]["index"]))
    results.update(evaluation_costs(
        model, batches, warmup_batch=batches[0] if args.dry_run else None,  # the model has just run the step
        generate_batches=-(-args.gen_users // per_batch),
        max_new_tokens=int(cfg.model.evaluation.max_new_tokens) if args.dry_run else 64))
    results["eval_users_per_s"] = results["eval_users"] / results["rank_s"]
    results["eval_padding_share"] = 1.0 - (sum(int(b["attention_mask"].sum()) for b in batches)
                                           / sum(b["attention_mask"].numel() for b in batches))
    del parts, model

    print("[bench] training throughput: the default config and the study's recipe", flush=True)
    examples = 4 if args.dry_run else args.train_examples
    for suffix, extra in (("", []), ("_study", ["experiment=study"])):
        sides = [("", [])]
        if args.baseline:  # the eager path at the earlier micro-batch sizes, in the same process, measured first
            sides.insert(0, ("_baseline", [*BASELINE[suffix]]))
        for side, side_overrides in sides:
            train = _training_setup([*extra, *overrides, *side_overrides], run_dir)
            measured = train_throughput(train["model"], train["batches"], precision=train["precision"],
                                        accumulate=train["accumulate"], examples=examples)
            key = f"{suffix}{side}"
            results[f"train_examples_per_s{key}"] = measured["examples_per_s"]
            results[f"train_examples_per_s_with_compile{key}"] = measured["examples_per_s_with_compile"]
            results[f"train_compile_s{key}"] = measured["compile_s"] + measured["warmup_s"] * bool(
                train["model"].compiled_blocks)
            results[f"train_padding_share{key}"] = measured["padding_share"]
            results[f"train_tokens_per_example{key}"] = measured["tokens_per_example"]
            results[f"train_setup{key}"] = _setup_summary(train)
            if args.profile and not side:
                text, top = profile_step(train["model"], train["batches"],
                                         precision=train["precision"], accumulate=train["accumulate"],
                                         micro_batches=2 if args.dry_run else args.profile_micro_batches)
                name = f"profile_train_step{suffix or '_default'}.txt"
                (out_dir / name).write_text(f"{results['machine'].get('cpu')}, precision {train['precision']}, "
                                            f"{torch.get_num_threads()} threads\n{text}\n")
                results[f"profile{suffix or '_default'}_top"] = top[:12]
                print(text, flush=True)
            del train
        if args.baseline:
            results[f"train_speedup{suffix}"] = (results[f"train_examples_per_s{suffix}"]
                                                 / results[f"train_examples_per_s{suffix}_baseline"])
    results.update(compile_stats())
    if args.micro_batch_table:
        print("[bench] micro-batch table (one child process per case)", flush=True)
        results["micro_batch_table"] = micro_batch_table(
            overrides, run_dir, sizes=[int(x) for x in args.micro_batch_table.split(",")],
            examples=examples, threads=args.threads)
        (out_dir / "micro_batches.md").write_text(report.micro_batch_markdown(results["micro_batch_table"]))
    results["bench_s"] = time.perf_counter() - started
    results["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    results["targets_met"] = {k: report.holds(k, results[k]) for k in report.TARGETS if k in results}
    json_path, md_path = report.write(out_dir, results)
    print(report.markdown(results))
    print(f"[bench] wrote {json_path} and {md_path}")
    return results


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="ilora-bench", description=__doc__.splitlines()[0])
    p.add_argument("--out", default="outputs/bench", help="directory for bench.json, bench.md and the short run")
    p.add_argument("--dry-run", action="store_true", help="tiny random backbone and synthetic data (seconds)")
    p.add_argument("--users", type=int, default=32, help="test users for ranking vs prefill")
    p.add_argument("--gen-users", type=int, default=16, help="of those, users for the two generation timings")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads here and OMP_NUM_THREADS in the training child (default: torch's, "
                        "or 1 for --dry-run or when the 1-min load average >= the core count)")
    p.add_argument("--train-examples", type=int, default=32,
                   help="training examples timed per config (default config, study recipe) after a warm-up step")
    p.add_argument("--profile", action="store_true",
                   help="also write torch.profiler's top operators of both configs' training steps")
    p.add_argument("--profile-micro-batches", type=int, default=4)
    p.add_argument("--baseline", action="store_true",
                   help="also time the eager path at the earlier micro-batch sizes (2 x 4 default, 4 x 2 study) in the "
                        "same process, and write train_speedup[_study]")
    p.add_argument("--micro-batch-table", default=None, metavar="SIZES",
                   help="e.g. 2,4,8,16: examples/s and peak RSS per micro-batch size, eager and compiled, both recipes")
    p.add_argument("--step-repeats", type=int, default=2)
    p.add_argument("--layer-repeats", type=int, default=20)
    p.add_argument("overrides", nargs="*", help="Hydra overrides of the train config (e.g. data=lastfm)")
    return p.parse_args(argv)


def bench(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse `argv`, pick the thread count, run; returns the results (also written to --out)."""
    args = parse_args(argv)
    if args.threads is None and (args.dry_run or os.getloadavg()[0] >= (os.cpu_count() or 1)):
        # a busy machine: a 2-thread parallel region waits for a core someone else holds (measured here:
        # tiny matmuls 50x slower at load 9); one thread per side keeps the ratios about the code
        args.threads = 1
    return run(args)


def main(argv: list[str] | None = None) -> None:
    bench(argv)


if __name__ == "__main__":
    main()
