#!/usr/bin/env python3
"""A WebSocket echo server for cost-probe's integration tests (asyncio, stdlib only).

  GET <any> with `Connection: Upgrade` and `Upgrade: websocket`:
      101 Switching Protocols (RFC 6455 handshake), then every data frame the client sends is
      echoed back unmasked in one write; a close frame is answered with a close frame, then the
      connection is closed.
  GET <any> otherwise: 200, body `ok` (keep-alive).

Frames are small (payload < 126 bytes, no fragmentation): enough for the tests.
Prints `listening PORT` on stdout once bound (port 0 = any free port).
"""
import asyncio
import base64
import hashlib
import sys

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 §1.3


async def read_head(reader):
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
    return method, target, headers


async def echo_frames(reader, writer):
    while True:
        b0, b1 = await reader.readexactly(2)
        opcode, masked, n = b0 & 0x0F, b1 & 0x80, b1 & 0x7F
        if n >= 126:
            raise ValueError("frames of this test server are < 126 bytes")
        mask = await reader.readexactly(4) if masked else b"\0\0\0\0"
        data = bytes(c ^ mask[i % 4] for i, c in enumerate(await reader.readexactly(n)))
        writer.write(bytes([0x80 | opcode, len(data)]) + data)
        await writer.drain()
        if opcode == 0x8:  # close
            return


async def handle(reader, writer):
    try:
        while True:
            req = await read_head(reader)
            if req is None:
                break
            _, _, headers = req
            if (headers.get("upgrade", "").lower() == "websocket"
                    and "upgrade" in headers.get("connection", "").lower()):
                key = headers["sec-websocket-key"].encode()
                accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
                writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                             b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n")
                await writer.drain()
                await echo_frames(reader, writer)
                break
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()
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
