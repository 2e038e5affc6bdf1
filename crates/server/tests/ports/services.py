"""Services for the port exposure tests, run inside a sandbox (stdlib only).

8080: HTTP. /echo answers what it received as JSON (method, raw path,
headers, body length and sha256); /stream sends one chunk, then the rest
once /tmp/go exists; /cut promises 1000 bytes and closes after 10;
/ws is a WebSocket echo server (text and binary).
9000: TCP echo; on EOF from the client it sends b"bye" and closes.
8083: the 8080 service on ::1 only.
"""
import base64
import hashlib
import json
import os
import socket
import socketserver
import struct
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def read_body(h):
    if h.headers.get("Transfer-Encoding", "").lower() == "chunked":
        out = bytearray()
        while True:
            line = h.rfile.readline()
            n = int(line.strip().split(b";")[0], 16)
            if n == 0:
                while h.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass
                return bytes(out)
            out += h.rfile.read(n)
            h.rfile.readline()
    n = int(h.headers.get("Content-Length", "0") or 0)
    return h.rfile.read(n) if n else b""


def recv_exact(f, n):
    b = f.read(n)
    if len(b) < n:
        raise EOFError
    return b


def ws_frame(opcode, payload):
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 127, n)
    return head + payload


class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def any(self):
        if self.path == "/ws" and self.headers.get("Upgrade", "").lower() == "websocket":
            return self.websocket()
        if self.path == "/stream":
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for part in (b"first;", None, b"second"):
                if part is None:
                    while not os.path.exists("/tmp/go"):
                        time.sleep(0.02)
                    continue
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
            return
        if self.path == "/cut":
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.write(b"0123456789")
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        body = read_body(self)
        out = json.dumps({
            "method": self.command,
            "path": self.path,
            "headers": {k.lower(): v for k, v in self.headers.items()},
            "len": len(body),
            "sha256": hashlib.sha256(body).hexdigest(),
        }).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.send_header("X-Service", "echo")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(out)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = any

    def websocket(self):
        key = self.headers["Sec-WebSocket-Key"]
        accept = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept)
        self.end_headers()
        self.wfile.flush()
        f = self.rfile
        try:
            while True:
                b0, b1 = recv_exact(f, 2)
                op = b0 & 0x0F
                n = b1 & 0x7F
                if n == 126:
                    n = struct.unpack("!H", recv_exact(f, 2))[0]
                elif n == 127:
                    n = struct.unpack("!Q", recv_exact(f, 8))[0]
                mask = recv_exact(f, 4) if b1 & 0x80 else b"\0\0\0\0"
                data = bytes(c ^ mask[i % 4] for i, c in enumerate(recv_exact(f, n)))
                if op == 8:
                    self.wfile.write(ws_frame(8, data[:2]))
                    break
                if op in (1, 2):
                    self.wfile.write(ws_frame(op, data))
                    self.wfile.flush()
                elif op == 9:
                    self.wfile.write(ws_frame(10, data))
        except (EOFError, ConnectionError):
            pass
        self.close_connection = True


class Echo(socketserver.BaseRequestHandler):
    def handle(self):
        while True:
            d = self.request.recv(65536)
            if not d:
                break
            self.request.sendall(d)
        self.request.sendall(b"bye")
        self.request.close()


class TcpServer(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


if __name__ == "__main__":
    ThreadingHTTPServer.daemon_threads = True
    http = ThreadingHTTPServer(("127.0.0.1", 8080), H)
    tcp = TcpServer(("0.0.0.0", 9000), Echo)
    threading.Thread(target=tcp.serve_forever, daemon=True).start()

    class V6Http(ThreadingHTTPServer):
        address_family = socket.AF_INET6

    # 8083: the same HTTP service on ::1 only (exposure falls back to it).
    http6 = V6Http(("::1", 8083), H)
    threading.Thread(target=http6.serve_forever, daemon=True).start()
    open("/tmp/ready", "w").close()
    sys.stdout.flush()
    http.serve_forever()
