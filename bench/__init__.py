"""Performance benchmark of the service against a reference relay, in the same run.

`make bench` (or `python -m bench`) runs every scenario; see docs/performance.md.
"""
