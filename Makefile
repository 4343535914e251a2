PYTHON ?= $(if $(wildcard .venv-test/bin/python),.venv-test/bin/python,python3)

.PHONY: bench test

bench:
	$(PYTHON) bench/encode.py

test:
	$(PYTHON) -m pytest -q
