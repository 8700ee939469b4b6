"""The one exception every config problem becomes."""

from __future__ import annotations


class ConfigError(Exception):
    """A config that cannot be used: names the file, the key path and what was expected.

    ``str(err)`` reads like ``configs/gateway.yaml:12: timeouts.connect: expected a
    duration like 500ms, 2s or 45m, found '1 second'``.
    """

    def __init__(self, message: str, *, file: str = "<config>", path: str = "",
                 line: int | None = None) -> None:
        self.message = message
        self.file = file
        self.path = path
        self.line = line
        #: The key path as a tuple (the builder sets it), so `hagw check` can go on past it.
        self.key: tuple[str | int, ...] = ()
        super().__init__(str(self))

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class FieldProblem(ValueError):
    """Raised by a dataclass's own checks; the builder adds the file and key path."""

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        super().__init__(message)
