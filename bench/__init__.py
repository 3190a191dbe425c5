"""Statewide data generator and benchmarks (issue 6)."""
