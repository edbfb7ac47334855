"""Micro-benchmarks of fedrec's building blocks (no Flower): see :mod:`.dp_overhead`."""
