"""The one-line notice above the table: why there is nothing to show, or nothing."""

from __future__ import annotations

from textual.reactive import var
from textual.widgets import Static


class Notice(Static):
    """Shows `text` (Rich markup); empty when all is well."""

    text: var[str] = var("")

    def watch_text(self, text: str) -> None:
        self.update(text)
