"""The monitoring configuration in monitoring/ is valid, and agrees with the code.

Offline: no Prometheus, Grafana or stack runs. promtool (Debian's prometheus package, installed
by ``make setup``) checks the Prometheus configuration and the rule files, runs the alerts' unit
tests (monitoring/rules/alerts_test.yml), and evaluates every alert and dashboard query on
synthetic series shaped like a running stack. The tests fail, never skip, without promtool.

Then the files are checked against each other and against the code: every metric a query names
exists (core.metrics, the scrape-time collectors, RabbitMQ's plugin, recording rules), with the
labels it matches on; every alert has the labels and annotations an operator needs, the shape
``<query> <op> <number>``, and a section in docs/runbook.md; the dashboard is provisioning-ready
and uses the provisioned datasource. The tests at the end break a valid input in one place each
and show that the checkers report it: a check that cannot fail checks nothing.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
import re
import shutil
import subprocess
from collections.abc import Iterable, Iterator, Mapping
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics import MetricWrapperBase

from core import metrics, topology
from core.funnel import STAGES, FunnelCollector
from core.queues import QueueCollector, queue_names
from core.retention import Periods
from core.retention_metrics import ERASED_KINDS, OUTCOMES, RetentionCollector
from core.verification import WORKER_KINDS, Check
from core.wave_metrics import WAVE_STAGES, WaveCollector

ROOT = Path(__file__).resolve().parent.parent.parent
MONITORING = ROOT / "monitoring"
PROMETHEUS_YML = MONITORING / "prometheus.yml"
RULES = MONITORING / "rules"
ALERTS_YML = RULES / "alerts.yml"
ALERTS_TEST_YML = RULES / "alerts_test.yml"
# The retention alerts' tests, apart for their evaluation interval (days of series).
RETENTION_TEST_YML = RULES / "retention_test.yml"
DASHBOARDS = MONITORING / "grafana" / "dashboards"
DASHBOARD_JSON = DASHBOARDS / "wave-opening.json"
PROVISIONING = MONITORING / "grafana" / "provisioning"
RUNBOOK = ROOT / "docs" / "runbook.md"

Doc = dict[str, Any]

# The metrics the supervisor's scrape-time collectors serve (core.funnel, core.wave_metrics and
# core.retention_metrics read PostgreSQL, core.queues RabbitMQ; they are not process metrics,
# so not in core.metrics), with their labels. The configuration relies on these at least.
COLLECTOR_CONTRACT: Mapping[str, frozenset[str]] = {
    "intake_queue_messages_ready": frozenset({"queue"}),
    "intake_queue_consumers": frozenset({"queue"}),
    "intake_funnel_registrations": frozenset({"stage"}),
    "intake_funnel_rejected_registrations": frozenset({"reason"}),
    "intake_checks": frozenset({"check", "state"}),
    "intake_wave_participants": frozenset({"wave", "stage"}),
    "intake_wave_quota": frozenset({"wave"}),
    "intake_wave_open": frozenset({"wave"}),
    "intake_wave_notifications": frozenset({"wave", "channel", "state"}),
    "intake_wave_selection_duration_seconds": frozenset({"wave"}),
    "intake_retention_last_success_timestamp_seconds": frozenset(),
    "intake_retention_recorded_since_timestamp_seconds": frozenset(),
    "intake_retention_last_run_duration_seconds": frozenset(),
    "intake_retention_last_run_erased": frozenset({"kind"}),
    "intake_retention_runs": frozenset({"outcome"}),
    "intake_retention_overdue": frozenset(),
}

# The RabbitMQ metrics the configuration uses, as RabbitMQ 3.10's rabbitmq_prometheus plugin
# names them (read from a running 3.10.8 node): per queue from /metrics/detailed with the
# queue_coarse_metrics and queue_consumer_count families, node-wide from /metrics.
_PER_QUEUE = frozenset({"vhost", "queue"})
_BY_PROTOCOL = frozenset({"protocol"})
_BY_QUEUE_TYPE = frozenset({"protocol", "queue_type"})
_DEAD_LETTERED = frozenset({"queue_type", "dead_letter_strategy"})
RABBITMQ_METRICS: Mapping[str, frozenset[str]] = {
    "rabbitmq_detailed_queue_messages_ready": _PER_QUEUE,
    "rabbitmq_detailed_queue_messages_unacked": _PER_QUEUE,
    "rabbitmq_detailed_queue_messages": _PER_QUEUE,
    "rabbitmq_detailed_queue_consumers": _PER_QUEUE,
    "rabbitmq_connections": frozenset(),
    "rabbitmq_channels": frozenset(),
    "rabbitmq_consumers": frozenset(),
    "rabbitmq_process_resident_memory_bytes": frozenset(),
    "rabbitmq_resident_memory_limit_bytes": frozenset(),
    "rabbitmq_disk_space_available_bytes": frozenset(),
    "rabbitmq_disk_space_available_limit_bytes": frozenset(),
    "rabbitmq_alarms_memory_used_watermark": frozenset(),
    "rabbitmq_alarms_free_disk_space_watermark": frozenset(),
    "rabbitmq_alarms_file_descriptor_limit": frozenset(),
    "rabbitmq_global_messages_received_total": _BY_PROTOCOL,
    "rabbitmq_global_messages_confirmed_total": _BY_PROTOCOL,
    "rabbitmq_global_messages_delivered_total": _BY_QUEUE_TYPE,
    "rabbitmq_global_messages_acknowledged_total": _BY_QUEUE_TYPE,
    "rabbitmq_global_messages_redelivered_total": _BY_QUEUE_TYPE,
    "rabbitmq_global_messages_dead_lettered_delivery_limit_total": _DEAD_LETTERED,
    "rabbitmq_global_messages_dead_lettered_rejected_total": _DEAD_LETTERED,
    "rabbitmq_global_messages_dead_lettered_maxlen_total": _DEAD_LETTERED,
    "rabbitmq_global_messages_dead_lettered_expired_total": _DEAD_LETTERED,
}
PROMETHEUS_METRICS: Mapping[str, frozenset[str]] = {"up": frozenset()}
TARGET_LABELS = frozenset({"job", "instance"})

# The queue patterns the rules and the dashboard use (PromQL regexes, anchored).
DLQ_PATTERN = ".+[.]dlq"
DELAY_PATTERN = "intake[.]delay[.].+"

SEVERITIES = frozenset({"critical", "warning"})
RATE_INTERVAL = "$__rate_interval"


# --- promtool ----------------------------------------------------------------------------------


def promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    path = shutil.which("promtool")
    assert path is not None, (
        "promtool is not installed: run `make setup` (scripts/setup.sh installs Debian's"
        " prometheus package, which brings it)"
    )
    return subprocess.run(
        [path, *map(str, args)], capture_output=True, text=True, check=False, timeout=300
    )


def assert_ok(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, f"{' '.join(result.args)}\n{result.stdout}\n{result.stderr}"


# --- loading -----------------------------------------------------------------------------------


def load_yaml(path: Path) -> Doc:
    doc = yaml.safe_load(path.read_text())
    assert isinstance(doc, dict), f"{path}: not a mapping"
    return doc


def rule_files() -> list[Path]:
    """Every rule file under monitoring/rules (``*_test.yml`` are promtool unit tests)."""
    return sorted(p for p in RULES.glob("*.yml") if not p.name.endswith("_test.yml"))


@dataclasses.dataclass(frozen=True)
class Rule:
    file: str
    group: str
    doc: Doc

    @property
    def name(self) -> str:
        return str(self.doc.get("alert") or self.doc.get("record"))

    @property
    def expr(self) -> str:
        return str(self.doc["expr"])

    @property
    def is_alert(self) -> bool:
        return "alert" in self.doc


def rules(files: Iterable[Path] | None = None) -> list[Rule]:
    found = []
    for path in rule_files() if files is None else files:
        for group in load_yaml(path)["groups"]:
            for doc in group["rules"]:
                found.append(Rule(path.name, str(group["name"]), doc))
    return found


def alerts() -> list[Rule]:
    return [r for r in rules() if r.is_alert]


def recorded_names() -> frozenset[str]:
    return frozenset(r.name for r in rules() if not r.is_alert)


def load_dashboard(path: Path = DASHBOARD_JSON) -> Doc:
    doc = json.loads(path.read_text())
    assert isinstance(doc, dict)
    return doc


def all_panels(dashboard: Doc) -> Iterator[Doc]:
    """Every panel, those nested in collapsed rows included."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def dashboard_targets(dashboard: Doc) -> list[tuple[str, str]]:
    """(where, expr) of every query of the dashboard, ``$__rate_interval`` replaced by 1m."""
    found = []
    for panel in all_panels(dashboard):
        for target in panel.get("targets", []):
            where = f"panel {panel.get('id')} {panel.get('title')!r} target {target.get('refId')}"
            found.append((where, str(target.get("expr", "")).replace(RATE_INTERVAL, "1m")))
    return found


