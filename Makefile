# patch-build: `make demo` shows the tool at work, `make test` runs the whole suite.
# Both install what they need first (Debian packages, Python packages, kernel packages).
# Everything runs from a virtual environment of the checkout's own (.venv): Debian's Python refuses
# `pip install` into the system (PEP 668). install-deps.sh makes it with `python3 -m venv`.
VENV ?= .venv
PYTHON := $(CURDIR)/$(VENV)/bin/python
export VENV PYTHON
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: deps demo test test-fast bench soak clean clean-cache

deps:
	@scripts/install-deps.sh

demo: deps
	@$(PYTHON) scripts/demo.py

# -P: the checkout is not put on sys.path, so the code is imported as installed (patch_build.*)
test: deps
	$(PYTHON) -P -m pytest -q tests

# everything but the qemu boots and the long runs (fault injection at every step, ...): a few minutes
test-fast: deps
	$(PYTHON) -P -m pytest -q -m "not kernel and not slow" tests

bench: deps
	$(PYTHON) bench/diff_bench.py
	$(PYTHON) bench/apply_bench.py
	$(PYTHON) bench/kernel_build_bench.py
	$(PYTHON) bench/build_bench.py
	$(PYTHON) bench/lto_build_bench.py

# Fuzzing soak by hand: INPUTS mutated objects and reports (default 20,000), SEED (default 1).
soak: deps
	$(PYTHON) bench/fuzz_soak.py $(INPUTS) $(SEED)

clean:
	rm -rf .cache .venv build *.egg-info .pytest_cache

# the kernel packages and trees the tests download and prepare (several GB, shared by every checkout)
clean-cache:
	rm -rf "$${PATCH_BUILD_CACHE:-$${XDG_CACHE_HOME:-$$HOME/.cache}/patch-build}"
