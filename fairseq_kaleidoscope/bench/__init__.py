"""Benchmarks of the kernels and of K-matrix fitting; run them with ``python -m fairseq_kaleidoscope <command>``."""
