# One entry point for setup, the demo, the tests and the benchmarks. Everything runs in .venv/.
PY := .venv/bin/python
STAMP := .venv/.installed

.PHONY: setup demo test lint bench clean

$(STAMP): pyproject.toml
	@test -x $(PY) || { echo "setup: creating the virtual environment .venv/"; python3 -m venv .venv; }
	@echo "setup: installing mixer-pipeline and its dependencies into .venv/ (torch, DeepSpeed, timm, ...; minutes the first time)"
	@$(PY) -m pip install -q -e ".[dev]"
	@echo "setup: building DeepSpeed's CPU collective op once (launch/prebuild_ops.py; else the first run compiles it)"
	@$(PY) -m launch.prebuild_ops
	@touch $(STAMP)
	@echo "setup: done; the tools are in .venv/bin/ (python, deepspeed, tensorboard), or: source .venv/bin/activate"

setup: $(STAMP)

demo: $(STAMP)
	$(PY) -m launch.demo

# One pytest process: under pytest-xdist (-n 2) data_prep's forked workers hung in a worker that had run the
# multi-process tests before (tests/test_data_prep_workers.py, 600 s each). The 30 slowest tests close the report.
test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest -q --durations=30

lint: $(STAMP)
	$(PY) -m ruff check .

clean:
	rm -rf runs data .pytest_cache
