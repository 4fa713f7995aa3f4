"""The dashboard's modal screens: help, the partition prompt and the experiment picker.

Each returns its answer through `dismiss` (an empty string means cancelled), so the
app decides what to do with it; their layout lives in dashboard.tcss.
"""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Label, OptionList, Static

from chaos.experiment import list_builtin

HELP = """[b]quorumlab dashboard[/b]

Select a node with the arrow keys, then:
  k  kill it (SIGKILL)            s  stop / start it (graceful)
  p  pause / resume it (SIGSTOP)  r  restart it
  i  isolate it from the others   x  partition: type groups like  n1,n2 n3,n4,n5
  h  heal: clear network faults, resume paused nodes
  a  add a member (learner, then promoted)    d  remove the selected member
  l  move leadership to it        w  background workload on / off
  e  run a built-in experiment (on its own throwaway cluster)
  ?  this help                    q  quit

The quorum panel is the seed's arithmetic live: N voters, quorum N/2+1,
fault tolerance N - quorum, and a real probe write every 250 ms.
Press any key to close."""


class HelpScreen(ModalScreen[None]):
    """The key reference; any key closes it."""

    def compose(self) -> ComposeResult:
        yield Static(HELP, id="help")

    def on_key(self) -> None:
        self.dismiss()


class PartitionScreen(ModalScreen[str]):
    """Asks for partition groups, prefilled with a half/half split of the live members."""

    def __init__(self, names: list[str]) -> None:
        super().__init__()
        self.names = names

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Label(f"Partition {', '.join(self.names)} into groups (space-separated, comma within a group).")
            yield Label("Nodes you do not name form their own groups. Esc cancels.")
            half = len(self.names) // 2
            yield Input(value=f"{','.join(self.names[:half])} {','.join(self.names[half:])}", id="groups")

    @on(Input.Submitted)
    def submitted(self, ev: Input.Submitted) -> None:
        self.dismiss(ev.value)

    def key_escape(self) -> None:
        self.dismiss("")


class ExperimentScreen(ModalScreen[str]):
    """Picks one built-in experiment by name."""

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Label("Run which experiment? (on a separate throwaway cluster; Esc cancels)")
            yield OptionList(*[f"{n} — {d}" for n, d in list_builtin()], id="experiments")

    @on(OptionList.OptionSelected)
    def chosen(self, ev: OptionList.OptionSelected) -> None:
        self.dismiss(str(ev.option.prompt).split(" — ")[0])

    def key_escape(self) -> None:
        self.dismiss("")
