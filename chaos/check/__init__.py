"""The register linearizability checker's parts; chaos.checker is the public face."""
