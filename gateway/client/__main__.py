"""`python -m gateway.client`: the same as the `gw` console script."""

from __future__ import annotations

from gateway.client.cli import main

raise SystemExit(main())
