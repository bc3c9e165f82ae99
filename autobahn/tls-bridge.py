"""A TLS client in front of the server for the conformance run over wss.

kosoku speaks plain ws only (its WebSocket library is built without TLS), so this
takes its connections on a local port and carries each over its own TLS
connection to the server's wss port: every case's frames reach the server sealed
in TLS records, and the server's answers come back through its TLS path. The
server's certificate is checked against the file given (the run's own).

usage: tls-bridge.py PORT_FILE WSS_PORT CA_FILE   (writes the port it listens on)
"""

import asyncio
import ssl
import sys

port_file, wss_port, ca_file = sys.argv[1], int(sys.argv[2]), sys.argv[3]
context = ssl.create_default_context(cafile=ca_file)


async def pipe(reader, writer):
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, ssl.SSLError):
        pass
    # TLS cannot half-close: an end in either direction ends the connection.
    writer.close()


async def carry(plain_reader, plain_writer):
    try:
        tls_reader, tls_writer = await asyncio.open_connection(
            "127.0.0.1", wss_port, ssl=context, server_hostname="localhost"
        )
    except (OSError, ssl.SSLError):
        plain_writer.close()
        return
    await asyncio.gather(pipe(plain_reader, tls_writer), pipe(tls_reader, plain_writer))


async def main():
    server = await asyncio.start_server(carry, "127.0.0.1", 0)
    with open(port_file, "w") as f:
        f.write(str(server.sockets[0].getsockname()[1]))
    async with server:
        await server.serve_forever()


asyncio.run(main())
