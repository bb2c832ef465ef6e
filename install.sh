#!/usr/bin/env bash
# Install blockasr into ./.venv, with the Debian packages it uses:
#   espeak-ng, flite             synthetic speech (recipes/tts.py, the egs/mini recipe, the tests)
#   chromium, chromium-driver    only with --test: the browser-page test drives headless Chromium
#   nginx                        only with --test, and only when no nginx binary is there (tests/test_nginx.py)
# Re-running is cheap: installed packages are skipped.
# Without a GPU: ASR_TORCH_INDEX=https://download.pytorch.org/whl/cpu ./install.sh takes torch and
# torchaudio (the pinned versions) from that index first: the CPU wheels, without the ~3 GB of CUDA
# libraries that the PyPI wheel brings. Unset (the default), everything comes from PyPI.
set -euo pipefail
cd "$(dirname "$0")"

packages=(espeak-ng flite)
if [ "${1:-}" = "--test" ]; then
  packages+=(chromium chromium-driver)
  command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || packages+=(nginx)  # any nginx will do (nginx-light too)
elif [ -n "${1:-}" ]; then
  echo "usage: ./install.sh [--test]" >&2
  exit 2
fi
missing=()
for p in "${packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})); then
  if [ "$(id -u)" = 0 ]; then sudo=""; elif command -v sudo >/dev/null; then sudo="sudo"; else sudo="none"; fi
  if [ "$sudo" = none ] || ! command -v apt-get >/dev/null; then
    echo "install.sh: please install these Debian packages: ${missing[*]}" >&2
  else
    echo "install.sh: installing ${missing[*]}"
    $sudo apt-get update -qq && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
if [ -n "${ASR_TORCH_INDEX:-}" ]; then
  pins=$(grep -oE '"(torch|torchaudio)==[^"]+"' pyproject.toml | tr -d '"')
  echo "install.sh: $(echo $pins) from $ASR_TORCH_INDEX"
  .venv/bin/pip install -q $pins --index-url "$ASR_TORCH_INDEX"
fi
.venv/bin/pip install -q -e '.[test]'
echo "install.sh: done; activate with '. .venv/bin/activate'"
