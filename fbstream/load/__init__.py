"""Simulated viewers that load a PoP as real players do (issue 13's load generator)."""
