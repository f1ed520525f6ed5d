"""API keys: read from the environment only, and redacted from every message, log line and stored error.

`read_api_key(config)` is the one way a plugin gets its key (`config.api_key_env`, never a literal).
`Redactor` holds every secret the process may hold — the key sent and the value of every provider key
variable (PROVIDER_KEY_VARS, plus any variable whose name looks like a credential) — and replaces
each with "***". The teacher library redacts error texts before they are logged, stored in a
TeacherResult or raised, and installs `RedactingFilter` on the loggers that teacher calls write to.
"""

from __future__ import annotations

import logging
import os
import re
import threading

from omniopd_verl.config import check_env_name
from omniopd_verl.errors import ConfigError

PROVIDER_KEY_VARS = (
    "OPENAI_API_KEY",
    "ANTHROPIC_API_KEY",
    "GEMINI_API_KEY",
    "GOOGLE_API_KEY",
    "AZURE_API_KEY",
    "AZURE_OPENAI_API_KEY",
    "MISTRAL_API_KEY",
    "COHERE_API_KEY",
    "GROQ_API_KEY",
    "TOGETHER_API_KEY",
    "TOGETHERAI_API_KEY",
    "DEEPSEEK_API_KEY",
    "FIREWORKS_API_KEY",
    "OPENROUTER_API_KEY",
    "XAI_API_KEY",
    "HUGGINGFACE_API_KEY",
    "HF_TOKEN",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "VERTEXAI_API_KEY",
)
# litellm provider -> the variable litellm reads the key from when none is passed
PROVIDER_DEFAULT_ENV = {
    "openai": "OPENAI_API_KEY",
    "text-completion-openai": "OPENAI_API_KEY",
    "anthropic": "ANTHROPIC_API_KEY",
    "gemini": "GEMINI_API_KEY",
    "azure": "AZURE_API_KEY",
    "mistral": "MISTRAL_API_KEY",
    "cohere": "COHERE_API_KEY",
    "groq": "GROQ_API_KEY",
    "together_ai": "TOGETHERAI_API_KEY",
    "deepseek": "DEEPSEEK_API_KEY",
    "fireworks_ai": "FIREWORKS_API_KEY",
    "openrouter": "OPENROUTER_API_KEY",
    "xai": "XAI_API_KEY",
}
_CREDENTIAL_NAME = re.compile(r"(API_KEY|_TOKEN|SECRET|ACCESS_KEY|PASSWORD)", re.IGNORECASE)
_MIN_SECRET_LEN = 6  # shorter values ("1", "true") would redact ordinary words
LOGGERS = (
    "omniopd_verl",
    "omniopd_verl.teachers",
    "LiteLLM",
    "LiteLLM Router",
    "LiteLLM Proxy",
    "litellm",
    "openai",
    "httpx",
    "httpcore",
)


def read_api_key(config) -> str | None:
    """The value of $config.api_key_env (None when api_key_env is null); a set-but-empty variable is an error."""
    env = config.api_key_env
    if env is None:
        return None
    check_env_name(env)
    value = os.environ.get(env)
    if not value:
        raise ConfigError(
            f"omniopd.teacher.api_key_env={env!r}: the environment variable {env} is not set or empty "
            "(API keys are read from the environment only)"
        )
    return value


# a config key whose value is a credential: the name ends in one of these words (api_key, x-api-key,
# hf_token, Authorization, ...); api_key_env (a variable's name), prompt_key (a column), tokens and
# max_tokens are not
_CREDENTIAL_OPTION = re.compile(
    r"(^|[_\-])(api[_\-]?key|(secret|access|private)([_\-]?key)?|password|passwd|authori[sz]ation|credentials?"
    r"|token|auth)$",
    re.IGNORECASE,
)


def option_secrets(options: object, _credential: bool = False) -> tuple[str, ...]:
    """Every string under a credential-named key of `options`, at any depth (e.g. litellm
    `extra_kwargs: {api_key: ...}` or `extra_headers: {Authorization: "Bearer ..."}`): such a value is a
    key the user put in the config, and must be redacted like one."""
    found: list[str] = []
    if isinstance(options, dict):
        for key, value in options.items():
            found += option_secrets(value, _credential or bool(_CREDENTIAL_OPTION.search(str(key))))
    elif isinstance(options, (list, tuple)):
        for value in options:
            found += option_secrets(value, _credential)
    elif _credential and isinstance(options, str):
        found.append(options)
        scheme, _, token = options.partition(" ")  # "Bearer sk-...": the token alone is the secret too
        if token and scheme.lower() in ("bearer", "basic", "token"):
            found.append(token.strip())
    return tuple(found)


