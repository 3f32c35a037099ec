#!/bin/bash
# Score decoding choices of a trained run on its validation split (never on test):
# single best checkpoint vs averages of K checkpoints, beam size, length penalty.
#   recipes/multi30k/tune-decoding.sh run        # prints one tab-separated line per choice
set -euo pipefail
RUN=${1:?usage: $0 RUN}
OUT=$RUN/tuning
mkdir -p "$OUT"
for k in 3 5 8; do lstmmt average "$RUN" --best $k -o "$OUT/best$k.pt" 2>/dev/null; done

score() {  # name checkpoint beam length-penalty
  lstmmt translate "$RUN" -i "$RUN/data/valid.src.txt" -o "$OUT/$1.hyp" --checkpoint "$2" --beam "$3" --length-penalty "$4" 2>/dev/null
  printf '%s\tbeam=%s\tlp=%s\t' "$1" "$3" "$4"
  lstmmt evaluate "$RUN" --hyp "$OUT/$1.hyp" --ref "$RUN/data/valid.tgt.txt" --json \
    | python3 -c 'import json, sys; d = json.load(sys.stdin); print(f"BLEU {d[\"bleu\"]:.2f}\tchrF {d[\"chrf\"]:.2f}")'
}

score best best 5 1.0
for k in 3 5 8; do score "best$k" "$OUT/best$k.pt" 5 1.0; done
score best5-greedy "$OUT/best5.pt" 1 1.0
score best5-beam10 "$OUT/best5.pt" 10 1.0
for lp in 0 0.6 1.4; do score "best5-lp$lp" "$OUT/best5.pt" 5 $lp; done
