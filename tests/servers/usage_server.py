#!/usr/bin/env python3
"""Non-streamed OpenAI-style chat completions of a chosen size with `usage` at a chosen offset,
for cost-probe's integration tests (asyncio, stdlib only).

POST /v1/chat/completions (keep-alive, pipelining) with a JSON body:
  {"model": M, "messages": [...], "max_tokens": C,
   "response_size": S, "usage_at": K, "split": B}
(K may also be "start" or "end": the first or last offset the usage member can take)
answers 200 with one non-streamed `chat.completion` JSON body naming model M, whose usage is
  {"prompt_tokens": P, "completion_tokens": C, "total_tokens": P + C}
where P = len(json.dumps(messages)) // 4 + 1 (a stand-in for a tokenizer).

The offsets are those of the write(2) that carries the body, which is what the tracer sees:
  split = true   the status line and headers go in one write and the body in a second one;
                 S is the body's length and K the offset of `"usage"` in the body.
  split = false  headers and body go in one write; S is the whole response's length and K the
                 offset of `"usage"` in it.
Any S >= 512 and any K that leaves room for `{` before and `}` after the usage member are
placed exactly: the other members (id, object, created, model, choices with the assistant's
text as padding) go after the usage member when it is early and before it when it is late, and
a `system_fingerprint` member or JSON whitespace takes up what is left. The server checks the
bytes it writes against S and K and answers 422 (with the reason) when it cannot place them.

Anything else: 404. Prints `listening PORT` on stdout once bound (port 0 = any free port).
"""
import asyncio
import json
import sys

LOREM = "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor. "


def text(n: int) -> str:
    return (LOREM * (n // len(LOREM) + 1))[:n]


def lead(n: int) -> str:
    """Exactly n bytes of JSON object members and whitespace, ending where a member may start."""
    fp = '"system_fingerprint":"fp_",'
    if n < len(fp) + 8:
        return " " * n
    return '"system_fingerprint":"fp_' + "a" * (n - len(fp)) + '",'


def trail(n: int) -> str:
    """Exactly n bytes that may follow a member before the closing brace."""
    fp = ',"system_fingerprint":"fp_"'
    if n < len(fp) + 8:
        return " " * n
    return ',"system_fingerprint":"fp_' + "z" * (n - len(fp)) + '"'


def others(model: str, content: str) -> str:
    return (
        '"id":"chatcmpl-usage","object":"chat.completion","created":1700000000,'
        f'"model":{json.dumps(model)},"choices":[{{"index":0,"message":{{"role":"assistant",'
        f'"content":"{content}"}},"finish_reason":"stop"}}]'
    )


def body_of(model: str, usage: str, size: int, at: int) -> bytes:
    """A JSON body of `size` bytes whose `"usage"` member starts at byte `at`."""
    fixed = len(others(model, ""))
    after = size - at - len(usage)  # bytes after the usage member, closing brace included
    if at < 1 or after < 1:
        raise ValueError(f"no room for {{ and }} around usage at {at} in {size} bytes")
    if at >= 1 + fixed + 1:
        # Late: the other members first, the assistant's text pads up to the usage member.
        body = "{" + others(model, text(at - 2 - fixed)) + "," + usage + trail(after - 1) + "}"
    elif after >= 1 + fixed + 1:
        # Early: whitespace or a fingerprint before it, the other members after it.
        body = "{" + lead(at - 1) + usage + "," + others(model, text(after - 2 - fixed)) + "}"
    else:
        raise ValueError(f"cannot place usage at {at} in {size} bytes")
    out = body.encode()
    if len(out) != size or out.find(b'"usage"') != at:
        where = out.find(b'"usage"')
        raise ValueError(f"built {len(out)} bytes with usage at {where}")
    json.loads(out)
    return out


def header(n: int, status: bytes = b"200 OK") -> bytes:
    return b"HTTP/1.1 %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % (
        status, n)


def respond(req: dict) -> list:
    """The writes of one response."""
    model = req["model"]
    prompt = len(json.dumps(req.get("messages", ""))) // 4 + 1
    completion = int(req["max_tokens"])
    usage = '"usage":{"prompt_tokens":%d,"completion_tokens":%d,"total_tokens":%d}' % (
        prompt, completion, prompt + completion)
    size, at = int(req["response_size"]), req["usage_at"]
    if req.get("split", True):
        if at == "start":
            at = 1
        elif at == "end":
            at = size - len(usage) - 1
        body = body_of(model, usage, size, int(at))
        return [header(len(body)), body]
    # One write: the header's length depends on the body's (its Content-Length digits).
    n = size
    for _ in range(3):
        n = size - len(header(n))
    h = header(n)
    if at == "start":
        at = len(h) + 1
    elif at == "end":
        at = size - len(usage) - 1
    at = int(at)
    if len(h) + n != size or at < len(h):
        raise ValueError(f"cannot fit a {size}-byte response with usage at {at}")
    return [h + body_of(model, usage, n, at - len(h))]


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


async def handle(reader, writer):
    try:
        while True:
            req = await read_request(reader)
            if req is None:
                break
            method, target, headers, body = req
            if method == "POST" and target.split("?")[0] == "/v1/chat/completions":
                try:
                    writes = respond(json.loads(body))
                except (ValueError, KeyError, TypeError) as e:
                    msg = str(e).encode()
                    writes = [header(len(msg), b"422 Unprocessable Entity") + msg]
            else:
                writes = [b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"]
            for w in writes:
                writer.write(w)
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
