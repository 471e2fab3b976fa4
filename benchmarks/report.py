"""Writes BENCHMARKS.md and its PNG plots from benchmarks/results/*.json."""

from __future__ import annotations

import json
import os
import statistics
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from benchmarks.common import RESULTS
from benchmarks.soak import attack_section

ROOT = Path(os.environ.get("LCS_BENCH_REPORT_DIR", Path(__file__).resolve().parent.parent))
PLOTS = RESULTS / "plots"


def load(name: str) -> dict[str, Any] | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def table(header: list[str], rows: list[list[Any]]) -> str:
    def fmt(v: Any) -> str:
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows]
    return "\n".join(out)


def switch_section(d: dict[str, Any]) -> str:
    rows = [
        [
            r["arch"],
            r["family"],
            r["kind"],
            r["switch_ms"],
            f"{r['switch_p25_ms']:.3g}–{r['switch_p75_ms']:.3g}",
            r.get("cold_ms", ""),
            r["interpolate_ms"],
            r["forward_ms"],
            r["switch_per_forward"],
            r.get("target_ms", ""),
        ]
        for r in d["rows"]
    ]
    fig, ax = plt.subplots(figsize=(7, 3.5), dpi=110)
    r18 = [r for r in d["rows"] if r["arch"] == "resnet18"]
    ax.bar(
        [f"{r['family'][:5]}\n{r['kind']}" for r in r18],
        [r["switch_ms"] for r in r18],
        yerr=[
            [r["switch_ms"] - r["switch_p25_ms"] for r in r18],
            [r["switch_p75_ms"] - r["switch_ms"] for r in r18],
        ],
        capsize=3,
    )
    ax.set_yscale("log")
    ax.set_ylabel("switch time (ms, log; bars p25–p75)")
    ax.set_title("ResNet18: cost of a level switch")
    fig.tight_layout()
    fig.savefig(PLOTS / "switch_cost.png")
    plt.close(fig)
    return (
        "## Switch cost\n\n`python -m benchmarks.switch_cost` (1 thread). Time to compress the "
        "subspace to a new level: median and interquartile range of repeated random switches "
        "among a grid of 9 levels, each visited once before (as the daemon's load-time profile "
        "visits its grid), against one forward pass (batch 1) at that level. *Cold*: the median "
        "of 3 switches to an α off the grid, seen for the first time (LCS+L finds its "
        "thresholds then; quantization snaps every α to its bit grid). ω*(α): interpolating "
        "every line layer into reused tensors, the floor of a line switch that interpolates "
        "every weight. An unstructured LCS+L switch to a known α interpolates and prunes in "
        "one fused pass (`models/fused.py`, numba)"
        + fused_overhead(r18)
        + "; the memory bandwidth of this VM varies from run to run, so compare a row with "
        "its own ω*(α).\n\n"
        + table(
            [
                "arch",
                "family",
                "kind",
                "switch ms",
                "p25–p75 ms",
                "cold ms",
                "ω*(α) ms",
                "forward ms",
                "switch / forward",
                "target ms",
            ],
            rows,
        )
        + "\n\n![switch cost](benchmarks/results/plots/switch_cost.png)\n"
    )


def fused_overhead(rows: list[dict[str, Any]]) -> str:
    """What ResNet18's unstructured LCS+L switch costs beyond its ω*(α), from this run."""
    line = [r for r in rows if (r["family"], r["kind"]) == ("unstructured", "line")]
    if not line:
        return ""
    r = line[0]
    extra = r["switch_ms"] - r["interpolate_ms"]
    return f": on ResNet18 ω*(α) plus {extra:.2f} ms in this run"


def speedup_section(d: dict[str, Any]) -> str:
    rows = [
        [
            r["arch"],
            r["batch"],
            r["threads"],
            r["width"],
            r["gmacs"],
            r["median_ms"],
            r["speedup"],
            r["mac_ratio"],
            f"{100 * r['share_of_limit']:.0f} %",
        ]
        for r in d["rows"]
    ]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), dpi=110)
    for ax, arch in zip(axes, ("resnet18", "cpreresnet20"), strict=True):
        sel = [r for r in d["rows"] if r["arch"] == arch]
        for batch in sorted({r["batch"] for r in sel}):
            for threads in sorted({r["threads"] for r in sel}):
                pts = [r for r in sel if r["batch"] == batch and r["threads"] == threads]
                ax.plot(
                    [r["width"] for r in pts],
                    [r["speedup"] for r in pts],
                    "o-",
                    label=f"batch {batch}, {threads} thr",
                )
        pts = [
            r for r in sel if r["batch"] == sel[0]["batch"] and r["threads"] == sel[0]["threads"]
        ]
        ax.plot(
            [r["width"] for r in pts],
            [r["mac_ratio"] for r in pts],
            "k--",
            label="MAC ratio (limit)",
        )
        ax.set_xlabel("width γ")
        ax.set_ylabel("speed-up over width 1.0")
        ax.set_title(arch)
        ax.invert_xaxis()
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(PLOTS / "speedup.png")
    plt.close(fig)
    return (
        "## Speed-up against the physical limit\n\n`python -m benchmarks.speedup`. Latency "
        "of the structured network at each width, widths timed in turn within each of 7 repeats; "
        "the speed-up is the median of the per-repeat ratios (range in brackets), against "
        "the ratio of "
        "multiply-accumulates. The paper measured 7.6× for ResNet18 from width 1.0 to 0.25.\n\n"
        + table(
            [
                "arch",
                "batch",
                "threads",
                "width",
                "GMAC",
                "ms",
                "speed-up",
                "MAC ratio",
                "of limit",
            ],
            rows,
        )
        + "\n\n![speed-up](benchmarks/results/plots/speedup.png)\n"
    )