# --- PromQL, just enough of it ----------------------------------------------------------------

_TOKEN = re.compile(
    r"""
    (?P<str>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<num>(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?[a-zA-Z]*)
  | (?P<ident>[a-zA-Z_:][a-zA-Z0-9_:]*)
  | (?P<op>==|!=|>=|<=|=~|!~|[-+*/%^<>=(){}\[\],@])
  | (?P<space>\s+|\#[^\n]*)
    """,
    re.VERBOSE,
)
COMPARISONS = frozenset({"==", "!=", ">=", "<=", ">", "<"})
MATCH_OPS = frozenset({"=", "!=", "=~", "!~"})
SET_OPERATORS = frozenset({"and", "or", "unless"})
AGGREGATORS = frozenset(
    {
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
    }
)
LABEL_LISTS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})
KEYWORDS = SET_OPERATORS | LABEL_LISTS | {"bool", "offset", "atan2", "inf", "nan"}
_OPEN = {"(": ")", "{": "}", "[": "]"}


@dataclasses.dataclass(frozen=True)
class Token:
    kind: str
    text: str
    start: int


def tokenize(expr: str) -> list[Token]:
    tokens, pos = [], 0
    while pos < len(expr):
        match = _TOKEN.match(expr, pos)
        if match is None:
            raise ValueError(f"cannot read {expr[pos : pos + 20]!r} in {expr!r}")
        kind = match.lastgroup
        assert kind is not None
        if kind != "space":
            tokens.append(Token(kind, match.group(), pos))
        pos = match.end()
    return tokens


