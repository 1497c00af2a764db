"""Verifiers: one verification step per file, each behind the contract in core.verification."""
