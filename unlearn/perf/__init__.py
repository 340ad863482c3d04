"""Performance benchmarks: ``python -m unlearn.perf.combiners`` (docs/performance.md)."""
