"""The one error type for a refused config or plan, always naming the offending field."""


class ConfigError(ValueError):
    """A run config or coverage plan that cannot be used; `field` is its dotted path."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
