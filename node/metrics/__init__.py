"""etcd's `--listen-metrics-urls`: Prometheus `/metrics`, `/health` and `/version` over plain HTTP.

grpcio cannot share the client port with an HTTP handler the way etcd's cmux does, so these live on
their own port, as they do in etcd when --listen-metrics-urls is given."""

from .collector import NodeMetrics
from .http import MetricsServer

__all__ = ["MetricsServer", "NodeMetrics"]