def split_comparison(expr: str) -> tuple[str, str, float]:
    """``<query> <op> <number>`` into its parts; ValueError unless the expression has exactly
    that shape: one comparison at the top level, a number after it and nothing else, no
    top-level and/or/unless (which bind looser than the comparison)."""
    tokens = tokenize(expr)
    depth, comparisons = 0, []
    for i, token in enumerate(tokens):
        if token.text in _OPEN:
            depth += 1
        elif token.text in _OPEN.values():
            depth -= 1
        elif depth == 0 and token.text in COMPARISONS:
            comparisons.append(i)
        elif depth == 0 and token.kind == "ident" and token.text.lower() in SET_OPERATORS:
            raise ValueError(f"top-level {token.text!r}: put the query in parentheses")
    if len(comparisons) != 1:
        raise ValueError(f"{len(comparisons)} top-level comparisons, not 1")
    at = comparisons[0]
    rest = tokens[at + 1 :]
    sign = -1.0 if rest and rest[0].text == "-" else 1.0
    rest = rest[1:] if sign < 0 else rest
    if len(rest) != 1 or rest[0].kind != "num":
        raise ValueError("the comparison must be with a single number, at the end")
    try:
        threshold = sign * float(rest[0].text)
    except ValueError:
        raise ValueError(f"{rest[0].text!r} is not a number") from None
    query = expr[: tokens[at].start].strip()
    if not query:
        raise ValueError("nothing before the comparison")
    return query, tokens[at].text, threshold


@dataclasses.dataclass(frozen=True)
class Selector:
    metric: str
    labels: frozenset[str]  # the label names it matches on


def selectors(expr: str) -> list[Selector]:
    """The metric selectors of a PromQL expression: names outside braces and brackets that are
    not functions, aggregations or keywords, and the label names of their matchers."""
    tokens = tokenize(expr)
    found, i = [], 0

    def skip_group(i: int) -> int:
        """Index just past the bracket group opening at ``i``."""
        close, depth = _OPEN[tokens[i].text], 0
        for j in range(i, len(tokens)):
            if tokens[j].text == tokens[i].text:
                depth += 1
            elif tokens[j].text == close:
                depth -= 1
                if depth == 0:
                    return j + 1
        raise ValueError(f"unbalanced {tokens[i].text!r} in {expr!r}")

    while i < len(tokens):
        token = tokens[i]
        following = tokens[i + 1].text if i + 1 < len(tokens) else ""
        if token.text == "[":
            i = skip_group(i)
            continue
        if token.text == "{":
            raise ValueError(f"a selector without a metric name in {expr!r}")
        if token.kind != "ident":
            i += 1
            continue
        word = token.text
        if word in LABEL_LISTS and following == "(":
            i = skip_group(i + 1)
            continue
        if word.lower() in KEYWORDS or word in AGGREGATORS or following == "(":
            i += 1
            continue
        labels: set[str] = set()
        i += 1
        if following == "{":
            end = skip_group(i)
            inner = tokens[i + 1 : end - 1]
            for t, after in itertools.pairwise(inner):
                if t.kind == "ident" and after.text in MATCH_OPS:
                    labels.add(t.text)
            i = end
        found.append(Selector(word, frozenset(labels)))
    return found


# --- what exists -------------------------------------------------------------------------------

_SUFFIXES = {
    "counter": ("_total",),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count"),
    "summary": ("", "_sum", "_count"),
}


