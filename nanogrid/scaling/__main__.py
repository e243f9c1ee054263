"""`python -m nanogrid.scaling publish|simulate` (the publisher's systemd unit runs it so)."""

import sys

from nanogrid.scaling import main

raise SystemExit(main(sys.argv[1:]))
