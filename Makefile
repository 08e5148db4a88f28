# Two entry points: `make run` and `make test`. Each creates .venv when missing and
# installs the project into it. TORCH_SPEC picks the PyTorch build, e.g.
#   make test TORCH_SPEC=torch==2.13.0        (a CPU wheel)
# Changing TORCH_SPEC (or pyproject.toml) later makes the next `make` reinstall.
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch>=2.4
ARGS ?=
# Holds the TORCH_SPEC of the last install. Its recipe runs every time but rewrites the file
# only when the value differs, so a new spec, and only a new spec, dates the install.
SPEC_STAMP := $(VENV)/.torch-spec

.PHONY: install run test lint format bench clean FORCE

$(SPEC_STAMP): FORCE
	@mkdir -p $(VENV)
	@if [ "$$(cat $@ 2>/dev/null)" != '$(TORCH_SPEC)' ]; then echo '$(TORCH_SPEC)' > $@; fi

# pip runs without --quiet: the first install downloads PyTorch and takes minutes, and its
# progress bars show that it is moving.
$(VENV)/.installed: pyproject.toml $(SPEC_STAMP)
	@echo "==> Python environment in $(VENV)"
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	@echo "==> PyTorch: $(TORCH_SPEC)"
	$(PY) -m pip install "$(TORCH_SPEC)"
	@echo "==> streamdit-live with the train, test and dev extras"
	$(PY) -m pip install -e ".[train,test,dev]" "$(TORCH_SPEC)"
	@echo "==> The CPU kernels, compiled once (where they cannot be, torch's ops run)"
	$(PY) -m model.kernels
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
