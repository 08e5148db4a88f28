#!/usr/bin/env bash
# A screenshot of the running control app, under a private X server (Xvfb), for the README.
#
#   scripts/screenshot.sh [OUT.png] [app options]       default OUT: docs/screenshot.png
#   scripts/screenshot.sh docs/screenshot.png --weights bundle.safetensors
#
# The app starts on the demo source with a fresh config (your presets and settings stay
# out of the picture), streams until both previews have shown frames, saves the window
# and quits. Needs Xvfb: apt-get install -y xvfb xauth libxcb-icccm4 libxcb-keysyms1 libxcb-cursor0
set -euo pipefail
cd "$(dirname "$0")/.."

out="${1:-docs/screenshot.png}"
[ $# -gt 0 ] && shift
python="${PYTHON:-.venv/bin/python}"
if ! command -v xvfb-run >/dev/null; then
    echo "screenshot.sh: Xvfb is not installed: apt-get install -y xvfb xauth libxcb-icccm4 libxcb-keysyms1 libxcb-cursor0" >&2
    exit 2
fi
config="$(mktemp -d)"
trap 'rm -rf "$config"' EXIT
env -u QT_QPA_PLATFORM XDG_CONFIG_HOME="$config" HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}" \
    xvfb-run --auto-servernum --server-args="-screen 0 1280x800x24" \
    "$python" -m streamdit_live.gui --screenshot "$out" --source demo "$@"