def server_section(d: dict[str, Any]) -> str:
    runs: dict[tuple[str, float, int], list[dict[str, Any]]] = {}
    for r in d["rows"]:
        runs.setdefault((r.get("tier", "torch"), r["gamma"], r["concurrency"]), []).append(r)
    rows = [
        [tier, g, c, len(rs)]
        + [statistics.median(r[k] for r in rs) for k in ("rps", "p50_ms", "p99_ms")]
        + [sum(r["errors"] for r in rs)]
        for (tier, g, c), rs in runs.items()
    ]
    split = [_split_row(key, s, runs) for key, s in d["split_ms"].items()]
    out = (
        "## Server throughput and latency\n\n`python -m benchmarks.server_load`: the default "
        "model, `hey` on the same 2 cores as the server (it takes a share of the CPU), "
        f"{d['threads']} torch threads, raw PNG bodies. One server per tier (`torch`: tier 2 "
        "off), runs alternating between them; medians over the runs.\n\n"
        + table(["tier", "γ", "concurrency", "runs", "req/s", "p50 ms", "p99 ms", "errors"], rows)
        + "\n\nWhere a request's time goes at concurrency 1 (ms). Total: hey's p50 and mean "
        "at c = 1 above (hey is in C and rounds each latency to 0.1 ms, so the mean shows what "
        "the p50 rounds off; the httpx client that reads the daemon's own timings adds ~0.7 ms "
        "of its own). The stages are the daemon's own timings (medians): in the app is its "
        "`latency_ms`, from the route receiving the request to its response; *outside* is the "
        "rest of the round trip: parsing and the write, the kernel's TCP on loopback, hey. "
        "Non-forward: total − forward, from the p50 and from the means (issue 18's goal: "
        "≤ 0.5 ms).\n\n"
        + table(
            [
                "tier",
                "γ",
                "total p50",
                "total mean",
                "decode",
                "queue",
                "forward",
                "rest in the app",
                "outside the app",
                "non-forward (p50)",
                "non-forward (mean)",
            ],
            split,
        )
        + "\n"
    )
    cmp = []
    for (tier, g, c), rs in runs.items():
        if tier != "onnx" or ("torch", g, c) not in runs:
            continue
        on, off = rs, runs[("torch", g, c)]
        rps = statistics.median(r["rps"] for r in on) / statistics.median(r["rps"] for r in off)
        p99 = statistics.median(r["p99_ms"] for r in off) / statistics.median(
            r["p99_ms"] for r in on
        )
        cmp.append([g, c, rps, p99, _allowed(d["split_ms"], runs, g)])
    if cmp:
        out += (
            "\nTier 2 against tier 1 alone: throughput ratio, p99 ratio (tier 1 / tier 2), and "
            "what the forward pass allows (tier 1's mean request at concurrency 1, hey's, with "
            "its forward time replaced by tier 2's):\n\n"
            + table(["γ", "concurrency", "req/s ratio", "p99 ratio", "allowed"], cmp)
            + "\n"
        )
    return out


def _c1(runs: dict[tuple[str, float, int], Any], tier: str, gamma: float, key: str) -> Any:
    """The median over runs of hey's `key` at concurrency 1, or "" with no such figure."""
    at_1 = [r[key] for r in runs.get((tier, gamma, 1), []) if key in r]
    return statistics.median(at_1) if at_1 else ""


def _split_row(key: str, s: dict[str, float], runs: dict[tuple[str, float, int], Any]) -> list:
    tier, gamma = key.split()
    rest = s["in_app"] - s["decode"] - s["queue"] - s["forward"]
    p50, mean = _c1(runs, tier, float(gamma), "p50_ms"), _c1(runs, tier, float(gamma), "mean_ms")
    forward_mean = s.get("forward_mean")
    return [
        tier, gamma, p50, mean, s["decode"], s["queue"], s["forward"], rest,
        "" if p50 == "" else p50 - s["in_app"],
        "" if p50 == "" else p50 - s["forward"],
        "" if mean == "" or forward_mean is None else mean - forward_mean,
    ]  # fmt: skip


