"""Interleaved CPU benchmark of the bf16 micro-kernels against fp32, on a shared host: every round
runs each provider once, in turn, so ratios compare runs seconds apart under the same load.

    OMP_WAIT_POLICY=ACTIVE python -m benchmarks.bench_interleaved --rounds 7 --out benchmarks/results/zen4_bf16

Providers (2 threads by default):
  peak        our packed micro-kernel and torch.mm at 2048^3, fp32 and bf16 (benchmarks/peak.py)
  elmo        the whole 'original' Elmo forward on 32 x 20 words of real text: fast fp32, fast with
              set_gemm_dtype(torch.bfloat16), and eager (backend="torch", AllenNLP's structure)
  bilstm      the 'original' stacked biLSTM alone (ElmoLstm, 32 x 22 packed): cpp fp32, cpp bf16, and
              torch.nn.LSTM(proj_size=512) per layer and direction (benchmarks/test_bench_lstm.py)
Each row: median time, tokens/s, model GFLOP/s and its fraction of the same round's packed-kernel
peak in the row's GEMM dtype; then the per-round ratios (median, min, max). Writes interleaved.json
(every round's raw times) and prints the markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import time

import torch

from benchmarks.common import real_text_batch
from benchmarks.peak import elmo_flops, lstm_flops, measure_gemm
from benchmarks.test_bench_lstm import _inputs, _model, _torch_lstm_step
from elmo_fast import PRESETS, Elmo, batch_to_ids
from elmo_fast.testing import random_tf_weights, write_hdf5


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def _cpu_description() -> dict:
    info = {"platform": platform.platform(), "torch": torch.__version__,
            "gemm_isa": torch.ops.elmo_fast.gemm_isa(), "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in lscpu.splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("Model name", "CPU(s)", "Flags", "L2 cache", "L3 cache", "Hypervisor vendor"):
                info[key.strip()] = value.strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return info


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=None, help="folder for interleaved.json (default: print only)")
    p.add_argument("--weights", default="/tmp/elmo_fast_bench_original.hdf5")
    p.add_argument("--no-eager", action="store_true", help="skip the (slow) eager Elmo row")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if not os.path.exists(args.weights):
        write_hdf5(args.weights, random_tf_weights(PRESETS["original"], scale=1.0, seed=0))

    batch = real_text_batch(32, 20)
    ids = batch_to_ids(batch)
    n_tokens = sum(map(len, batch))
    e_flops = elmo_flops(PRESETS["original"], batch)
    elmos = {"fast": Elmo("original", args.weights, 1, dropout=0.0, stateful=False).eval(),
             "fast-bf16": Elmo("original", args.weights, 1, dropout=0.0, stateful=False).eval()}
    elmos["fast-bf16"].set_gemm_dtype(torch.bfloat16)
    if not args.no_eager:
        elmos["eager"] = Elmo("original", args.weights, 1, dropout=0.0, stateful=False, backend="torch").eval()
    with torch.no_grad():
        ref = elmos["fast"](ids)["elmo_representations"][0]
        err = elmos["fast-bf16"](ids)["elmo_representations"][0] - ref
        rel_rms = (err.pow(2).mean() / ref.pow(2).mean()).sqrt().item()

    model = _model("original").cpu()
    x, mask = _inputs(32, 20, model.hidden_size)
    lstm = PRESETS["original"]["lstm"]
    l_flops = lstm_flops(mask.sum(1), x.shape[1], lstm["projection_dim"], lstm["dim"], lstm["projection_dim"], lstm["n_layers"])
    torch_lstm = _torch_lstm_step(model, x, mask, None)

    def bilstm(gemm_dtype):
        def run():
            model.set_gemm_dtype(gemm_dtype)
            model(x, mask)
        return run

    rows = {  # name -> (fn, flops, tokens, gemm dtype)
        **{f"elmo {k}": ((lambda m=m: m(ids)), e_flops, n_tokens, "bf16" if k == "fast-bf16" else "fp32") for k, m in elmos.items()},
        "bilstm cpp": (bilstm(None), l_flops, int(mask.sum()), "fp32"),
        "bilstm cpp-bf16": (bilstm(torch.bfloat16), l_flops, int(mask.sum()), "bf16"),
        "bilstm torch.nn.LSTM": (torch_lstm, l_flops, int(mask.sum()), "fp32"),
    }
    peaks = {"fp32": torch.float32, "bf16": torch.bfloat16}
    raw: dict[str, list[float]] = {name: [] for name in rows}
    raw.update({f"peak {k} {impl}": [] for k in peaks for impl in ("packed", "torch_mm")})
    with torch.no_grad():
        for fn, *_ in rows.values():  # warm-up: packed copies, allocator
            fn()
        for r in range(args.rounds):
            for k, dt in peaks.items():
                for impl, gflops in measure_gemm(2048, 2048, 2048, dt, repeats=2).items():
                    raw[f"peak {k} {impl}"].append(gflops)
            for name, (fn, *_rest) in rows.items():
                raw[name].append(_timed(fn))
            print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{n} {v[-1]:.3g}" for n, v in raw.items()), flush=True)

    med = statistics.median
    summary = {}
    lines = ["| row | median s | tokens/s | GFLOP/s | of packed peak (same round) |", "|---|---|---|---|---|"]
    for k in peaks:
        for impl in ("packed", "torch_mm"):
            v = raw[f"peak {k} {impl}"]
            lines.append(f"| peak {k} {impl} 2048^3 | - | - | {med(v):,.0f} (min {min(v):,.0f}, max {max(v):,.0f}) | - |")
    for name, (_, flops, tokens, dt) in rows.items():
        times = raw[name]
        fracs = [flops / t / 1e9 / pk for t, pk in zip(times, raw[f"peak {dt} packed"])]
        summary[name] = {"median_s": med(times), "tokens_per_s": tokens / med(times), "gflops": flops / med(times) / 1e9,
                         "frac_of_peak_median": med(fracs), "gemm_dtype": dt, "flops": flops}
        lines.append(f"| {name} | {med(times):.3f} | {tokens / med(times):,.0f} | {flops / med(times) / 1e9:,.0f} | "
                     f"{100 * med(fracs):.0f}% of {dt} (rounds {100 * min(fracs):.0f}-{100 * max(fracs):.0f}%) |")

    def ratio(a, b):
        rs = [y / x for x, y in zip(raw[a], raw[b])]
        return {"median": med(rs), "min": min(rs), "max": max(rs)}

    ratios = {"elmo bf16 vs fp32 fast": ratio("elmo fast-bf16", "elmo fast"),
              "bilstm bf16 vs fp32 cpp": ratio("bilstm cpp-bf16", "bilstm cpp"),
              "bilstm cpp vs torch.nn.LSTM": ratio("bilstm cpp", "bilstm torch.nn.LSTM"),
              "bilstm cpp-bf16 vs torch.nn.LSTM": ratio("bilstm cpp-bf16", "bilstm torch.nn.LSTM")}
    if "elmo eager" in raw:
        ratios["elmo fast-bf16 vs eager"] = ratio("elmo fast-bf16", "elmo eager")
        ratios["elmo fast vs eager"] = ratio("elmo fast", "elmo eager")
    lines += ["", "| speed-up (per round, time ratio) | median | min | max |", "|---|---|---|---|"]
    lines += [f"| {k} | {v['median']:.2f}x | {v['min']:.2f}x | {v['max']:.2f}x |" for k, v in ratios.items()]
    lines += ["", f"elmo_representations[0], bf16 GEMMs vs fp32: relative RMS error {rel_rms:.2e}"]
    print("\n".join(lines))
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        result = {"machine": _cpu_description(), "threads": args.threads, "rounds": args.rounds,
                  "datetime": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "raw": raw, "summary": summary,
                  "ratios": ratios, "rel_rms_err_bf16_vs_fp32": rel_rms, "table": lines}
        from elmo_fast.utils import atomic_write_text

        atomic_write_text(os.path.join(args.out, "interleaved.json"), json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
