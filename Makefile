# All set-up lives here: every target builds the virtual environment it needs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install test demo lint format bench clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

test: $(STAMP)
	$(BIN)/python -m pytest

# The main job end to end on real data: classify photos with the embedded model, fine-tune on
# scikit-learn's handwritten digits, evaluate, and draw a Grad-CAM. Outputs land in runs/.
demo: $(STAMP)
	mkdir -p runs/demo
	$(BIN)/python -c "import cv2; from skimage import data; [cv2.imwrite(f'runs/demo/{n}.jpg', getattr(data, n)()[:, :, ::-1]) for n in ('chelsea', 'coffee', 'rocket', 'astronaut')]"
	$(BIN)/cnnapps classify runs/demo --top-k 3
	test -d data/digits || $(BIN)/python scripts/make_digits.py data/digits
	test -f runs/digits/model.safetensors || $(BIN)/cnnapps train classify --config configs/classify/digits.yaml
	$(BIN)/cnnapps eval classify --model runs/digits/model.safetensors --data data/digits/val
	rm -f runs/demo/gradcam.png
	$(BIN)/cnnapps visualize gradcam runs/demo/chelsea.jpg --out runs/demo/gradcam.png
	$(BIN)/cnnapps summary vgg16 --input 224 | tail -3

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: $(STAMP)
	$(BIN)/python benchmarks/classify_throughput.py --images 512 --repeats 3

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
