"""Secrets stay out of logs, messages and written files.

The only secret the pipeline handles is the translator's API key, and it only ever comes from the
environment: `translator.api_key_env` names the variable (OpenAI's convention). Configs that carry a
secret themselves (a password in an endpoint URL, `--api-key` in a managed server's args) are refused
by config validation, because the config is logged and copied beside the shards.

As a second line of defense, `RedactingFilter` (installed on the CLI's log handlers) removes the
values of the watched environment variables and any URL userinfo (`scheme://user:pass@`) from every
log record, and `redact` does the same for text the pipeline writes or prints (error examples).
"""
from __future__ import annotations

import logging
import os
import re
import threading
from typing import Iterable, Optional, Sequence

MASK = "***"
# scheme://userinfo@ : userinfo is everything up to the first @ before the host, without / or space
_URL_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/?#@\s]+)@")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Values shorter than this are not searched for (they would garble every line); real keys are longer.
MIN_SECRET_CHARS = 4
API_KEY_FLAG = "--api-key"

_watched_env: set[str] = set()
_lock = threading.Lock()


def valid_env_name(name: object) -> bool:
    return isinstance(name, str) and bool(_ENV_NAME.match(name))


def has_url_userinfo(url: str) -> bool:
    return bool(_URL_USERINFO.search(url))


def _key_flag(arg: str) -> tuple[bool, bool]:
    """(whether `arg` is vLLM's --api-key flag, whether its value is attached with '='), also spelled
    --api_key or abbreviated as argparse allows (--api-k...)."""
    name, eq, _ = arg.partition("=")
    name = name.replace("_", "-")
    is_flag = name.startswith("--api-k") and API_KEY_FLAG.startswith(name)
    return is_flag, is_flag and bool(eq)


def api_key_flag_in(args: Sequence[str]) -> bool:
    """Whether server args carry an API key themselves (`--api-key K` or `--api-key=K`)."""
    return any(_key_flag(a)[0] for a in args)


def watch_env(name: Optional[str]) -> None:
    """Treat the value of environment variable `name` as a secret from now on (in this process)."""
    if name:
        with _lock:
            _watched_env.add(name)


def api_key_from_env(name: Optional[str]) -> Optional[str]:
    """The value of the variable `name` (watched from now on), or None when no name is given or the
    variable is unset or empty."""
    if not name:
        return None
    watch_env(name)
    return os.environ.get(name) or None


def _secret_values(extra: Iterable[Optional[str]] = ()) -> list[str]:
    with _lock:
        names = list(_watched_env)
    values = {os.environ.get(n) for n in names} | set(extra)
    # longest first, so a key containing another is masked whole
    return sorted((v for v in values if v and len(v) >= MIN_SECRET_CHARS), key=len, reverse=True)


def redact(text: str, secrets: Iterable[Optional[str]] = ()) -> str:
    """`text` without URL userinfo, the watched variables' values, and `secrets`."""
    text = _URL_USERINFO.sub(lambda m: f"{m.group('scheme')}{MASK}@", text)
    for value in _secret_values(secrets):
        if value in text:
            text = text.replace(value, MASK)
    return text


def redact_args(args: Sequence[str]) -> list[str]:
    """A command line for display: the value after `--api-key` (or in `--api-key=...`) masked, and
    everything else through `redact`."""
    shown, hide_next = [], False
    for arg in args:
        is_flag, attached = _key_flag(arg)
        if hide_next:
            shown.append(MASK)
            hide_next = False
        elif attached:
            shown.append(f"{arg.partition('=')[0]}={MASK}")
        elif is_flag:
            shown.append(arg)
            hide_next = True
        else:
            shown.append(redact(arg))
    return shown


class RedactingFilter(logging.Filter):
    """A handler filter: rewrites each record's message (and its formatted exception) through `redact`."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record: leave it to the formatter's own error handling
            return True
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


def install_log_redaction(logger: Optional[logging.Logger] = None) -> None:
    """Add a RedactingFilter to every handler of `logger` (the root logger by default) that lacks one.
    Handler filters see every record the handler emits, including those propagated from child loggers."""
    logger = logger or logging.getLogger()
    for handler in logger.handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
