"""A small HTTP/1.1 backend for the proxy tests: keep-alive, bodies, replay answers.

Run as a subprocess (``python httpd.py PORT NAME``) so tests stop it by PID.
``GET /`` answers the name; ``/echo`` reports method, body length and digest
and the ``fly-replay-src``, request target and ``x-test`` header it saw;
``/replay?h=VALUE`` answers with ``fly-replay: VALUE`` unless the request is
itself a replay; ``/slow?ms=N`` waits.
"""

import asyncio
import hashlib
import sys
import urllib.parse


async def handle(name: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            line = await reader.readline()
            if not line:
                break
            method, target, _ = line.decode().split(" ", 2)
            headers: dict[str, str] = {}
            while (h := await reader.readline()) not in (b"\r\n", b"\n", b""):
                k, _, v = h.decode().partition(":")
                headers[k.strip().lower()] = v.strip()
            body = b""
            if "content-length" in headers:
                body = await reader.readexactly(int(headers["content-length"]))
            elif headers.get("transfer-encoding", "").lower() == "chunked":
                while True:
                    size = int((await reader.readline()).split(b";")[0], 16)
                    chunk = await reader.readexactly(size + 2)
                    if size == 0:
                        break
                    body += chunk[:-2]
            url = urllib.parse.urlsplit(target)
            query = dict(urllib.parse.parse_qsl(url.query))
            extra = {"x-server": name}
            status = "200 OK"
            out = f"{name}\n".encode()
            if url.path == "/slow":
                await asyncio.sleep(int(query.get("ms", "100")) / 1000)
            elif url.path == "/replay" and "fly-replay-src" not in headers:
                extra["fly-replay"] = query.get("h", "")
                out = b"original\n"
            if url.path in ("/echo", "/replay"):
                digest = hashlib.sha256(body).hexdigest()
                extra["x-replay-src"] = headers.get("fly-replay-src", "")
                extra["x-method"] = method
                extra["x-target"] = target
                extra["x-test"] = headers.get("x-test", "")
                if url.path == "/echo" or "fly-replay-src" in headers:
                    out = f"{name} {method} {len(body)} {digest}\n".encode()
            head = f"HTTP/1.1 {status}\r\ncontent-length: {len(out)}\r\n"
            head += "".join(f"{k}: {v}\r\n" for k, v in extra.items())
            writer.write(head.encode() + b"\r\n" + (b"" if method == "HEAD" else out))
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError, ValueError):
        pass
    finally:
        writer.close()


async def main() -> None:
    port, name = int(sys.argv[1]), sys.argv[2]
    server = await asyncio.start_server(lambda r, w: handle(name, r, w), "127.0.0.1", port)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
