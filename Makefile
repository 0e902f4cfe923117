# Two commands do all the set-up on a fresh machine: `make demo` (train, predict, submit) and `make test`.
# constraints.txt pins the versions this project is tested with (torch 2.14.1 lies on this machine's disk).
PYTHON ?= python3
VENV := .venv

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q -c constraints.txt -e ".[dev,export]"
	touch $@

.PHONY: demo test bench
demo: $(VENV)/.installed
	PYTHON=$(VENV)/bin/python bash scripts/demo.sh

# the tests also try the optional loggers (wandb offline, mlflow's local store) and the service
$(VENV)/.installed-loggers: $(VENV)/.installed
	$(VENV)/bin/pip install -q -c constraints.txt -e ".[wandb,mlflow,serve]"
	touch $@

# two test processes, one per core, each test file whole in one of them (its module fixtures shared), the dearest
# files first (tests/helpers.py: DEAREST_FIRST)
test: $(VENV)/.installed-loggers
	$(VENV)/bin/python -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder

bench: $(VENV)/.installed
	$(VENV)/bin/python bench/train_throughput.py
	$(VENV)/bin/python bench/predict_throughput.py
	$(VENV)/bin/python bench/submit_speed.py
