PYTHON ?= $(if $(wildcard .venv-test/bin/python),.venv-test/bin/python,python3)

.PHONY: bench soak test

# Each benchmark prints its figures against a bare baseline measured in the same run, writes
# bench/results/<name>.json, and exits 1 if a ratio fell more than 10 % below the previous run's.
bench:
	$(PYTHON) bench/snapshot.py
	$(PYTHON) bench/producer_catchup.py
	$(PYTHON) bench/consumer_catchup.py
	$(PYTHON) bench/latency.py
	$(PYTHON) bench/consumer_scale.py

# Ten minutes at a steady rate; producer and consumer memory must stay flat.
soak:
	$(PYTHON) bench/soak.py

test:
	$(PYTHON) -m pytest -q
