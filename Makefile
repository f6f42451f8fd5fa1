# The two commands of the README: `make demo` and `make test` (as root).
.PHONY: setup demo test bench clean

setup:
	bash tools/setup.sh

demo: setup
	python3 -m dataplane demo

test: setup
	python3 -m pytest tests bench --benchmark-disable -q

bench: setup
	python3 -m dataplane bench

clean:
	rm -rf build dataplane/*.so ext/core.c *.egg-info
