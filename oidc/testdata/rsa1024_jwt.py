# RS256, RS512 and PS256 JWTs signed by openssl with the 1024-bit test key (ring cannot sign with a
# key that short), for the short-RSA verification tests. Run by gen.sh after the keys exist.
import base64, json, subprocess
def b64u(b): return base64.urlsafe_b64encode(b).rstrip(b"=").decode()
body = b64u(json.dumps({"iss": "https://idp.test", "sub": "alice", "aud": "gateway", "exp": 1700000300, "iat": 1700000000}, separators=(",", ":")).encode())
out = []
for alg, digest, pss in [("RS256", "-sha256", False), ("RS512", "-sha512", False), ("PS256", "-sha256", True)]:
    head = b64u(json.dumps({"alg": alg, "typ": "JWT"}, separators=(",", ":")).encode())
    opts = ["-sigopt", "rsa_padding_mode:pss", "-sigopt", "rsa_pss_saltlen:32"] if pss else []
    sig = subprocess.run(["openssl", "dgst", digest, "-sign", "rsa1024.pem", *opts], input=f"{head}.{body}".encode(), capture_output=True, check=True).stdout
    out.append(f"{head}.{body}.{b64u(sig)}\n")
open("rsa1024.jwt", "w").write("".join(out))
# A DPoP proof (RFC 9449) by the same key, valid but for the key's size, for access token "tok".
import hashlib
mod = subprocess.check_output(["openssl", "rsa", "-pubin", "-in", "rsa1024.pub.pem", "-noout", "-modulus"]).decode()
jwk = {"kty": "RSA", "e": "AQAB", "n": b64u(bytes.fromhex(mod.strip().split("=", 1)[1]))}
head = b64u(json.dumps({"typ": "dpop+jwt", "alg": "RS256", "jwk": jwk}, separators=(",", ":")).encode())
claims = {"jti": "short-rsa-1", "htm": "GET", "htu": "https://api.test/r", "iat": 1700000000, "ath": b64u(hashlib.sha256(b"tok").digest())}
body = b64u(json.dumps(claims, separators=(",", ":")).encode())
sig = subprocess.run(["openssl", "dgst", "-sha256", "-sign", "rsa1024.pem"], input=f"{head}.{body}".encode(), capture_output=True, check=True).stdout
open("rsa1024_dpop.jwt", "w").write(f"{head}.{body}.{b64u(sig)}\n")
