"""The quorum panel: the seed's arithmetic, live (see tui/model.py for how it is computed)."""

from __future__ import annotations

from textual.reactive import var
from textual.widgets import Static

from ..model import QuorumPanel


class QuorumView(Static):
    """Renders a QuorumPanel; None (no cluster view yet) leaves the panel as it is."""

    panel: var[QuorumPanel | None] = var(None)
    _shown = ""

    def watch_panel(self, panel: QuorumPanel | None) -> None:
        if panel is None:
            return
        text = "\n".join(panel.lines())
        if text != self._shown:  # the panel's box is fixed by the layout: no reflow for new text
            self._shown = text
            self.update(text, layout=False)
