"""Per-variant metrics: the Prometheus families (prometheus), each variant's recorder feeding them
and its per-minute ring (recorder, minutes), the report `splitserve stats` shows (report), and
process samples read from /proc (procstat). Nothing here imports workers or the face."""
