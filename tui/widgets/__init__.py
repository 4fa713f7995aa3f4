"""The dashboard's widgets: each holds reactive state the app sets and renders itself when it changes."""

from .charts import Charts
from .events import EventLog
from .nodes import COLUMNS, NodeTable
from .notice import Notice
from .quorum import QuorumView
from .raftlog import MessageMatrix, RaftLogView

__all__ = ["COLUMNS", "Charts", "EventLog", "MessageMatrix", "NodeTable", "Notice", "QuorumView", "RaftLogView"]