def _allowed(splits: dict[str, dict[str, float]], runs: Any, gamma: float) -> Any:
    """The end-to-end speed-up the forward pass alone allows: tier 1's mean request at c = 1
    with its forward time replaced by tier 2's (everything else unchanged)."""
    t1, t2 = splits.get(f"torch {gamma:g}"), splits.get(f"onnx {gamma:g}")
    total = _c1(runs, "torch", gamma, "mean_ms")
    if t1 is None or t2 is None or total == "" or "forward_mean" not in t1:
        return ""
    return total / (total - t1["forward_mean"] + t2["forward_mean"])


def adaptation_section(d: dict[str, Any]) -> str:
    rows = [
        [
            r["model"],
            r["burners"],
            r["mode"],
            r["target_ms"],
            r["p50_ms"],
            r["p99_ms"],
            f"{100 * r['over_target']:.1f} %",
            r["mean_alpha"],
            f"{100 * r['accuracy']:.1f} %" if "accuracy" in r else "n/a",
        ]
        for r in d["rows"]
    ]
    # wide enough for one readable label per bar, however many models ran
    fig, ax = plt.subplots(figsize=(max(7.0, 0.6 * len(d["rows"])), 3.5), dpi=110)
    short = {"cpreresnet20": "c20", "c20digits": "c20 digits", "adaptive": "adapt"}
    labels = [
        "\n".join(
            (
                short.get(r["model"], r["model"]),
                f"cpu {r['burners']}",
                short.get(r["mode"], r["mode"]),
            )
        )
        for r in d["rows"]
    ]
    ax.bar(
        labels,
        [100 * r["over_target"] for r in d["rows"]],
        color=["tab:green" if r["mode"] == "adaptive" else "tab:red" for r in d["rows"]],
    )
    ax.set_ylabel("requests over target (%)")
    ax.tick_params(axis="x", labelsize=6)
    fig.tight_layout()
    fig.savefig(PLOTS / "adaptation.png")
    plt.close(fig)
    return (
        "## Adaptation under contention\n\n`python -m benchmarks.adaptation`: sequential "
        f"requests for {d.get('seconds', 15):.0f} s under `stress-ng --cpu N`, the adaptive "
        "daemon (default `share` objective) against the same "
        "daemon pinned at full accuracy, 1 torch thread, "
        f"tier 2 {'on' if d.get('tier2') else 'off'}. Target = 1.6× the idle full-width "
        "latency; the first min(3 s, half the run) (reaction time) are left out. Accuracy "
        "is the held-out accuracy of the levels that served (the ResNet18- and "
        "cPreResNet20-shaped models have random weights: n/a).\n\n"
        + table(
            [
                "model",
                "burners",
                "mode",
                "target ms",
                "p50 ms",
                "p99 ms",
                "over target",
                "mean α",
                "accuracy",
            ],
            rows,
        )
        + goals_text(d)
        + "\n\n![adaptation](benchmarks/results/plots/adaptation.png)\n"
    )


def goals_text(d: dict[str, Any]) -> str:
    """Issue 16's goals for the adaptation rows, met or not (computed by the benchmark)."""
    goals = d.get("goals")
    if not goals:
        return ""
    rows = [
        [
            g["model"],
            g["burners"],
            f"{100 * g['forward_fraction']:.0f} %",
            f"{100 * g['pinned_over']:.1f} %",
            f"{100 * g['adaptive_over']:.1f} %",
            "n/a" if g["ratio"] is None else f"{g['ratio']:.1f}×",
            g["goal"],
            {True: "met", False: "**not met**", None: "-"}[g["met"]],
        ]
        for g in goals
    ]
    return (
        "\n\nGoals (issue 16): ≥ 10× fewer misses than pinned wherever the forward pass is at "
        "least half of an idle request, and never worse than pinned on the default model "
        "(a run with no adaptive miss counts as one miss).\n\n"
        + table(
            [
                "model",
                "burners",
                "forward / request",
                "pinned over",
                "adaptive over",
                "pinned / adaptive",
                "goal",
                "",
            ],
            rows,
        )
    )


