#!/usr/bin/env bash
# Regenerates the test keys and JWKS documents in this folder (openssl 3 + python3 stdlib).
# The keys are test-only fixtures: never use them anywhere else.
set -euo pipefail
cd "$(dirname "$0")"
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out rsa1.pem
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out rsa2.pem
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out ec256.pem
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-384 -out ec384.pem
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-521 -out ec521.pem
openssl genpkey -algorithm ED25519 -out ed25519.pem
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:1024 -out rsa1024.pem
for k in rsa1 rsa2 ec256 ec384 ec521 ed25519 rsa1024; do
  openssl pkey -in $k.pem -pubout -out $k.pub.pem
  openssl pkey -in $k.pem -pubout -outform DER -out $k.pub.der
done
# Too short for any verifier: only its public half is kept.
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:512 | openssl pkey -pubout -out rsa512.pub.pem
openssl rsa -in rsa1.pem -traditional -out rsa1.pkcs1.pem
openssl rsa -in rsa1024.pem -traditional -out rsa1024.pkcs1.pem
openssl rsa -pubin -in rsa1.pub.pem -RSAPublicKey_out -out rsa1.pkcs1.pub.pem
openssl req -new -x509 -key rsa2.pem -subj /CN=shardgate-test -days 36500 -outform DER -out rsa2.cert.der
python3 - <<'PY'
import base64, json, subprocess
def b64u(b): return base64.urlsafe_b64encode(b).rstrip(b"=").decode()
def rsa(name):
    mod = subprocess.check_output(["openssl", "rsa", "-pubin", "-in", name + ".pub.pem", "-noout", "-modulus"]).decode()
    n = bytes.fromhex(mod.strip().split("=", 1)[1])
    return {"n": b64u(n), "e": b64u((65537).to_bytes(3, "big"))}
spki = lambda name: open(name + ".pub.der", "rb").read()
rsa1 = dict(kty="RSA", kid="rsa1", use="sig", alg="RS256", **rsa("rsa1"))
rsa2 = dict(kty="RSA", kid="rsa2", use="sig", **rsa("rsa2"))
p256 = spki("ec256")[-65:]; p384 = spki("ec384")[-97:]
ec256 = dict(kty="EC", kid="ec256", use="sig", crv="P-256", x=b64u(p256[1:33]), y=b64u(p256[33:]))
ec384 = dict(kty="EC", kid="ec384", crv="P-384", alg="ES384", x=b64u(p384[1:49]), y=b64u(p384[49:]))
ed = dict(kty="OKP", kid="ed25519", crv="Ed25519", x=b64u(spki("ed25519")[-32:]))
json.dump({"keys": [rsa1, rsa2, ec256, ec384, ed]}, open("jwks.json", "w"), indent=1)
# rsa2 published only as an x5c certificate chain (no n/e).
x5c = dict(kty="RSA", kid="rsa2-x5c", use="sig", x5c=[base64.b64encode(open("rsa2.cert.der", "rb").read()).decode()])
json.dump({"keys": [x5c]}, open("jwks_x5c.json", "w"), indent=1)
# P-521 (ES512) in its own set, so adding it left the other fixtures as they were.
p521 = spki("ec521")[-133:]
ec521 = dict(kty="EC", kid="ec521", use="sig", crv="P-521", x=b64u(p521[1:67]), y=b64u(p521[67:]))
json.dump({"keys": [ec521]}, open("jwks_p521.json", "w"), indent=1)
PY
python3 es512_jwt.py
python3 rsa1024_jwt.py
