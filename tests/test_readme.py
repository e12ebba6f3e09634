"""The README as a test: every command in its code blocks and commands table runs, shrunk where it is heavy.

Each command runs as a subprocess, exactly as written, plus `ADDED` flags (tiny backbone, short budgets,
temporary paths) for keys the command does not set itself; placeholders (PATH, DIR, u.data) become the
artefacts of the commands before it. A README command with no runner here fails the test, so a new
documented command cannot go untested.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from ilora.data.datasets import load_dataset
from ilora.data.synthetic import write_raw_log

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
CACHE = Path(os.environ.get("ILORA_TEST_CACHE", REPO / ".cache"))


def readme_commands(text: str) -> list[str]:
    """Lines of ```bash blocks (comments stripped) and the first column of the commands table."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        commands += [line.split("  #")[0].strip() for line in block.splitlines() if line.strip()]
    table = text[text.index("| command | what it does |"):].split("\n\n")[0]
    commands += [m.group(1) for m in re.finditer(r"^\| `([^`]+)` \|", table, flags=re.M)]
    return commands


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


# Flags added to shrink LLM commands (only for keys the command leaves unset); written next to each run.
ADDED = {
    "ilora-train": ["backbone=tiny_random", f"backbone.cache_dir={CACHE}/backbones/smollm2_135m", "logger=csv",
                    "trainer.precision=32-true", "trainer.max_steps=2", "trainer.limit_train_batches=4",
                    "trainer.accumulate_grad_batches=1", "data.batch_size=2", "data.eval_batch_size=8",
                    "data.limit_val_examples=4", "data.limit_test_examples=8", "model.evaluation.max_new_tokens=8",
                    "encoder.train.max_epochs=1", "callbacks.last_checkpoint.every_n_train_steps=1"],
    "ilora-train-encoder": ["encoder.train.max_epochs=1"],
    "ilora-eval": ["logger=none", "trainer.precision=32-true"],
    "ilora-predict": [],
    "ilora-export": [],
}


def with_added(tool: str, args: list[str], extra: list[str]) -> tuple[list[str], list[str]]:
    own = {a.split("=", 1)[0].lstrip("+") for a in args if "=" in a}
    added = [f for f in ADDED.get(tool, []) + extra if f.split("=", 1)[0].lstrip("+") not in own]
    return args + added, added


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, shared_data):
    root = tmp_path_factory.mktemp("readme")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "ILORA_CACHE": str(root / "cache"),
           "ILORA_STUDY_OUT": str(root / "study_out")}
    (root / "cache").mkdir()
    os.symlink(CACHE / "backbones", root / "cache" / "backbones")  # the shared tokenizer copy, built once
    return {"root": root, "env": env, "shared": shared_data, "log": []}