def hog_section(d: dict[str, Any]) -> str:
    def v(x: float | None, f: str = ".2f") -> str:
        return "n/a" if x is None else format(x, f)

    rows = [
        [
            r["mode"],
            "yes" if r["at_top_before"] else "no",
            v(r["compress_s"]),
            v(r["recover_s"]),
            v(r["min_alpha_hog"]),
            v(r["cpu_cores_before"]),
            v(r["cpu_cores_hog"]),
            v(r["cpu_ms_per_request_hog"]),
            v(r["p95_ms_hog"], ".1f"),
            f"{v(r['idle_cores_before'])} / {v(r['idle_cores_hog'])} / {v(r['idle_cores_after'])}",
        ]
        for r in d["rows"]
    ]
    fig, ax = plt.subplots(figsize=(7, 3.2), dpi=110)
    for r, style in zip(d["rows"], ("-", "--", ":"), strict=False):
        t = [p[0] for p in r["trace"]]
        ax.step(t, [p[1] for p in r["trace"]], style, where="post", label=r["mode"], lw=1.8)
    hog = d["rows"][0]["hog_s"] if d["rows"] else d["hog"]
    ax.axvspan(0, hog, color="tab:red", alpha=0.12, label=f"stress-ng --cpu {d['burners']}")
    ax.set_xlabel("s from the hog's start")
    ax.set_ylabel("served α")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(PLOTS / "hog.png")
    plt.close(fig)
    return (
        "## Hog reaction\n\n`python -m benchmarks.hog`: one "
        f"{d['arch']} model (random weights, tier 1 only, 1 torch thread), {d['rate']:.0f} "
        f"paced requests/s; `stress-ng --cpu {d['burners']}` for {d['hog']:.0f} s after "
        f"{d['before']:.0f} s of traffic, then {d['after']:.0f} s more. Compress / recover: "
        "from the hog's start to the first served α below the top, from its end to the top "
        "again. Daemon CPU: its process tree (psutil), in cores, in the hog after 2 s of "
        f"reaction. Latency target {d['target_ms']:.0f} ms. Idle cores are the whole "
        "machine's (/proc/stat): near 0 means other work kept it saturated, and a good "
        "neighbour then has nothing to widen into.\n\n"
        + table(
            [
                "mode",
                "at top before",
                "compress s",
                "recover s",
                "lowest α",
                "cores before",
                "cores in hog",
                "CPU ms / request",
                "p95 ms in hog",
                "idle cores before / hog / after",
            ],
            rows,
        )
        + "\n\n![hog](benchmarks/results/plots/hog.png)\n"
    )


def _budget_rows(d: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """The runs of each mode (one per round; older files hold one run a mode)."""
    by: dict[str, list[dict[str, Any]]] = {}
    for r in d["rows"]:
        by.setdefault(r["mode"], []).append(r)
    return by


def budget_section(d: dict[str, Any]) -> str:
    names = list(d["rates"])
    by = _budget_rows(d)
    med = statistics.median

    def model_cell(rs: list[dict[str, Any]], m: str) -> str:
        if not all(m in r["models"] for r in rs):
            return "n/a"
        alpha = med(r["models"][m]["mean_alpha"] for r in rs)
        return f"{alpha:.2f} / {100 * med(r['models'][m]['over_target'] for r in rs):.0f} %"

    rows = []
    for mode, rs in by.items():
        cores = [r["daemon_cores"] for r in rs if r["daemon_cores"] is not None]
        rows.append(
            [
                mode,
                len(rs),
                f"{100 * med(r['weighted_accuracy'] for r in rs):.2f} %",
                f"{100 * med(r['over_target'] for r in rs):.1f} %",
                " / ".join(f"{100 * r['over_target']:.1f}" for r in rs),
                f"{med(cores):.2f}" if cores else "n/a",
                *(model_cell(rs, m) for m in names),
            ]
        )
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(7, 3), dpi=110)
    modes = list(by)
    for ax, key, color in ((a1, "weighted_accuracy", "tab:blue"), (a2, "over_target", "tab:red")):
        vals = [[100 * r[key] for r in by[m]] for m in modes]
        mid = [med(v) for v in vals]
        pairs = list(zip(mid, vals, strict=True))
        spread = [[c - min(v) for c, v in pairs], [max(v) - c for c, v in pairs]]
        ax.bar(modes, mid, color=color, yerr=spread, capsize=4)
    lo = min(100 * r["weighted_accuracy"] for r in d["rows"])
    a1.set_ylim(max(0, lo - 5), 100)
    a1.set_ylabel("traffic-weighted accuracy (%)")
    a2.set_ylabel("requests over target (%)")
    fig.tight_layout()
    fig.savefig(PLOTS / "budget.png")
    plt.close(fig)
    rates = ", ".join(f"{m} {d['rates'][m]:.0f}/s" for m in names)
    return (
        "## One budget, three models\n\n`python -m benchmarks.budget`: the three bundled digit "
        f"models ({rates}, paced), `stress-ng --cpu {d['burners']}` for {d['hog']:.0f} s; "
        "figures over the hog after 3 s of reaction. **joint**: one daemon, one controller "
        "allocating one CPU budget (`share`). **separate**: a daemon per model, each "
        "controller on its own (each sees the others as other work). **static**: one daemon, "
        "each model fixed at the most accurate level whose profiled forward demand (rate × "
        "forward latency) fits in an equal split of the fair share the daemon's inference "
        "thread gets against the burners (cores / (burners + 1), less 20 % headroom). Target "
        "per model: 1.6× its median latency before the hog in the first run, the same for "
        "every mode. The modes alternate, round after round; medians over the rounds (bars: "
        "the range). Per model: mean α / share over target.\n\n"
        + table(
            [
                "mode",
                "runs",
                "weighted accuracy",
                "over target",
                "over target per run (%)",
                "daemon cores",
                *names,
            ],
            rows,
        )
        + "\n\n![budget](benchmarks/results/plots/budget.png)\n"
    )


