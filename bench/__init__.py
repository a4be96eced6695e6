"""Benchmarks: each compares our tool to a baseline measured in the same run and reports ratios."""
