# All set-up lives here: every target builds the virtual environment it needs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install browser test fuzz demo demo-detect demo-caption demo-semantic lint format bench clean

install: $(STAMP)

# The pinned set is installed by uv (pinned itself), which fetches and unpacks the wheels in parallel: about a minute
# on 2 cores where pip took two and a half. Modules are compiled to bytecode when first imported, not at install:
# compiling all 21,700 modules of the set took 70 s on 2 cores, and the tests import a fraction of them.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c constraints.txt uv
	$(BIN)/python -m uv pip install --python $(BIN)/python --quiet -c constraints.txt -e '.[dev,ray,wandb]'
	touch $@

# The web page's test drives Debian's Chromium through Playwright (no browser download at run time).
browser:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || \
	  apt-get install -y --no-install-recommends chromium >/dev/null 2>&1 || \
	  (apt-get update >/dev/null && apt-get install -y --no-install-recommends chromium >/dev/null) || \
	  (echo "the page test needs Chromium: install Debian's chromium package (apt-get install chromium)"; exit 1)

# Two processes (pytest-xdist), each taking whole files: one process kept a 2-core machine's second core mostly idle.
TEST_JOBS ?= 2
test: $(STAMP) browser
	env -u PYTHONDONTWRITEBYTECODE $(BIN)/python -m pytest -n $(TEST_JOBS) --dist loadfile  # bytecode kept for subprocesses

# Only the hostile inputs made on the fly (bombs, elongated, forged, truncated, links); `make test` runs them too.
fuzz: $(STAMP)
	$(BIN)/python -m pytest -m hostile

# The main job end to end on real data: classify photos with the embedded model, fine-tune on
# scikit-learn's handwritten digits, evaluate, and draw a Grad-CAM. Outputs land in runs/ (the photos to classify
# alone in runs/demo/: outputs never go into an input folder).
demo: $(STAMP)
	mkdir -p runs/demo
	$(BIN)/python -c "import cv2; from skimage import data; [cv2.imwrite(f'runs/demo/{n}.jpg', getattr(data, n)()[:, :, ::-1]) for n in ('chelsea', 'coffee', 'rocket', 'astronaut')]"
	$(BIN)/cnnapps classify runs/demo --top-k 3
	test -d data/digits || $(BIN)/python scripts/make_digits.py data/digits
	test -f runs/digits/model.safetensors || $(BIN)/cnnapps train classify --config configs/classify/digits.yaml --epochs 4
	$(BIN)/cnnapps eval classify --model runs/digits/model.safetensors --data data/digits/val
	rm -f runs/demo/gradcam.png runs/gradcam.png
	$(BIN)/cnnapps visualize gradcam runs/demo/chelsea.jpg --out runs/gradcam.png
	$(BIN)/cnnapps summary vgg16 --input 224 | tail -3

# Instance segmentation and pose on synthetic scenes, trained from the bundled backbone on a CPU
# (6 to 14 minutes each on 2 cores, by machine), then evaluated with pycocotools and drawn. Outputs land in runs/.
demo-detect: $(STAMP)
	test -f data/shapes/val.json || $(BIN)/python -m cnnapps.datasets.synthetic shapes data/shapes --train 400 --val 100
	test -f data/people/val.json || $(BIN)/python -m cnnapps.datasets.synthetic people data/people --train 400 --val 100
	test -f runs/shapes/model.safetensors || $(BIN)/cnnapps train segment --config configs/segment/shapes.yaml
	test -f runs/people/model.safetensors || $(BIN)/cnnapps train pose --config configs/pose/people.yaml
	$(BIN)/cnnapps eval segment --model runs/shapes/model.safetensors --data data/shapes/val.json --images data/shapes/val
	$(BIN)/cnnapps eval pose --model runs/people/model.safetensors --data data/people/val.json --images data/people/val
	$(BIN)/cnnapps segment data/shapes/val/shapes_0000[0-3].png --model runs/shapes/model.safetensors --save-dir runs/overlays
	$(BIN)/cnnapps pose data/people/val/people_0000[0-3].png --model runs/people/model.safetensors --save-dir runs/overlays

# Captioning on synthetic scenes: an LSTM with soft attention over a frozen EfficientNet-Lite0 grid
# (4 to 6 minutes on 2 cores, by machine), evaluated with pycocoevalcap, one attention picture. Outputs land in runs/.
demo-caption: $(STAMP)
	test -f data/captions/val.json || $(BIN)/python -m cnnapps.datasets.synthetic captions data/captions --train 800 --val 100
	test -f runs/captions/model.safetensors || $(BIN)/cnnapps train caption --config configs/caption/shapes.yaml
	$(BIN)/cnnapps eval caption --model runs/captions/model.safetensors --data data/captions/val.json --images data/captions/val
	$(BIN)/cnnapps caption data/captions/val/captions_0000[0-4].png --model runs/captions/model.safetensors --save-attention runs/attention

# Semantic segmentation on synthetic scenes (sky, water, grass behind shapes): an FPN head on EfficientNet-Lite0
# from its bundled weights (about 2.5 minutes on 2 cores), evaluated, drawn as overlays and index PNGs.
demo-semantic: $(STAMP)
	test -f data/scenes/classes.txt || $(BIN)/python -m cnnapps.apps.semantic.synthetic data/scenes --train 400 --val 100
	test -f runs/scenes/model.safetensors || $(BIN)/cnnapps train semantic --config configs/semantic/scenes.yaml
	$(BIN)/cnnapps eval semantic --model runs/scenes/model.safetensors --data data/scenes
	$(BIN)/cnnapps semantic data/scenes/JPEGImages/val_0000[0-3].jpg --model runs/scenes/model.safetensors --save-dir runs/semantic-overlays

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# BENCH_DEVICE=cuda for the GPU rows of the throughput benchmarks (auto: the GPU when there is one)
BENCH_DEVICE ?= auto
bench: $(STAMP)
	$(BIN)/python benchmarks/classify_throughput.py --images 512 --repeats 3 --device $(BENCH_DEVICE)
	$(BIN)/python benchmarks/infer_throughput.py --device $(BENCH_DEVICE)
	$(BIN)/python benchmarks/train_throughput.py --device $(BENCH_DEVICE)
	$(BIN)/python benchmarks/detect_latency.py --repeats 5
	$(BIN)/python benchmarks/dataloader.py --images 512
	$(BIN)/python benchmarks/serve_load.py --seconds 15

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
