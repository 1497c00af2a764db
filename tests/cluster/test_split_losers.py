"""Which side of a recorded RabbitMQ partition restarts (cluster.local.split_losers): the
nodes the others most often say they lost sight of, as ``rabbitmqctl cluster_status`` lists
them."""

from __future__ import annotations

from cluster.local import split_losers


def test_the_node_both_others_lost_sight_of_is_the_losing_side() -> None:
    partitions = {
        "intake1@rabbit1": ["intake3@rabbit3"],
        "intake2@rabbit2": ["intake3@rabbit3"],
        "intake3@rabbit3": ["intake1@rabbit1", "intake2@rabbit2"],
    }
    assert split_losers(partitions) == ["intake3@rabbit3"]


def test_a_split_seen_from_one_side_only_names_that_side_s_lost_node() -> None:
    assert split_losers({"intake1@rabbit1": ["intake2@rabbit2"]}) == ["intake2@rabbit2"]


def test_two_nodes_that_lost_each_other_are_both_restarted() -> None:
    partitions = {"intake1@rabbit1": ["intake2@rabbit2"], "intake2@rabbit2": ["intake1@rabbit1"]}
    assert split_losers(partitions) == ["intake1@rabbit1", "intake2@rabbit2"]


def test_no_partition_no_loser() -> None:
    assert split_losers({}) == []
