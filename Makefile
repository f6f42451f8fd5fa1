# The two commands of the README: `make demo` and `make test` (as root). Both install
# weavefast into its own virtual environment first (tools/setup.sh), and run it from there.
.PHONY: setup uninstall demo test test-scale bench clean wheel deb fuzz-setup fuzz fuzz-smoke test-asan

WEAVEFAST_PREFIX ?= /opt/weavefast
export WEAVEFAST_PREFIX
# The venv's interpreter: the fuzz and ASan scripts use it too.
PYTHON ?= $(WEAVEFAST_PREFIX)/bin/python
export PYTHON

setup:
	bash tools/setup.sh

uninstall:
	bash tools/setup.sh --uninstall

demo: setup
	$(PYTHON) -m dataplane demo

test: setup
	$(PYTHON) -m pytest tests bench --benchmark-disable -q

bench: setup
	$(PYTHON) -m dataplane bench

# Issue 13's scale test with 64 routers (tests/test_scale.py; `make test` runs it with 16).
# SCALE_HOSTS=N for another size; `weavefast bench --scale N` prints the same figures.
SCALE_HOSTS ?= 64
test-scale: setup
	WEAVEFAST_SCALE_HOSTS=$(SCALE_HOSTS) WEAVEFAST_SCALE_CONVERGE_S=120 WEAVEFAST_SCALE_IDLE_S=20 \
		$(PYTHON) -m pytest tests/test_scale.py -q -s

# dist/weavefast-VERSION.tar.gz (builds anywhere with a compiler and libssl-dev) and the
# binary wheel for this host's Python.
wheel: setup
	bash tools/build-wheel.sh

# dist/weavefast_VERSION_ARCH.deb: the venv under /opt/weavefast, /usr/bin/weavefast, the
# systemd unit and the docs (tools/build-deb.sh).
deb: setup
	bash tools/build-deb.sh

clean:
	rm -rf build dist dataplane/*.so ext/core.c *.egg-info

# Fuzzing (README "Fuzzing"): every parser of network input under libFuzzer
# (C, with ASan + UBSan) or atheris (Python). `make fuzz` runs each target
# FUZZ_SECONDS; `make fuzz-smoke` is CI's short run. A failure leaves its
# input in build/fuzz/crashes/<target>/.
FUZZ_SECONDS ?= 600
FUZZ_SMOKE_SECONDS ?= 20
FUZZ_TARGETS ?= datagram rxpath reasm uso tso aead replay control reference

fuzz-setup: setup
	bash fuzz/setup.sh

fuzz: fuzz-setup
	FUZZ_SECONDS=$(FUZZ_SECONDS) bash fuzz/run.sh $(FUZZ_TARGETS)

fuzz-smoke: fuzz-setup
	FUZZ_SECONDS=$(FUZZ_SMOKE_SECONDS) bash fuzz/run.sh $(FUZZ_TARGETS)

# The tests that send garbage, against the core built with ASan + UBSan
# (build/asan; the normal in-place build is untouched). See fuzz/asan.sh.
test-asan: fuzz-setup
	bash fuzz/asan.sh
