#!/usr/bin/env bash
# The GPU check, about 8 minutes on one GPU:
#   1. every data-free CPU CIFAR-10 preset (experiment=cifar10_cpu_<method>, WRN-16-2 -> WRN-16-1)
#      for a few hundred student steps with trainer=gpu_amp;
#   2. one epoch of the ResNet-34 teacher recipe (experiment=teacher_cifar10): its epoch time;
#   3. the paper pair: a ResNet-34 CIFAR-10 teacher trained here for a few minutes, then
#      experiment=cifar10_fastdfkd_2 distilling it into ResNet-18 for the rest of the time.
# Every run writes its own dir under $OUT; dfkd-report tabulates them into $OUT/gpu_check.md
# (copy that file to docs/results/ to record it).
#   scripts/gpu_check.sh             # on a machine with a GPU
#   scripts/gpu_check.sh --dry-run   # on CPU with tiny budgets: checks every step end to end
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${VENV:-.venv}/bin"
OUT="${OUT:-outputs/gpu_check}"

if [ "${1:-}" = "--dry-run" ]; then
  TRAINER=cpu
  METHOD_RUN=(trainer.max_steps=2 trainer.max_time=00:00:01:00 trainer.limit_val_batches=1 trainer.limit_test_batches=1
              method.synthesis.batch_size=8 method.synthesis.steps_per_epoch=1 method.synthesis.warmup_epochs=0
              method.epochs=2)
  TEACHER_EPOCH=(trainer.limit_train_batches=2 trainer.limit_val_batches=1 trainer.limit_test_batches=1)
  PAPER_TEACHER=(trainer.max_time=00:00:00:30 method.epochs=1 trainer.limit_train_batches=2
                 trainer.limit_val_batches=1 trainer.limit_test_batches=1)
  PAPER_FAST=(trainer.max_time=00:00:01:00 trainer.max_steps=2 trainer.limit_val_batches=1 trainer.limit_test_batches=1
              method.synthesis.batch_size=8 method.synthesis.steps_per_epoch=1 method.synthesis.warmup_epochs=0
              method.epochs=2)
else
  TRAINER=gpu_amp
  METHOD_RUN=(trainer.max_steps=300 trainer.max_time=00:00:00:15)
  TEACHER_EPOCH=()
  PAPER_TEACHER=(trainer.max_time=00:00:02:00 method.epochs=10)
  PAPER_FAST=(trainer.max_time=00:00:01:30)
fi

run() {  # run <dir> <overrides...>: one dfkd-train run; a failure is recorded and the check goes on
  local dir="$OUT/$1"; shift
  echo "== $dir: $*"
  "$BIN/dfkd-train" "$@" trainer="$TRAINER" logger=csv hydra.run.dir="$dir" || echo "!! $dir failed (exit $?)"
}

rm -rf "$OUT"
for preset in src/dfkd_lab/conf/experiment/cifar10_cpu_*.yaml; do
  name="$(basename "$preset" .yaml)"
  case "$name" in cifar10_cpu_kd|cifar10_cpu_scratch) continue ;; esac
  run "methods/${name#cifar10_cpu_}" experiment="$name" "${METHOD_RUN[@]}"
done
run teacher_epoch experiment=teacher_cifar10 method.epochs=1 "${TEACHER_EPOCH[@]}"
run paper_teacher experiment=teacher_cifar10 "${PAPER_TEACHER[@]}"
run paper_fastdfkd_2 experiment=cifar10_fastdfkd_2 teacher.ckpt="$OUT/paper_teacher/resnet34_cifar10.pt" "${PAPER_FAST[@]}"

"$BIN/dfkd-report" "$OUT/methods" "$OUT/teacher_epoch" "$OUT/paper_teacher" "$OUT/paper_fastdfkd_2" \
  -o "$OUT" --stem gpu_check --title "GPU check ($TRAINER)"
echo "wrote $OUT/gpu_check.md"