@cache
def code_metrics() -> dict[str, frozenset[str]]:
    """Every sample name core.metrics exposes, with its labels (prometheus-client adds the
    ``_total`` of counters and the ``_bucket``/``_sum``/``_count`` of histograms)."""
    found: dict[str, frozenset[str]] = {}
    for obj in vars(metrics).values():
        if not isinstance(obj, MetricWrapperBase):
            continue
        labels = frozenset(obj._labelnames)
        for family in obj.describe():
            for suffix in _SUFFIXES[family.type]:
                found[family.name + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
    assert found, "core.metrics defines no metric"
    return found


@cache
def collector_metrics() -> dict[str, frozenset[str]]:
    """Every metric the scrape-time collectors serve, with its labels (read from the families
    they yield; with nothing read yet, they yield them empty)."""
    found = {
        family.name: frozenset(family._labelnames)
        for collector in (
            FunnelCollector(pool=None),
            WaveCollector(pool=None),
            RetentionCollector(pool=None, periods=Periods()),
            QueueCollector("amqp://unused"),
        )
        for family in collector.collect()
        if isinstance(family, GaugeMetricFamily)
    }
    # The supervisor's own figures (workers.supervisor.FleetCollector, read from its plan).
    found[metrics.WORKER_PROCESSES[0]] = frozenset({"kind"})
    found[metrics.WORKER_RESTARTS[0] + "_total"] = frozenset({"kind"})
    return found


def known_metrics(recorded: Iterable[str]) -> dict[str, frozenset[str] | None]:
    """Name -> labels it may be matched on (None: any, for recorded series)."""
    known: dict[str, frozenset[str] | None] = {}
    for table in (code_metrics(), collector_metrics(), RABBITMQ_METRICS, PROMETHEUS_METRICS):
        known.update({name: labels | TARGET_LABELS for name, labels in table.items()})
    known.update(dict.fromkeys(recorded))
    return known


def unknown_names(expr: str, known: Mapping[str, frozenset[str] | None]) -> list[str]:
    """Problems with the metrics and label matchers of ``expr``."""
    problems = []
    for selector in selectors(expr):
        if selector.metric not in known:
            problems.append(f"unknown metric {selector.metric!r}")
            continue
        labels = known[selector.metric]
        if labels is not None and not selector.labels <= labels:
            extra = sorted(selector.labels - labels)
            problems.append(f"{selector.metric} has no label {', '.join(extra)}")
    return problems


def github_anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives a document's headings, plus explicit ``<a id>`` anchors."""
    anchors = set(re.findall(r"""<a\s+(?:id|name)=["']([^"']+)["']""", markdown))
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*$", markdown, re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        anchors.add(slug)
    return anchors


# --- 1. promtool -------------------------------------------------------------------------------


def test_prometheus_config_is_valid() -> None:
    assert_ok(promtool("check", "config", PROMETHEUS_YML))


def test_rule_files_are_valid_and_all_loaded() -> None:
    files = rule_files()
    assert {p.name for p in files} == {"recording.yml", "alerts.yml"}
    assert_ok(promtool("check", "rules", *files))
    loaded = {(MONITORING / f).resolve() for f in load_yaml(PROMETHEUS_YML)["rule_files"]}
    assert loaded == {p.resolve() for p in files}, "prometheus.yml must load every rule file"


def test_alert_unit_tests_pass() -> None:
    assert_ok(promtool("test", "rules", ALERTS_TEST_YML, RETENTION_TEST_YML))
    tested = {
        case["alertname"]
        for path in (ALERTS_TEST_YML, RETENTION_TEST_YML)
        for test in load_yaml(path)["tests"]
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    wanted = {
        "DeadLetterMessages",
        "QueueGrowingWithoutConsumers",
        "CircuitBreakerOpen",
        "FunnelStalled",
        "LaneDeliveriesOrphaned",
        "RetentionNotRunning",
        "RetentionOverdue",
    }
    assert wanted <= tested, f"no firing case for {sorted(wanted - tested)}"


# --- 2. the scrape configuration ---------------------------------------------------------------


def scrape_jobs(config: Doc) -> dict[str, Doc]:
    return {str(job["job_name"]): job for job in config["scrape_configs"]}


def targets_of(job: Doc) -> list[str]:
    return [t for static in job.get("static_configs", []) for t in static["targets"]]


def test_scrapes_the_stack_every_5_seconds() -> None:
    config = load_yaml(PROMETHEUS_YML)
    assert config["global"]["scrape_interval"] == "5s"
    assert config["global"]["evaluation_interval"] == "5s"
    jobs = scrape_jobs(config)
    assert targets_of(jobs["intake-edge"]) == ["127.0.0.1:9464"]
    assert targets_of(jobs["intake-supervisor"]) == ["127.0.0.1:9465"]
    assert targets_of(jobs["rabbitmq"]) == ["127.0.0.1:15692"]
    assert jobs["rabbitmq"].get("metrics_path", "/metrics") == "/metrics"
    queues = jobs["rabbitmq-queues"]
    assert targets_of(queues) == ["127.0.0.1:15692"]
    assert queues["metrics_path"] == "/metrics/detailed"
    assert queues["params"] == {
        "vhost": ["intake"],
        "family": ["queue_coarse_metrics", "queue_consumer_count"],
    }


def with_targets(config: Doc, targets: Mapping[str, str], rules_dir: Path) -> Doc:
    """A copy of ``config`` scraping other addresses (job name -> host:port), its rule files
    taken from ``rules_dir``: how a test runs this configuration against its own stack."""
    replaced: Doc = copy.deepcopy(config)
    replaced["rule_files"] = [str(rules_dir / Path(f).name) for f in replaced["rule_files"]]
    for name, job in scrape_jobs(replaced).items():
        if name in targets:
            job["static_configs"] = [{"targets": [targets[name]]}]
    return replaced


def test_targets_can_be_replaced(tmp_path: Path) -> None:
    config = load_yaml(PROMETHEUS_YML)
    moved = {
        "intake-edge": "127.0.0.1:19464",
        "intake-supervisor": "127.0.0.1:19465",
        "rabbitmq": "127.0.0.1:25692",
        "rabbitmq-queues": "127.0.0.1:25692",
    }
    assert set(moved) == set(scrape_jobs(config))
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(with_targets(config, moved, RULES)))
    assert_ok(promtool("check", "config", path))
    jobs = scrape_jobs(load_yaml(path))
    assert {name: targets_of(job) for name, job in jobs.items()} == {
        name: [address] for name, address in moved.items()
    }


# --- 3. alerts ---------------------------------------------------------------------------------


def alert_problems(rule: Rule, runbook_anchors: set[str]) -> list[str]:
    problems = []
    labels = rule.doc.get("labels") or {}
    annotations = rule.doc.get("annotations") or {}
    if labels.get("severity") not in SEVERITIES:
        problems.append(f"severity {labels.get('severity')!r} not one of {sorted(SEVERITIES)}")
    for key in ("summary", "description", "runbook_url"):
        if not str(annotations.get(key, "")).strip():
            problems.append(f"no {key} annotation")
    url = str(annotations.get("runbook_url", ""))
    page, _, anchor = url.partition("#")
    if page != "docs/runbook.md" or anchor != rule.name.lower():
        problems.append(f"runbook_url {url!r} is not docs/runbook.md#{rule.name.lower()}")
    elif anchor not in runbook_anchors:
        problems.append(f"docs/runbook.md has no section #{anchor}")
    try:
        split_comparison(rule.expr)
    except ValueError as exc:
        problems.append(f"expr is not `<query> <op> <number>`: {exc}")
    return problems


def test_every_alert_is_complete_and_shaped_query_op_number() -> None:
    anchors = github_anchors(RUNBOOK.read_text())
    found = alerts()
    assert len(found) >= 10
    assert len({a.name for a in found}) == len(found), "alert names must be unique"
    problems = [f"{a.name}: {p}" for a in found for p in alert_problems(a, anchors)]
    assert not problems, "\n".join(problems)


def test_the_runbook_has_a_section_per_alert_and_no_stale_one() -> None:
    sections = set(re.findall(r"^## (\S+)$", RUNBOOK.read_text(), re.M))
    names = {a.name for a in alerts()}
    assert names - sections == set(), "alerts without a runbook section"
    assert sections - names == set(), "runbook sections for no alert"


def test_queue_patterns_match_the_topology() -> None:
    text = ALERTS_YML.read_text() + DASHBOARD_JSON.read_text()
    assert DLQ_PATTERN in text
    assert DELAY_PATTERN in text
    # The breaker's lane maps to its queue by name in QueueGrowingWithoutConsumers.
    assert all(topology.lane_queue(str(c)) == f"intake.verify.{c}" for c in Check)
    for queue in queue_names():
        is_dlq = queue == topology.PERSIST_DLQ or queue.endswith(".dlq")
        is_delay = queue in map(topology.delay_queue, topology.RETRY_TIERS_S)
        assert bool(re.fullmatch(DLQ_PATTERN, queue)) == is_dlq, queue
        assert bool(re.fullmatch(DELAY_PATTERN, queue)) == is_delay, queue


# --- 4. metric names ---------------------------------------------------------------------------


def test_every_metric_a_rule_or_the_dashboard_names_exists() -> None:
    known = known_metrics(recorded_names())
    exprs = [(f"{r.file} {r.name}", r.expr) for r in rules()]
    exprs += dashboard_targets(load_dashboard())
    problems = [f"{where}: {p}" for where, expr in exprs for p in unknown_names(expr, known)]
    assert not problems, "\n".join(problems)


def test_the_collectors_serve_what_the_configuration_relies_on() -> None:
    served = collector_metrics()
    for name, labels in COLLECTOR_CONTRACT.items():
        assert served.get(name) == labels, name
    assert set(STAGES) >= {"registered", "verified", "rejected", "review"}


def test_recording_rules_follow_the_naming_convention() -> None:
    for name in recorded_names():
        assert re.fullmatch(r"[a-z_]+:[a-z0-9_]+:[a-z0-9_]+", name), name
        assert name not in known_metrics(()), f"{name} shadows a real metric"


# --- 5. the dashboard and its provisioning -----------------------------------------------------


def test_dashboard_is_provisioning_ready() -> None:
    dashboard = load_dashboard()
    assert dashboard["title"] == "Kartu Prakerja-style wave opening: intake"
    assert dashboard["uid"]
    assert dashboard.get("id") is None, "a provisioned dashboard has no fixed id"
    assert 36 <= dashboard["schemaVersion"] <= 41
    assert "__inputs" not in dashboard, "an import-only dashboard cannot be provisioned"
    panels = list(all_panels(dashboard))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    rows = [p["title"] for p in panels if p["type"] == "row"]
    assert [r.lower() for r in rows] == [
        "at a glance",
        "funnel",
        "waves",
        "queues",
        "lanes",
        "ministries",
        "workers",
        "broker",
        "retention",
    ]
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert str(panel.get("title", "")).strip(), f"panel {panel['id']} has no title"
        exprs = [t.get("expr", "").strip() for t in panel.get("targets", [])]
        assert exprs, f"panel {panel['id']} has no target"
        assert all(exprs), f"panel {panel['id']} has a target without an expr"
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), f"panel {panel['id']}: refIds must be unique"
        pos = panel["gridPos"]
        assert pos["x"] >= 0, f"panel {panel['id']} starts left of the grid"
        assert pos["x"] + pos["w"] <= 24, f"panel {panel['id']} overflows the grid"


