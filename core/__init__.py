"""Contracts shared by the edge and the workers: settings, message envelope, queue topology,
key handling, database migrations and the command line. Nothing here imports ``intake`` or
``workers`` at module level; both import this package.
"""
