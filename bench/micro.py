"""Micro benchmarks, full size, against every rival loop installed.

    python bench/micro.py [--repeat 5] [--scale 1.0] [--only call_soon,...] [--json FILE]

The benchmarks themselves are oxloop._bench (what `python -m oxloop bench`
runs in a quick version).
"""

from __future__ import annotations

import sys

from common import available_loops
from oxloop._bench import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], loops=available_loops(), repeat=5, scale=1.0))
