# Single entry point. Every target runs the idempotent setup first.
PY := .venv/bin/python

.PHONY: setup demo test lint bench clean

setup:
	bash scripts/setup.sh

demo: setup
	$(PY) -m fairseq_kaleidoscope.demo

lint: setup
	$(PY) -m ruff check .

test: setup
	$(PY) -m ruff check .
	$(PY) -m pytest -q

bench: setup
	$(PY) benchmarks/kernels.py

clean:
	rm -rf build *.egg-info fairseq_kaleidoscope/*.so
