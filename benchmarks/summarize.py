"""Markdown table of fast-vs-eager ratios from a pytest-benchmark JSON.

    python -m benchmarks.summarize benchmarks/results/elmo_cpu.json

Rows are grouped by every parameter except `provider`; each provider's minimum time (the least
disturbed round on a shared host) is shown with its speed-up over the 'eager' row of its group,
and, where the group has a 'gemm_bound' row (the LSTM's GEMM-only lower bound), its ratio to it;
then the error against fp32 and the GPU peak memory where rows record them.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict


def summarize(path: str) -> str:
    with open(path) as f:
        data = json.load(f)
    groups: dict[tuple, dict[str, dict]] = defaultdict(dict)
    for b in data["benchmarks"]:
        params = dict(b.get("params") or {})
        provider = params.pop("provider", b["extra_info"].get("provider", "?"))
        key = (b["name"].split("[")[0],) + tuple(sorted((k, str(v)) for k, v in params.items()))
        groups[key][provider] = b
    providers = sorted({p for g in groups.values() for p in g}, key=lambda p: (p != "eager", p))
    machine = data.get("machine_info", {})
    cpu = machine.get("cpu", {}).get("brand_raw", machine.get("processor", ""))
    lines = [f"Source: `{path}` ({data.get('datetime', '')}, {cpu}, {machine.get('node', '')}); min of rounds.", ""]
    head = ["test", "params"] + [f"{p} (s)" for p in providers] + [f"{p} vs eager" for p in providers if p != "eager"]
    head += [f"{p} tokens/s" for p in providers]
    # The LSTM benchmark's GEMM-only lower bound: each provider's time over it.
    bounded = [p for p in providers if p not in ("eager", "gemm_bound")] if "gemm_bound" in providers else []
    head += [f"{p} / gemm_bound" for p in bounded]
    # Extra measurements some rows record: error against fp32 (bf16 providers) and GPU peak memory.
    def having(field):
        return [p for p in providers if any(field in g[p]["extra_info"] for g in groups.values() if p in g)]

    extras = [(p, "rel_rms_err_vs_fp32", "rel RMS err vs fp32", "{:.2e}") for p in having("rel_rms_err_vs_fp32")]
    extras += [(p, "peak_mem_mb", "peak MiB", "{:,.0f}") for p in having("peak_mem_mb")]
    # CPU rows with model FLOPs (benchmarks/peak.py): GFLOP/s and fraction of the GEMM peak, from the min time.
    rated = having("flops")
    head += [f"{p} GFLOP/s (% of peak)" for p in rated]
    head += [f"{p} {label}" for p, _, label, _ in extras]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, row in sorted(groups.items()):
        t = {p: row[p]["stats"]["min"] for p in row}
        cells = [key[0], ", ".join(f"{k}={v}" for k, v in key[1:])]
        cells += [f"{t[p]:.4f}" if p in t else "-" for p in providers]
        cells += [f"{t['eager'] / t[p]:.2f}x" if p in t and "eager" in t else "-" for p in providers if p != "eager"]
        for p in providers:
            info = row[p]["extra_info"] if p in row else {}
            tok = info.get("tokens")
            cells.append(f"{tok / t[p]:,.0f}" if tok and p in t else "-")
        cells += [f"{t[p] / t['gemm_bound']:.2f}" if p in t and "gemm_bound" in t else "-" for p in bounded]
        for p, field, _, fmt in extras:
            value = row[p]["extra_info"].get(field) if p in row else None
            cells.append(fmt.format(value) if value is not None else "-")
        for p in rated:
            info = row[p]["extra_info"] if p in row else {}
            if "flops" in info and info.get("peak_gflops"):
                gf = info["flops"] / t[p] / 1e9
                cells.append(f"{gf:,.0f} ({100 * gf / info['peak_gflops']:.0f}% of {info.get('peak_dtype', '')} {info['peak_gflops']:,.0f})")
            else:
                cells.append("-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("json", nargs="+")
    for path in p.parse_args(argv).json:
        print(summarize(path))
        print()


if __name__ == "__main__":
    main()