def overhead_section(d: dict[str, Any]) -> str:
    models = d.get("models", 1)
    return (
        "## Controller overhead\n\n`python -m benchmarks.controller_overhead`: the controller "
        f"alone in a process with real sensors, the default policy and {models} model(s) with "
        "steady traffic, for "
        f"{d['wall_s']:.0f} s: one iteration takes {d['step_median_ms']:.3f} ms; at the "
        f"{d['interval_s']} s default interval it uses {100 * d['core_share']:.2f} % of one "
        "core (goal: under 1 %).\n"
    )


def request_profile_section(d: dict[str, Any]) -> str:
    rows = [[name, f"{us:.0f}"] for name, us in d["components"].items()]
    return (
        "## Where a request's CPU goes\n\n`python -m benchmarks.request_profile`: one client "
        "sending OIP v2 JSON (one 28×28 digit) back to back to the default model on tier "
        f"{d['tier']}, py-spy sampling the daemon for {d['seconds']:.0f} s ({d['requests']} "
        f"requests): **{d['cpu_us_per_request']:.0f} µs of daemon CPU per request** (process "
        "CPU time / requests), shared out by each component's share of the samples. A "
        "sample is attributed to the innermost frame that names a component. uvloop's own "
        "work in C is not visible (its run loop is also where it waits) and is spread over "
        "the rest. Goal of issue 18: the non-forward part ≤ 500 µs.\n\n"
        + table(["component", "µs per request"], rows)
        + "\n"
        + _libraries(d.get("libraries"), d.get("perf_cpu_us_per_request"))
    )


def _libraries(libraries: dict[str, float] | None, cpu_us: float | None) -> str:
    """perf's view of the daemon's CPU, when the run had perf."""
    if not libraries:
        return ""
    cpu = f" {cpu_us:.0f} µs of CPU a request there, perf's cost included;" if cpu_us else ""
    rows = [[name, f"{100 * share:.1f}"] for name, share in libraries.items()]
    return (
        "\nWhere the daemon's CPU ran, by shared object (`perf record -F 199`, CPU-clock "
        f"samples, in a window of its own after py-spy's;{cpu} perf counts only time on a CPU; "
        "py-spy also samples a thread that is runnable but not running, so the response's "
        "send(2), where the woken client often preempts the daemon, weighs more above than "
        "the kernel's share here.\n\n" + table(["library", "% of daemon CPU"], rows) + "\n"
    )


# How each gRPC load generator is described (results before h2load carry no "client").
GRPC_CLIENT_TEXT = {
    "h2load": "`h2load`, nghttp2's C client, each answer checked by its size",
    "python": "a Python grpc.aio closed loop, which at high concurrency may be the limit itself",
}


def grpc_client(rows: list[dict[str, Any]]) -> str:
    return next((str(r["client"]) for r in rows if "client" in r), "python")


def protocols_section(d: dict[str, Any]) -> str:
    rows = [
        [r["transport"], r["concurrency"], f"{r['rps']:.0f}", f"{r['p50_ms']:.2f}",
         f"{r['p99_ms']:.2f}", r["errors"]]
        for r in sorted(d["rows"], key=lambda r: (r["concurrency"], r["transport"]))
    ]  # fmt: skip
    p = d["parse"]
    return (
        "## Transports\n\n`python -m benchmarks.protocols`: one 28×28 digit per request to the "
        f"default model (served on tier {'2' if d['tier'] == 'onnx' else '1'}, controller off) "
        "as a PNG to `/predict`, as an OIP v2 FP32 tensor in JSON and with the binary tensor "
        "extension (`hey` for the three), and over gRPC (`ModelInfer` with "
        f"`raw_input_contents`; {GRPC_CLIENT_TEXT[grpc_client(d['rows'])]}).\n\n"
        + table(["transport", "concurrency", "req/s", "p50 ms", "p99 ms", "errors"], rows)
        + f"\n\nParsing a 64×1×28×28 FP32 request into the model's tensor (`server/oip.py`): "
        f"JSON {p['json_ms']:.2f} ms for {p['json_bytes'] / 1e6:.2f} MB (orjson), binary "
        f"{p['binary_ms']:.3f} ms for {p['binary_bytes'] / 1e6:.2f} MB.\n"
    )


