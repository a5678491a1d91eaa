#!/usr/bin/env python3
"""Sample upstream for the demo and tests: echoes the request and the identity the gateway added.

    python3 scripts/upstream/echo.py [--port 18080] [--host 127.0.0.1]

Every request gets 200. The body is JSON (method, path as received and decoded_path, query, headers (an object keyed by lower-case
name) and header_list (pairs, as received), body length and its first 64 KiB, and the
decoded identity headers: X-Userinfo and X-ID-Token are base64 JSON, X-Access-Token is kept raw),
or, when Accept names text/html, a page "You are <name>" with the decoded claims, when the tokens
and the session expire, links to log out, reload and /metrics, and the headers; /signed-out is a
"You are signed out" page (the demo's post-logout landing page). HTTP/1.1 keep-alive, one thread per
connection, stdlib only.

    --metrics-url URL            linked from the page (the gateway's admin /metrics)
    --session-timeouts "k=v ..."  the gateway's session timeouts, shown on the page
Prints "READY http://HOST:PORT" on stdout once listening.
"""

import argparse
import base64
import binascii
import html
import json
import signal
import sys
import time
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


def jwt_claims(token):
    """The payload of a JWT access token, or None for an opaque token."""
    if not token or token.count(".") != 2:
        return None
    payload = token.split(".")[1]
    try:
        return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        return None


def when(epoch):
    """`2026-12-03 14:05:00 UTC (in 3m20s)` for a claim like exp."""
    if not isinstance(epoch, (int, float)):
        return "-"
    left = int(epoch - time.time())
    rel = ("in %dm%02ds" % divmod(left, 60)) if left >= 0 else ("%dm%02ds ago" % divmod(-left, 60))
    return "%s (%s)" % (time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(epoch)), rel)


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

    STYLE = (
        "<style>body{font-family:sans-serif;margin:2em;max-width:60em}td{border-bottom:1px solid #ddd;"
        "padding:2px 8px;vertical-align:top}code{word-break:break-all}nav a{margin-right:1.5em}</style>"
    )

    def _html(self, report, identity):
        esc = html.escape
        if report["path"] == "/signed-out":
            return (
                "<!doctype html><html><head><meta charset=utf-8><title>Signed out</title>%s</head><body>"
                "<h1>You are signed out</h1><p>The gateway cleared your session cookie and the identity "
                "provider ended its session.</p><nav><a href=\"/\">Sign in again</a></nav></body></html>"
                % self.STYLE
            )
        name = display_name(identity)
        who = "You are <b>%s</b>" % esc(name) if name else "No identity was passed by the gateway"
        id_token = identity.get("id_token") if isinstance(identity.get("id_token"), dict) else {}
        access = jwt_claims(identity.get("access_token"))
        times = [
            ("ID token issued", when(id_token.get("iat"))),
            ("ID token expires", when(id_token.get("exp"))),
            (
                "Access token expires",
                when(access.get("exp")) if access else "opaque token: its expiry is known to the gateway only",
            ),
        ]
        for kv in (self.server.session_timeouts or "").split():
            k, _, v = kv.partition("=")
            if v.isdigit():
                times.append(("Session %s" % k.replace("_", " "), "%s s (%d min)" % (v, int(v) // 60)))
        time_rows = "".join("<tr><td>%s</td><td>%s</td></tr>" % (esc(k), esc(v)) for k, v in times)
        links = ['<a href="/logout">Log out</a>', '<a href="">Reload this page</a>']
        if self.server.metrics_url:
            links.append('<a href="%s">Metrics</a>' % esc(self.server.metrics_url, quote=True))
        sections = [("Claims of the ID token (X-ID-Token)", id_token)]
        if isinstance(identity.get("userinfo"), dict):
            sections.append(("Userinfo (X-Userinfo)", identity["userinfo"]))
        if access:
            sections.append(("Claims of the access token (X-Access-Token)", access))
        claims = "".join(
            "<h3>%s</h3><pre>%s</pre>" % (esc(title), esc(json.dumps(c, indent=2, sort_keys=True)))
            for title, c in sections
            if c
        )
        rows = "".join(
            "<tr><td>%s</td><td><code>%s</code></td></tr>" % (esc(k), esc(v)) for k, v in report["header_list"]
        )
        return (
            "<!doctype html><html><head><meta charset=utf-8><title>shardgate demo upstream</title>%s</head><body>"
            "<h1>%s</h1><nav>%s</nav>"
            "<p>This page is served by the upstream; everything below is what the gateway told it.</p>"
            "<h2>Tokens and session</h2><table>%s</table>"
            "<p>After the access token expires, reload: the gateway refreshes it with the refresh token "
            "(one refresh per session across all shards) and the times above move.</p>"
            "<h2>Identity</h2>%s"
            "<h2>Request</h2><p><code>%s %s</code></p>"
            "<h2>Headers</h2><table>%s</table></body></html>"
            % (
                self.STYLE,
                who,
                "".join(links),
                time_rows,
                claims or "<p>none</p>",
                esc(report["method"]),
                esc(self.path),
                rows,
            )
        )

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_HEAD = _handle


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=18080)
    parser.add_argument("--quiet", action="store_true", help="no access log on stderr")
    parser.add_argument("--metrics-url", default="", help="linked from the HTML page")
    parser.add_argument("--session-timeouts", default="", help='"idling_timeout=900 ..." shown on the page')
    args = parser.parse_args()

    ThreadingHTTPServer.daemon_threads = True
    server = ThreadingHTTPServer((args.host, args.port), EchoHandler)
    server.quiet = args.quiet
    server.metrics_url = args.metrics_url
    server.session_timeouts = args.session_timeouts
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