def test_dashboard_uses_the_provisioned_datasource_and_no_other_variable() -> None:
    provisioned = load_yaml(PROVISIONING / "datasources" / "prometheus.yml")["datasources"]
    assert len(provisioned) == 1
    source = provisioned[0]
    assert source["type"] == "prometheus"
    assert source["url"] == "http://127.0.0.1:9090"
    # $__rate_interval is at least four scrape intervals: Grafana must know the real one.
    scrape_interval = load_yaml(PROMETHEUS_YML)["global"]["scrape_interval"]
    assert source["jsonData"]["timeInterval"] == scrape_interval
    wanted = {"type": "prometheus", "uid": source["uid"]}
    dashboard = load_dashboard()
    for panel in all_panels(dashboard):
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == wanted, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == wanted, panel["title"]
    assert dashboard["templating"]["list"] == []
    for where, expr in dashboard_targets(dashboard):
        assert "$" not in expr, f"{where}: only $__rate_interval may be used"


def test_dashboard_provider_loads_the_dashboards_folder() -> None:
    providers = load_yaml(PROVISIONING / "dashboards" / "intake.yml")["providers"]
    assert len(providers) == 1
    provider = providers[0]
    assert provider["type"] == "file"
    assert provider["options"]["path"]
    assert DASHBOARD_JSON.parent == DASHBOARDS


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    targets = dashboard_targets(load_dashboard())
    group = {
        "name": "dashboard",
        "rules": [
            {"record": f"dashboard:query:{i}", "expr": e} for i, (_, e) in enumerate(targets)
        ],
    }
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [group]}))
    assert_ok(promtool("check", "rules", path))


