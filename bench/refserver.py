"""A minimal asyncio TLS line server: the reference the handshakes scenario sets beside
Sealroom. Standalone on purpose (no Sealroom import): one event loop, one thread.

It greets every connection with one line, as Sealroom does, then echoes lines until the
client leaves. TLS 1.3 only, with the certificate and key it is given; one session ticket
per handshake, as Sealroom sends (Python's default is two). asyncio sets TCP_NODELAY on
its TCP transports itself.

    python bench/refserver.py --cert server.crt --key server.key

prints the port it listens on (127.0.0.1, picked by the kernel), then serves until killed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ssl
import sys


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        writer.write(b"HELLO asyncio reference server\n")
        while line := await reader.readline():
            writer.write(line)
            await writer.drain()
    except (ConnectionError, ssl.SSLError):
        pass
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await writer.wait_closed()


async def serve(cert: str, key: str) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.num_tickets = 1
    ctx.load_cert_chain(cert, key)
    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=ctx, backlog=1024)
    print(server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.cert, args.key))
    return 0


if __name__ == "__main__":
    sys.exit(main())
