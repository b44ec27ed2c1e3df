# The two commands a newcomer needs: `make demo` and `make test`.
# Everything the project needs is installed into .venv by this file.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test bench bench-scale bench-memory bench-reports bench-otlp bench-dashboard browser venv clean

# setup.py and the C source: a change rebuilds the C reader (streams/events/columnar.py) in place.
$(STAMP): pyproject.toml setup.py streams/events/_columnar.c
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[embedded,test]"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/spendstream demo

# The headless browser tests/test_report_html.py renders the HTML report in (Debian's
# chromium; needs root for apt-get, and the test says why it skipped without it).
browser:
	command -v chromium >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium >/dev/null; } || true

# Two test processes: most of an integration test is waiting on a broker or a worker, so
# two of them share two cores well (621 tests in 6.5 minutes from a fresh clone here; one
# process took 21 minutes on the same machine under load).
test: $(STAMP) browser
	$(BIN)/python -m pytest -q -p no:cacheprovider -n 2

bench: $(STAMP)
	$(BIN)/python bench/run.py

# Throughput with 1, 2 and 3 processing workers (and a sink) beside the all-in-one worker.
bench-scale: $(STAMP)
	$(BIN)/python bench/scale.py

# Worker RSS over 2M events with 100k users and agents (issue 7, goal 4; ~15 minutes).
# A quick check: make bench-memory MEMORY_ARGS="--events 200000 --users 10000 --agents 10000"
MEMORY_ARGS ?=
bench-memory: $(STAMP)
	$(BIN)/python bench/memory.py $(MEMORY_ARGS)

bench-reports: $(STAMP)
	$(BIN)/python bench/report_bench.py

# The dashboard's data requests with 10M rows in the ledger (p50/p99 of each).
bench-dashboard: $(STAMP)
	$(BIN)/python bench/dashboard_bench.py

# The OTLP receiver's spans/s into Kafka and p99 request latency, beside the SDK producer's events/s.
bench-otlp: $(STAMP)
	$(BIN)/python bench/otlp.py

clean:
	rm -rf $(VENV) .spendstream
