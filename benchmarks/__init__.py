"""Measurements and their scripts. A regular package, not a namespace one: pysbd's wheel installs a
top-level `benchmarks` package into site-packages, which would otherwise shadow this folder."""
