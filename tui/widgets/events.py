"""The event log: elections, faults, membership changes and action outcomes, coloured by kind."""

from __future__ import annotations

from typing import Any

from textual.widgets import RichLog

KIND_COLOR = {"leader": "green", "fault": "red", "error": "red", "heal": "cyan", "membership": "magenta"}


class EventLog(RichLog):
    """An append-only log (a stream, so it takes lines rather than holding state)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(markup=True, wrap=True, **kwargs)

    def note(self, text: str, kind: str) -> None:
        """Append one line in the colour of its kind (info and unknown kinds stay plain)."""
        color = KIND_COLOR.get(kind)
        self.write(f"[{color}]{text}[/]" if color else text)
