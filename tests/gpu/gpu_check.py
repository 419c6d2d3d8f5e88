#!/usr/bin/env python3
"""GPU check: cost-probe's energy figures against NVML and against the server's own compute log.

Starts tests/gpu/gpu_server.py (real device work per token, a FIFO queue in front of its slots),
attaches `cost-probe attach` to it, drives concurrent load (more clients than slots, so requests
queue), and compares:

  (a) gpu energy   each `interval` record's measured GPU energy with NVML's total-energy counter
                   (nvmlDeviceGetTotalEnergyConsumption, mJ) read independently by this script
                   over the same window;
  (b) conservation Σ requests + idle + other = measured, per interval and domain, in integer µJ;
                   and the request records' energy adds up to the intervals' attributed energy;
  (c) shares       each request's share of the attributed energy (GPU with --device cuda, CPU with
                   --device cpu) with its share of the compute the server measured for it (CUDA
                   events; the slot thread's CPU time on cpu).

Prints a table, writes DIR/summary.json (with DIR/records.ndjson, DIR/server.ndjson and
DIR/nvml.ndjson beside it). Exit 0: every comparison that ran is within its tolerance; 1: one is
not; 2: bad input or a missing prerequisite (one line on stderr). `--device cpu` is the dry run
for machines without a GPU: no NVML, so (a) is skipped and says so.

Stdlib only here (pynvml for --device cuda); the server needs torch for cuda.
"""
import argparse
import calendar
import http.client
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


class Prereq(Exception):
    """A missing prerequisite or bad input: exit 2 with this one line."""


def parse_args():
    ap = argparse.ArgumentParser(description="cost-probe GPU check (see the module docstring)")
    ap.add_argument("--bin", required=True, help="the cost-probe release binary")
    ap.add_argument("--out", required=True, help="directory for records and the summary")
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--slots", type=int, default=1, help="server slots (requests queue for one)")
    ap.add_argument("--clients", type=int, default=4, help="concurrent clients")
    ap.add_argument("--requests", type=int, default=48)
    ap.add_argument("--min-tokens", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--ms-per-token", type=float, default=10.0)
    ap.add_argument("--interval-ms", type=int, default=100, help="cost-probe --interval")
    ap.add_argument("--idle-s", type=float, default=3.0, help="idle before and after the load")
    ap.add_argument("--rules", help="rules directory passed to cost-probe")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--tol-interval", type=float, default=0.05,
                    help="(a) per-interval relative tolerance (or two counter steps if larger)")
    ap.add_argument("--min-intervals-ok", type=float, default=0.95,
                    help="(a) fraction of intervals that must be within tolerance")
    ap.add_argument("--tol-window", type=float, default=0.01, help="(a) whole-window tolerance")
    ap.add_argument("--tol-share", type=float, default=0.10,
                    help="(c) per-request tolerance, relative to the server's share")
    args = ap.parse_args()
    bad = [n for n in ("slots", "clients", "requests", "min_tokens", "interval_ms")
           if getattr(args, n) < 1]
    if bad or args.max_tokens < args.min_tokens or args.ms_per_token <= 0 or args.idle_s < 0:
        raise Prereq("bad arguments: counts must be ≥ 1, --max-tokens ≥ --min-tokens, "
                     "--ms-per-token > 0, --idle-s ≥ 0")
    return args


# ---- NVML, read independently of cost-probe ----------------------------------------------------

