"""A refusal tier in front of the edges: HAProxy, on CPU of its own, refuses the excess.

The edge's own shed is cheap (about 0.07 of an acceptance) but not free, and it is paid from the
CPU that accepts: at five times its capacity, with the retries that provokes, refusing takes
half of it (benchmarks/README.md, "The bound on goodput past capacity"). A load balancer in
front of the edges refuses on CPU of its own, as it does in any real deployment (an ingress,
a cloud load balancer). This one keeps each edge at a bounded number of requests in flight
(``edge_conns``: enough for the edge's batched confirms to fill, too few to make it late), lets
at most ``queue_max`` wait for a slot and none longer than ``queue_s`` (the deadline's share),
and answers the rest at once with the edge's own ``503`` problem document and a ``Retry-After``
drawn from ``[retry_min_s, retry_max_s]``, so that refused clients come back spread out.

    python -m benchmarks.refusal_tier --port 8090 --edge 127.0.0.1:8080 > haproxy.cfg
    haproxy -db -f haproxy.cfg
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

_BODY = (
    '{"type":"https://intake.example/problems/unavailable",'
    '"title":"Registration is temporarily unavailable, please retry",'
    '"status":503,"reason":"overloaded"}'
)


@dataclasses.dataclass(frozen=True)
class TierConfig:
    port: int
    edges: tuple[str, ...]  # host:port of each edge process
    edge_conns: int = 64
    queue_max: int = 256
    queue_s: float = 0.5
    retry_min_s: int = 1
    retry_max_s: int = 30
    pidfile: str | None = None


def render(config: TierConfig) -> str:
    """The HAProxy configuration (2.6) of the tier."""
    spread = config.retry_max_s - config.retry_min_s + 1
    retry_after = f'"%[rand({spread}),add({config.retry_min_s})]"'
    refusal = (
        f"content-type application/problem+json string '{_BODY}' hdr Retry-After {retry_after}"
    )
    servers = "\n".join(
        f"    server edge{i} {address} maxconn {config.edge_conns}"
        for i, address in enumerate(config.edges, 1)
    )
    pidfile = f"    pidfile {config.pidfile}\n" if config.pidfile else ""
    return f"""global
    nbthread 1
    maxconn 9000 # within the 20,000 open files a process may have here: two per connection
{pidfile}
defaults
    mode http
    timeout connect 1s
    timeout client 30s
    timeout server 10s
    timeout http-keep-alive 30s
    # A request waits for an edge's slot at most this long, then gets the refusal below.
    timeout queue {round(config.queue_s * 1000)}ms
    http-reuse always

frontend intake
    bind 127.0.0.1:{config.port} backlog 4096
    maxconn 8000
    # More waiting than the edges answer within the deadline: refuse at once, at no cost to them.
    acl busy queue(edges) ge {config.queue_max}
    http-request return status 503 {refusal} if busy
    default_backend edges

backend edges
    balance leastconn
    http-error status 503 {refusal}
{servers}
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--edge", action="append", required=True, help="host:port, repeatable")
    parser.add_argument("--edge-conns", type=int, default=TierConfig.edge_conns)
    parser.add_argument("--queue-max", type=int, default=TierConfig.queue_max)
    parser.add_argument("--queue-s", type=float, default=TierConfig.queue_s)
    args = parser.parse_args(argv)
    config = TierConfig(args.port, tuple(args.edge), args.edge_conns, args.queue_max, args.queue_s)
    sys.stdout.write(render(config))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
