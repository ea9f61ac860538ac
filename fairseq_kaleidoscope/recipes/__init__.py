"""Python tools behind ``recipes/``: data preparation, decoding benchmark, BLEU, the main job.

Each module with a ``main`` is a CLI: ``python -m fairseq_kaleidoscope.recipes.<module> --help``.
"""
