"""The engine's one error family. Every error a user can cause says where, what, and what to do next.

Pages and the CLI catch `RecsysError` and show `str(err)`; the subclass says whose move it is:

- `DataError`: the input data (a file, a column, a row) is not what was expected;
- `ConfigError`: a setting, hyperparameter, name or choice is invalid;
- `ModelError`: a saved model or checkpoint is unusable, or does not fit the dataset;
- `ResourceError`: the work does not fit the machine's or the server's limits (memory, size);
- `LLMError` (a `ModelError`): a language model could not be loaded or reached, or could not write.
"""

from __future__ import annotations


class RecsysError(Exception):
    """Base of the family. `str(err)` is a complete, user-facing message.

    Attributes name where the problem is (file, line, column, or the model setting) so a page or CLI can show it without
    parsing the message; `hint` says what to do next.
    """

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        line: int | None = None,
        column: str | None = None,
        setting: str | None = None,
        hint: str | None = None,
        examples: list[str] | None = None,
    ) -> None:
        self.message = message
        self.file = file
        self.line = line
        self.column = column
        self.setting = setting
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
        if self.setting:
            where.append(f"setting '{self.setting}'")
        text = (", ".join(where) + ": " if where else "") + self.message
        if self.examples:
            text += "\nExamples:\n" + "\n".join(f"  {e}" for e in self.examples[:5])
        if self.hint:
            text += f"\nWhat to do: {self.hint}"
        return text


class DataError(RecsysError, ValueError):
    """The input data is not what was expected (format, columns, values, ids)."""


class ConfigError(RecsysError, ValueError):
    """A setting is invalid: a hyperparameter, a name, a split, a device or another choice."""


class ModelError(RecsysError):
    """A saved model, checkpoint or encoder is unusable, or the model cannot do what was asked."""


class ResourceError(RecsysError):
    """The work does not fit the limits: memory, file or archive size, catalogue size."""


class LLMError(ModelError):
    """A language model could not write: it did not load, its server failed or answered nonsense.

    Blurb writers catch it and fall back to the template, showing the message and the hint.
    """