# --- 6. the queries on synthetic series --------------------------------------------------------
#
# Series shaped like what a running stack exposes, for promtool's unit tests: ``quiet`` holds
# only what exists on any stack that has taken registrations (no series that appear with the
# first 5xx, shed, retry, rejection or breaker opening); ``troubled`` adds those.

STEP = "15s"
STEPS = 60  # 15 minutes
BUCKETS = ("0.01", "0.1", "1", "+Inf")


@dataclasses.dataclass(frozen=True)
class Series:
    name: str
    labels: Mapping[str, str]
    values: str

    def entry(self) -> dict[str, str]:
        labels = ", ".join(f'{k}="{v}"' for k, v in self.labels.items())
        return {"series": f"{self.name}{{{labels}}}", "values": self.values}


class Stack:
    """Builds the series of a stack: job and instance from prometheus.yml."""

    def __init__(self, config: Doc) -> None:
        self.jobs = {name: targets_of(job)[0] for name, job in scrape_jobs(config).items()}
        self.series: list[Series] = [
            Series("up", {"job": job, "instance": address}, f"1x{STEPS}")
            for job, address in self.jobs.items()
        ]

    def add(self, job: str, name: str, values: str, **labels: str) -> None:
        target = {"job": job, "instance": self.jobs[job]}
        self.series.append(Series(name, target | labels, values))

    def counter(self, job: str, name: str, per_step: int, **labels: str) -> None:
        self.add(job, name, f"0+{per_step}x{STEPS}", **labels)

    def gauge(self, job: str, name: str, value: float, **labels: str) -> None:
        self.add(job, name, f"{value}x{STEPS}", **labels)

    def histogram(self, job: str, name: str, per_step: int, **labels: str) -> None:
        for i, le in enumerate(BUCKETS):
            share = per_step * (i + 2) // (len(BUCKETS) + 1) if le != "+Inf" else per_step
            self.counter(job, f"{name}_bucket", share, le=le, **labels)
        self.counter(job, f"{name}_sum", per_step, **labels)
        self.counter(job, f"{name}_count", per_step, **labels)


