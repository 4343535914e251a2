PYTHON ?= $(if $(wildcard .venv-test/bin/python),.venv-test/bin/python,python3)

.PHONY: bench soak test

# Each benchmark prints its figures against a bare baseline measured in the same run, writes
# bench/results/<name>.json, and exits 1 if a ratio fell more than 10 % below the previous run's. A flagged
# benchmark does not stop the others; make bench fails at the end, naming them.
BENCHMARKS = snapshot producer_catchup consumer_catchup latency consumer_scale

bench:
	@flagged=""; for name in $(BENCHMARKS); do \
		echo "== bench/$$name.py"; $(PYTHON) bench/$$name.py || flagged="$$flagged $$name"; \
	done; \
	if [ -n "$$flagged" ]; then echo "flagged or failed:$$flagged (see each one's table above)"; exit 1; fi

# Ten minutes at a steady rate; producer and consumer memory must stay flat.
soak:
	$(PYTHON) bench/soak.py

test:
	$(PYTHON) -m pytest -q
