#!/usr/bin/env python3
# Writes the hand-made seed inputs of every fuzz target: python3 gateway/fuzz/make_seeds.py gateway/fuzz/seeds
# (run from the repository root; the harnesses in src/lib.rs say what each first byte selects).
import os, json, hmac, hashlib, base64, zlib, sys
root = sys.argv[1]
def w(target, name, data):
    d = os.path.join(root, target); os.makedirs(d, exist_ok=True)
    if isinstance(data, str): data = data.encode()
    open(os.path.join(d, name), 'wb').write(data)
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b'=').decode()
def hs256(claims, kid='hs', secret=b'fuzzing-secret-fuzzing-secret-32', alg='HS256'):
    h = {'alg': alg, 'typ': 'JWT'}
    if kid: h['kid'] = kid
    si = b64(json.dumps(h).encode()) + '.' + b64(json.dumps(claims).encode())
    sig = hmac.new(secret, si.encode(), hashlib.sha256).digest()
    return si + '.' + b64(sig)

# request heads
reqs = {
 'get': "GET /api/items?id=1 HTTP/1.1\r\nHost: api.example.com\r\nUser-Agent: t\r\nAccept: */*\r\nCookie: a=b; session=x\r\n\r\n",
 'post_cl': "POST /api/items HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Type: application/json\r\n\r\nhello",
 'chunked': "PUT /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
 'absolute': "GET http://Example.COM:8080/a/../b//c?q HTTP/1.1\r\nHost: example.com:8080\r\n\r\n",
 'connect': "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
 'options_star': "OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
 'http10': "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
 'upgrade': "GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, x-foo\r\nUpgrade: websocket\r\nX-Foo: 1\r\nExpect: 100-continue\r\n\r\n",
 'encoded_path': "GET /%61pi/%2e%2e/admin;x=1//y HTTP/1.1\r\nHost: a\r\n\r\n",
 'dup_cl': "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3, 3\r\n\r\nabc",
}
for k, v in reqs.items(): w('request_head', k, v)
# response heads (first byte: method selector 0 GET 1 HEAD 2 CONNECT 3 POST)
resps = {
 'ok_cl': b"\x00HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\n{}",
 'chunked': b"\x00HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: x\r\n\r\n2\r\nab\r\n0\r\n\r\n",
 'head': b"\x01HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n",
 'close': b"\x00HTTP/1.0 200 OK\r\nServer: x\r\n\r\nbody",
 'connect': b"\x02HTTP/1.1 200 Connection established\r\n\r\n",
 'interim': b"\x03HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
 'switch': b"\x00HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
 'not_modified': b"\x80HTTP/1.1 304 Not Modified\r\nContent-Length: 7\r\n\r\n",
}
for k, v in resps.items(): w('response_head', k, v)
# chunked bodies (first byte: split seed)
ch = {
 'simple': b"\x07" + b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
 'ext': b"\x13" + b"A;name=value;q=\"x\"\r\n0123456789\r\n0;end\r\n\r\n",
 'trailers': b"\x21" + b"1\r\na\r\n0\r\nX-Trailer: 1\r\nAuthorization: x\r\n\r\n",
 'bws': b"\x42" + b"3 \t;e\r\nabc\r\n00\r\n\r\n",
 'big': b"\x05" + b"FFFFFFFFFFFFFFFF\r\nabc",
 'partial': b"\x99" + b"4\r\nab",
}
for k, v in ch.items(): w('chunked', k, v)
# routes: host \n path \n method
rt = {
 'api': "api.example.com\n/api/items\nGET",
 'admin': "\n/api/admin/users\nPOST",
 'exact': "x\n/login\nGET",
 'host_port': "API.Example.com:8443\n/api/\nDELETE",
 'off': "\n/off\nGET",
 'dots': "a.test\n/api/../admin\nPATCH",
 'encoded': "\n/%61pi/admin//x;y\nGET",
}
for k, v in rt.items(): w('path_route', k, v)
# configs
w('config_load', 'demo.yaml', open('scripts/demo/config.yaml').read())
w('config_load', 'routes.yaml', """upstreams:
  - id: app
    type: chash
    hash_on: header
    key: x-user
    nodes: { "127.0.0.1:1980": 1, "127.0.0.2:1980": 2 }
    timeout: { connect: 3, send: 30, read: 30 }
    retries: 2
    checks: { passive: { unhealthy: { http_failures: 3, http_statuses: [502, 503] } } }
routes:
  - { id: public, uri: "/*", upstream_id: app }
  - { id: api, uris: ["/api/*", "/v2"], methods: [GET, POST], hosts: ["*.example.com"], priority: 3, upstream_id: app }
  - id: inline
    uri: /inline
    upstream: { nodes: [{ host: 127.0.0.1, port: 80, weight: 1 }], scheme: https, pass_host: rewrite, upstream_host: x.test }
""")
w('config_load', 'gateway.yaml', """gateway:
  listen: ["127.0.0.1:9080", "[::1]:9081"]
  admin: { listen: "127.0.0.1:9090", admin_key: [{ name: admin, key: "${ADMIN_KEY}", role: admin }] }
  shards: auto
  limits: { max_header_bytes: 32768, header_timeout: 10, idle_timeout: 60, max_connections: 20000 }
#END
""")
w('config_load', 'oidc_full.yaml', """upstreams: [{ id: u, nodes: { "127.0.0.1:1": 1 } }]
routes:
  - id: r
    uri: /*
    upstream_id: u
    plugins:
      openid-connect:
        client_id: gateway
        client_secret: ${OIDC_CLIENT_SECRET}
        discovery: https://idp.example.com/.well-known/openid-configuration
        bearer_only: false
        unauth_action: auth
        scope: openid email
        realm: apisix
        introspection_endpoint_auth_method: client_secret_basic
        token_signing_alg_values_expected: RS256
        set_access_token_header: true
        access_token_in_authorization_header: false
        set_id_token_header: true
        set_userinfo_header: true
        set_refresh_token_header: false
        renew_access_token_on_expiry: true
        required_scopes: [read]
        claim_validator: { issuer: { valid_issuers: [https://idp.example.com] }, audience: { claim: aud, required: true } }
        session: { secret: "${SESSION_SECRET}", cookie: { lifetime: 3600 } }
""")
w('config_load', 'bad.yaml', "routes:\n  - id: x\n    uri: 5\n    plugins: { limit-count: {} }\n")
# jwt: mode 0 token, 1 jwks, 2 pem, 3 claims
claims = {'iss': 'https://idp.example.com', 'aud': ['gateway', 'other'], 'sub': 'alice', 'exp': 1800000300, 'iat': 1799999000, 'nbf': 1799999000, 'scope': 'openid read', 'scp': ['write']}
w('jwt', 'token_hs', b"\x00" + hs256(claims).encode())
w('jwt', 'token_rs_kid', b"\x00" + hs256(claims, kid='rsa1', alg='RS256').encode())
w('jwt', 'token_none', b"\x00" + (b64(b'{"alg":"none"}') + '.' + b64(json.dumps(claims).encode()) + '.').encode())
w('jwt', 'token_crit', b"\x00" + (b64(b'{"alg":"ES256","crit":["b64"],"kid":"ec256"}') + '.e30.AAAA').encode())
w('jwt', 'jwks', b"\x01" + open('oidc/testdata/jwks.json', 'rb').read())
w('jwt', 'jwks_x5c', b"\x01" + open('oidc/testdata/jwks_x5c.json', 'rb').read())
w('jwt', 'jwks_oct', b"\x01" + json.dumps({'keys': [{'kty': 'oct', 'k': b64(b'0123456789abcdef0123456789abcdef'), 'kid': 'o'}, {'kty': 'EC', 'crv': 'P-521', 'x': 'AA', 'y': 'AA'}]}).encode())
for pem in ['rsa1.pub.pem', 'ec256.pub.pem', 'ed25519.pub.pem', 'rsa1.pkcs1.pub.pem', 'ec256.pem', 'ed25519.pem']:
    w('jwt', 'pem_' + pem.replace('.', '_'), b"\x02" + open('oidc/testdata/' + pem, 'rb').read())