def run(ws, command: str, *, extra: list[str] = (), cwd: Path | None = None) -> subprocess.CompletedProcess:
    args = shlex.split(command)
    tool, rest = args[0], args[1:]
    rest, added = with_added(tool, rest, [f"paths.log_dir={ws['root'] / 'outputs'}", *extra]
                             if tool.startswith(("ilora-train", "ilora-eval", "ilora-predict", "ilora-export"))
                             else list(extra))
    ws["log"].append((command, added))
    result = subprocess.run([str(BIN / tool), *rest], cwd=cwd or ws["root"], env=ws["env"], capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, f"{command} (+ {added}) failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def newest(root: Path, pattern: str) -> Path:
    found = sorted(root.glob(pattern), key=lambda p: p.stat().st_mtime)
    assert found, f"nothing matches {root}/{pattern}"
    return found[-1]


def test_every_readme_command_runs(workspace):
    ws, text = workspace, (REPO / "README.md").read_text(encoding="utf-8")
    commands = readme_commands(text)
    outputs, shared = ws["root"] / "outputs", ws["shared"]
    handled = set()

    def step(command: str, subs: dict[str, str] | None = None, **kw) -> subprocess.CompletedProcess:
        """Run a README command as written, its placeholders replaced (`subs`, in order)."""
        assert command in commands, f"the README no longer shows {command!r}: update this test"
        handled.add(command)
        for placeholder, value in (subs or {}).items():
            command = command.replace(placeholder, value)
        return run(ws, command, **kw)

    # make targets: `make train` is `ilora-train experiment=quick` (run below); `make test` is this suite
    makefile = (REPO / "Makefile").read_text()
    assert "\t$(VENV)/bin/ilora-train experiment=quick\n" in makefile and '-m pytest -q -m "not slow' in makefile
    handled |= {"make train", "make test"}

    step("ilora-data import-llara ../shared/data/llara data",
         {"../shared/data/llara": str(shared / "llara"), " data": f" {ws['root'] / 'data'}"})
    assert {p.name for p in (ws["root"] / "data").iterdir()} == {"movielens", "lastfm", "steam"}

    ml, built = shared / "raw" / "ml-100k", str(ws["root"] / "built")
    step("ilora-data build --interactions u.data --items u.item --out DIR",
         {"u.data": str(ml / "u.data"), "u.item": str(ml / "u.item"), "DIR": built})
    assert ": ok (built, movie, 1682 items" in step("ilora-data check DIR", {"DIR": built}).stdout
    logs = write_raw_log(ws["root"] / "logs")["dir"]  # a researcher's own log: string ids, own columns, TSV
    own = str(ws["root"] / "own")
    step("ilora-data build --interactions plays.tsv --items episodes.tsv --columns columns.yaml --domain podcast "
         "--out DIR", {name: f"{logs}/{name}" for name in ("plays.tsv", "episodes.tsv", "columns.yaml")} | {"DIR": own})
    assert load_dataset(own).domain == "podcast" and (Path(own) / "item_map.parquet").is_file()
    windows = str(ws["root"] / "windows")
    step("ilora-data build-windows --interactions u.data --items u.item --user-split user_split.json "
         "--train data/movielens --out DIR",
         {"u.data": str(ml / "u.data"), "u.item": str(ml / "u.item"), "DIR": windows,
          "user_split.json": str(shared / "llara" / "movielens" / "user_split.json"),
          "data/movielens": str(REPO / "data" / "movielens")})
    assert load_dataset(windows).splits["test"].target.size == 2069

    step("ilora-train-encoder data=movielens encoder=sasrec seed=0")
    assert (ws["root"] / "cache" / "encoders" / "movielens" / "sasrec" / "seed0" / "config.json").is_file()

    step("ilora-train experiment=quick")
    quick = newest(outputs, "quick/runs/*/metrics.json").parent
    assert json.loads((quick / "status.json").read_text())["status"] == "completed"
    smoke = ("ilora-train experiment=quick backbone=tiny_random logger=none trainer.max_steps=2 "
             "data.limit_val_examples=4 data.limit_test_examples=8")
    step(smoke)
    first = newest(outputs, "quick/runs/*/checkpoints/last.ckpt")
    step("ilora-train experiment=quick ckpt_path=last", extra=["trainer.max_steps=3"])  # the smoke run stopped mid-epoch
    resumed = newest(outputs, "quick/runs/*/checkpoints/last.ckpt")
    assert resumed != first and torch.load(resumed, weights_only=True)["global_step"] == 3

    step("ilora-train -m adapter.num_experts=1,2,4,8 seed=0,1,2", extra=["trainer.max_steps=1"])
    sweep = newest(outputs, "train/multiruns/*")
    assert len(list(sweep.glob("*/metrics.json"))) == 12

    # the same sweep through Hydra's submitit launcher (one process per job), and a 3-trial search on validation
    step("ilora-train -m hydra/launcher=local_jobs adapter.num_experts=1,2", extra=["trainer.max_steps=1"])
    jobs = newest(outputs, "train/multiruns/*")
    assert (jobs / ".submitit").is_dir() and len(list(jobs.glob("*/metrics.json"))) == 2
    step("ilora-train hparams_search=optuna_val hydra.sweeper.n_trials=3", extra=["trainer.max_steps=1"])
    search = newest(outputs, "train/multiruns/*")
    assert (search / "optuna.db").is_file() and (search / "best_trial.yaml").is_file()
    assert len(list(search.glob("*/metrics.json"))) == 3

    ckpt = str(quick / "checkpoints" / "last.ckpt")  # experiment=quick tests its last weights
    step("ilora-eval ckpt_path=PATH", {"PATH": ckpt})
    evaluated = newest(outputs, "eval/runs/*/metrics.json")
    assert json.loads(evaluated.read_text())["test/num_examples"] == 8
    # the options the commands table names: split=val and +override.<key>=...
    run(ws, f"ilora-eval ckpt_path={ckpt} split=val +override.data.eval_batch_size=2")
    on_val = json.loads(newest(outputs, "eval/runs/*/metrics.json").read_text())
    assert on_val["val/num_examples"] == 4 and "test/num_examples" not in on_val
    assert OmegaConf.load(newest(outputs, "eval/runs/*/config.yaml")).data.eval_batch_size == 2

    step("ilora-eval ckpt_path=PATH data=movielens_windows", {"PATH": ckpt}, extra=["data.limit_test_examples=30"])
    on_windows = json.loads(newest(outputs, "eval/runs/*/metrics.json").read_text())
    assert on_windows["test/num_examples"] == 30

    step("ilora-predict ckpt_path=PATH history='[Toy Story,Heat]'", {"PATH": ckpt})
    saved = json.loads(newest(outputs, "predict/runs/*/predictions.json").read_text())
    assert [load_dataset("movielens").titles[i] for i in saved["history"]] == ["Toy Story", "Heat"]

    exported = ws["root"] / "exported"
    step("ilora-export ckpt_path=PATH out=DIR", {"PATH": ckpt, "DIR": str(exported)})
    assert json.loads((exported / "ilora_export.json").read_text())["verify_max_abs_logit_difference"] < 1e-5
    assert (exported / "adapter_model.safetensors").is_file()

    step("ilora-report DIR", {"DIR": str(sweep)})
    # the study: every planned command is listed (--dry-run added; counted from the study's own plan);
    # tests/test_study.py runs it on the tiny backbone
    handled.add("python experiments/study/run.py")
    dry = subprocess.run([sys.executable, str(REPO / "experiments" / "study" / "run.py"), "--dry-run", "--results",
                          str(ws["root"] / "study")], capture_output=True, text=True, env=ws["env"], timeout=120)
    import importlib.util

    spec = importlib.util.spec_from_file_location("study_plan", REPO / "experiments" / "study" / "run.py")
    plan = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(plan)
    study = plan.STUDIES[plan.DEFAULT_STUDY]  # what `run.py` runs without --study
    planned = plan.planned(study=study)
    trains = len(planned) + sum(m == "frozen" and len(study.datasets[d]) > 1 for d, m, _ in planned)
    assert dry.returncode == 0 and dry.stdout.count("ilora-train experiment=study") == trains, dry.stdout[-2000:]
    assert (sweep / "report.md").is_file() and (sweep / "hr1_vs_experts.png").is_file()

    assert set(commands) <= handled, f"README commands without a runner here: {sorted(set(commands) - handled)}"
    print("\n".join(f"{c}  + {a}" for c, a in ws["log"]))


def test_the_python_example_runs(shared_cache_dir=CACHE):
    from torch import nn

    from ilora.adapters import apply_moe_lora
    from ilora.backbones import load_backbone

    (block,) = python_blocks((REPO / "README.md").read_text(encoding="utf-8"))
    hf_causal_lm, tok = load_backbone("tiny_random", cache_dir=shared_cache_dir / "backbones" / "smollm2_135m")
    model, _ = load_backbone("tiny_random", cache_dir=shared_cache_dir / "backbones" / "smollm2_135m")
    apply_moe_lora(model, rank=8, num_experts=4, alpha=32)
    names = {"base_linear": nn.Linear(64, 32), "model": model, "hf_causal_lm": hf_causal_lm,
             "gate": torch.softmax(torch.randn(2, 4), -1), "input_ids": torch.randint(0, len(tok), (2, 5))}
    exec(compile(block, "README.md", "exec"), names)  # noqa: S102 - the documented example, as written
    assert names["layer"].lora_A.shape == (8, 64) and names["layer"].lora_B.shape == (32, 8)
    assert names["out"].logits.shape[:2] == (2, 5)
    assert type(hf_causal_lm.model.layers[0].self_attn.q_proj).__name__ == "MoELoRALinear"
