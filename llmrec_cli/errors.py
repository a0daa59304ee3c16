"""User-facing errors: one line, naming the file or key and the fix. The CLI prints them without a traceback."""


class LlmrecError(Exception):
    """A problem with the user's input or environment (exit code 1)."""

    exit_code = 1


class ConfigError(LlmrecError):
    """The composed configuration is invalid (exit code 2, raised before any run starts)."""

    exit_code = 2


class DataError(LlmrecError):
    """A dataset file is missing, unreadable or lacks required columns (exit code 1)."""