def models_section(d: dict[str, Any]) -> str:
    out = [
        "## Several models per daemon\n\n`python -m benchmarks.models`: live daemons on "
        "loopback serving 1, 2, 3 copies of one model from a model repository (resident memory "
        "after warm-up; with tier 2, once each model's start-up level has its ONNX session — the "
        "export process is shared and counted apart), then one model replaced repeatedly "
        "(`POST /v2/repository/models/m/load`) under steady load from concurrent clients.\n"
    ]
    rows = []
    for m in d["memory"]:
        per = m["per_extra_model_mb"]
        for r in m["rows"]:
            rows.append(
                [
                    m["arch"],
                    "on" if m["tier2"] else "off",
                    r["models"],
                    f"{r['rss_mb']:.0f}",
                    f"{r['children_mb']:.0f}",
                    "" if per is None else f"{per:.1f}",
                ]
            )
    out.append(
        table(
            ["network", "tier 2", "models", "daemon MB", "export process MB", "MB per extra"], rows
        )
    )
    rows = []
    for r in d["replacement"]:
        rows.append(
            [
                r["arch"],
                r["clients"],
                r["requests"],
                r["failures"],
                f"{r['replace_median_s']:.2f}",
                f"{r['steady']['p50_ms']:.1f}",
                f"{r['steady']['p99_ms']:.1f}",
                f"{r['during']['p50_ms']:.1f}",
                f"{r['during']['p99_ms']:.1f}",
            ]
        )
    out.append(
        "\nReplacement (request to swapped: load, verify, warm and profile the new version off "
        "the request path, swap, free the old one after its requests), and the latency of "
        "requests sent while a replacement ran against those sent away from one:\n"
    )
    out.append(
        table(
            [
                "network",
                "clients",
                "requests",
                "failed",
                "replace s",
                "p50 steady ms",
                "p99 steady ms",
                "p50 during ms",
                "p99 during ms",
            ],
            rows,
        )
    )
    return "\n".join(out) + "\n"


def soak_section(d: dict[str, Any]) -> str:
    n = sum(r["requests"] for r in d["rounds"])
    return (
        "## Soak\n\n`make soak`: concurrency 32 with the level changed every 200 ms, "
        f"{len(d['rounds'])} rounds of `hey`, {n} requests, {d['errors']} errors. Resident "
        f"memory after warm-up {d['rss_start_mb']:.1f} MB → {d['rss_end_mb']:.1f} MB "
        f"({100 * d['growth']:+.1f} %; goal under 10 %).\n"
    )


HEADER_PEERS = ["protocol", "c", "server", "req/s", "p50 ms", "p99 ms", "CPU ms/req", "errors",
                "lcs-serve vs best peer"]  # fmt: skip


def peers_section(d: dict[str, Any]) -> str:
    rows_in = d.get("summary")
    if rows_in is None:  # a results file from before the harness had rounds and protocols
        return "## Against the servers users would pick instead\n\nRun `make bench-peers`.\n"
    protocols = list(dict.fromkeys(r["protocol"] for r in rows_in))
    rows = []
    for proto in protocols:
        for r in sorted(
            (r for r in rows_in if r["protocol"] == proto),
            key=lambda r: (r["concurrency"], r["server"] != "lcs-serve", -r["rps"]),
        ):
            ratio = (
                f"{r['rps_ratio']:.2f}× {r['best_peer']}, p99 {r['p99_ratio']:.2f}×"
                if "rps_ratio" in r
                else ""
            )
            name = f"**{r['server']}**" if r["server"] == "lcs-serve" else r["server"]
            if r.get("gamma", 1.0) != 1.0:  # the controller compressed during the row
                name += f" (γ = {r['gamma']:.2f})"
            bad = "" if r["correct"] else " (wrong answers)"
            rows.append([proto, r["concurrency"], name + bad, round(r["rps"]), r["p50_ms"],
                         r["p99_ms"], r["cpu_ms_per_request"], r["errors"], ratio])  # fmt: skip
    fig, axes = plt.subplots(1, len(protocols), figsize=(3.2 * len(protocols), 3.4), dpi=110,
                             squeeze=False, sharey=True)  # fmt: skip
    servers = list(dict.fromkeys(r["server"] for r in rows_in))
    colour = {n: "black" if n == "lcs-serve" else f"C{i}" for i, n in enumerate(servers)}
    for ax, proto in zip(axes[0], protocols, strict=True):
        pts = [r for r in rows_in if r["protocol"] == proto]
        for name in dict.fromkeys(r["server"] for r in pts):
            own = sorted((r for r in pts if r["server"] == name), key=lambda r: r["concurrency"])
            style = {"lw": 2.5 if name == "lcs-serve" else 1, "color": colour[name]}
            ax.plot([r["concurrency"] for r in own], [r["rps"] for r in own], "o-", label=name,
                    **style)  # fmt: skip
        ax.set_xscale("log", base=2)
        conc = sorted({r["concurrency"] for r in pts})
        ax.set_xticks(conc, [str(c) for c in conc])
        ax.set_title(proto)
        ax.set_xlabel("concurrency")
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("requests/s (median of rounds)")
    fig.tight_layout()
    fig.savefig(PLOTS / "peers.png")
    plt.close(fig)
    settings = "; ".join(f"{k}: {v}" for k, v in d.get("settings", {}).items())
    png = ", ".join(f"{k} {v}" for k, v in d.get("natural_png", {}).items())
    skipped = "; ".join(f"{k}: {v}" for k, v in d.get("skipped", {}).items())
    failed = "; ".join(f"{f['server']} (round {f['round'] + 1}): {f['error'][:120]}"
                       for f in d.get("failures", []))  # fmt: skip
    return (
        "## Against the servers users would pick instead\n\n`make bench-peers` "
        "(`python -m benchmarks.peers_compare`): the default model frozen at γ = 1, exported by "
        "`models/export.py` (ONNX for the ONNX Runtime peers, TorchScript for `triton-torch`), "
        "1 intra-op thread everywhere; each peer in its own venv "
        "(`~/.cache/lcs-serve/peers`). lcs-serve with its defaults, timed once tier 2 serves. "
        "The same OIP v2 request of one 28×28 FP32 image (JSON, binary tensors, gRPC) where "
        "the protocol allows; otherwise each peer's natural API with the same PNG "
        f"({png}). `hey` for HTTP; for gRPC {GRPC_CLIENT_TEXT[grpc_client(d['rows'])]}; "
        f"{d['requests']} requests per "
        f"row, rounds: {d['rounds']}, the servers alternated (each started afresh per "
        "round), medians over rounds. CPU per request: CPU seconds of the server's whole "
        "process tree during the row / requests answered. Ratio: lcs-serve's req/s over the "
        "best peer's on the same protocol and concurrency, and its p99 over the lowest "
        f"peer p99. Forward backend of the peers: {d.get('backend', 'ort')}; lcs-serve's "
        f"controller {d.get('lcs_controller', 'on')} (a row marked γ < 1 ran compressed in a "
        "round: not the same model, not comparable).\n\n"
        f"Settings: {settings}.\n\n"
        + (f"Skipped: {skipped}.\n\n" if skipped else "")
        + (f"Failed: {failed}.\n\n" if failed else "")
        + table(HEADER_PEERS, rows)
        + "\n\n![peers](benchmarks/results/plots/peers.png)\n"
    )


