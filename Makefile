# patch-build: `make demo` shows the tool at work, `make test` runs the whole suite.
# Both install what they need first (Debian packages, Python packages, kernel packages).
PYTHON ?= python3
export PYTHON

.PHONY: deps demo test bench soak clean

deps:
	@scripts/install-deps.sh

demo: deps
	@$(PYTHON) scripts/demo.py

test: deps
	$(PYTHON) -m pytest -q tests

bench: deps
	$(PYTHON) bench/diff_bench.py
	$(PYTHON) bench/apply_bench.py
	$(PYTHON) bench/kernel_build_bench.py
	$(PYTHON) bench/build_bench.py

# Fuzzing soak by hand: INPUTS mutated objects and reports (default 20,000), SEED (default 1).
soak: deps
	$(PYTHON) bench/fuzz_soak.py $(INPUTS) $(SEED)

clean:
	rm -rf .cache build *.egg-info .pytest_cache
