#!/usr/bin/env bash
# The lm-eval contract (tests/test_lm_eval_compat.py) against the lowest and the highest supported
# lm-eval: each in a throwaway venv that sees this environment's packages (torch, transformers, ...)
# and has only that lm-eval installed over them (no dependencies fetched).
# Usage: scripts/check_lm_eval_versions.sh [VERSION ...]   (default: 0.4.10 and the newest 0.4.x)
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
versions=("$@")
if [ ${#versions[@]} -eq 0 ]; then
    newest=$(python3 -m pip index versions lm-eval 2>/dev/null | sed -n 's/^Available versions: //p' | tr ',' '\n' | tr -d ' ' | grep '^0\.4\.' | head -1)
    versions=(0.4.10 "${newest:?cannot read the newest lm-eval 0.4.x from the package index}")
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
status=0
for version in "${versions[@]}"; do
    venv="$work/lm-eval-$version"
    python3 -m venv --system-site-packages "$venv"
    "$venv/bin/python" -m pip install -q --no-deps "lm-eval==$version"
    echo "== lm-eval $version"
    # PYTHONPATH: this checkout's package (an editable install may point elsewhere)
    if ! (cd "$work" && PYTHONPATH="$repo" "$venv/bin/python" -m pytest -q -p no:cacheprovider -n 0 "$repo/tests/test_lm_eval_compat.py"); then
        status=1
    fi
done
exit $status