def mask_credentials(data: object, _credential: bool = False) -> object:
    """A copy of a config tree with every string under a credential-named key replaced by "***" (for
    printing a resolved config: `train --dry-run`)."""
    if isinstance(data, dict):
        return {k: mask_credentials(v, _credential or bool(_CREDENTIAL_OPTION.search(str(k)))) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [mask_credentials(v, _credential) for v in data]
    return "***" if _credential and isinstance(data, str) else data


def secret_values(extra: tuple[str | None, ...] = ()) -> set[str]:
    """Every secret this process may hold: provider key variables, credential-like variables, `extra`."""
    names = set(PROVIDER_KEY_VARS) | {k for k in os.environ if _CREDENTIAL_NAME.search(k)}
    values = {os.environ.get(k) or "" for k in names} | {v or "" for v in extra}
    return {v for v in values if len(v) >= _MIN_SECRET_LEN}


class Redactor:
    """Replaces every known secret with "***" (longest first, so a key containing another is fully hidden)."""

    def __init__(self, extra: tuple[str | None, ...] = ()):
        self._extra = tuple(extra)
        self.refresh()

    def refresh(self) -> None:
        self._secrets = sorted(secret_values(self._extra), key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, "***")
        return text


class RedactingFilter(logging.Filter):
    """Redacts every installed secret from a log record's rendered message (installed on LOGGERS)."""

    def __init__(self) -> None:
        super().__init__("omniopd-redact")
        self.secrets: set[str] = set()
        self._ordered: list[str] = []

    def add(self, secrets: set[str]) -> None:
        self.secrets |= secrets
        self._ordered = sorted(self.secrets, key=len, reverse=True)

    def _redact(self, text: str) -> str:
        for secret in self._ordered:
            if secret in text:
                text = text.replace(secret, "***")
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record: leave it to logging's own error handling
            return True
        clean = self._redact(message)
        if record.exc_info and record.exc_info[1] is not None:
            raw = logging.Formatter().formatException(record.exc_info)
            exc_text = self._redact(raw)
            if exc_text != raw:  # rendered (redacted) into the message instead
                record.exc_info, record.exc_text = None, None
                clean = f"{clean}\n{exc_text}"
        if clean != message:
            record.msg, record.args = clean, ()
        return True


_FILTER = RedactingFilter()
_install_lock = threading.Lock()
_factory_installed = False


def _install_record_factory() -> None:
    """Redact every record the process creates, whatever its logger: filters on LOGGERS miss their child
    loggers ("openai._base_client") and clients' vendored ones ("httpx2" logs each URL it requests)."""
    global _factory_installed
    if _factory_installed:
        return
    previous = logging.getLogRecordFactory()

    def factory(*args, **kwargs):
        record = previous(*args, **kwargs)
        if _FILTER.secrets:
            _FILTER.filter(record)
        return record

    logging.setLogRecordFactory(factory)
    _factory_installed = True


def install_log_redaction(redactor: Redactor) -> None:
    """Redact `redactor`'s secrets from the loggers teacher calls write to (idempotent)."""
    with _install_lock:
        _FILTER.add(set(redactor._secrets))
        _install_record_factory()
        for name in LOGGERS:
            logger = logging.getLogger(name)
            if _FILTER not in logger.filters:
                logger.addFilter(_FILTER)
            for handler in logger.handlers:
                if _FILTER not in handler.filters:
                    handler.addFilter(_FILTER)


def key_source(config, plugin) -> str:
    """Where the key came from, for messages: "$VAR", never "$None"."""
    if config.api_key_env:
        return f"${config.api_key_env}"
    env = getattr(plugin, "key_env", None)
    if env:
        return f"${env} (the provider's default variable; set omniopd.teacher.api_key_env to use another)"
    return "no variable: no API key was configured (set omniopd.teacher.api_key_env)"
