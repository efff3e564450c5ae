# Computes FORMAT.md's test vectors with pymacaroons, an implementation independent of ours.
# Run: python3 broker/tokens/tests/data/gen_vectors.py  (prints the vectors block).
import base64
from pymacaroons import Macaroon, MACAROON_V1, MACAROON_V2

ROOT = bytes([7]) * 32
LOC = "https://cleave.example"
PATIENT = "P1-00112233445566778899aabbccddeeff"
CERT = "aa00000000000000000000000000000000000000000000000000000000000001"
SIX = ["ops = read,write", "stores = clinical", "patient = " + PATIENT,
       "expires < 2030-01-01T00:00:00Z", "cert = sha256:" + CERT, "net = 10.0.0.0/8"]

def mint(caveats, ident=b"grant-0001", key=ROOT, version=MACAROON_V2):
    m = Macaroon(location=LOC, identifier=ident, key=key, version=version)
    for c in caveats:
        m.add_first_party_caveat(c)
    return m

def raw(m):
    return bytearray(base64.urlsafe_b64decode(m.serialize() + "=="))

def b64(b):
    return base64.urlsafe_b64encode(bytes(b)).decode().rstrip("=")

out = []
out.append(("ok_no_caveats", "ok", mint([]).serialize()))
out.append(("ok_six_caveats", "ok", mint(SIX).serialize()))
out.append(("ok_read_only", "ok", mint(["ops = read", "note = for the tumour board"]).serialize()))
out.append(("fail_expired", "expired", mint(["expires < 2020-01-01T00:00:00Z"]).serialize()))
out.append(("fail_wrong_op", "operation not allowed: read", mint(["ops = append"]).serialize()))
out.append(("fail_unknown_caveat", "unknown caveat", mint(["time < 2030-01-01T00:00:00Z"]).serialize()))
out.append(("fail_malformed_caveat", "malformed caveat: ops", mint(["ops = read,"]).serialize()))
out.append(("fail_wrong_root_key", "signature invalid", mint(SIX, key=bytes([8]) * 32).serialize()))
b = raw(mint(SIX)); b[-1] ^= 0x01
out.append(("fail_tampered_signature", "signature invalid", b64(b)))
b = raw(mint(SIX)); i = bytes(b).find(b"read,write"); b[i:i + 10] = b"read,admin"
out.append(("fail_tampered_caveat", "signature invalid", b64(b)))
out.append(("fail_v1_format", "unsupported token format", mint(SIX, version=MACAROON_V1).serialize()))
b = raw(mint(SIX)); b[0] = 3
out.append(("fail_unknown_version", "unsupported token format", b64(b)))
b = raw(mint(SIX))
out.append(("fail_truncated", "token malformed", b64(b[:-5])))
out.append(("fail_trailing_bytes", "token malformed", b64(b + b"\x00")))
b = raw(mint([]))
# Header field type 3 (unknown) in place of the location field type.
b[1] = 3
out.append(("fail_unknown_field", "token malformed", b64(b)))
b = raw(mint(["ops = read"]))
# Over-long varint for the first caveat's identifier length.
i = bytes(b).find(b"\x02\x0aops = read")
b[i + 1:i + 2] = b"\x8a\x00"
out.append(("fail_non_minimal_varint", "token malformed", b64(b)))
out.append(("fail_json", "unsupported token format", base64.urlsafe_b64encode(b'{"i":"x"}').decode()))
for name, expect, token in out:
    print(f"{name} | {expect} | {token}")
