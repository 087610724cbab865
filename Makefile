VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip

.PHONY: install run test lint bench screenshots clean

$(VENV)/.installed: pyproject.toml requirements.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -r requirements.txt
	$(PIP) install -q -e '.[api,worker,test,ray,mlflow]'
	touch $@

install: $(VENV)/.installed

run: install
	$(VENV)/bin/sagan up --demo

# ruff's rules and mypy's files are set in pyproject.toml ([tool.ruff.lint], [tool.mypy]).
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

test: lint
	# Two test processes (one per core here), each file's tests in one of them (module fixtures stay shared),
	# files handed out in the order tests/conftest.py sets.
	# The coverage floor: just under the 78 % the whole suite measured (2026-12-04), pytest processes only.
	$(PY) -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder --cov-fail-under=77

# The pictures in README.md and docs/: the browser tests' screenshots, saved into docs/screenshots/.
screenshots: install
	SAGAN_SCREENSHOTS=$(CURDIR)/docs/screenshots $(PY) -m pytest -q --no-cov tests/service/test_browser.py

bench: install
	$(PY) bench/train_step.py --preset seed64 --batch-size 64 --steps 3

clean:
	rm -rf $(VENV) .sagan runs
