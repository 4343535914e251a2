"""A TCP proxy that delays each direction by a fixed time, as a network between two regions would.

Every chunk read from one side is written to the other `--delay-ms` after it arrived, in order; throughput is not
limited. Run it as its own process, so its work does not share the benchmark's interpreter:

    python bench/latency_proxy.py --target 127.0.0.1:27017 --delay-ms 5

It prints `listening <port>` once it accepts connections (`--port 0`, the default, picks a free port)."""
from __future__ import annotations

import argparse
import asyncio
import time


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay_s: float) -> None:
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def deliver() -> None:
        while True:
            due, chunk = await queue.get()
            if not chunk:
                break
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            writer.write(chunk)
            await writer.drain()
        writer.close()

    sender = asyncio.create_task(deliver())
    try:
        while chunk := await reader.read(1 << 16):
            queue.put_nowait((time.monotonic() + delay_s, chunk))
    except ConnectionError:
        pass
    queue.put_nowait((0.0, b""))
    try:
        await sender
    except ConnectionError:
        pass


def serve(target_host: str, target_port: int, delay_s: float):  # type: ignore[no-untyped-def]
    async def handle(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            server_reader, server_writer = await asyncio.open_connection(target_host, target_port)
        except OSError:
            client_writer.close()
            return
        for connection in (client_writer, server_writer):
            connection.transport.set_write_buffer_limits(high=1 << 22)
        await asyncio.gather(_pump(client_reader, server_writer, delay_s), _pump(server_reader, client_writer, delay_s))

    return handle


async def main_async(args: argparse.Namespace) -> None:
    host, _, port = args.target.rpartition(":")
    server = await asyncio.start_server(serve(host, int(port), args.delay_ms / 1000), args.host, args.port)
    print(f"listening {server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", required=True, help="host:port to forward to")
    parser.add_argument("--delay-ms", type=float, default=5.0, help="delay of each direction")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    try:
        asyncio.run(main_async(parser.parse_args()))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
