"""Performance harness behind BENCHMARKS.md: ``python -m benchmarks.generation``, ``python -m benchmarks.store_io``."""
