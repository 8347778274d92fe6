# Everything sets itself up: a fresh clone needs only python3 (3.10+) and make.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
.PHONY: run test lint tools bench clean peer

# One stamp per extra: make run installs only what the service needs.
$(VENV)/.installed-%: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[$*]'
	touch $@

## make run: the example service on http://127.0.0.1:8000 (offline demo upstream unless UPSTREAM_URL is set)
## make run APP=app.flask_example:app (or app.django_example:application): the framework examples;
## make run APP=app.asgi_example:app: the FastAPI relay on the async pools, under gunicorn -k asgi
run: $(VENV)/.installed-demo
	$(BIN)/python -m app.demo $(APP)

## make test: ruff, mypy --strict, and the whole test suite
test: lint $(VENV)/wheelhouse tools
	$(BIN)/python -m pytest

## make peer: urllib3's and requests' own test suites (the versions in .venv), stock and with
## poolclient swapped in; fails on a difference not in tests/peer/allowlist.py (work in .peer/)
peer: $(VENV)/.installed-test
	$(BIN)/python tests/peer/run.py

# System tools, from Debian's packages if missing: tests/test_deploy.py checks deploy/ with
# nginx and systemd-analyze; make bench and tests/test_bench.py load with wrk;
# tests/test_prometheus.py scrapes /metrics with a real Prometheus server.
tools:
	@command -v nginx >/dev/null || test -x /usr/sbin/nginx || \
	  apt-get install -y -q nginx-light >/dev/null || \
	  (apt-get update -q >/dev/null && apt-get install -y -q nginx-light >/dev/null)
	@command -v systemd-analyze >/dev/null || apt-get install -y -q systemd >/dev/null
	@command -v wrk >/dev/null || apt-get install -y -q wrk >/dev/null || \
	  (apt-get update -q >/dev/null && apt-get install -y -q wrk >/dev/null)
	@command -v prometheus >/dev/null || test -x /usr/bin/prometheus || \
	  apt-get install -y -q prometheus >/dev/null || \
	  (apt-get update -q >/dev/null && apt-get install -y -q prometheus >/dev/null)

## make bench: the contenders under load against each upstream scenario, then the instruction
## counts (callgrind), the handshake costs and the microbenchmarks; writes docs/bench.* and
## docs/handshake.md, docs/micro.md and the README's tables. ROUNDS=5 DURATION=10 by default
## (about 80 min here); ROUNDS=3 DURATION=6: about 40 min. SCENARIOS=b,c,d,a,a-ca (any of
## them), CALLGRIND=2000 requests per contender (0: none). KINDS=wsgi,asgi (or either):
## KINDS=asgi runs only the ASGI apps' rows (gunicorn -k asgi, docs/bench-asgi.*), about
## 30 min at the defaults, and leaves the WSGI report as it was.
ROUNDS    ?= 5
DURATION  ?= 10
SCENARIOS ?= all
CALLGRIND ?= 2000
KINDS     ?= all
bench: $(VENV)/.installed-bench tools
	BENCH_COMMAND='make bench ROUNDS=$(ROUNDS) DURATION=$(DURATION) SCENARIOS=$(SCENARIOS) KINDS=$(KINDS)' \
	  $(BIN)/python -m bench.run --rounds $(ROUNDS) --duration $(DURATION) \
	  --scenarios $(SCENARIOS) --kinds $(KINDS) --callgrind $(CALLGRIND)
	if [ "$(KINDS)" != asgi ]; then \
	  BENCH_COMMAND='make bench' $(BIN)/python -m bench.handshake --out docs/handshake.md && \
	  $(BIN)/python bench/micro/report.py; fi

# Wheels of every runtime dependency and extra, so that tests/test_packaging.py installs
# the built wheel into clean venvs offline.
$(VENV)/wheelhouse: pyproject.toml $(VENV)/.installed-test
	rm -rf $@.tmp
	$(BIN)/python -m pip wheel --quiet --wheel-dir $@.tmp '.[gunicorn,gevent,prometheus,httpx2]'
	rm -f $@.tmp/poolclient-*.whl
	rm -rf $@ && mv $@.tmp $@

lint: $(VENV)/.installed-test
	$(BIN)/ruff check poolclient app tests bench gunicorn.conf.py
	$(BIN)/mypy

clean:
	rm -rf $(VENV) run .pytest_cache .mypy_cache .ruff_cache
