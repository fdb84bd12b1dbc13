"""Benchmarks behind `make bench`: groundwatch beside the usual ways of serving the same model."""
