# The commands the README, CI and developers use. Every target sets itself up first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup system-deps serve test lint format bench bench-peers accuracy soak soak-attack fuzz default-model image-test deploy-check proto digits-cpreresnet20 clean

setup: $(STAMP)

# torch first, from the local CPU build: a loose torch requirement resolved by pip alone would
# pull a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check torch==2.13.0
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[train,dev]'
	touch $@

# System packages the tests and benchmarks drive for real: Prometheus + promtool, stress-ng,
# kubectl (kustomize), hey and h2load (HTTP and gRPC load generators).
system-deps:
	@missing=""; \
	command -v promtool >/dev/null || missing="$$missing prometheus"; \
	command -v stress-ng >/dev/null || missing="$$missing stress-ng"; \
	command -v kubectl >/dev/null || missing="$$missing kubectl"; \
	command -v hey >/dev/null || missing="$$missing hey"; \
	command -v h2load >/dev/null || missing="$$missing nghttp2-client"; \
	if [ -n "$$missing" ]; then \
	  echo "installing system packages:$$missing"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	fi

serve: setup
	$(BIN)/lcs serve

# Two passes: everything else on both cores (a test file per worker), then the tests that run a
# CPU hog and measure the daemon's answer to it, alone, so no other test is part of the hog.
test: setup system-deps
	$(BIN)/pytest -q --timeout=600 --durations=15 -n 2 --dist loadfile -m "not exclusive"
	$(BIN)/pytest -q --timeout=600 --durations=5 -m exclusive

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: setup system-deps
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[bench]'
	$(BIN)/python -m benchmarks.switch_cost
	$(BIN)/python -m benchmarks.speedup
	$(BIN)/python -m benchmarks.server_load
	$(BIN)/python -m benchmarks.peers_compare
	$(BIN)/python -m benchmarks.adaptation
	$(BIN)/python -m benchmarks.memory
	$(BIN)/python -m benchmarks.controller_overhead
	$(BIN)/python -m benchmarks.tier2
	$(BIN)/python -m benchmarks.models
	$(BIN)/python -m benchmarks.protocols
	$(BIN)/python -m benchmarks.request_profile
	$(BIN)/python -m benchmarks.report

# lcs-serve against Triton (PyTriton), MLServer, TorchServe, Ray Serve, BentoML, LitServe and plain
# FastAPI on the same model and requests: each peer installed once into its own venv under
# ~/.cache/lcs-serve/peers (a few minutes each, the first time), then about 10 minutes.
# Flags through ARGS, e.g. make bench-peers ARGS="--peers triton mlserver --requests 300".
bench-peers: setup system-deps
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[bench]'
	$(BIN)/python -m benchmarks.peers_compare $(ARGS)
	$(BIN)/python -m benchmarks.report

# LCS against the paper's baselines on the digits (66 trainings, about an hour on 2 cores; cached
# per run in benchmarks/results/accuracy-runs), the Table 2 profile, ACCURACY.md and its plots.
accuracy: setup
	$(BIN)/python -m benchmarks.accuracy --ship
	$(BIN)/python -m benchmarks.accuracy.table2
	$(BIN)/python -m benchmarks.accuracy.report

# A longer fuzzing run than CI's (about 6 000 generated requests).
fuzz: setup
	LCS_FUZZ_EXAMPLES=250 $(BIN)/pytest -q tests/server/test_fuzz.py

# Not in CI: sustained load with level changes; resident memory growth and errors.
soak: setup system-deps
	$(BIN)/python -m benchmarks.soak --minutes 5

# Ordinary clients at a steady rate while every attacker class of SECURITY.md comes and goes.
soak-attack: setup system-deps
	$(BIN)/python -m benchmarks.soak --attack --minutes 2

# Regenerates the gRPC stubs in server/protocol/ from server/protocol/inference.proto.
proto: setup
	$(BIN)/python -m server.protocol.generate

# Builds the Dockerfile with podman (a local Debian base: no registry here) and runs it.
image-test: setup
	bash deploy/container/image-test.sh

# The offline checks of deploy/: kustomize + kubernetes-validate, promtool, dashboard.
deploy-check: setup system-deps
	$(BIN)/pytest -q tests/deploy

# Reproduces the bundled default model (about 4 minutes on 2 cores).
default-model: setup
	$(BIN)/lcs train --arch small_cnn --family structured --kind point --epochs 20 --seed 1 \
	  --distill --threads 1 --out models/weights/digits_structured_point.safetensors

# The compute-bound digits model (about an hour on one core; resumable).
digits-cpreresnet20: setup
	nice -n 19 $(BIN)/lcs train --arch cpreresnet20 --family structured --kind point \
	  --dataset digits32 --epochs 28 --seed 0 --threads 1 --no-progress \
	  --state runs/digits_cpreresnet20.state.pt --resume \
	  --out models/weights/digits_cpreresnet20.safetensors

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache runs
