# An ES512 JWT signed by openssl (not by shardgate), so the verifier is checked against another
# implementation. Run by gen.sh after the keys exist.
import base64, json, subprocess
def b64u(b): return base64.urlsafe_b64encode(b).rstrip(b"=").decode()
head = b64u(json.dumps({"alg": "ES512", "typ": "JWT", "kid": "ec521"}, separators=(",", ":")).encode())
body = b64u(json.dumps({"iss": "https://idp.test", "sub": "alice", "aud": "gateway", "exp": 1700000300, "iat": 1700000000}, separators=(",", ":")).encode())
der = subprocess.run(["openssl", "dgst", "-sha512", "-sign", "ec521.pem"], input=f"{head}.{body}".encode(), capture_output=True, check=True).stdout
# DER SEQUENCE { INTEGER r, INTEGER s } -> r || s, 66 bytes each (RFC 7518 3.4).
def read(b, i):
    assert b[i] == 0x02; i += 1
    n = b[i]; i += 1
    if n & 0x80:
        k = n & 0x7f; n = int.from_bytes(b[i:i+k], "big"); i += k
    return int.from_bytes(b[i:i+n], "big"), i + n
i = 2 if der[1] < 0x80 else 2 + (der[1] & 0x7f)
r, i = read(der, i); s, _ = read(der, i)
open("es512.jwt", "w").write(f"{head}.{body}.{b64u(r.to_bytes(66, 'big') + s.to_bytes(66, 'big'))}\n")
