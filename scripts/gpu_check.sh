#!/usr/bin/env bash
# The GPU check, about 8 minutes on one GPU:
#   1. every data-free CPU CIFAR-10 preset (experiment=cifar10_cpu_<method>, WRN-16-2 -> WRN-16-1)
#      for up to 300 steps (at most 4 s of training each) with trainer=gpu_amp;
#   2. one epoch of the ResNet-34 teacher recipe (experiment=teacher_cifar10): its epoch time;
#   3. the paper pair: a ResNet-34 CIFAR-10 teacher trained here for 8 short epochs (batch 256),
#      then experiment=cifar10_fastdfkd_2 distilling it into ResNet-18 for 50 s, its synthesis-only
#      warm-up cut to 2 epochs so that the student trains within them.
# Every run writes its own dir under $GPU_CHECK_DIR (default outputs/gpu_check), one line per run
# goes to steps.tsv (exit code, wall seconds), and dfkd-report tabulates the runs into
# gpu_check.md there (copy it to docs/results/ to record it). The check stops at once if its
# first run fails: a broken set-up would fail every run after it.
#   scripts/gpu_check.sh             # on a machine with a GPU
#   scripts/gpu_check.sh --dry-run   # on CPU with tiny budgets: checks every step end to end
set -euo pipefail
cd "$(dirname "$0")/.."
DIR="${GPU_CHECK_DIR:-outputs/gpu_check}"
if [ -x "${VENV:-.venv}/bin/dfkd-train" ]; then
  dfkd() { "${VENV:-.venv}/bin/dfkd-$1" "${@:2}"; }
else  # no venv here (a bare GPU machine): the package from PYTHONPATH
  dfkd() { python3 -m "dfkd_lab.$1" "${@:2}"; }
fi

if [ "${1:-}" = "--dry-run" ]; then
  TRAINER=cpu
  METHOD_RUN=(trainer.max_steps=2 trainer.max_time=00:00:01:00 trainer.limit_val_batches=1 trainer.limit_test_batches=1
              method.synthesis.batch_size=8 method.synthesis.steps_per_epoch=1 method.synthesis.warmup_epochs=0
              method.epochs=2)
  TEACHER_EPOCH=(trainer.limit_train_batches=2 trainer.limit_val_batches=1 trainer.limit_test_batches=1)
  PAPER_TEACHER=(method.epochs=1 trainer.limit_train_batches=2 trainer.limit_val_batches=1 trainer.limit_test_batches=1)
  PAPER_FAST=(trainer.max_time=00:00:01:00 trainer.max_steps=2 trainer.limit_val_batches=1 trainer.limit_test_batches=1
              method.synthesis.batch_size=8 method.synthesis.steps_per_epoch=1 method.synthesis.warmup_epochs=0
              method.epochs=2)
else
  TRAINER=gpu_amp
  METHOD_RUN=(trainer.max_steps=300 trainer.max_time=00:00:00:04)
  TEACHER_EPOCH=()
  PAPER_TEACHER=(method.epochs=8 data.batch_size=256 method.lr=0.2 trainer.max_time=00:00:02:00)
  PAPER_FAST=(trainer.max_time=00:00:00:50 method.synthesis.warmup_epochs=2)
fi

runs=0 failed=0
run() {  # run <dir> <overrides...>: one dfkd-train run; its exit code and wall time go to steps.tsv
  local dir="$DIR/$1" start=$SECONDS code=0; shift
  echo "== $dir: $*"
  dfkd train "$@" trainer="$TRAINER" logger=csv hydra.run.dir="$dir" || code=$?
  printf '%s\t%s\t%s\n' "${dir#"$DIR"/}" "$code" "$((SECONDS - start))" >>"$DIR/steps.tsv"
  runs=$((runs + 1))
  if [ "$code" != 0 ]; then
    echo "!! $dir failed (exit $code)"
    failed=$((failed + 1))
    if [ "$runs" = 1 ]; then echo "!! the first run failed: stopping"; exit 1; fi
  fi
}

rm -rf "$DIR"
mkdir -p "$DIR"
printf 'run\texit\tseconds\n' >"$DIR/steps.tsv"
for preset in src/dfkd_lab/conf/experiment/cifar10_cpu_*.yaml; do
  name="$(basename "$preset" .yaml)"
  case "$name" in cifar10_cpu_kd|cifar10_cpu_scratch) continue ;; esac
  run "methods/${name#cifar10_cpu_}" experiment="$name" "${METHOD_RUN[@]}"
done
run teacher_epoch experiment=teacher_cifar10 method.epochs=1 "${TEACHER_EPOCH[@]}"
run paper_teacher experiment=teacher_cifar10 "${PAPER_TEACHER[@]}"
run paper_fastdfkd_2 experiment=cifar10_fastdfkd_2 teacher.ckpt="$DIR/paper_teacher/resnet34_cifar10.pt" "${PAPER_FAST[@]}"

dfkd report "$DIR/methods" "$DIR/teacher_epoch" "$DIR/paper_teacher" "$DIR/paper_fastdfkd_2" \
  -o "$DIR" --stem gpu_check --title "GPU check ($TRAINER)"
echo "wrote $DIR/gpu_check.md; $failed run(s) failed (steps.tsv)"
exit $((failed > 0))
