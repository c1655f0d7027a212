#!/usr/bin/env bash
# Installs what the web console's browser tests (tests/console.rs) drive: Debian's
# `chromium`, `chromium-driver` and `python3-selenium`, with apt-get (root needed; `apt-get
# update` is run once if the package lists lack them). Nothing is installed when they are
# there already. Selenium is Debian's, so it loads in Debian's own /usr/bin/python3.
set -euo pipefail
have() {
  command -v chromium >/dev/null && command -v chromedriver >/dev/null &&
    /usr/bin/python3 -c 'import selenium' 2>/dev/null
}
have && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "chromium, chromium-driver or python3-selenium is missing; install them (apt-get install chromium chromium-driver python3-selenium) or run as root" >&2
  exit 1
fi
# Several test binaries may call this at once.
exec 9>/tmp/mapq-install-browser.lock
flock 9
have && exit 0
echo "installing chromium, chromium-driver and python3-selenium with apt-get" >&2
export DEBIAN_FRONTEND=noninteractive
packages=(chromium chromium-driver python3-selenium)
if ! apt-get install -y -qq --no-install-recommends "${packages[@]}" >&2; then
  apt-get update -qq >&2
  apt-get install -y -qq --no-install-recommends "${packages[@]}" >&2
fi
have
