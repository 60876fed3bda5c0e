"""Benchmarks: `make bench` runs every bench/*_bench.py; `python -m bench NAME ...` runs one."""