def stack_series(config: Doc, *, troubled: bool) -> list[Series]:
    s = Stack(config)
    edge, sup, broker, queues = "intake-edge", "intake-supervisor", "rabbitmq", "rabbitmq-queues"
    lanes = [str(c) for c in Check]
    post = {"route": "/v1/registrations", "method": "POST"}

    s.counter(edge, "intake_http_requests_total", 300, status_class="2xx", **post)
    s.counter(edge, "intake_http_requests_total", 10, status_class="4xx", **post)
    s.counter(
        edge, "intake_http_requests_total", 4, route="/readyz", method="GET", status_class="2xx"
    )
    s.histogram(edge, "intake_http_request_duration_seconds", 310, **post)
    s.counter(edge, "intake_registrations_accepted_total", 300)
    s.counter(edge, "intake_registrations_invalid_total", 10)
    s.histogram(edge, "intake_publish_confirm_duration_seconds", 20)
    s.histogram(edge, "intake_publish_batch_registrations", 20)
    s.gauge(edge, "intake_edge_pending_registrations", 40)
    s.gauge(edge, "intake_edge_loop_lag_seconds", 0.004)
    s.gauge(edge, "intake_edge_standing_queue", 0)

    s.counter(sup, "intake_persist_registrations_total", 290, outcome="stored")
    for channel in ("email", "sms"):
        s.gauge(sup, "intake_notifications_pending", 40, channel=channel)
        s.counter(sup, "intake_notifications_total", 60, channel=channel, outcome="sent")
    s.histogram(sup, "intake_persist_batch_duration_seconds", 5)
    for lane in lanes:
        s.counter(sup, "intake_dispatch_tasks_total", 250, lane=lane)
        s.counter(sup, "intake_lane_tasks_total", 240, lane=lane, outcome="passed")
        s.histogram(sup, "intake_lane_task_duration_seconds", 240, lane=lane)
        s.histogram(sup, "intake_service_call_duration_seconds", 240, lane=lane, signal="ok")
        s.gauge(sup, "intake_lane_concurrency_limit", 16, lane=lane)
        s.gauge(sup, "intake_lane_inflight_calls", 9, lane=lane)
        s.gauge(sup, "intake_lane_deliveries_in_hand", 30, lane=lane)  # the queue's unacked
        s.gauge(sup, "intake_lane_breaker_workers", 1, lane=lane, state="closed")
        for mode in metrics.BREAKER_MODES:  # operator controls: every lane on auto
            s.gauge(sup, "intake_lane_forced_breaker", int(mode == "auto"), check=lane, state=mode)
        s.gauge(sup, "intake_lane_maintenance", 0, check=lane)
    for kind in WORKER_KINDS:
        s.gauge(sup, "intake_worker_processes", 1, kind=kind)
    for queue in queue_names():
        consumed = not re.fullmatch(f"{DLQ_PATTERN}|{DELAY_PATTERN}", queue)
        ready = 0 if queue.endswith(".dlq") else 120
        s.gauge(sup, "intake_queue_messages_ready", ready, queue=queue)
        s.gauge(sup, "intake_queue_consumers", int(consumed), queue=queue)
        at = {"vhost": "intake", "queue": queue}
        s.gauge(queues, "rabbitmq_detailed_queue_messages_ready", ready, **at)
        s.gauge(queues, "rabbitmq_detailed_queue_messages_unacked", 30 * consumed, **at)
        s.gauge(queues, "rabbitmq_detailed_queue_messages", ready + 30 * consumed, **at)
        s.gauge(queues, "rabbitmq_detailed_queue_consumers", int(consumed), **at)
    for i, stage in enumerate(STAGES):
        s.counter(sup, "intake_funnel_registrations", 300 // (i + 1), stage=stage)
    s.counter(sup, "intake_funnel_rejected_registrations", 5, reason="duplicate_nik")
    for check in lanes:
        s.gauge(sup, "intake_checks", 50, check=check, state="pending")
        s.counter(sup, "intake_checks", 200, check=check, state="passed")
    # A wave closed and selected, its notifications going out.
    wave = {"wave": "gelombang-1"}
    for i, stage in enumerate(WAVE_STAGES):
        s.counter(sup, "intake_wave_participants", 100 // (i + 1), stage=stage, **wave)
    s.gauge(sup, "intake_wave_quota", 1000, **wave)
    s.gauge(sup, "intake_wave_open", 0, **wave)
    s.gauge(sup, "intake_wave_selection_duration_seconds", 4.2, **wave)
    for channel in ("email", "sms"):
        s.gauge(sup, "intake_wave_notifications", 300, channel=channel, state="pending", **wave)
        s.counter(sup, "intake_wave_notifications", 20, channel=channel, state="sent", **wave)
    # The retention job's last whole pass ended 5 minutes in (promtool's clock starts at 0);
    # runs recorded from the start.
    s.gauge(sup, "intake_retention_last_success_timestamp_seconds", 300)
    s.gauge(sup, "intake_retention_recorded_since_timestamp_seconds", 0)
    s.gauge(sup, "intake_retention_last_run_duration_seconds", 42)
    for kind in ERASED_KINDS:
        s.gauge(sup, "intake_retention_last_run_erased", 7, kind=kind)
    for outcome in OUTCOMES:
        s.gauge(sup, "intake_retention_runs", int(outcome == "ok"), outcome=outcome)
    s.gauge(sup, "intake_retention_overdue", 0)

    for name in RABBITMQ_METRICS:
        if name.startswith("rabbitmq_detailed_"):
            continue
        if name.endswith("_total"):
            s.counter(broker, name, 500)
        else:
            s.gauge(broker, name, 0 if name.startswith("rabbitmq_alarms_") else 1000)

    if troubled:
        s.counter(edge, "intake_http_requests_total", 30, status_class="5xx", **post)
        s.counter(edge, "intake_registrations_shed_total", 25, reason="queue_full")
        s.counter(edge, "intake_registrations_shed_total", 5, reason="broker_unreachable")
        s.counter(sup, "intake_persist_registrations_total", 10, outcome="duplicate")
        s.counter(sup, "intake_funnel_rejected_registrations", 3, reason="nik_not_found")
        s.counter(sup, "intake_funnel_review_registrations", 1, reason="photo_reused")
        s.counter(sup, "intake_worker_restarts_total", 1, kind="dukcapil")
        for lane in lanes:
            s.counter(sup, "intake_lane_tasks_total", 30, lane=lane, outcome="retry")
            s.counter(sup, "intake_lane_retries_total", 30, lane=lane, reason="timeout")
            s.counter(sup, "intake_lane_rejections_total", 2, lane=lane, reason="rejected")
            s.counter(sup, "intake_lane_dead_lettered_total", 1, lane=lane)
            s.histogram(
                sup, "intake_service_call_duration_seconds", 30, lane=lane, signal="failure"
            )
            s.gauge(sup, "intake_lane_breaker_workers", 0, lane=lane, state="open")
            s.counter(sup, "intake_lane_breaker_transitions_total", 1, lane=lane, state="open")
            s.gauge(sup, "intake_checks", 5, check=lane, state="retrying")
            s.gauge(sup, "intake_checks", 5, check=lane, state="failed")
    return s.series


def expr_test_file(queries: Iterable[tuple[str, str]], series: list[Series], name: str) -> Doc:
    """A promtool unit test asserting that every query returns at least one sample (``absent``
    returns one exactly when its argument returns none) at 10 minutes."""
    return {
        "rule_files": [str(p) for p in rule_files()],
        "evaluation_interval": STEP,
        "tests": [
            {
                "name": name,
                "interval": STEP,
                "input_series": [s.entry() for s in series],
                "promql_expr_test": [
                    {"expr": f"absent({query})", "eval_time": "10m", "exp_samples": []}
                    for _, query in queries
                ],
            }
        ],
    }


def test_every_alert_query_returns_data_and_nothing_fires_on_a_quiet_stack(
    tmp_path: Path,
) -> None:
    config = load_yaml(PROMETHEUS_YML)
    queries = [(a.name, split_comparison(a.expr)[0]) for a in alerts()]
    doc = expr_test_file(queries, stack_series(config, troubled=False), "alert queries")
    doc["tests"][0]["alert_rule_test"] = [
        {"eval_time": t, "alertname": a.name, "exp_alerts": []}
        for a in alerts()
        for t in ("5m", "14m")
    ]
    path = tmp_path / "quiet_test.yml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    assert_ok(promtool("test", "rules", path))


def test_every_dashboard_query_returns_data_on_a_troubled_stack(tmp_path: Path) -> None:
    config = load_yaml(PROMETHEUS_YML)
    queries = dashboard_targets(load_dashboard())
    doc = expr_test_file(queries, stack_series(config, troubled=True), "dashboard queries")
    path = tmp_path / "troubled_test.yml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    assert_ok(promtool("test", "rules", path))


# --- 7. the checkers catch what they should ----------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "query", "op", "threshold"),
    [
        ("up == 0", "up", "==", 0.0),
        ('sum by (q) (x{a=~"b|c"}) > 0.5', 'sum by (q) (x{a=~"b|c"})', ">", 0.5),
        ("(a or 0 * b) >= 1e3", "(a or 0 * b)", ">=", 1000.0),
        ("a * on (q) (b == bool 0) > -1", "a * on (q) (b == bool 0)", ">", -1.0),
        ('x{route!~"/healthz|<x>"} < 1', 'x{route!~"/healthz|<x>"}', "<", 1.0),
    ],
)
def test_split_comparison_accepts_query_op_number(
    expr: str, query: str, op: str, threshold: float
) -> None:
    assert split_comparison(expr) == (query, op, threshold)


@pytest.mark.parametrize(
    "expr",
    [
        "up",  # no comparison
        "(up == 0)",  # only inside parentheses
        "a > 0 and b > 1",  # two comparisons, and a top-level and
        "a or b > 0",  # the comparison applies to b alone
        "a > bool 0",  # always 0 or 1: fires for ever
        "a > b",  # not a number
        "0 < a",  # number first
        "> 0",  # no query
    ],
)
def test_split_comparison_refuses_other_shapes(expr: str) -> None:
    with pytest.raises(ValueError, match=r"."):
        split_comparison(expr)


def test_selectors_skip_functions_keywords_label_lists_and_ranges() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le, lane) (rate(m_bucket{lane="x", le!="1"}[5m])))'
        " / on (lane) group_left () (n or vector(0)) offset 1m > bool 1e-9"
    )
    assert selectors(expr) == [
        Selector("m_bucket", frozenset({"lane", "le"})),
        Selector("n", frozenset()),
    ]


