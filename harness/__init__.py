"""Test and operations harness: run the real stack natively, talk to it, check its invariants.

Used by the test suite, the chaos runner and the benchmark; never imported by the services."""
