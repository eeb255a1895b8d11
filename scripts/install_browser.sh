#!/usr/bin/env bash
# Install Debian's headless Chromium for the browser tests (idempotent).
# Playwright drives it through executable_path=/usr/bin/chromium, so no browser is downloaded by Playwright.
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
  echo "[install_browser] chromium already installed: $(/usr/bin/chromium --version 2>/dev/null || echo /usr/bin/chromium)"
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "[install_browser] /usr/bin/chromium is missing and this is not root: run as root, or" >&2
  echo "[install_browser]   sudo apt-get update && sudo apt-get install -y --no-install-recommends chromium" >&2
  exit 1
fi
if ! command -v apt-get >/dev/null; then
  echo "[install_browser] /usr/bin/chromium is missing and apt-get is not available: install Chromium by hand" >&2
  exit 1
fi
echo "[install_browser] installing Debian's chromium package (apt-get update && apt-get install chromium)"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends chromium
echo "[install_browser] installed: $(/usr/bin/chromium --version 2>/dev/null || echo /usr/bin/chromium)"
