"""Benchmark tooling outside the installed package: the planted-instruction benchmark and the tiny Llama builder."""
