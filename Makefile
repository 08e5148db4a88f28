# Two entry points: `make run` and `make test`. Each creates .venv when missing and
# installs the project into it. TORCH_SPEC picks the PyTorch build, e.g.
#   make test TORCH_SPEC=torch==2.13.0        (a CPU wheel)
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch>=2.4
ARGS ?=

.PHONY: install run test lint format bench clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[train,test,dev]" "$(TORCH_SPEC)"
	touch $@

install: $(VENV)/.installed

run: install
	$(VENV)/bin/streamdit-live $(ARGS)

test: install
	QT_QPA_PLATFORM=offscreen HF_HUB_OFFLINE=1 $(PY) -m pytest $(ARGS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: install
	$(PY) -m model.bench --config cpu

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