w('jwt', 'claims', b"\x03" + json.dumps(claims).encode())
w('jwt', 'claims_odd', b"\x03" + b'{"exp":"1800000000","aud":"gateway","iat":1.5e9,"scope":7,"iss":null}')
# session: mode 0 cookie header(s) split by \n, 1 raw plaintext, 2 SessionData json
sd = {'v': 1, 's': 'alice', 'd': 'sid-1', 'i': 'https://idp.example.com', 'a': 'at', 'ae': 1800000100, 'r': 'rt', 'c': {'sub': 'alice'}, 'u': {'name': 'A'}, 'sc': 'openid', 'ca': 1799990000, 'ls': 1799999000, 'ra': 1799999000, 'aa': 1799990000}
w('session', 'cookie_single', b"\x00session=AgAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA; other=1")
w('session', 'cookie_chunks', b"\x00session2=bbbb; session=3.aaaa\nsession3=cccc; session=dup")
w('session', 'plain_json', b"\x01\x00" + json.dumps(sd).encode())
co = zlib.compressobj(9, zlib.DEFLATED, -15)
w('session', 'plain_deflate', b"\x01\x01" + co.compress(json.dumps(sd).encode() * 3) + co.flush())
w('session', 'plain_login', b"\x01\x00" + json.dumps({'s': 'state-123456789', 'n': 'nonce', 'v': 'verifier', 'o': '/x', 'c': 1799999999, 'r': 'https://a/cb'}).encode())
w('session', 'roundtrip', b"\x02" + json.dumps(sd).encode())
w('session', 'roundtrip_big', b"\x02" + json.dumps(dict(sd, a='x' * 6000, r='y' * 2000)).encode())
# logout tokens: mode 0 token, 1 claims we sign
lc = {'iss': 'https://idp.example.com', 'aud': 'gateway', 'iat': 1799999990, 'exp': 1800000100, 'jti': 'j1', 'sid': 'sid-1', 'sub': 'alice', 'events': {'http://schemas.openid.net/event/backchannel-logout': {}}}
w('logout_token', 'claims', b"\x01" + json.dumps(lc).encode())
w('logout_token', 'claims_sub_only', b"\x01" + json.dumps({k: v for k, v in lc.items() if k != 'sid'}).encode())
w('logout_token', 'claims_nonce', b"\x01" + json.dumps(dict(lc, nonce='n')).encode())
w('logout_token', 'token', b"\x00" + hs256(lc).encode())
# IdP responses: mode bit0 head_only, bit1 eof, high nibble body limit
disc = {'issuer': 'https://idp.example.com', 'authorization_endpoint': 'https://idp.example.com/auth', 'token_endpoint': 'https://idp.example.com/token', 'jwks_uri': 'https://idp.example.com/jwks', 'introspection_endpoint': 'https://idp.example.com/introspect', 'end_session_endpoint': 'https://idp.example.com/logout', 'code_challenge_methods_supported': ['S256'], 'backchannel_logout_supported': True}
def resp(body, extra=b""):
    return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n" + extra + b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
