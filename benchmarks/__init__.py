"""Benchmarks (a package so that `benchmarks.*` is the project's even when a dependency, pysbd, installs a top-level `benchmarks`)."""
