#!/usr/bin/env bash
# The runs behind docs/reproduction.md: each paper's CRM baselines under that paper's protocol, 3 seeds.
#
#   scripts/reproduce.sh [beauty|ml100k|all]        (MLFLOW_TRACKING_URI picks the store; default sqlite:///mlflow.db)
#   llmrec report reproduction --out docs/reproduction.md
#
# Two lanes run side by side, each job on one thread (on 2 cores that finishes the grid sooner than one lane on
# two threads: the models are small). Epoch caps are what a 2-core machine affords in about an hour per dataset;
# early stopping on valid/full/ndcg_10 (patience 3-5) usually ends the runs sooner. On a GPU drop the caps.
set -euo pipefail
what=${1:-all}
seeds=${SEEDS:-0,1,2}
llmrec=${LLMREC:-llmrec}
common=(trainer.num_threads=1 trainer.progress=false "seed=$seeds")

beauty_a() {
  $llmrec sweep experiment=p5-beauty crm=pop "${common[@]}"
  $llmrec sweep experiment=p5-beauty crm=sasrec crm.max_len=50 trainer.max_epochs=20 "${common[@]}"
  $llmrec sweep experiment=p5-beauty crm=gru4rec trainer.max_epochs=10 "${common[@]}"
}
beauty_b() {
  $llmrec sweep experiment=p5-beauty crm=bpr trainer.max_epochs=60 trainer.patience=5 "${common[@]}"
  $llmrec sweep experiment=p5-beauty crm=sasrec crm.loss=bce crm.max_len=50 trainer.max_epochs=40 trainer.patience=5 "${common[@]}"
  $llmrec sweep experiment=p5-beauty crm=bert4rec trainer.max_epochs=10 "${common[@]}"
  $llmrec sweep experiment=p5-beauty crm=lightgcn crm.batch_size=8192 crm.lr=0.005 trainer.max_epochs=15 trainer.patience=5 "${common[@]}"
}
ml100k=(trainer.max_epochs=30 trainer.patience=5)
ml100k_a() {
  $llmrec sweep experiment=baselines-ml100k crm=pop "${common[@]}"
  $llmrec sweep experiment=baselines-ml100k crm=sasrec "${ml100k[@]}" "${common[@]}"
  $llmrec sweep experiment=baselines-ml100k crm=sasrec crm.loss=bce "${ml100k[@]}" "${common[@]}"
  $llmrec sweep experiment=baselines-ml100k crm=gru4rec "${ml100k[@]}" "${common[@]}"
  $llmrec sweep experiment=baselines-ml100k crm=bpr "${ml100k[@]}" "${common[@]}"
}
ml100k_b() {
  $llmrec sweep experiment=baselines-ml100k protocol=llamarec crm=sasrec "${ml100k[@]}" "${common[@]}"
  $llmrec sweep experiment=baselines-ml100k crm=bert4rec "${ml100k[@]}" "${common[@]}"
  $llmrec sweep experiment=baselines-ml100k crm=lightgcn crm.lr=0.005 "${ml100k[@]}" "${common[@]}"
}

lanes() {  # run $1 and $2 side by side; fail if either fails
  "$1" & local a=$!
  sleep 20  # the first sweep creates the store's schema and experiment before the second writes to it
  "$2" & local b=$!
  wait "$a"; wait "$b"
}

case "$what" in
  beauty) lanes beauty_a beauty_b ;;
  ml100k) lanes ml100k_a ml100k_b ;;
  all) lanes beauty_a beauty_b; lanes ml100k_a ml100k_b ;;
  *) echo "usage: scripts/reproduce.sh [beauty|ml100k|all]" >&2; exit 2 ;;
esac
