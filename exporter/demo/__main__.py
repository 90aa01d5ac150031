"""``python -m exporter.demo``: run the simulator standalone."""

from __future__ import annotations

import sys

from exporter.demo.simulator import main

sys.exit(main())
