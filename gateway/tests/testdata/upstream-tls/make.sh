#!/bin/sh
# Regenerates the test-only upstream TLS material (see ../README.md). Never use it for anything else.
set -eu
cd "$(dirname "$0")"
ec() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1"; }
ec ca-key.pem
openssl req -x509 -new -key ca-key.pem -out ca-cert.pem -days 36500 -subj "/CN=shardgate test upstream CA" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
ec server-key.pem
openssl req -new -key server-key.pem -subj "/CN=upstream.test" -out server.csr
printf 'subjectAltName=DNS:upstream.test,DNS:localhost,IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\nextendedKeyUsage=serverAuth\n' > server.ext
openssl x509 -req -in server.csr -CA ca-cert.pem -CAkey ca-key.pem -CAcreateserial -days 36500 \
  -extfile server.ext -out server-cert.pem
ec client-key.pem
openssl req -new -key client-key.pem -subj "/CN=shardgate test client" -out client.csr
printf 'basicConstraints=critical,CA:FALSE\nextendedKeyUsage=clientAuth\n' > client.ext
openssl x509 -req -in client.csr -CA ca-cert.pem -CAkey ca-key.pem -CAcreateserial -days 36500 \
  -extfile client.ext -out client-cert.pem
rm -f server.csr server.ext client.csr client.ext ca-cert.srl ca-key.pem
