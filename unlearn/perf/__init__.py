"""Performance benchmarks: ``python -m unlearn.perf.combiners`` (the README's Performance section)."""
