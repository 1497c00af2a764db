"""The ``intake`` command (:mod:`cli.main`): the top of the import graph, the one package that
wires every other together. Nothing imports it."""
