"""Test helpers: real servers in subprocesses, and clients that talk to them."""