class NvmlPoller:
    """Polls every GPU's total-energy counter (mJ) every `period` s.

    Polls are stamped with CLOCK_MONOTONIC, cost-probe's clock, and record times are mapped back
    to it with one realtime−monotonic offset taken at start, as cost-probe maps its own: an NTP
    slew during the run then moves neither side."""

    def __init__(self, period=0.005):
        try:
            import pynvml
        except ImportError as e:
            raise Prereq("--device cuda needs nvidia-ml-py (import pynvml failed)") from e
        self.nvml = pynvml
        try:
            pynvml.nvmlInit()
            n = pynvml.nvmlDeviceGetCount()
            self.handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(n)]
            for h in self.handles:
                pynvml.nvmlDeviceGetTotalEnergyConsumption(h)
        except pynvml.NVMLError as e:
            raise Prereq(f"NVML: {e} (needs a driver and a GPU with an energy counter)") from e
        if not self.handles:
            raise Prereq("NVML sees no GPU")
        # Older nvidia-ml-py returns bytes here, newer str.
        self.names = [n.decode() if isinstance(n, bytes) else n
                      for n in map(pynvml.nvmlDeviceGetName, self.handles)]
        self.period = period
        self.samples = []  # (monotonic ns, [mJ per GPU])
        self.wall_offset = time.time_ns() - time.monotonic_ns()
        self.stop_ev = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        get = self.nvml.nvmlDeviceGetTotalEnergyConsumption
        while not self.stop_ev.is_set():
            t = time.monotonic_ns()
            self.samples.append((t, [get(h) for h in self.handles]))
            self.stop_ev.wait(self.period)

    def start(self):
        self.thread.start()

    def stop(self):
        self.stop_ev.set()
        self.thread.join()
        self.nvml.nvmlShutdown()

    def energy_at(self, gpu, wall_ns):
        """The counter at `wall_ns` (mJ), linear between the two polls around it; None outside."""
        t = wall_ns - self.wall_offset
        s = self.samples
        lo, hi = 0, len(s) - 1
        if not s or t < s[0][0] or t > s[-1][0]:
            return None
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if s[mid][0] <= t:
                lo = mid
            else:
                hi = mid
        (t0, e0), (t1, e1) = s[lo], s[hi]
        if t1 == t0:
            return float(e0[gpu])
        return e0[gpu] + (e1[gpu] - e0[gpu]) * (t - t0) / (t1 - t0)

    def step_mj(self, gpu):
        """The counter's typical update (median positive increment between polls), mJ."""
        incs = [b[1][gpu] - a[1][gpu] for a, b in zip(self.samples, self.samples[1:])]
        incs = [i for i in incs if i > 0]
        return statistics.median(incs) if incs else 0.0

    def update_ms(self, gpu):
        """The counter's update period: median time between changes, ms."""
        changes = [t for (t, e), (_, p) in zip(self.samples[1:], self.samples) if e[gpu] != p[gpu]]
        gaps = [(b - a) / 1e6 for a, b in zip(changes, changes[1:])]
        return statistics.median(gaps) if gaps else None


# ---- processes -------------------------------------------------------------------------------

def wait_line(stream, pred, timeout, sink):
    """Reads `stream` lines (copying them to `sink`) until `pred(line)`; keeps draining after."""
    found = threading.Event()
    result = {}

    def pump():
        for line in stream:
            sink.write(line)
            sink.flush()
            if not found.is_set() and pred(line):
                result["line"] = line
                found.set()
        found.set()

    threading.Thread(target=pump, daemon=True).start()
    found.wait(timeout)
    return result.get("line")


def start_server(args, out):
    cmd = [sys.executable, str(HERE / "gpu_server.py"), "--device", args.device,
           "--slots", str(args.slots), "--ms-per-token", str(args.ms_per_token),
           "--log", str(out / "server.ndjson")]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log = open(out / "server.out", "w")
    line = wait_line(proc.stdout, lambda l: l.startswith("listening "), 300, log)
    if line is None:
        proc.kill()
        proc.wait()
        tail = (out / "server.out").read_text().strip().splitlines()
        raise Prereq("the server did not start: " + (tail[-1] if tail else "no output"))
    fields = dict(kv.split("=") for kv in line.split()[2:])
    return proc, int(line.split()[1]), fields


def start_probe(args, out, pid):
    cmd = [args.bin, "attach", "--pid", str(pid), "--output", str(out / "records.ndjson"),
           "--interval", str(args.interval_ms)]
    if args.rules:
        cmd += ["--rules", args.rules]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    log = open(out / "cost-probe.stderr", "w")
    if wait_line(proc.stderr, lambda l: "tracing pid" in l, 60, log) is None:
        proc.kill()
        proc.wait()
        tail = (out / "cost-probe.stderr").read_text().strip().splitlines()
        code = proc.returncode
        raise Prereq(f"cost-probe attach did not attach (exit {code}): "
                     + (tail[-1] if tail else "no output"))
    return proc


