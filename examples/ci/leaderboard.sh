#!/usr/bin/env bash
# The CI leaderboard job, runnable locally (the GitHub workflow beside it runs the same steps).
#
#   examples/ci/leaderboard.sh [--models "M1 M2"] [--tasks T1,T2] [--optimize NAME] [--optimize-args ARGS]
#                              [--cache DIR] [--out DIR] [--fail-under TASK=VALUE]... [--install] [-- LM_EVAL_ARGS...]
#
# 1. (--install) pip install the package;
# 2. use the instruction cache in DIR/instructions-<plugin version> (CI restores DIR from its cache,
#    keyed by the plugin version, before this script, and saves it after);
# 3. per model: lm_eval --model hf --model_args pretrained=M --optimize ... --output_path OUT/results;
# 4. lm-eval-promptopt leaderboard OUT/results: leaderboard.md, leaderboard.html, leaderboard.json;
# 5. exit non-zero on a regression (an optimized score more than one stderr below its baseline) or a --fail-under gate.
#
# Everything after `--` goes to every lm_eval call (e.g. --device cpu --limit 20 --include_path DIR).
# A second run with the same cache does no search: every task's source is `cache`.
set -euo pipefail

models="${MODELS:-}"
tasks="${TASKS:-bbh_cot_zeroshot}"
optimize="${OPTIMIZE:-gpo}"
optimize_args="${OPTIMIZE_ARGS:-compare_baseline=true}"
cache="${CACHE_DIR:-.ci-cache}"
out="${OUT_DIR:-ci-output}"
install=0
gates=()
extra=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --models) models="$2"; shift 2 ;;
    --tasks) tasks="$2"; shift 2 ;;
    --optimize) optimize="$2"; shift 2 ;;
    --optimize-args) optimize_args="$2"; shift 2 ;;
    --cache) cache="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --fail-under) gates+=(--fail-under "$2"); shift 2 ;;
    --install) install=1; shift ;;
    --) shift; extra=("$@"); break ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "leaderboard.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
if [[ -z "$models" ]]; then
  echo "leaderboard.sh: no models: pass --models \"M1 M2\" (or set MODELS)" >&2
  exit 2
fi

if [[ "$install" == 1 ]]; then
  python -m pip install -e .
fi
version="$(python -c 'import lm_eval_promptopt; print(lm_eval_promptopt.__version__)')"
instructions="$cache/instructions-$version"
mkdir -p "$instructions"
count() { find "$1" -name '*.json' | wc -l | tr -d ' '; }
echo "leaderboard.sh: instruction cache $instructions: $(count "$instructions") entries restored"

rm -rf "$out/results"  # this run's results only: the leaderboard reads nothing older
mkdir -p "$out/results"
for model in $models; do
  echo "leaderboard.sh: $model"
  lm_eval --model hf --model_args "pretrained=$model" --tasks "$tasks" \
          --optimize "$optimize" --optimize_args "$optimize_args" --optimize_cache "$instructions" \
          --output_path "$out/results" "${extra[@]}"
done
echo "leaderboard.sh: instruction cache $instructions: $(count "$instructions") entries to save"

lm-eval-promptopt leaderboard "$out/results" --format html --out "$out/leaderboard.html"
lm-eval-promptopt leaderboard "$out/results" --format json --out "$out/leaderboard.json"
status=0
lm-eval-promptopt leaderboard "$out/results" --format md --out "$out/leaderboard.md" \
                  --fail-on-regression "${gates[@]}" || status=$?
cat "$out/leaderboard.md"
exit "$status"
