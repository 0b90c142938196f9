"""Run every benchmark: ``python benchmarks/run_all.py --size quick|full``.

``quick`` takes a few minutes on 2 cores; ``full`` grows each comparison until the
reference takes about a minute. Each script writes ``results/<name>_<size>.json``; this
runner also writes ``results/summary_<size>.json`` with every figure against its target.
Set ``OMP_NUM_THREADS`` (recorded in every JSON; default here: 2) before comparing runs.
The GPU script records ``"no GPU"`` unless CuPy sees a CUDA device.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

SCRIPTS = [
    "bench_paths",
    "bench_iteration",
    "bench_generic_solvers",
    "bench_nonconvex",
    "bench_pyscnn",
    "bench_scaling",
    "bench_gpu",
    "bench_real_tokens",
]


def summary(results):
    """Every figure against its target, from the scripts' JSON."""
    out = []
    p = results.get("bench_paths")
    for r in (p or {}).get("rows", []):
        out.append({"what": f"warm 10-value path / cold fit ({r['head']})", "value": r["time_ratio"],
                    "iterations": r["iter_ratio"], "target": "<= 3", "met": r["met_3x"]})
    it = results.get("bench_iteration")
    for r in (it or {}).get("rows", []):
        out.append({"what": f"iteration / GEMMs ({r['head']}, n={r['n']})", "value": r["ratio"],
                    "target": "<= 1.5", "met": r["met_1.5x"]})
    g = results.get("bench_generic_solvers")
    for r in (g or {}).get("table", []):
        out.append({"what": f"speed-up vs {r['solver']} ({r['head']}, n={r['n']}, K={r['K']}, ref {r['ref_s']:.3g}s)",
                    "value": r["speedup"], "target": r["target"], "met": r["met"],
                    "uncertified_reach_speedup": r.get("speedup_reach")})
    nc = results.get("bench_nonconvex")
    if nc and "summary" in nc:
        sm = nc["summary"]
        out.append({"what": "Adam below the convex optimum", "value": sm["adam_below_convex_optimum"],
                    "target": "False", "met": not sm["adam_below_convex_optimum"]})
        out.append({"what": "best Adam objective excess over f*", "value": sm["adam_best_rel_excess"],
                    "target": ">= 0", "met": sm["adam_best_rel_excess"] >= -1e-9})
        for r in nc["table"]:
            out.append({"what": f"speed-up vs best Adam to within {r['rel']:g} of f*", "value": r["speedup"],
                        "target": "> 1", "met": r["speedup"] > 1})
    ps = results.get("bench_pyscnn")
    if ps and "skipped" in ps:
        out.append({"what": "vs pyscnn", "value": ps["skipped"], "target": ">= 2", "met": None})
    for r in (ps or {}).get("rows", []):
        out.append({"what": f"speed-up vs pyscnn R-FISTA, materialised features (n={r['n']}, d={r['d']}, P={r['P']})",
                    "value": r["speedup"], "target": ">= 2", "met": r["met_2x"]})
        if "speedup_matrix_free" in r:
            out.append({"what": f"speed-up vs pyscnn R-FISTA, matrix-free GatedTokenOperator, as the head (n={r['n']}, d={r['d']}, P={r['P']})",
                        "value": r["speedup_matrix_free"], "target": ">= 2", "met": r["met_2x_matrix_free"]})
    rt = results.get("bench_real_tokens")
    targets = {("sst2", "attention"): 60.0, ("sst2", "mixer"): 30.0, ("sst2_384", "attention"): 300.0}
    for ds, entry in ((rt or {}).get("results") or {}).items():
        for head, h in entry["heads"].items():
            for solver, r in h.get("solvers", {}).items():
                if "fit_s" not in r:
                    continue
                full = entry["data"]["n_train"] == entry["data"]["n_train_full"]
                limit = targets.get((ds, head)) if full else None  # issue 13's targets: all rows
                t = float(r["time_cert_1e-4null"])  # JSON holds inf as "inf"
                out.append({"what": f"real tokens: seconds to gap <= 1e-4 x null loss ({ds}, {head}, {solver}, "
                                    f"n={entry['data']['n_train']}, test acc {r['test_accuracy']:.3f})",
                            "value": t, "target": f"<= {limit:g} s" if limit else "report",
                            "met": (t <= limit) if limit else None})
            a = h.get("adam")
            if a and "runs" in a:
                out.append({"what": f"real tokens: Adam below f* - gap ({ds}, {head})",
                            "value": a["adam_below_certified_bound"], "target": "False",
                            "met": not a["adam_below_certified_bound"]})
                sp = float(a["speedup_vs_best_adam"])
                out.append({"what": f"real tokens: speed-up vs best Adam to within 1e-3 of f* ({ds}, {head})",
                            "value": sp, "target": "> 1", "met": sp > 1})
    gp = results.get("bench_gpu")
    if gp:
        out.append({"what": "GPU paper scale", "value": gp.get("status"), "target": "time to gap 1e-4", "met": None})
    return out


def main(argv=None):
    import argparse

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", choices=("tiny", "quick", "full"), default="quick")
    p.add_argument("--out", default=str(HERE / "results"))
    p.add_argument("--only", default=None, help="comma-separated script names")
    p.add_argument("--summarize", action="store_true",
                   help="only rebuild the summary from the JSON already in --out")
    args = p.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    scripts = args.only.split(",") if args.only else SCRIPTS
    results, timings = {}, {}
    if args.summarize:
        for name in SCRIPTS:
            path = Path(args.out) / f"{name.replace('bench_', '')}_{args.size}.json"
            if path.exists():
                results[name] = json.loads(path.read_text())
        scripts = []
    for name in scripts:
        t0 = time.perf_counter()
        print(f"\n######## {name} (--size {args.size})", flush=True)
        try:
            mod = importlib.import_module(name)
            path = mod.main(["--size", args.size, "--out", args.out])
            results[name] = json.loads(Path(path).read_text())
        except Exception:  # one failing benchmark must not hide the others
            traceback.print_exc()
            results[name] = {"error": traceback.format_exc()[-2000:]}
        timings[name] = time.perf_counter() - t0
    rows = summary(results)
    print("\n######## summary")
    for r in rows:
        v = r["value"]
        v = f"{v:.3g}" if isinstance(v, float) else v
        print(f"  {str(r['met']):5s}  {r['what']}: {v} (target {r['target']})")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"summary_{args.size}.json"
    from _common import _jsonable, environment

    path.write_text(json.dumps(_jsonable({"size": args.size, "environment": environment(),
                                          "script_seconds": timings, "figures": rows,
                                          "errors": {k: v["error"] for k, v in results.items() if "error" in v}}),
                               indent=1))
    print(f"-> {path}")
    return path


if __name__ == "__main__":
    main()
