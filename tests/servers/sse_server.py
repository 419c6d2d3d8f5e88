#!/usr/bin/env python3
"""A small HTTP/1.1 keep-alive server for cost-probe's integration tests (asyncio, stdlib only).

Routes (all support keep-alive and pipelining):
  GET  /stream?n=N&delay_ms=D   text/event-stream, chunked: N chunks `data: {"i": k}\\n\\n`
  GET  /chunked?n=N             text/plain, chunked: N chunks
  GET  /fixed?size=B            Content-Length body of B bytes
  POST /v1/chat/completions     OpenAI-style: JSON body {"model", "stream", "max_tokens"};
                                streamed: one SSE chunk per token, usage in the last data chunk,
                                then `data: [DONE]`; non-streamed: one JSON body with usage.
Prints `listening PORT` on stdout once bound (port 0 = any free port).
"""
import asyncio
import json
import sys
import time
from urllib.parse import parse_qs, urlsplit


async def read_request(reader):
    line = await reader.readline()
    if not line:
        return None
    method, target, _ = line.decode("latin-1").split(" ", 2)
    headers = {}
    while True:
        h = await reader.readline()
        if h in (b"\r\n", b"\n", b""):
            break
        k, v = h.decode("latin-1").split(":", 1)
        headers[k.strip().lower()] = v.strip()
    body = b""
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    return method, target, headers, body


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


async def stream_chunks(writer, ctype, pieces, delay):
    writer.write(
        b"HTTP/1.1 200 OK\r\nContent-Type: " + ctype + b"\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    await writer.drain()
    for p in pieces:
        if delay:
            await asyncio.sleep(delay)
        writer.write(chunk(p))
        await writer.drain()
    writer.write(b"0\r\n\r\n")
    await writer.drain()


async def completions(writer, body):
    req = json.loads(body or b"{}")
    model = req.get("model", "test-model")
    n = int(req.get("max_tokens", 8))
    prompt_tokens = len(json.dumps(req.get("messages", ""))) // 4 + 1
    created = int(time.time())
    if req.get("stream"):
        pieces = []
        for i in range(n):
            delta = {"content": f"tok{i} "}
            pieces.append(b"data: " + json.dumps({
                "id": "chatcmpl-1", "object": "chat.completion.chunk", "created": created,
                "model": model, "choices": [{"index": 0, "delta": delta, "finish_reason": None}],
            }).encode() + b"\n\n")
        pieces.append(b"data: " + json.dumps({
            "id": "chatcmpl-1", "object": "chat.completion.chunk", "created": created,
            "model": model, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": n,
                      "total_tokens": prompt_tokens + n},
        }).encode() + b"\n\n")
        pieces.append(b"data: [DONE]\n\n")
        await stream_chunks(writer, b"text/event-stream", pieces, 0.002)
    else:
        out = json.dumps({
            "id": "chatcmpl-1", "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": n,
                      "total_tokens": prompt_tokens + n},
        }).encode()
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                     % (len(out), out))
        await writer.drain()


async def handle(reader, writer):
    try:
        while True:
            req = await read_request(reader)
            if req is None:
                break
            method, target, headers, body = req
            url = urlsplit(target)
            q = {k: v[0] for k, v in parse_qs(url.query).items()}
            if url.path == "/stream":
                n = int(q.get("n", 5))
                delay = int(q.get("delay_ms", 5)) / 1000
                await stream_chunks(writer, b"text/event-stream",
                                    [b'data: {"i": %d}\n\n' % i for i in range(n)], delay)
            elif url.path == "/chunked":
                n = int(q.get("n", 3))
                await stream_chunks(writer, b"text/plain", [b"part%d;" % i for i in range(n)], 0)
            elif url.path == "/fixed":
                size = int(q.get("size", 100))
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size + b"x" * size)
                await writer.drain()
            elif url.path == "/v1/chat/completions" and method == "POST":
                await completions(writer, body)
            else:
                writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                await writer.drain()
            if headers.get("connection", "").lower() == "close":
                break
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


async def main():
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    server = await asyncio.start_server(handle, "127.0.0.1", port)
    print("listening", server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
