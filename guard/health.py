"""Health check: the guard answers GET /_ping on its socket (and so does the engine)."""

import http.client
import socket
import sys

from .server import LISTEN


class UnixConnection(http.client.HTTPConnection):
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(LISTEN)


def main():
    try:
        connection = UnixConnection("guard", timeout=4)
        connection.request("GET", "/_ping")
        ok = connection.getresponse().status == 200
    except OSError as e:
        print(e, file=sys.stderr)
        ok = False
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
