"""`Ctx`: what every `orchestrate` verb receives (parsed flags, the loaded config, state root, cluster name).

Its own module so that verb modules outside orchestrator/cli.py (chaos/cli.py) can take it
without importing the composition root that registers them.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path

from . import config as cfgmod
from .cluster import Cluster
from .state import StateDir


class Ctx:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.cfg = cfgmod.load(Path(args.config) if args.config else None)
        root = args.root or os.environ.get("QUORUMLAB_HOME") or self.cfg.data_dir
        self.root = Path(os.path.abspath(os.path.expanduser(root)))  # nodes only ever get absolute paths
        self.name = args.name or self._default_name()
        self.after: Callable[[], int] | None = None

    def _default_name(self) -> str:
        if self.args.config or self.args.cmd == "up":
            return self.cfg.name
        known = StateDir.clusters(self.root)
        if self.cfg.name in known or len(known) != 1:
            return self.cfg.name
        return known[0]

    def cluster(self) -> Cluster:
        return Cluster(self.root, self.name)
