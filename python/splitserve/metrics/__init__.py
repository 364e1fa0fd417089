"""Per-variant metrics: the Prometheus families, the per-minute ring behind `splitserve stats`,
and process samples read from /proc."""