w('idp_response', 'discovery', b"\xa0" + resp(json.dumps(disc).encode()))
w('idp_response', 'jwks', b"\xa0" + resp(open('oidc/testdata/jwks.json', 'rb').read()))
w('idp_response', 'token', b"\x80" + resp(json.dumps({'access_token': 'at', 'token_type': 'Bearer', 'expires_in': 300, 'refresh_token': 'rt', 'id_token': hs256(claims), 'scope': 'openid'}).encode()))
w('idp_response', 'token_error', b"\x80" + b"HTTP/1.1 400 Bad Request\r\nTransfer-Encoding: chunked\r\n\r\n1f\r\n" + b'{"error":"invalid_grant","x":1}' + b"\r\n0\r\n\r\n")
w('idp_response', 'introspection', b"\x80" + resp(json.dumps({'active': True, 'scope': 'read write', 'exp': 1800000100, 'sub': 'alice'}).encode(), b"Connection: close\r\n"))
w('idp_response', 'close_delimited', b"\x42" + b"HTTP/1.0 200 OK\r\n\r\n{\"active\":false}")
w('idp_response', 'head_only', b"\x01HTTP/1.1 204 No Content\r\nContent-Length: 9\r\n\r\n")
w('idp_response', 'chunked_ext', b"\x32HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2;x=y\r\n{}\r\n0\r\nT: 1\r\n\r\n")
