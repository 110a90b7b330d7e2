"""The two kinds of server every scenario runs side by side: the service and the reference."""

from __future__ import annotations

SERVICE, REFERENCE = "service", "reference"
KINDS = (SERVICE, REFERENCE)
