"""The one error type users see from ingestion: says where, what, and what to do next."""

from __future__ import annotations


class DataError(ValueError):
    """Bad input data. `str(err)` is a complete, user-facing message.

    Attributes name where the problem is (file, line, column) so a page or CLI can show it
    without parsing the message.
    """

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        line: int | None = None,
        column: str | None = None,
        hint: str | None = None,
        examples: list[str] | None = None,
    ) -> None:
        self.message = message
        self.file = file
        self.line = line
        self.column = column
        self.hint = hint
        self.examples = list(examples or [])
        super().__init__(self._render())

    def _render(self) -> str:
        where = []
        if self.file:
            where.append(f"file '{self.file}'")
        if self.line is not None:
            where.append(f"line {self.line}")
        if self.column:
            where.append(f"column '{self.column}'")
        text = (", ".join(where) + ": " if where else "") + self.message
        if self.examples:
            text += "\nExamples:\n" + "\n".join(f"  {e}" for e in self.examples[:5])
        if self.hint:
            text += f"\nWhat to do: {self.hint}"
        return text
