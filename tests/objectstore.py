"""The tests' SeaweedFS server: core.benchmarks.seaweedfs (the combined load test kills and restarts
the same kind of server mid-run)."""

from core.benchmarks.seaweedfs import ACCESS_KEY, SECRET_KEY, SeaweedFS, free_ports, weed_binary

__all__ = ["ACCESS_KEY", "SECRET_KEY", "SeaweedFS", "free_ports", "weed_binary"]
