#!/bin/sh
# Test certificates for NBD over TLS, in the directory layout qemu, nbdkit and libnbd use.
# Usage: make-certs.sh DIR. Makes (all X.509 v3, with extensions, but v1/):
#   DIR/server/  ca-cert.pem server-cert.pem server-key.pem  (SAN IP:127.0.0.1, DNS:localhost)
#   DIR/alice/   ca-cert.pem client-cert.pem client-key.pem  (CN=alice, signed by the CA)
#   DIR/bob/     the same for CN=bob
#   DIR/anon/    ca-cert.pem only (a client without a certificate)
#   DIR/other/   ca-cert.pem, and a CN=alice client certificate from another CA
#   DIR/v1/      a server directory whose server certificate is X.509 v1
set -eu
d=$1
mkdir -p "$d/server" "$d/alice" "$d/bob" "$d/anon" "$d/other" "$d/v1" "$d/work"
w=$d/work
ossl() { openssl "$@" 2>/dev/null; }

ca() { # name -> $w/name-ca-{key,cert}.pem
  ossl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=fss test $1 CA" \
    -keyout "$w/$1-ca-key.pem" -out "$w/$1-ca-cert.pem" \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign
}

leaf() { # ca name cn extfile -> $w/name-{key,cert}.pem
  ossl req -newkey rsa:2048 -nodes -subj "/O=fss tests/CN=$3" \
    -keyout "$w/$2-key.pem" -out "$w/$2.csr"
  ossl x509 -req -in "$w/$2.csr" -CA "$w/$1-ca-cert.pem" -CAkey "$w/$1-ca-key.pem" \
    -CAcreateserial -days 30 -out "$w/$2-cert.pem" ${4:+-extfile "$4"}
}

printf '%s\n' 'basicConstraints=CA:FALSE' 'keyUsage=critical,digitalSignature,keyEncipherment' \
  'extendedKeyUsage=serverAuth' 'subjectAltName=IP:127.0.0.1,DNS:localhost' >"$w/server.ext"
printf '%s\n' 'basicConstraints=CA:FALSE' 'keyUsage=critical,digitalSignature,keyEncipherment' \
  'extendedKeyUsage=clientAuth' >"$w/client.ext"

ca main
ca other
leaf main server localhost "$w/server.ext"
leaf main alice alice "$w/client.ext"
leaf main bob bob "$w/client.ext"
leaf other mallory alice "$w/client.ext"
leaf main v1server localhost ""

for c in server alice bob anon other v1; do cp "$w/main-ca-cert.pem" "$d/$c/ca-cert.pem"; done
cp "$w/server-cert.pem" "$d/server/server-cert.pem"
cp "$w/server-key.pem" "$d/server/server-key.pem"
for c in alice bob; do
  cp "$w/$c-cert.pem" "$d/$c/client-cert.pem"
  cp "$w/$c-key.pem" "$d/$c/client-key.pem"
done
cp "$w/mallory-cert.pem" "$d/other/client-cert.pem"
cp "$w/mallory-key.pem" "$d/other/client-key.pem"
cp "$w/v1server-cert.pem" "$d/v1/server-cert.pem"
cp "$w/v1server-key.pem" "$d/v1/server-key.pem"
chmod 600 "$d"/*/*key.pem
