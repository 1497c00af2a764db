"""Network partitions of the local cluster: one RabbitMQ node cut off from the other nodes and
from its clients, by its address (each node has a loopback address of its own, see
:mod:`cluster.rabbit`), with iptables rules in a chain of the cluster's own.

The chain, ``INTAKE-<base port>``, is jumped to from ``INPUT`` (every packet on loopback passes
there once, on its way in); cutting a node adds two rules to it, dropping every packet from or
to the node's address, and healing removes them. Dropped, not refused: a peer or a client
learns nothing, as when a cable is cut; its connections go silent until a heartbeat or a tick
gives up on them. :func:`remove` (``intake cluster down``) takes the chain away with its rules.
Needs root and iptables (Debian's ``iptables``).
"""

from __future__ import annotations

import shutil
import subprocess

IPTABLES = "iptables"


class NetworkError(RuntimeError):
    """iptables refused a rule (or is missing)."""


def chain(base_port: int) -> str:
    return f"INTAKE-{base_port}"


def _iptables(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    if shutil.which(IPTABLES) is None:
        raise NetworkError("iptables is missing (apt-get install iptables)")
    # -w: wait for the xtables lock (another cluster's rules may be changing at the same time).
    done = subprocess.run(
        [IPTABLES, "-w", *args], capture_output=True, text=True, timeout=30, check=False
    )
    if check and done.returncode != 0:
        raise NetworkError(f"iptables {' '.join(args)}: {done.stderr.strip()}")
    return done


def _ensure_chain(name: str) -> None:
    if _iptables("-n", "-L", name, check=False).returncode != 0:
        _iptables("-N", name)
    if _iptables("-C", "INPUT", "-j", name, check=False).returncode != 0:
        _iptables("-I", "INPUT", "-j", name)


def _rules(address: str) -> list[list[str]]:
    return [["-s", address, "-j", "DROP"], ["-d", address, "-j", "DROP"]]


def cut(base_port: int, address: str) -> None:
    """Drop every packet from or to ``address`` (idempotent)."""
    name = chain(base_port)
    _ensure_chain(name)
    for rule in _rules(address):
        if _iptables("-C", name, *rule, check=False).returncode != 0:
            _iptables("-A", name, *rule)


def heal(base_port: int, address: str) -> None:
    """Let packets from and to ``address`` through again (idempotent)."""
    name = chain(base_port)
    for rule in _rules(address):
        while _iptables("-C", name, *rule, check=False).returncode == 0:
            _iptables("-D", name, *rule)


def cut_off(base_port: int) -> list[str]:
    """The addresses cut off now in the cluster's chain."""
    done = _iptables("-S", chain(base_port), check=False) if shutil.which(IPTABLES) else None
    if done is None or done.returncode != 0:
        return []
    addresses = []
    for line in done.stdout.splitlines():
        fields = line.split()
        if fields[:1] == ["-A"] and "-s" in fields:
            addresses.append(fields[fields.index("-s") + 1].removesuffix("/32"))
    return addresses


def remove(base_port: int) -> None:
    """Heal everything and take the cluster's chain away (nothing if it has none)."""
    if shutil.which(IPTABLES) is None:
        return
    name = chain(base_port)
    while _iptables("-D", "INPUT", "-j", name, check=False).returncode == 0:
        pass
    if _iptables("-n", "-L", name, check=False).returncode == 0:
        _iptables("-F", name)
        _iptables("-X", name)