def memory_section(d: dict[str, Any]) -> str:
    rows = []
    for r in d["rows"]:
        lv = r["levels"]
        rows.append(
            [
                r["arch"],
                r["family"],
                r["kind"],
                r["weights_mb"],
                max(x["cache_mb"] for x in lv),
                max(x["buffers_mb"] for x in lv),
                min(x["rss_mb"] for x in lv),
                max(x["rss_mb"] for x in lv),
                max(x["trimmed_mb"] for x in lv),
            ]
        )
    bound = d["rows"][0]["cache_bound_mb"]
    return (
        "## Memory\n\n`python -m benchmarks.memory`: resident set of a process holding the "
        "subspace (random weights) after a forward pass at each of 7 levels, with the "
        'serving caches on. The line subspace\'s cost over the point one is the "weights" '
        "column: structured LCS+L duplicates only the norms. Level cache: the process-wide "
        f"LRU of compressed levels (quantization's bit widths), bounded at {bound:.0f} MB "
        "(`LCS_LEVEL_CACHE_MB`, 256 MiB by default: all six LCS+P bit widths of ResNet18, "
        "five of its LCS+L ones), its largest size over the 7 levels; buffers: the reused "
        "output tensors unstructured levels are written into. *Trimmed*: the resident set "
        "right after `malloc_trim(0)` (the daemon calls it under memory pressure), so the "
        "gap to the column before it is freed memory glibc had kept, not memory held.\n\n"
        + table(
            [
                "arch",
                "family",
                "kind",
                "weights MB",
                "level cache MB",
                "buffers MB",
                "min resident MB",
                "max resident MB",
                "max trimmed MB",
            ],
            rows,
        )
        + "\n"
    )


def tier2_section(d: dict[str, Any]) -> str:
    rows = [
        [
            m["model"],
            r["gamma"],
            r["tier1_ms"],
            r["tier2_ms"],
            r["ort_alone_ms"],
            r["tier1_per_tier2"],
            r["tier2_per_ort_alone"],
            r["tier2_ready_s"],
        ]
        for m in d["models"]
        for r in m["rows"]
    ]
    wide = "; ".join(
        f"{m['model']} {m['tier2_wide_per_narrow']:.2f}, a cache hit served after "
        f"{1e3 * m['cache_hit_ready_s']:.1f} ms"
        for m in d["models"]
    )
    return (
        "## Two tiers\n\n`python -m benchmarks.tier2`: batch 1, one thread, one run. The "
        "daemon's forward pass on tier 1 (PyTorch) and tier 2 (its ONNX Runtime session), and "
        "a stand-alone ORT session of the same network with the same options, timed in "
        "alternation, each timed call after 3 untimed calls of the same variant (a settled "
        "daemon runs one network back to back); ratios are medians of per-round ratios. "
        "Ready: switch to tier 2 serving a new level, settle delay 0 (the daemon's default "
        "adds 1 s); the first level's figure includes starting the export process. ResNet18 "
        "has random weights.\n\n"
        + table(
            [
                "model",
                "γ",
                "tier 1 ms",
                "tier 2 ms",
                "ORT alone ms",
                "tier 1 / tier 2",
                "tier 2 / ORT alone",
                "ready s",
            ],
            rows,
        )
        + f"\n\nTier-2 latency, full width / narrowest (interleaved): {wide}.\n"
    )


