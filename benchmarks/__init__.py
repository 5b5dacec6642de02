"""Benchmarks (run with `make bench`). They print figures; nothing here is a test."""
