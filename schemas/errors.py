"""The project's user-facing error types: a refused config (naming the field), an unusable input file
(naming the file), and a run refused because of the state of its output. The CLI turns each into
one clear line and a non-zero exit."""
import logging

_TAG = "florenz-error"


class ConfigError(ValueError):
    """A run config or coverage plan that cannot be used; `field` is its dotted path. Raised inside a
    config's validator, `field` is relative to the section validated (schemas/contract.py)."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class TaggedError(Exception):
    """An error raised inside workers, where runners wrap it in their own exception types and
    tracebacks; its tagged message lets the CLI find it in whatever text reaches it."""

    kind = "error"

    def __init__(self, message: str):
        super().__init__(f"[{_TAG}] {self.kind}: {message}")


class InputError(TaggedError, ValueError):
    """An input file whose structure cannot be read at all (not one bad record: those are counted
    rejections)."""

    kind = "input error"

    def __init__(self, path: str, message: str):
        super().__init__(f"{path}: {message}")
        self.path = path
        self.detail = message


class RunRefused(TaggedError, RuntimeError):
    """A run that must not go on because of its output's state: another run holds it, or this run
    lost its lease."""

    kind = "refused"


def find_tagged_error(text: str) -> str | None:
    """The first tagged error message inside `text` (a wrapped exception's string), if any, as
    '<kind>: <message>'."""
    start = text.find(f"[{_TAG}] ")
    if start < 0:
        return None
    line = text[start + len(_TAG) + 3:].splitlines()[0]
    return line.split(" [while running", 1)[0].strip()


class HideTaggedErrors(logging.Filter):
    """Drops the log records runners write, with a traceback, for an exception that carries a tagged
    error (Beam logs every DoFn exception before re-raising it): the CLI prints that error as one
    clear line instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        exception = record.exc_info[1] if record.exc_info else None
        return f"[{_TAG}] " not in f"{record.getMessage()} {exception}"
