# flashcoupon: the two commands a newcomer needs.
#   make run    local stack up, migrate, demo campaign, serve on 127.0.0.1:8080
#   make test   local stack up, then every check and test
.PHONY: run test stack lint nextest tools observability fuzz chaos bench clean-test-data help

SHELL := /bin/bash
CARGO ?= cargo
export CARGO_TERM_COLOR ?= never

help:
	@echo "make run   - start Redis, MariaDB and the Kafka broker, migrate, create a demo campaign, serve :8080"
	@echo "make test  - start the stack, then fmt, clippy and every test (unit and integration)"
	@echo "make fuzz  - schemathesis against /openapi.json of a running service (part of make test)"
	@echo "make chaos - the fault suite: a flash burst per fault scenario, one table line each"
	@echo "make bench - ceilings (redis-benchmark, /health/live) and the service side by side, with ratios"

stack:
	scripts/stack up

run: stack
	$(CARGO) build --release --bin flashcoupon
	./target/release/flashcoupon migrate
	./target/release/flashcoupon demo
	./target/release/flashcoupon seed-demo
	FLASHCOUPON__LOG__FORMAT=$${FLASHCOUPON__LOG__FORMAT:-pretty} ./target/release/flashcoupon serve

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

clean-test-data:
	@scripts/clean-test-data

nextest:
	@$(CARGO) nextest --version >/dev/null 2>&1 || $(CARGO) install cargo-nextest --locked

# Checkers of the on-call kit: promtool (Debian `prometheus`) and docker-compose;
# headless Chromium and chromedriver for the console's browser test; DejaVu Sans for
# the text of loadtest's chart.png.
tools:
	@command -v promtool >/dev/null && command -v docker-compose >/dev/null && \
	  command -v chromium >/dev/null && command -v chromedriver >/dev/null && \
	  test -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	      prometheus docker-compose chromium chromium-driver fonts-dejavu-core >/dev/null; }

# Alert rules (promtool check + unit tests), dashboards, runbooks, docker-compose.yml.
observability: tools
	scripts/check-observability

# schemathesis (PyPI) generates thousands of requests from /openapi.json: no 5xx, and
# every answer as the spec says.
fuzz: stack
	scripts/fuzz

# The fault suite (minutes; not part of make test): private Redis/Sentinel/service
# processes are paused, killed and restarted under a flash burst.
chaos: stack nextest
	set -o pipefail; $(CARGO) nextest run --workspace --locked --run-ignored only --no-capture \
	  --test-threads 1 -E 'test(/^chaos::/)' 2>&1 | grep -E '^\| |^ +(PASS|FAIL|SLOW) \[|panicked|Summary'

# Speed, measured not asserted (about 5 minutes after the release build): see
# scripts/bench and loadtest/README.md.
bench: stack
	scripts/bench

# The build writes gigabytes; `sync` flushes them before the first test, whose
# MariaDB commits would otherwise wait behind that writeback for their fsync.
test: stack nextest tools lint observability clean-test-data
	$(CARGO) nextest run --workspace --locked --no-run
	sync
	$(CARGO) nextest run --workspace --locked --no-fail-fast
	scripts/fuzz
