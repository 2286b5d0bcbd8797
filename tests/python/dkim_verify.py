"""Verifies every DKIM-Signature of a message with dkimpy, the keys looked up in DNS.

Usage: dkim_verify.py MESSAGE_FILE DNS_HOST:PORT

Prints one JSON object per signature, in the order they appear:
{"d": ..., "s": ..., "a": ..., "h": [...], "ok": true|false, "error": ...}
"""

import json
import re
import sys

import dkim
import dns.resolver


def main():
    path, server = sys.argv[1], sys.argv[2]
    host, port = server.rsplit(":", 1)
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = [host]
    resolver.port = int(port)
    resolver.lifetime = 5

    def dnsfunc(name, timeout=5):
        if isinstance(name, bytes):
            name = name.decode()
        try:
            answer = resolver.resolve(name.rstrip("."), "TXT")
        except Exception:
            return None
        for record in answer:
            return b"".join(record.strings)
        return None

    message = open(path, "rb").read()
    d = dkim.DKIM(message)
    count = sum(1 for name, _ in d.headers if name.lower() == b"dkim-signature")
    for index in range(count):
        result = {"index": index}
        try:
            result["ok"] = bool(d.verify(idx=index, dnsfunc=dnsfunc))
        except dkim.DKIMException as e:
            result["ok"] = False
            result["error"] = str(e)
        sig = d.signature_fields
        if sig:
            result["d"] = sig.get(b"d", b"").decode()
            result["s"] = sig.get(b"s", b"").decode()
            result["a"] = sig.get(b"a", b"").decode()
            h = re.sub(rb"\s", b"", sig.get(b"h", b"")).decode()
            result["h"] = [x.lower() for x in h.split(":") if x]
        print(json.dumps(result))


if __name__ == "__main__":
    main()
