#!/usr/bin/env python3
"""An OpenAI-style streaming server that does real device work per token, for `cargo xtask gpu-check`.

POST /v1/chat/completions  {"messages": [...], "max_tokens": N, "stream": bool}
  streamed: one SSE chunk `data: {...}` per token, the last data chunk carrying `usage` and
  llama.cpp-style `timings`, then `data: [DONE]`; non-streamed: one JSON body with both.

Requests wait in a FIFO queue for one of `--slots` worker slots (as llama.cpp's slots and vLLM's
waiting queue do), so under concurrent load most of a request's wall time can be waiting. Each
slot runs a random-weight "model": every token is `steps_per_token` matmuls of an (m × d) block
by a (d × d) weight, prefill is `prompt_n × steps_per_token / prefill_speedup` of them. The
work is timed where it runs: CUDA events on the slot's own stream (`--device cuda`), the slot
thread's CPU time otherwise; that is the per-request compute that the check compares cost-probe's
attribution with. One NDJSON line per request goes to `--log`.

Stdlib plus torch; with `--device cpu` and no torch it busy-loops in pure Python instead.
Prints `listening PORT steps_per_token=S ms_per_token=T` once bound and calibrated.
"""
import argparse
import json
import queue
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

try:
    import torch
except ImportError:  # only --device cpu works without it
    torch = None


class TorchModel:
    """Random weights on the device; one step is `x = tanh(x @ w)`, kept bounded by the tanh."""

    def __init__(self, device, dim, rows, layers):
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        dtype = torch.bfloat16 if self.cuda else torch.float32
        torch.manual_seed(0)
        # Drawn where they live: 4 × 8192² on a CPU generator would take seconds at start-up.
        scale = dim ** -0.5
        self.weights = [
            (torch.randn(dim, dim, device=self.device) * scale).to(dtype) for _ in range(layers)
        ]
        self.x0 = torch.randn(rows, dim, device=self.device).to(dtype)

    def new_stream(self):
        return torch.cuda.Stream(device=self.device) if self.cuda else None

    def run(self, steps, stream):
        """Runs `steps` matmuls and returns the compute time in ms."""
        if not self.cuda:
            t0 = time.thread_time_ns()
            self._steps(steps)
            return (time.thread_time_ns() - t0) / 1e6
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        with torch.cuda.stream(stream):
            start.record(stream)
            self._steps(steps)
            end.record(stream)
        # A decoder needs the token before it can compute the next one, so each token waits.
        end.synchronize()
        return start.elapsed_time(end)

    def _steps(self, steps):
        x = self.x0
        for i in range(steps):
            x = torch.tanh(x @ self.weights[i % len(self.weights)])
        return x


class PythonModel:
    """No torch: a fixed arithmetic loop per step, timed with the thread's CPU clock."""

    def __init__(self, loop):
        self.loop = loop

    def new_stream(self):
        return None

    def run(self, steps, _stream):
        t0 = time.thread_time_ns()
        acc = 0
        for _ in range(steps):
            for i in range(self.loop):
                acc = (acc * 31 + i) & 0xFFFF
        return (time.thread_time_ns() - t0) / 1e6


def calibrate(model, target_ms):
    """Steps per token so that one token takes about `target_ms` of compute."""
    stream = model.new_stream()
    model.run(2, stream)  # warm-up: kernel selection, allocator, clocks
    probe = 4
    while True:
        ms = min(model.run(probe, stream) for _ in range(3))
        if ms >= target_ms / 4 or probe >= 1 << 16:
            break
        probe *= 2
    return max(1, round(probe * target_ms / max(ms, 1e-3)))


