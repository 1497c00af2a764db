"""The Markdown report of ``benchmarks.backpressure``'s three parts."""

from __future__ import annotations

from typing import Any

from benchmarks._support import (
    markdown_table,
)

FAST = 1_000  # the calibration simulator's capacity and queue (benchmarks.backpressure)


def report(results: dict[str, Any]) -> str:
    parts = results["parts"]
    out = []
    cfg = results["config"]
    if "A" in parts:
        a = parts["A"]
        cal = a["calibration"]
        out.append(
            f"**Part A** (Dukcapil C={cfg['capacity']} at once, L={cfg['latency_ms']:g} ms fixed, "
            f"queue {cfg['queue_limit']}, 503 beyond: C/L = {cfg['capacity_per_s']:.0f} calls/s; "
            f"{a['adaptive']['tasks']:,} tasks; one lane worker)\n\n"
            f"Calibration: one Dukcapil lane worker made **{cal['worker_calls_per_s']:.0f} "
            f"calls/s** against a fast simulator (capacity {FAST}, same latency) = "
            f"{cal['over_capacity']:.2f} x C/L (lane CPU {cal['lane_cpu_share']:.0%} of a core)\n"
        )
        rows = []
        for name in ("adaptive", "fixed_high", "fixed_low"):
            r = a[name]
            rows.append(
                [
                    r["limit"],
                    f"{r['goodput_per_s']:.1f}",
                    f"**{r['goodput_share']:.1%}**",
                    f"**{r['rejected_share']:.2%}** ({r['rejected_overload']:,}/{r['calls']:,})",
                    f"{r['retries']:,}",
                    f"{r['dead_lettered']:,}",
                    f"{r['drain_s']}" if r["drain_s"] is not None else "not drained",
                    str(r["lane_limit_median"] if r["lane_limit_median"] is not None else "n/a"),
                    f"{r['calls_at_simulator_median']} / {r['calls_at_simulator_max']}",
                    str(r["breaker_opened"]),
                    f"{r['lane_cpu_share']:.0%} / {r['machine_cpu_busy_mean']:.0%}",
                ]
            )
        out.append(
            markdown_table(
                [
                    "limit",
                    "goodput/s",
                    "share of C/L",
                    "rejected (overload)",
                    "retries",
                    "dead-lettered",
                    "drain s",
                    "limit median",
                    "our calls at the simulator median / max",
                    "breaker opened",
                    "CPU: lane (of a core) / machine",
                ],
                rows,
            )
        )
    if "B" in parts:
        b = parts["B"]
        out.append(
            f"\n**Part B** (adaptive; capacity {b['capacity_before']} -> {b['capacity_after']} "
            f"at t={b['changed_at_s']:.1f} s, target {b['target_before_per_s']:.0f} -> "
            f"{b['target_after_per_s']:.0f} calls/s)\n"
        )
        out.append(
            markdown_table(
                ["figure", "value"],
                [
                    ["goodput over the 6 s before the change", f"{b['goodput_6s_before_per_s']}/s"],
                    [
                        "**settling time** (every later 2 s window within +-10 %)",
                        f"**{b['settle_s']} s**" if b["settle_s"] is not None else "not settled",
                    ],
                    ["goodput over the last 10 s", f"{b['goodput_last_10s_per_s']}/s"],
                    [
                        "rejected share in the transition (change -> goodput settled and limit "
                        "down, "
                        f"{b['transition_s']} s)",
                        f"{b['rejected_share_in_transition']:.2%} "
                        f"({b['rejected_in_transition']}/{b['calls_in_transition']} calls)",
                    ],
                    [
                        "rejected share, whole measurement after the change",
                        f"{b['rejected_share_after_change']:.2%}",
                    ],
                    [
                        "last rejection after the change",
                        f"{b['last_rejection_after_change_s']} s",
                    ],
                    [
                        "lane limit: median 10 s before -> last 10 s; first within 10 % of "
                        "the final value after",
                        f"{b['limit_median_10s_before']} -> {b['limit_median_last_10s']}; "
                        f"{b['limit_down_after_s']} s",
                    ],
                ],
            )
        )
    if "C" in parts:
        c = parts["C"]
        m = c["ministries"]
        util = c["ministry_utilisation"]
        out.append(
            f"\n**Part C** ({c['count']:,} registrations offered at {c['rate']:,.0f}/s open loop; "
            + ", ".join(f"{k} {v['calls_per_s']:.0f}/s" for k, v in m.items())
            + ")\n"
        )
        rows = [
            ["first answers", ", ".join(f"{k}: {v:,}" for k, v in c["first_answers"].items())],
            [
                "all answers (retries included)",
                ", ".join(f"{k}: {v:,}" for k, v in c["all_answers"].items()),
            ],
            ["accepted (202)", f"{c['accepted']:,}, the last after {c['all_accepted_after_s']} s"],
            [
                "accept latency p50 / p99 / max (ms, from the scheduled send, retries included)",
                f"{c['accept_latency_ms']['p50']} / {c['accept_latency_ms']['p99']} / "
                f"{c['accept_latency_ms']['max']}",
            ],
            [
                "**first registration -> last final NIK result**",
                f"**{c['first_to_last_nik_result_s']} s**",
            ],
            [
                "theoretical minimum (slowest ministry)",
                f"{c['minimum_s']} s ({c['slowest']}: "
                + ", ".join(f"{k} {v} s" for k, v in c["theoretical_minimum_s"].items())
                + ")",
            ],
            ["**measured / minimum**", f"**{c['measured_over_minimum']}**"],
            [
                "ministry goodput / capacity while busy",
                ", ".join(
                    f"{k} {u.get('goodput_share', float('nan')):.1%} "
                    f"(rejected {u.get('rejected_share', 0):.2%})"
                    for k, u in util.items()
                ),
            ],
            [
                "CPU busy (machine), while offering / whole run",
                f"{c['cpu_busy_share']['while_offering']:.0%} / "
                f"{c['cpu_busy_share']['whole_run_mean']:.0%}",
            ],
            [
                "cores used until every registration was accepted",
                ", ".join(f"{k} {v:.2f}" for k, v in c["cores_used"]["until_all_accepted"].items()),
            ],
            [
                "cores used afterwards",
                ", ".join(f"{k} {v:.2f}" for k, v in c["cores_used"]["after_all_accepted"].items()),
            ],
            ["most workers per kind", ", ".join(f"{k} {v}" for k, v in c["max_workers"].items())],
            [
                "loss audit",
                f"{c['audit']['accepted']:,} ids answered 202, {c['audit']['stored']:,} stored; "
                f"missing {c['audit']['missing']}, twice {c['audit']['stored_twice']}, "
                f"not accepted {c['audit']['stored_not_accepted']}: "
                + ("**verified**" if c["audit"]["verified"] else "**FAILED**"),
            ],
        ]
        out.append(markdown_table(["figure", "value"], rows))
    return "\n".join(out)
