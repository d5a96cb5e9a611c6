#!/usr/bin/env bash
# One entry point for the two things a new user does on a fresh machine:
#
#   bash repro.sh book [--quick]   set up, reproduce the study on the offline default, render the book
#                                  (--quick: the classroom-sized study, into book/results-quick)
#   bash repro.sh test [ARGS]      set up, run the test suite (pytest ARGS)
#
# Set-up (idempotent, skipped when done): a virtual environment in .venv with the pinned packages
# (requirements.lock), the Fashion-MNIST files (Debian's dataset-fashion-mnist via apt when root,
# else torchvision's download, else a clear error), MathJax for offline math, and, for the tests,
# Debian's chromium for the browser check of the rendered book.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
export HF_HUB_OFFLINE=1 PIP_DISABLE_PIP_VERSION_CHECK=1
PYTHON=${PYTHON:-python3}
VENV=.venv
say() { printf '\n== %s\n' "$*"; }
die() { printf '\nerror: %s\n' "$*" >&2; exit 1; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else return 1; fi; }

setup_python() {
  local stamp="$VENV/.rft-installed" want
  want=$(cat pyproject.toml requirements.lock | sha256sum | cut -c1-16)
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then return; fi
  say "creating the environment in $VENV (pinned packages; a few minutes the first time)"
  "$PYTHON" -c 'import sys; assert sys.version_info >= (3, 10), sys.version' \
    || die "Python >= 3.10 is needed (3.11 recommended); set PYTHON=/path/to/python3.11"
  [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null || true
  local t0=$SECONDS
  "$VENV/bin/python" -m pip install -q -c requirements.lock -e '.[book,test]'
  "$VENV/bin/python" -m ipykernel install --sys-prefix --name python3 >/dev/null
  echo "$want" > "$stamp"
  echo "installed in $((SECONDS - t0)) s; environment size $(du -sh "$VENV" | cut -f1)"
}

# After the environment exists, every step is a verb of `rft`: this script only sets up and hands over.
setup_data() {
  "$VENV/bin/rft" data >/dev/null 2>&1 && return
  say "Fashion-MNIST is missing: fetching it"
  if command -v apt-get >/dev/null && as_root apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1; then
    echo "installed Debian's dataset-fashion-mnist"
  elif "$VENV/bin/rft" data --download; then
    echo "downloaded with torchvision into ./data"
  else
    "$VENV/bin/rft" data || true
    die "no way to get Fashion-MNIST here (see the message above)"
  fi
}

setup_mathjax() {
  "$VENV/bin/rft" mathjax
}

setup_chromium() {
  command -v chromium >/dev/null && return
  say "installing Debian's chromium for the browser test of the rendered book"
  command -v apt-get >/dev/null && as_root apt-get install -y -q chromium >/dev/null 2>&1 \
    || echo "warning: chromium could not be installed; the browser test will be skipped" >&2
}

cmd=${1:-help}; shift || true
case "$cmd" in
  book)
    setup_python; setup_data; setup_mathjax
    # Both studies run two steps side by side with one thread each (the worlds are independent):
    # training's floating-point sums depend on the thread count and on the CPU's vector instructions,
    # so the default study pins one thread per kernel, and rft caps the kernels at AVX2 on x86-64
    # (--isa avx2, its default there), so that the numbers depend neither on the load nor on whether the
    # CPU has AVX-512 (book/reproduce.md: what still differs between machines).
    # The quick study uses its own results root (results_root in quick.yaml), so it never replaces
    # the committed results; its book is rendered from that root.
    params=notebooks/params/default.yaml layout=(--jobs 2 --threads 1) results=book/results
    if [ "${1:-}" = "--quick" ]; then
      params=notebooks/params/quick.yaml layout=(--jobs 2 --threads 1) results=book/results-quick; shift
    fi
    say "reproducing the study ($params, into $results)"
    "$VENV/bin/rft" pipeline "$params" "${layout[@]}" "$@"
    say "rendering the book from $results"
    "$VENV/bin/rft" book --strict --results "$results"
    echo "The book is at $(pwd)/_build/html/index.html"
    ;;
  test)
    setup_python; setup_data; setup_mathjax; setup_chromium
    say "running the tests (pytest)"
    "$VENV/bin/python" -m pytest "$@"
    ;;
  *)
    sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'
    [ "$cmd" = help ] || exit 2
    ;;
esac
