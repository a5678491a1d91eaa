#!/usr/bin/env python3
"""RS256 key and JWTs for the bearer-token load scenarios (stdlib + the openssl CLI).

    python3 loadtest/tokens.py OUT_DIR [--count 1000] [--iss URL] [--aud AUD] [--ttl SECONDS]

Writes into OUT_DIR:
  key.pem     RSA-2048 private key (made once; reused when present, so tokens stay verifiable)
  pub.pem     its public key (SubjectPublicKeyInfo PEM: haproxy jwt_verify and the gateway's
              `public_key` take it)
  token.txt   one token (scenario S1)
  tokens.txt  --count distinct tokens, one per line (scenario S2)
Tokens carry iss, aud, sub, scope, iat, exp (now + ttl) and a distinct jti, header kid "loadtest".
Signing is done here with the key's CRT parameters, so 1000 tokens cost one openssl call, not 1000.
"""

import argparse
import base64
import hashlib
import json
import os
import re
import subprocess
import sys
import time

# DER DigestInfo prefix for SHA-256 (RFC 8017 section 9.2, note 1).
SHA256_DIGEST_INFO = bytes.fromhex("3031300d060960864801650304020105000420")


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def openssl(*args, stdin=None):
    res = subprocess.run(["openssl", *args], input=stdin, capture_output=True, check=False)
    if res.returncode != 0:
        sys.exit("openssl %s failed: %s" % (" ".join(args), res.stderr.decode(errors="replace")))
    return res.stdout


def rsa_params(key_path):
    """Parses `openssl rsa -text` into the integers needed for CRT signing."""
    text = openssl("rsa", "-in", key_path, "-noout", "-text").decode()
    fields = {}
    current = None
    for line in text.splitlines():
        m = re.match(r"^(\w+):\s*(\S.*)?$", line)
        if m:
            current = m.group(1)
            fields[current] = ""
            rest = m.group(2) or ""
            # publicExponent: 65537 (0x10001)
            if current == "publicExponent":
                fields[current] = rest.split()[0]
                current = None
            continue
        if current and re.match(r"^\s+[0-9a-f:]+$", line):
            fields[current] += line.strip()
    need = ["modulus", "prime1", "prime2", "exponent1", "exponent2", "coefficient"]
    missing = [k for k in need if not fields.get(k)]
    if missing:
        sys.exit("cannot read %s from %s" % (", ".join(missing), key_path))

    def num(name):
        return int(fields[name].replace(":", ""), 16)

    return {
        "n": num("modulus"),
        "p": num("prime1"),
        "q": num("prime2"),
        "dp": num("exponent1"),
        "dq": num("exponent2"),
        "qinv": num("coefficient"),
    }


def sign_rs256(params, message):
    """RSASSA-PKCS1-v1_5 with SHA-256, using the CRT form (about 4x faster than pow(m, d, n))."""
    k = (params["n"].bit_length() + 7) // 8
    t = SHA256_DIGEST_INFO + hashlib.sha256(message).digest()
    em = b"\x00\x01" + b"\xff" * (k - len(t) - 3) + b"\x00" + t
    m = int.from_bytes(em, "big")
    s1 = pow(m, params["dp"], params["p"])
    s2 = pow(m, params["dq"], params["q"])
    h = (params["qinv"] * (s1 - s2)) % params["p"]
    return (s2 + h * params["q"]).to_bytes(k, "big")


def make_jwt(params, claims, kid):
    header = b64url(json.dumps({"alg": "RS256", "typ": "JWT", "kid": kid}, separators=(",", ":")).encode())
    payload = b64url(json.dumps(claims, separators=(",", ":")).encode())
    signing_input = ("%s.%s" % (header, payload)).encode("ascii")
    return "%s.%s" % (signing_input.decode("ascii"), b64url(sign_rs256(params, signing_input)))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out_dir")
    ap.add_argument("--count", type=int, default=1000)
    ap.add_argument("--iss", default="https://idp.loadtest.invalid")
    ap.add_argument("--aud", default="urn:shardgate:api")
    ap.add_argument("--ttl", type=int, default=86400)
    ap.add_argument("--kid", default="loadtest")
    args = ap.parse_args()
    if args.count < 1:
        sys.exit("--count must be at least 1")

    os.makedirs(args.out_dir, exist_ok=True)
    key = os.path.join(args.out_dir, "key.pem")
    pub = os.path.join(args.out_dir, "pub.pem")
    if not os.path.exists(key):
        openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", key)
        os.chmod(key, 0o600)
    openssl("pkey", "-in", key, "-pubout", "-out", pub)
    params = rsa_params(key)

    now = int(time.time())
    tokens = []
    for i in range(args.count):
        claims = {
            "iss": args.iss,
            "aud": args.aud,
            "sub": "user-%04d" % i,
            "scope": "read write",
            "iat": now,
            "exp": now + args.ttl,
            "jti": "lt-%d-%d" % (now, i),
        }
        tokens.append(make_jwt(params, claims, args.kid))
    with open(os.path.join(args.out_dir, "token.txt"), "w") as f:
        f.write(tokens[0] + "\n")
    with open(os.path.join(args.out_dir, "tokens.txt"), "w") as f:
        f.write("\n".join(tokens) + "\n")

    # One openssl verify proves the hand-rolled signature is what any verifier expects.
    head, payload, sig = tokens[0].split(".")
    sig_path = os.path.join(args.out_dir, ".sig")
    with open(sig_path, "wb") as f:
        f.write(base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4)))
    openssl("dgst", "-sha256", "-verify", pub, "-signature", sig_path, stdin=("%s.%s" % (head, payload)).encode())
    os.remove(sig_path)
    print("wrote %d tokens to %s" % (args.count, args.out_dir), file=sys.stderr)


if __name__ == "__main__":
    main()
