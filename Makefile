# The two set-up commands of the README: `make quickstart` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
ZOO    := $(VENV)/bin/zoo
# torch/torchvision releases that install from local disk on the project machines; any release in
# pyproject.toml's range works elsewhere.
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
STAMP  := $(VENV)/.installed

.PHONY: install quickstart test data browser cards clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_PINS) || $(PY) -m pip install --quiet torch torchvision
	$(PY) -m pip install --quiet -e '.[dev,report,serve]'
	@$(MAKE) --no-print-directory data
	touch $(STAMP)

install: $(STAMP)

# Fashion-MNIST from Debian's package, where apt is available (the loaders accept any path too).
data:
	@if [ -d /usr/share/datasets/fashion-mnist ]; then echo "Fashion-MNIST: present"; \
	elif command -v apt-get >/dev/null 2>&1; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  ($$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq dataset-fashion-mnist) >/dev/null \
	    || echo "warning: could not install dataset-fashion-mnist; pass --data to the training commands"; \
	else echo "warning: apt-get not found; Fashion-MNIST recipes need --data PATH"; fi

# A headless Chromium for the `zoo serve` page test (Debian's package, as root or with sudo).
browser:
	@if command -v chromium-headless-shell >/dev/null 2>&1 || command -v chromium >/dev/null 2>&1; then :; \
	elif command -v apt-get >/dev/null 2>&1; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  ($$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium-headless-shell) >/dev/null \
	    || echo "warning: could not install chromium-headless-shell; the zoo serve page test will fail"; \
	else echo "warning: apt-get not found; install chromium-headless-shell for the zoo serve page test"; fi

quickstart: $(STAMP)
	$(ZOO) quickstart

test: $(STAMP) browser
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q

cards: $(STAMP)
	$(ZOO) card --all

clean:
	rm -rf $(VENV) build *.egg-info
