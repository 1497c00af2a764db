"""The operators' admin API: waves and their audit, on a listener of its own."""
