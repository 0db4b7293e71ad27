#!/usr/bin/env bash
# Headless Chromium for the report's browser test (tests/integration/test_report_browser.py): Debian's
# `chromium` package, installed with apt when missing; idempotent.
#
#   tests/integration/browser/setup.sh     # prints the browser's path on success
#
# Exit status 0: a working chromium (its path on stdout); 2: it cannot be had here (no root, no apt, the
# install failed), with the reason on stderr — the test then skips, or fails where SPA_BROWSER_TESTS=require.
set -uo pipefail

die() { echo "browser set-up: $*" >&2; exit 2; }

find_browser() {
    for name in chromium chromium-browser google-chrome; do
        command -v "$name" >/dev/null 2>&1 && { command -v "$name"; return 0; }
    done
    return 1
}

if ! browser=$(find_browser); then
    [ "$(id -u)" = 0 ] || die "chromium is not installed and installing it needs root (apt-get install chromium)"
    command -v apt-get >/dev/null 2>&1 || die "chromium is not installed and there is no apt-get on this machine"
    log=${TMPDIR:-/tmp}/spa-browser-apt.log
    export DEBIAN_FRONTEND=noninteractive
    (apt-get update -qq && apt-get install -y -qq chromium) >"$log" 2>&1 \
        || die "apt-get install chromium failed (see $log)"
    browser=$(find_browser) || die "apt-get installed chromium but no chromium command is on PATH"
fi
"$browser" --version >/dev/null 2>&1 || die "$browser does not run ($browser --version failed)"
echo "$browser"
