#!/usr/bin/env bash
# Learning-rate schedules side by side on a preprocessed Multi30k run (docs/results.md):
#   recipes/multi30k/compare-schedules.sh RUN [BUDGET] [SCHEDULE ...]
# Each schedule trains a copy of RUN's data for BUDGET (default 12m), then best.pt translates
# val and test with beam 5; prints one line per schedule: steps, val and test BLEU/chrF.
set -euo pipefail
run=${1:?usage: compare-schedules.sh RUN [BUDGET] [SCHEDULE ...]}
budget=${2:-12m}
shift $(( $# >= 2 ? 2 : 1 ))
schedules=("${@:-plateau budget}")
LSTMMT=${LSTMMT:-lstmmt}
for schedule in ${schedules[@]}; do
  out="$run-$schedule-$budget"
  rm -rf "$out" && mkdir -p "$out"
  cp -r "$run/config.yaml" "$run/data" "$run/tokenizer" "$out/"
  $LSTMMT train "$out" --max-time "$budget" --set train.lr_schedule="$schedule" --set train.valid_every_time=4m >&2
  line="$schedule: $(python3 -c "import json; print(json.load(open('$out/train.json'))['step'])") steps"
  for split in valid test; do
    $LSTMMT translate "$out" -i "$out/data/$split.src.txt" -o "$out/$split.best.hyp" --checkpoint best >&2
    scores=$($LSTMMT evaluate "$out" --hyp "$out/$split.best.hyp" --ref "$out/data/$split.tgt.txt" --json)
    line+=", $split BLEU $(echo "$scores" | python3 -c "import json, sys; d = json.load(sys.stdin); print(f\"{d['bleu']:.2f} chrF {d['chrf']:.2f}\")")"
  done
  echo "$line"
done
