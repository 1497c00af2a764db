"""A real cluster of the system's engines on one machine: three RabbitMQ nodes in one cluster
and three PostgreSQL members under Patroni (``intake cluster up|status|down``,
:mod:`cluster.local`), for the chaos suite and for anyone who wants to see the application ride
a node's death. Development tooling: nothing of the product imports it."""
