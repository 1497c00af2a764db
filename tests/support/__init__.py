"""Test helpers: real services, processes and fault injection. No mocks."""
