# The two commands of the README: `make demo` and `make test` (as root).
.PHONY: setup demo test test-scale bench clean fuzz-setup fuzz fuzz-smoke test-asan

setup:
	bash tools/setup.sh

demo: setup
	python3 -m dataplane demo

test: setup
	python3 -m pytest tests bench --benchmark-disable -q

bench: setup
	python3 -m dataplane bench

# Issue 13's scale test with 64 routers (tests/test_scale.py; `make test` runs it with 16).
# SCALE_HOSTS=N for another size; `weavefast bench --scale N` prints the same figures.
SCALE_HOSTS ?= 64
test-scale: setup
	WEAVEFAST_SCALE_HOSTS=$(SCALE_HOSTS) WEAVEFAST_SCALE_CONVERGE_S=120 WEAVEFAST_SCALE_IDLE_S=20 \
		python3 -m pytest tests/test_scale.py -q -s

clean:
	rm -rf build dataplane/*.so ext/core.c *.egg-info

# Fuzzing (README "Fuzzing"): every parser of network input under libFuzzer
# (C, with ASan + UBSan) or atheris (Python). `make fuzz` runs each target
# FUZZ_SECONDS; `make fuzz-smoke` is CI's short run. A failure leaves its
# input in build/fuzz/crashes/<target>/.
FUZZ_SECONDS ?= 600
FUZZ_SMOKE_SECONDS ?= 20
FUZZ_TARGETS ?= datagram rxpath reasm uso tso aead replay control reference

fuzz-setup:
	bash fuzz/setup.sh

fuzz: fuzz-setup
	FUZZ_SECONDS=$(FUZZ_SECONDS) bash fuzz/run.sh $(FUZZ_TARGETS)

fuzz-smoke: fuzz-setup
	FUZZ_SECONDS=$(FUZZ_SMOKE_SECONDS) bash fuzz/run.sh $(FUZZ_TARGETS)

# The tests that send garbage, against the core built with ASan + UBSan
# (build/asan; the normal in-place build is untouched). See fuzz/asan.sh.
test-asan: fuzz-setup
	bash fuzz/asan.sh
