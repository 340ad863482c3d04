"""Performance benchmarks: ``python -m unlearn.bench.combiners`` (the README's Performance section)."""
