"""iLoRA: instance-wise LoRA for LLM-based sequential recommendation."""

from pathlib import Path


def project_root() -> Path:
    """The source checkout (src/ilora inside a folder with pyproject.toml), else the current directory: an
    installed package keeps its data, cache and outputs where it is run."""
    root = Path(__file__).resolve().parents[2]
    return root if (root / "pyproject.toml").is_file() and (root / "src" / "ilora").is_dir() else Path.cwd()
