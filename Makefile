# One entry point for setup, the demo, the tests and the benchmarks. Everything runs in .venv/.
PY := .venv/bin/python
STAMP := .venv/.installed

.PHONY: setup demo test lint bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q -e ".[dev]"
	$(PY) -m launch.prebuild_ops
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(PY) -m launch.demo

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest -q

lint: $(STAMP)
	$(PY) -m ruff check .

clean:
	rm -rf runs data .pytest_cache
