#!/bin/bash
# Wheels for a lent GPU machine (Python 3.12, x86-64, torch / timm / lightning / onnxruntime already there, no
# network): medcad's other dependencies, --no-deps, into an ignored folder that `run`'s carry takes along (~51 MB,
# under the 64 MiB limit). Then, on the device: `bash .gpucarry/run.sh` (written below).
#   bash benchmarks/gpu_wheels.sh [.gpucarry]
set -euo pipefail
out=${1:-.gpucarry}
grep -qx "/$out/" .git/info/exclude 2>/dev/null || echo "/$out/" >> "$(git rev-parse --git-common-dir)/info/exclude"
mkdir -p "$out/wheels"
target=(--python-version 3.12 --implementation cp --abi cp312 --abi abi3 --abi none
        --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64)
pip3 download --quiet --no-deps --only-binary=:all: "${target[@]}" -d "$out/wheels" \
  segmentation-models-pytorch imagehash PyWavelets pydicom ttach monai fastapi starlette pydantic pydantic-core \
  annotated-types typing-inspection fastapi-offline uvicorn python-multipart highdicom pyjpegls pycocotools openpyxl \
  et-xmlfile av opentelemetry-api importlib-metadata
pip3 wheel --quiet --no-deps "grad-cam>=1.5" -w "$out/wheels"  # an sdist on PyPI: built here (pure Python)
cat > "$out/run.sh" <<'RUN'
#!/bin/bash
# On the lent GPU machine: install the carried wheels, then the GPU's own tests.
cd "$(dirname "$0")/.." || exit 1
python3 -m pip install --no-deps --no-index -q "$(dirname "$0")"/wheels/*.whl 2>&1 | tail -3
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1  # absolute: tests start subprocesses elsewhere
python3 -c "import medcad.engine.train, medcad.inference.server; print('imports ok')" || exit 1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
MEDCAD_TEST_GPU=1 timeout 240 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py 2>&1 | tee "$OUT/gpu_tests.log" | tail -25
RUN
du -sh "$out"