class Job:
    def __init__(self, rid, body, peer):
        self.rid = rid
        self.peer = peer
        self.max_tokens = max(1, int(body.get("max_tokens", 16)))
        self.prompt = json.dumps(body.get("messages", ""))
        # A token per 4 characters, as the usual rule of thumb; what matters is that it is fixed.
        self.prompt_n = max(1, len(self.prompt) // 4)
        self.stream = bool(body.get("stream", False))
        self.arrival_ns = time.time_ns()
        self.tokens = queue.Queue()  # the slot puts each token, then None
        self.log = {}


class Server:
    def __init__(self, args, model, steps_per_token):
        self.args = args
        self.model = model
        self.steps_per_token = steps_per_token
        self.jobs = queue.Queue()
        self.log_lock = threading.Lock()
        self.log = open(args.log, "a", buffering=1) if args.log else None
        self.next_id = 0
        self.id_lock = threading.Lock()
        for slot in range(args.slots):
            threading.Thread(target=self.slot, args=(slot,), daemon=True).start()

    def new_job(self, body, peer):
        with self.id_lock:
            self.next_id += 1
            rid = self.next_id
        job = Job(rid, body, peer)
        self.jobs.put(job)
        return job

    def slot(self, slot):
        stream = self.model.new_stream()
        while True:
            job = self.jobs.get()
            start_ns = time.time_ns()
            prefill_steps = max(
                1, round(job.prompt_n * self.steps_per_token / self.args.prefill_speedup)
            )
            prompt_ms = self.model.run(prefill_steps, stream)
            predicted_ms = 0.0
            first_ns = None
            for i in range(job.max_tokens):
                predicted_ms += self.model.run(self.steps_per_token, stream)
                if first_ns is None:
                    first_ns = time.time_ns()
                job.tokens.put(i)
            end_ns = time.time_ns()
            job.log = {
                "id": job.rid,
                "slot": slot,
                "peer_port": job.peer[1],
                "stream": job.stream,
                "arrival_ns": job.arrival_ns,
                "slot_start_ns": start_ns,
                "first_token_ns": first_ns,
                "end_ns": end_ns,
                "queue_ms": (start_ns - job.arrival_ns) / 1e6,
                "prompt_n": job.prompt_n,
                "predicted_n": job.max_tokens,
                "prompt_ms": prompt_ms,
                "predicted_ms": predicted_ms,
                "compute_ms": prompt_ms + predicted_ms,
                "prefill_steps": prefill_steps,
                "steps_per_token": self.steps_per_token,
            }
            job.tokens.put(None)

    def write_log(self, entry):
        if self.log:
            with self.log_lock:
                self.log.write(json.dumps(entry) + "\n")


def timings(log):
    return {
        "prompt_n": log["prompt_n"],
        "prompt_ms": log["prompt_ms"],
        "predicted_n": log["predicted_n"],
        "predicted_ms": log["predicted_ms"],
    }


def usage(log):
    return {
        "prompt_tokens": log["prompt_n"],
        "completion_tokens": log["predicted_n"],
        "total_tokens": log["prompt_n"] + log["predicted_n"],
    }


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "gpu-check/1"

    def log_message(self, *_args):
        pass

    def do_POST(self):
        if self.path != "/v1/chat/completions":
            self.send_error(404)
            return
        length = int(self.headers.get("Content-Length", 0))
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
        except ValueError:
            self.send_error(400, "body is not JSON")
            return
        srv = self.server.app
        job = srv.new_job(body, self.client_address)
        model = "random-" + srv.args.device
        created = int(time.time())
        if job.stream:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            while (tok := job.tokens.get()) is not None:
                self.chunk({
                    "id": f"chatcmpl-{job.rid}", "object": "chat.completion.chunk",
                    "created": created, "model": model,
                    "choices": [{"index": 0, "delta": {"content": f" t{tok}"},
                                 "finish_reason": None}],
                })
            self.chunk({
                "id": f"chatcmpl-{job.rid}", "object": "chat.completion.chunk",
                "created": created, "model": model,
                "choices": [{"index": 0, "delta": {}, "finish_reason": "length"}],
                "usage": usage(job.log), "timings": timings(job.log),
            })
            self.raw_chunk(b"data: [DONE]\n\n")
            self.raw_chunk(b"")
        else:
            text = []
            while (tok := job.tokens.get()) is not None:
                text.append(f" t{tok}")
            out = json.dumps({
                "id": f"chatcmpl-{job.rid}", "object": "chat.completion", "created": created,
                "model": model,
                "choices": [{"index": 0, "finish_reason": "length",
                             "message": {"role": "assistant", "content": "".join(text)}}],
                "usage": usage(job.log), "timings": timings(job.log),
            }).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)
            self.wfile.flush()
        job.log["done_ns"] = time.time_ns()
        srv.write_log(job.log)

    def chunk(self, obj):
        self.raw_chunk(b"data: " + json.dumps(obj).encode() + b"\n\n")

    def raw_chunk(self, data):
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()


def build_model(args):
    if args.device == "cuda":
        if torch is None:
            sys.exit("gpu_server: --device cuda needs torch, which is not importable")
        if not torch.cuda.is_available():
            sys.exit("gpu_server: torch sees no CUDA device")
        return TorchModel("cuda", args.dim, args.rows, args.layers)
    if torch is not None:
        return TorchModel("cpu", args.cpu_dim, args.cpu_dim, 2)
    return PythonModel(loop=2000)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--slots", type=int, default=1)
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--ms-per-token", type=float, default=10.0)
    ap.add_argument("--prefill-speedup", type=float, default=8.0,
                    help="prefill tokens cost this many times less than decode tokens")
    ap.add_argument("--dim", type=int, default=8192, help="weight size (cuda)")
    ap.add_argument("--rows", type=int, default=1024, help="rows per step (cuda)")
    ap.add_argument("--layers", type=int, default=4, help="distinct weights (cuda)")
    ap.add_argument("--cpu-dim", type=int, default=96, help="matrix size (cpu with torch)")
    ap.add_argument("--log", help="NDJSON file: one line per request")
    args = ap.parse_args()
    if args.slots < 1 or args.ms_per_token <= 0 or args.prefill_speedup <= 0:
        sys.exit("gpu_server: --slots, --ms-per-token and --prefill-speedup must be positive")
    if torch is not None:
        torch.set_num_threads(1)  # one core per slot, like a CPU-bound server's worker
    model = build_model(args)
    steps = calibrate(model, args.ms_per_token)
    stream = model.new_stream()
    ms = min(model.run(steps, stream) for _ in range(3))
    httpd = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    httpd.daemon_threads = True
    httpd.app = Server(args, model, steps)
    print(f"listening {httpd.server_address[1]} steps_per_token={steps} ms_per_token={ms:.2f}",
          flush=True)
    httpd.serve_forever()


if __name__ == "__main__":
    main()
