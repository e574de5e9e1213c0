"""The project's two user-facing error types: a refused config (naming the field) and an unusable
input file (naming the file). The CLI turns both into one clear line and a non-zero exit."""

INPUT_ERROR_TAG = "florenz-input-error"


class ConfigError(ValueError):
    """A run config or coverage plan that cannot be used; `field` is its dotted path."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


class InputError(ValueError):
    """An input file whose structure cannot be read at all (not one bad record: those are counted
    rejections). Raised inside workers, where runners wrap it in their own exception types and
    tracebacks; the tagged message lets the CLI find it in whatever text reaches it."""

    def __init__(self, path: str, message: str):
        super().__init__(f"[{INPUT_ERROR_TAG}] {path}: {message}")
        self.path = path
        self.detail = message


def find_input_error(text: str) -> str | None:
    """The first tagged input-error message inside `text` (a wrapped exception's string), if any."""
    start = text.find(f"[{INPUT_ERROR_TAG}] ")
    if start < 0:
        return None
    line = text[start + len(INPUT_ERROR_TAG) + 3:].splitlines()[0]
    return line.split(" [while running", 1)[0].strip()
