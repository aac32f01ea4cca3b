#!/usr/bin/env bash
# airbench94 judged as an entrant beside the committed 10-epoch family (docs/results/entrants/README.md).
#
#   bash bench/entrant_demo.sh SEED [DATA] [SDIST]
#
# Trains airbench94 by its own recipe on the CPU (bench/airbench_entrant.py), imports it, makes its int8 file, scores
# both on onnxruntime and the fp32 file on OpenVINO (accuracy only: the family was timed on an H200, so no latency
# pairing exists), checks the import against airbench's own evaluation, and copies what the report is rebuilt from
# (manifest.json, eval.json, airbench.json, the check) into docs/results/entrants/airbench94-sSEED/.
set -euo pipefail
seed=${1:?usage: bash bench/entrant_demo.sh SEED [DATA] [SDIST]}
data=${2:-../shared/data/cifar10-jpeg.tar.gz}
sdist=${3:-build/airbench-0.1.8.tar.gz}
work=runs/entrants
trained=$work/trained-s$seed
run=$work/airbench94-s$seed
keep=docs/results/entrants/airbench94-s$seed
modes=none,flip,flip-translate,airbench94,selective-flip,selective-airbench94

[ -f "$trained/airbench94.onnx" ] || python bench/airbench_entrant.py --data "$data" --source "$sdist" --device cpu \
  --seed "$seed" --out "$trained"
contract=$(python -c "import json,sys; c=json.load(open(sys.argv[1]))['contract']; \
print(','.join(map(str, c['mean'])), ','.join(map(str, c['std'])))" "$trained/airbench.json")
read -r mean std <<<"$contract"
dawnpipe import "$trained/airbench94.onnx" --data "$data" --out "$work" --name "airbench94-s$seed" \
  --entrant airbench94 --seed "$seed" --layout NCHW --input-range 0-1 --mean "$mean" --std "$std"
dawnpipe export "$run" --precision int8 --calibration-data "$data"
dawnpipe eval "$run/model-fp32.onnx" "$run/model-int8.onnx" --data "$data" --tta "$modes" --no-latency
dawnpipe eval "$run/model-fp32.onnx" --backend openvino --data "$data" --tta "$modes" --no-latency
mkdir -p "$keep"
python bench/airbench_entrant.py check "$run" "$trained/airbench-logits.npz" "$data" > "$keep/check.json"
cp "$run/manifest.json" "$run/eval.json" "$trained/airbench.json" "$keep/"
cat "$keep/check.json"
