"""etcd's v3 gRPC surface (KV, Watch, Lease, Cluster, Maintenance) and quorumlab's Admin service."""