# ---- load ------------------------------------------------------------------------------------

def request_plan(args):
    rng = random.Random(args.seed)
    plan = []
    for i in range(args.requests):
        words = rng.randint(10, 400)
        plan.append({
            "messages": [{"role": "user", "content": " ".join(["token"] * words)}],
            "max_tokens": rng.randint(args.min_tokens, args.max_tokens),
            # One in four non-streamed: cost-probe prices those from their `timings`/overlap.
            "stream": i % 4 != 3,
        })
    return plan


def send(port, body):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    data = json.dumps(body).encode()
    t0 = time.time_ns()
    conn.request("POST", "/v1/chat/completions", body=data,
                 headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    raw = resp.read()
    conn.close()
    ok = resp.status == 200 and (not body["stream"] or raw.rstrip().endswith(b"data: [DONE]"))
    return {"status": resp.status, "ok": ok, "client_ms": (time.time_ns() - t0) / 1e6}


def drive(args, port, plan):
    pending = list(enumerate(plan))
    lock = threading.Lock()
    results = [None] * len(plan)

    def client():
        while True:
            with lock:
                if not pending:
                    return
                i, body = pending.pop(0)
            try:
                results[i] = send(port, body)
            except (OSError, http.client.HTTPException) as e:
                results[i] = {"ok": False, "error": str(e)}

    threads = [threading.Thread(target=client) for _ in range(args.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


# ---- records ---------------------------------------------------------------------------------

def rfc3339_ns(s):
    """`2026-12-01T20:50:00.123456789Z` → ns since the epoch (cost-probe writes UTC, `Z`)."""
    if not s.endswith("Z"):
        raise ValueError(f"timestamp not in UTC: {s}")
    head, _, frac = s[:-1].partition(".")
    secs = calendar.timegm(time.strptime(head, "%Y-%m-%dT%H:%M:%S"))
    return secs * 1_000_000_000 + int((frac + "000000000")[:9])


def uj(j):
    return round(j * 1e6)


def domain_class(domain):
    if domain.startswith("gpu:"):
        return "gpu"
    return "dram" if "dram" in domain else "cpu"


def load_ndjson(path):
    if not path.exists():
        return []
    return [json.loads(l) for l in path.read_text().splitlines() if l.strip()]


# ---- the comparisons -------------------------------------------------------------------------

def check_gpu_energy(args, intervals, poller):
    """(a) per-interval GPU energy vs NVML's counter read here."""
    if poller is None:
        return {"ran": False, "why": "--device cpu: no NVML read and no GPU work (dry run)"}
    per_gpu = []
    ok_all = True
    for gpu, name in enumerate(poller.names):
        dom = f"gpu:{gpu}"
        step_j = poller.step_mj(gpu) / 1e3
        rows = []
        cp_sum = nv_first = nv_last = None
        for rec in intervals:
            if dom not in rec.get("measured_j", {}):
                continue
            s, e = rfc3339_ns(rec["start"]), rfc3339_ns(rec["end"])
            a, b = poller.energy_at(gpu, s), poller.energy_at(gpu, e)
            if a is None or b is None:
                continue
            cp, nv = rec["measured_j"][dom], (b - a) / 1e3
            tol = max(args.tol_interval * nv, 2 * step_j)
            rows.append({"start": rec["start"], "cost_probe_j": cp, "nvml_j": nv,
                         "diff_j": cp - nv, "tol_j": tol, "ok": abs(cp - nv) <= tol})
            cp_sum = (cp_sum or 0.0) + cp
            nv_first = a if nv_first is None else nv_first
            nv_last = b
        if not rows:
            per_gpu.append({"gpu": gpu, "ran": False, "why": f"no interval record has {dom}"})
            ok_all = False
            continue
        nv_sum = (nv_last - nv_first) / 1e3
        frac_ok = sum(r["ok"] for r in rows) / len(rows)
        window_err = (cp_sum - nv_sum) / nv_sum if nv_sum else float("inf")
        ok = frac_ok >= args.min_intervals_ok and abs(window_err) <= args.tol_window
        ok_all &= ok
        rel = [abs(r["diff_j"]) / r["nvml_j"] for r in rows if r["nvml_j"] > 0]
        per_gpu.append({
            "gpu": gpu, "name": name, "ran": True, "ok": ok, "intervals": len(rows),
            "intervals_ok_fraction": frac_ok, "window_cost_probe_j": cp_sum,
            "window_nvml_j": nv_sum, "window_rel_err": window_err,
            "median_rel_err": statistics.median(rel) if rel else None,
            "max_rel_err": max(rel) if rel else None,
            "counter_step_j": step_j, "counter_update_ms": poller.update_ms(gpu),
            "rows": rows,
        })
    return {"ran": True, "ok": ok_all, "gpus": per_gpu}


def check_conservation(intervals, requests):
    """(b) Σ requests + idle + other = measured, exactly, per interval and domain; and the
    request records add up to the intervals' attributed energy."""
    bad = []
    parts = 0
    attributed = {}
    for rec in intervals:
        for d in rec.get("domains", []):
            parts += 1
            m, a, i, o = (uj(d[k]) for k in ("measured_j", "attributed_j", "idle_j", "other_j"))
            if a + i + o != m or min(a, i, o) < 0:
                bad.append({"start": rec["start"], "domain": d["domain"], "measured_uj": m,
                            "attributed_uj": a, "idle_uj": i, "other_uj": o})
            cls = domain_class(d["domain"])
            attributed[cls] = attributed.get(cls, 0) + a
    sums = {}
    for cls, total in attributed.items():
        req = sum(uj(r.get("energy_j", {}).get(cls, 0.0)) for r in requests)
        # Each record's joules are its integer µJ printed as f64: ±1 µJ per record at most.
        sums[cls] = {"intervals_attributed_j": total / 1e6, "requests_j": req / 1e6,
                     "ok": abs(req - total) <= len(requests)}
    ok = parts > 0 and not bad and all(s["ok"] for s in sums.values())
    # Not checked, shown: where each domain's idle figure came from decides what is left to split.
    idle = {}
    for rec in intervals:
        for d in rec.get("domains", []):
            key = f"{d['domain']} {d.get('idle_source')} {d.get('idle_w', 0):.1f} W"
            idle[key] = idle.get(key, 0) + 1
    return {"ran": True, "ok": ok, "interval_domains": parts, "violations": bad[:20],
            "idle": dict(sorted(idle.items(), key=lambda kv: -kv[1])),
            "violation_count": len(bad), "request_sums": sums}


def join_requests(requests, server_log):
    """Pairs each cost-probe request record with the server's log line by the client's port."""
    by_port = {}
    for r in requests:
        peer = (r.get("conn") or {}).get("peer")
        if peer and (r.get("http") or {}).get("path") == "/v1/chat/completions":
            by_port.setdefault(int(peer.rsplit(":", 1)[1]), []).append(r)
    pairs, unmatched = [], []
    for s in server_log:
        recs = by_port.get(s["peer_port"], [])
        if len(recs) == 1:
            pairs.append((s, recs[0]))
        else:
            unmatched.append({"id": s["id"], "peer_port": s["peer_port"], "records": len(recs)})
    return pairs, unmatched


def check_shares(args, pairs, unmatched, cls):
    """(c) each request's share of the attributed energy vs its share of the server's compute."""
    if not pairs:
        return {"ran": False, "ok": False, "why": "no request record matched the server's log"}
    e_total = sum(r.get("energy_j", {}).get(cls, 0.0) for _, r in pairs)
    c_total = sum(s["compute_ms"] for s, _ in pairs)
    if e_total <= 0 or c_total <= 0:
        return {"ran": False, "ok": False,
                "why": f"no {cls} energy attributed to the requests ({e_total} J)"}
    rows = []
    for s, r in sorted(pairs, key=lambda p: p[0]["id"]):
        e = r.get("energy_j", {}).get(cls, 0.0)
        es, cs = e / e_total, s["compute_ms"] / c_total
        rows.append({
            "id": s["id"], "stream": s["stream"], "queue_ms": s["queue_ms"],
            "compute_ms": s["compute_ms"], "energy_j": e, "energy_share": es,
            "compute_share": cs, "rel_err": (es - cs) / cs,
            "ok": abs(es - cs) <= args.tol_share * cs,
            "cost_probe_queue_ms": r.get("queue_ms"), "flags": r.get("flags", []),
        })
    errs = [abs(r["rel_err"]) for r in rows]
    ok = all(r["ok"] for r in rows) and not unmatched
    return {"ran": True, "ok": ok, "class": cls, "requests": len(rows), "unmatched": unmatched,
            "attributed_j": e_total, "compute_ms": c_total,
            "mean_abs_rel_err": statistics.mean(errs), "max_abs_rel_err": max(errs),
            "within_tol": sum(r["ok"] for r in rows), "rows": rows}


# ---- report ----------------------------------------------------------------------------------

def verdict(c):
    return "skip" if not c.get("ran") else ("ok" if c["ok"] else "FAIL")


def print_report(args, summary):
    a, b, c = summary["gpu_energy"], summary["conservation"], summary["shares"]
    print(f"\ncost-probe GPU check ({args.device}, {args.slots} slot(s), {args.clients} clients, "
          f"{summary['load']['requests']} requests, interval {args.interval_ms} ms, "
          f"{summary['wall_s']:.0f} s)")
    print(f"server: {summary['server']}")
    if c.get("ran"):
        # cost-probe's own queue figure, where the build being checked writes one.
        cpq = any(r["cost_probe_queue_ms"] is not None for r in c["rows"])
        cpq_head = f"{'cp queue':>9}" if cpq else ""
        print(f"\n{'id':>4} {'stream':>6} {'queue_ms':>9} {cpq_head} "
              f"{'compute_ms':>10} {'energy_J':>10} {'E share':>8} {'C share':>8} {'rel err':>8}")
        for r in c["rows"]:
            q = r["cost_probe_queue_ms"]
            q = (f"{q:>9.1f}" if q is not None else f"{'-':>9}") if cpq else ""
            print(f"{r['id']:>4} {str(r['stream']):>6} {r['queue_ms']:>9.1f} {q} "
                  f"{r['compute_ms']:>10.1f} {r['energy_j']:>10.4f} {r['energy_share']:>8.2%} "
                  f"{r['compute_share']:>8.2%} {r['rel_err']:>+8.1%}{'' if r['ok'] else '  !'}")
    print(f"\n{'check':<34} {'result':<6} detail")
    if a.get("ran"):
        for g in a["gpus"]:
            if not g.get("ran"):
                print(f"{'(a) gpu:%d energy vs NVML' % g['gpu']:<34} {'FAIL':<6} {g['why']}")
                continue
            print(f"{'(a) gpu:%d energy vs NVML' % g['gpu']:<34} "
                  f"{'ok' if g['ok'] else 'FAIL':<6} "
                  f"window {g['window_cost_probe_j']:.1f} J vs {g['window_nvml_j']:.1f} J "
                  f"({g['window_rel_err']:+.2%}, tol ±{args.tol_window:.0%}); "
                  f"{g['intervals_ok_fraction']:.0%} of {g['intervals']} intervals within "
                  f"max({args.tol_interval:.0%}, 2 counter steps = {2 * g['counter_step_j']:.2f} J) "
                  f"(need {args.min_intervals_ok:.0%}); median err {g['median_rel_err']:.2%}, "
                  f"counter update {g['counter_update_ms'] or 0:.0f} ms")
    else:
        print(f"{'(a) gpu energy vs NVML':<34} {'skip':<6} {a['why']}")
    sums = ", ".join(f"{k}: requests {v['requests_j']:.4f} J vs intervals "
                     f"{v['intervals_attributed_j']:.4f} J" for k, v in b["request_sums"].items())
    print(f"{'(b) Σ req + idle + other = measured':<34} {verdict(b):<6} "
          f"{b['violation_count']} of {b['interval_domains']} interval-domains off by ≥ 1 µJ; "
          f"{sums}")
    idle = ", ".join(f"{k} ({n})" for k, n in list(b["idle"].items())[:4])
    print(f"{'    idle (interval count)':<34} {'':<6} {idle}")
    if c.get("ran"):
        print(f"{'(c) %s share vs server compute' % c['class']:<34} {verdict(c):<6} "
              f"{c['within_tol']} of {c['requests']} requests within ±{args.tol_share:.0%} "
              f"(relative); mean |err| {c['mean_abs_rel_err']:.1%}, "
              f"max {c['max_abs_rel_err']:.1%}; unmatched {len(c['unmatched'])}; "
              f"{c['attributed_j']:.6f} J attributed for {c['compute_ms'] / 1e3:.1f} s of compute")
    else:
        print(f"{'(c) share vs server compute':<34} {'FAIL':<6} {c['why']}")
    print(f"\nresult: {'PASS' if summary['ok'] else 'FAIL'}  (summary: {summary['out']})")


def run(args):
    binary = Path(args.bin)
    if not (binary.is_file() and os.access(binary, os.X_OK)):
        raise Prereq(f"{args.bin}: no such executable (build it: cargo build --release -p "
                     "cost-probe)")
    if os.geteuid() != 0:
        raise Prereq("cost-probe attach needs root (or CAP_BPF + CAP_PERFMON): run as root")
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    for f in ("records.ndjson", "server.ndjson"):
        (out / f).unlink(missing_ok=True)
    args.bin = str(binary.resolve())
    poller = NvmlPoller() if args.device == "cuda" else None
    t0 = time.monotonic()
    server, port, server_info = start_server(args, out)
    probe = None
    try:
        if poller:
            poller.start()
        probe = start_probe(args, out, server.pid)
        time.sleep(args.idle_s)
        results = drive(args, port, request_plan(args))
        time.sleep(args.idle_s)
        probe.send_signal(signal.SIGINT)
        try:
            probe_rc = probe.wait(60)
        except subprocess.TimeoutExpired:
            probe_rc = "did not exit within 60 s of SIGINT (killed)"
    finally:
        if probe and probe.poll() is None:
            probe.kill()
        if poller:
            poller.stop()
        server.terminate()
        server.wait(10)
    if poller:
        with open(out / "nvml.ndjson", "w") as f:
            for t, e in poller.samples:
                f.write(json.dumps({"mono_ns": t, "wall_ns": t + poller.wall_offset,
                                    "energy_mj": e}) + "\n")
    records = load_ndjson(out / "records.ndjson")
    intervals = [r for r in records if r.get("type") == "interval"]
    requests = [r for r in records if r.get("type") == "request"]
    server_log = load_ndjson(out / "server.ndjson")
    failed = [i for i, r in enumerate(results) if not (r and r["ok"])]
    summary = {
        "device": args.device, "server": server_info, "out": str(out / "summary.json"),
        "wall_s": time.monotonic() - t0, "cost_probe_exit": probe_rc,
        "load": {"requests": len(results), "failed": failed, "server_logged": len(server_log),
                 "request_records": len(requests), "interval_records": len(intervals)},
        "tolerances": {"interval": args.tol_interval, "intervals_ok": args.min_intervals_ok,
                       "window": args.tol_window, "share": args.tol_share},
        "gpu_energy": check_gpu_energy(args, intervals, poller),
        "conservation": check_conservation(intervals, requests),
    }
    pairs, unmatched = join_requests(requests, server_log)
    summary["shares"] = check_shares(args, pairs, unmatched,
                                     "gpu" if args.device == "cuda" else "cpu")
    checks = [summary[k] for k in ("gpu_energy", "conservation", "shares")]
    summary["ok"] = (probe_rc == 0 and not failed
                     and all(c["ok"] for c in checks if c.get("ran"))
                     and summary["conservation"]["ran"] and summary["shares"]["ran"])
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print_report(args, summary)
    if failed:
        print(f"{len(failed)} client requests failed: {failed[:10]}")
    if probe_rc != 0:
        print(f"cost-probe exited with {probe_rc}; see {out / 'cost-probe.stderr'}")
    return 0 if summary["ok"] else 1


def main():
    try:
        args = parse_args()
        sys.exit(run(args))
    except Prereq as e:
        print(f"gpu-check: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
