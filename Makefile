# lmforge: the two commands a new user needs.
#   make demo   set up, build, fetch and prepare the default corpus, train, evaluate, sample, plot
#   make test   set up, build, and run every test (CTest), then the fuzzers (scripts/fuzz.sh)
BUILD ?= build
JOBS ?= $(shell nproc)
LMFORGE := $(BUILD)/lmforge
RUN ?= runs/demo

.PHONY: all setup build test demo corpus bench clean

all: build

setup:
	@bash scripts/setup.sh

build: setup
	@cmake -S . -B $(BUILD) -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
	@cmake --build $(BUILD) -j $(JOBS)

test: build
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS)
	bash scripts/fuzz.sh

corpus: build
	@bash scripts/fetch_corpus.sh $(LMFORGE)

demo: corpus
	$(LMFORGE) train --config configs/demo.toml --set log.run_dir=$(RUN)
	$(LMFORGE) eval --run $(RUN)
	$(LMFORGE) sample --run $(RUN) --prompt "My fellow Americans, " --max-new-tokens 300 --seed 7
	@echo "loss curve: $(RUN)/loss.svg"

bench: build
	$(LMFORGE) bench --B 4 --T 64
	$(LMFORGE) bench --B 1 --T 1024

clean:
	rm -rf $(BUILD)
