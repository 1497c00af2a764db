"""The Prometheus configuration of a local stack: ``monitoring/prometheus.yml`` with the ports,
the RabbitMQ vhost and the rule files of this machine (the demo and the tests run it)."""

from __future__ import annotations

import urllib.parse
from pathlib import Path
from typing import Any

import yaml

from core import broker

MONITORING = Path(__file__).resolve().parent
PROMETHEUS_YML = MONITORING / "prometheus.yml"


def local_config(
    edge_metrics_port: int,
    supervisor_metrics_port: int,
    amqp_url: str,
    scrape_interval_s: float | None = None,
) -> dict[str, Any]:
    """The project's configuration, pointed at these ports and the vhost of ``amqp_url``, with
    absolute rule file paths (and, optionally, a faster scrape)."""
    config: dict[str, Any] = yaml.safe_load(PROMETHEUS_YML.read_text())
    if scrape_interval_s is not None:
        interval = f"{scrape_interval_s:g}s"
        config["global"].update(
            scrape_interval=interval, evaluation_interval=interval, scrape_timeout=interval
        )
    config["rule_files"] = [str(MONITORING / "rules" / Path(f).name) for f in config["rule_files"]]
    vhost = urllib.parse.unquote(urllib.parse.urlsplit(broker.first(amqp_url)).path[1:]) or "/"
    for job in config["scrape_configs"]:
        if job["job_name"] == "intake-edge":
            job["static_configs"] = [{"targets": [f"127.0.0.1:{edge_metrics_port}"]}]
        elif job["job_name"] == "intake-supervisor":
            job["static_configs"] = [{"targets": [f"127.0.0.1:{supervisor_metrics_port}"]}]
        if "vhost" in job.get("params", {}):
            job["params"]["vhost"] = [vhost]
    return config


def write_config(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def prometheus_command(config: Path, data_dir: Path, port: int) -> list[str]:
    """``prometheus`` (Debian's package, installed by ``make setup``) on 127.0.0.1:``port``."""
    return [
        "prometheus",
        f"--config.file={config}",
        f"--storage.tsdb.path={data_dir}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
