#!/usr/bin/env python3
"""Sample upstream for the demo and tests: echoes the request and the identity the gateway added.

    python3 scripts/upstream/echo.py [--port 18080] [--host 127.0.0.1]

Every request gets 200. The body is JSON (method, path as received and decoded_path, query, headers (an object keyed by lower-case
name) and header_list (pairs, as received), body length and its first 64 KiB, and the
decoded identity headers: X-Userinfo and X-ID-Token are base64 JSON, X-Access-Token is kept raw),
or, when Accept names text/html, a page "You are <name>" with the claims, the headers and a
"Log out" link to /logout. HTTP/1.1 keep-alive, one thread per connection, stdlib only.
Prints "READY http://HOST:PORT" on stdout once listening.
"""

import argparse
import base64
import binascii
import html
import json
import signal
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

# Bodies above this are read and discarded in chunks, never held whole.
MAX_BODY_KEEP = 64 * 1024


def decode_b64_json(value):
    """X-Userinfo / X-ID-Token as APISIX sends them; a bad value is shown, not fatal."""
    if value is None:
        return None
    padded = value.strip() + "=" * (-len(value.strip()) % 4)
    for decoder in (base64.b64decode, base64.urlsafe_b64decode):
        try:
            return json.loads(decoder(padded).decode("utf-8"))
        except (binascii.Error, ValueError, UnicodeDecodeError):
            continue
    return {"undecodable": value}


def display_name(identity):
    for source in (identity.get("userinfo"), identity.get("id_token")):
        if isinstance(source, dict):
            for key in ("name", "email", "preferred_username", "sub"):
                if source.get(key):
                    return str(source[key])
    return None


class EchoHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "shardgate-echo/1"

    def log_message(self, fmt, *args):
        if not self.server.quiet:
            sys.stderr.write("[echo] %s %s\n" % (self.address_string(), fmt % args))

    def _read_body(self):
        """Returns (length, first bytes); handles Content-Length and chunked bodies."""
        te = self.headers.get("Transfer-Encoding", "").lower()
        kept = bytearray()
        total = 0
        if "chunked" in te:
            while True:
                line = self.rfile.readline(1024)
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    # Trailers end with an empty line.
                    while self.rfile.readline(1024).strip():
                        pass
                    break
                remaining = size
                while remaining:
                    chunk = self.rfile.read(min(remaining, 65536))
                    if not chunk:
                        raise ConnectionError("body truncated")
                    remaining -= len(chunk)
                    total += len(chunk)
                    if len(kept) < MAX_BODY_KEEP:
                        kept += chunk[: MAX_BODY_KEEP - len(kept)]
                self.rfile.readline(16)
            return total, bytes(kept)
        remaining = int(self.headers.get("Content-Length") or 0)
        while remaining > 0:
            chunk = self.rfile.read(min(remaining, 65536))
            if not chunk:
                raise ConnectionError("body truncated")
            remaining -= len(chunk)
            total += len(chunk)
            if len(kept) < MAX_BODY_KEEP:
                kept += chunk[: MAX_BODY_KEEP - len(kept)]
        return total, bytes(kept)

    def _handle(self):
        try:
            body_len, body = self._read_body()
        except (ValueError, ConnectionError):
            self.send_error(400, "bad request body")
            return
        url = urlsplit(self.path)
        identity = {
            "userinfo": decode_b64_json(self.headers.get("X-Userinfo")),
            "id_token": decode_b64_json(self.headers.get("X-ID-Token")),
            "access_token": self.headers.get("X-Access-Token"),
        }
        headers = {}
        for k, v in self.headers.items():
            key = k.lower()
            headers[key] = headers[key] + ", " + v if key in headers else v
        report = {
            "method": self.command,
            "path": url.path,
            # What a decoding framework (Flask/Werkzeug, Django) routes on.
            "decoded_path": unquote(url.path, errors="surrogateescape"),
            "query": parse_qs(url.query, keep_blank_values=True),
            # Lower-cased names, repeats joined with ", " (easy to assert on); raw order below.
            "headers": headers,
            "header_list": [[k, v] for k, v in self.headers.items()],
            "body_length": body_len,
            "body": body.decode("utf-8", "replace") if body else "",
            "identity": identity,
        }
        if "text/html" in self.headers.get("Accept", ""):
            payload = self._html(report, identity).encode("utf-8")
            ctype = "text/html; charset=utf-8"
        else:
            payload = (json.dumps(report, indent=2) + "\n").encode("utf-8")
            ctype = "application/json"
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def _html(self, report, identity):
        name = display_name(identity)
        esc = html.escape
        who = "You are <b>%s</b>" % esc(name) if name else "No identity was passed by the gateway"
        claims = {k: v for k, v in identity.items() if v}
        rows = "".join(
            "<tr><td>%s</td><td><code>%s</code></td></tr>" % (esc(k), esc(v)) for k, v in report["header_list"]
        )
        return (
            "<!doctype html><html><head><meta charset=utf-8><title>shardgate demo upstream</title>"
            "<style>body{font-family:sans-serif;margin:2em}td{border-bottom:1px solid #ddd;"
            "padding:2px 8px;vertical-align:top}code{word-break:break-all}</style></head><body>"
            "<h1>%s</h1><p><a href=\"/logout\">Log out</a></p>"
            "<h2>Identity</h2><pre>%s</pre>"
            "<h2>Request</h2><p><code>%s %s</code></p>"
            "<h2>Headers</h2><table>%s</table></body></html>"
            % (who, esc(json.dumps(claims, indent=2)), esc(report["method"]), esc(self.path), rows)
        )

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_HEAD = _handle


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=18080)
    parser.add_argument("--quiet", action="store_true", help="no access log on stderr")
    args = parser.parse_args()

    ThreadingHTTPServer.daemon_threads = True
    server = ThreadingHTTPServer((args.host, args.port), EchoHandler)
    server.quiet = args.quiet
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    host, port = server.server_address[:2]
    print("READY http://%s:%d" % (host, port), flush=True)
    try:
        server.serve_forever()
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