@pytest.mark.parametrize(
    ("expr", "problem"),
    [
        ("sum(rate(intake_registrations_acepted_total[1m]))", "unknown metric"),
        ('intake_http_requests_total{status="5xx"}', "has no label status"),
        ("rate(intake_lane_tasks[1m])", "unknown metric"),  # a counter without its _total
        ("intake_worker_processes_total", "unknown metric"),  # a gauge with one
        ("rabbitmq_queue_consumers_detailed", "unknown metric"),
        ("lane:intake_lane_retry:rate1m", "unknown metric"),  # not a recording rule
    ],
)
def test_unknown_names_reports_typos(expr: str, problem: str) -> None:
    found = unknown_names(expr, known_metrics(recorded_names()))
    assert found, expr
    assert problem in found[0], found


def test_unknown_names_accepts_real_names() -> None:
    known = known_metrics(recorded_names())
    expr = (
        'sum(rate(intake_http_request_duration_seconds_bucket{route="/", le="1"}[1m]))'
        ' + sum(intake_funnel_registrations{stage="verified", job="intake-supervisor"})'
        ' + sum(rabbitmq_detailed_queue_consumers{queue="q"}) + sum(up)'
        " + sum(lane:intake_lane_retries:rate1m)"
    )
    assert unknown_names(expr, known) == []


def test_alert_problems_reports_a_broken_alert() -> None:
    rule = Rule(
        "alerts.yml",
        "g",
        {
            "alert": "Nonsense",
            "expr": "a > 0 and b > 0",
            "labels": {"severity": "page"},
            "annotations": {"summary": "s", "runbook_url": "docs/runbook.md#nonsense"},
        },
    )
    problems = alert_problems(rule, github_anchors(RUNBOOK.read_text()))
    assert any("severity" in p for p in problems)
    assert any("no description" in p for p in problems)
    assert any("no section #nonsense" in p for p in problems)
    assert any("expr is not" in p for p in problems)


def test_the_data_check_fails_on_a_query_without_data(tmp_path: Path) -> None:
    config = load_yaml(PROMETHEUS_YML)
    queries = [("fine", "sum(up)"), ("typo", 'sum(intake_funnel_registrations{stage="verifed"})')]
    path = tmp_path / "broken_test.yml"
    doc = expr_test_file(queries, stack_series(config, troubled=False), "broken")
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    result = promtool("test", "rules", path)
    assert result.returncode != 0
    assert "verifed" in result.stdout + result.stderr
