"""A TCP proxy that adds round-trip latency, for benchmarks at a real distance without touching ``lo``.

``python -m bench.latency_proxy LISTEN_ADDR:PORT TARGET_ADDR:PORT RTT_MS`` listens on a 127.x address and
forwards every connection to the target, holding each chunk of bytes RTT_MS/2 milliseconds in each direction
(so a request and its answer pay RTT_MS more, as over a link of that round-trip time), order kept, no
bandwidth cap. Opening a connection pays one RTT too (TCP's SYN/SYN-ACK). netem on the loopback would slow
every process on the machine; this only slows what connects to LISTEN_ADDR. Prints ``listening`` once ready;
ends on SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import sys


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    """Copy ``reader`` to ``writer``, each chunk written ``delay`` seconds after it arrived (order kept)."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[float, bytes | None]] = asyncio.Queue()

    async def read() -> None:
        try:
            while True:
                data = await reader.read(65536)
                await queue.put((loop.time() + delay, data or None))
                if not data:
                    return
        except OSError:
            await queue.put((loop.time() + delay, None))

    async def write() -> None:
        try:
            while True:
                due, data = await queue.get()
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                if data is None:
                    with contextlib.suppress(OSError):
                        writer.write_eof()
                    return
                writer.write(data)
                await writer.drain()
        except OSError:
            return

    await asyncio.gather(read(), write())


async def _serve(listen: tuple[str, int], target: tuple[str, int], rtt: float) -> None:
    async def handle(c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(rtt)  # the connection's handshake crosses the link once
        try:
            u_reader, u_writer = await asyncio.open_connection(*target)
        except OSError:
            c_writer.close()
            return
        for w in (c_writer, u_writer):
            w.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            await asyncio.gather(_pump(c_reader, u_writer, rtt / 2), _pump(u_reader, c_writer, rtt / 2))
        except asyncio.CancelledError:
            pass  # the proxy is ending (SIGTERM): its connections end with it
        finally:
            for w in (c_writer, u_writer):
                with contextlib.suppress(OSError):
                    w.close()

    server = await asyncio.start_server(handle, *listen, backlog=256)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    print("listening", flush=True)
    async with server:
        await stop.wait()


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host.startswith("127."):
        raise SystemExit(f"error: {text}: only 127.x addresses (this proxy never leaves the machine)")
    return host, int(port)


def main(argv: list[str]) -> int:
    """Run the proxy until SIGTERM; return the exit code (2 on bad arguments)."""
    if len(argv) != 3:
        print("usage: python -m bench.latency_proxy LISTEN_ADDR:PORT TARGET_ADDR:PORT RTT_MS", file=sys.stderr)
        return 2
    asyncio.run(_serve(_address(argv[0]), _address(argv[1]), float(argv[2]) / 1000.0))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