def int8_section(d: dict[str, Any]) -> str:
    """The int8 ladder: latency, accuracy and MACs per (width, precision) point."""
    rows, speed = [], []
    fig, ax = plt.subplots(figsize=(7, 3.5), dpi=110)
    for m in d["models"]:
        for r in m["rows"]:
            rows.append(
                [
                    m["model"],
                    r["gamma"],
                    r["format"] or "fp32",
                    r["mmacs"],
                    r["latency_ms"],
                    r["fp32_per_this"],
                    "–" if r["accuracy"] is None else f"{100 * r['accuracy']:.1f}",
                    "–" if r.get("accuracy_loss_points") is None else r["accuracy_loss_points"],
                    "–" if "agreement" not in r else f"{100 * r['agreement']:.1f}",
                    "–" if "agreement" not in r else ("yes" if r["agreement"] >= 0.99 else "no"),
                ]
            )
        wall, cpu = m["speedup_vs_full_fp32"], m.get("speedup_vs_full_fp32_cpu", {})
        speed.append(
            f"{m['model']}: "
            + ", ".join(
                f"{k.removeprefix('narrow_')} {wall[k]:.1f}× wall"
                + (f" / {cpu[k]:.1f}× CPU" if k in cpu else "")
                for k in wall
            )
        )
        for fmt in ("fp32", "qdq", "qoperator"):
            pts = [r for r in m["rows"] if (r["format"] or "fp32") == fmt]
            ax.plot(
                [r["mmacs"] for r in pts],
                [r["latency_ms"] for r in pts],
                marker="o" if fmt == "fp32" else "x",
                label=f"{m['model']} {fmt}",
            )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("MMACs (width)")
    ax.set_ylabel("tier-2 latency, batch 1 (ms)")
    ax.legend(fontsize=6, ncol=3)
    fig.tight_layout()
    fig.savefig(PLOTS / "int8.png")
    plt.close(fig)
    loaded = " Measured on a loaded machine: ratios within one run only." if d.get("loaded") else ""
    return (
        "## int8 on top of width\n\n`python -m benchmarks.int8`: tier 2's session of each "
        "width in fp32 and statically quantized to int8 (ONNX Runtime, per-channel weights, "
        "QDQ and QOperator formats), batch 1, one thread, timed interleaved. Accuracy on the "
        "held-out split; agreement = top-1 agreement with tier 1 (the daemon admits a variant "
        "at ≥ 99 %). ResNet18: random weights at 224×224, calibrated on random images (its "
        f"accuracy is meaningless; its latency is the point).{loaded}\n\n"
        + table(
            [
                "model",
                "γ",
                "precision",
                "MMACs",
                "latency ms",
                "fp32 / this",
                "accuracy %",
                "loss (points)",
                "agreement %",
                "admitted",
            ],
            rows,
        )
        + "\n\nFull-width fp32 / narrowest width per format, interleaved (wall time, and "
        "thread CPU time, which preemption by other work does not inflate): "
        + "; ".join(speed)
        + ".\n\n![int8](benchmarks/results/plots/int8.png)\n"
    )


def main() -> None:
    PLOTS.mkdir(parents=True, exist_ok=True)
    parts = [
        "# Benchmarks\n\nGenerated by `python -m benchmarks.report` from "
        "`benchmarks/results/*.json` (`make bench` runs everything). Medians; the machine "
        "is noisy (±30 %), so compare ratios within one table, not across days.\n"
    ]
    machine = None
    for name, section in (
        ("switch_cost", switch_section),
        ("speedup", speedup_section),
        ("server_load", server_section),
        ("adaptation", adaptation_section),
        ("hog", hog_section),
        ("budget", budget_section),
        ("peers", peers_section),
        ("memory", memory_section),
        ("tier2", tier2_section),
        ("int8", int8_section),
        ("controller_overhead", overhead_section),
        ("models", models_section),
        ("protocols", protocols_section),
        ("request_profile", request_profile_section),
        ("soak", soak_section),
        ("soak_attack", attack_section),
    ):
        d = load(name)
        if d is not None:
            machine = machine or d["machine"]
            text = section(d)
            if "note" in d:  # what a reader must know about one run, kept with its JSON
                head, _, body = text.partition("\n\n")
                text = f"{head}\n\n**Note on this run**: {d['note']}\n\n{body}"
            parts.append(text)
    if machine:
        parts.insert(
            1,
            f"Machine: {machine['cores']} cores, {machine['cpu']}, torch "
            f"{machine['torch']}, Python {machine['python']}.\n",
        )
    (ROOT / "BENCHMARKS.md").write_text("\n".join(parts))
    print("wrote BENCHMARKS.md")


if __name__ == "__main__":
    main()
