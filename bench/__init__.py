"""The bench suite: load-tests the whole engine against a local target fleet (see docs/BENCHMARKS.md)."""
