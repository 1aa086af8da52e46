# bigmodel: set-up, tests and benchmarks.
#   make install                      the package (editable) with the sweep, hf and serve extras and dev tools,
#                                     CPU torch by default
#   make install TORCH_CONSTRAINT=    keep whatever torch pip picks (e.g. a CUDA build)
#   make test                         the test suite without the slow tests (~7 minutes)
#   make test-slow                    the slow ones (CI runs both)
#   make bench                        benchmarks; writes outputs/bench/report.{md,json}

PYTHON ?= python3
TORCH_CONSTRAINT ?= constraints/torch-cpu.txt
CONSTRAINT_ARGS = $(if $(TORCH_CONSTRAINT),-c $(TORCH_CONSTRAINT),)

.PHONY: install test test-slow bench lint clean

install:
	$(PYTHON) -m pip install $(CONSTRAINT_ARGS) -e ".[dev,sweep,hf,serve]"

test:
	$(PYTHON) -m pytest -q -m "not slow"

test-slow:
	$(PYTHON) -m pytest -q -m slow

bench:
	$(PYTHON) bench/run.py

lint:
	$(PYTHON) -m ruff check bigmodel_cli tests bench

clean:
	rm -rf build dist *.egg-info .pytest_cache .ruff_cache outputs bench/results
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
