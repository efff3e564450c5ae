#!/usr/bin/env python3
"""Independent check of Cleave's blob format (clinical-store/FORMAT.md) with libsodium.

For every good vector in the directory given as argument, derive the per-blob key with the
reference BLAKE3 (Python `blake3`), decrypt each chunk with libsodium's XChaCha20-Poly1305
(PyNaCl), and for version 2 the record after the chunks, compare with the recorded
plaintext and record, then re-encrypt and compare byte for byte.
Prints `ok <name>` per vector; exits non-zero on any mismatch. Needs `pip install pynacl blake3`.
"""
import json, pathlib, struct, sys

from blake3 import blake3
from nacl.bindings import (crypto_aead_xchacha20poly1305_ietf_decrypt,
                           crypto_aead_xchacha20poly1305_ietf_encrypt)

KDF_CONTEXT = "cleave clinical-store 2025 blob/1 per-blob key"
HEADER = 48
TAG = 16


def nonce(blob_nonce, index, last):
    return blob_nonce[:19] + struct.pack(">I", index) + bytes([1 if last else 0])


RECORD_FLAG = 2  # the record's nonce: index 0, flag 2


def check(vec_path):
    v = json.loads(vec_path.read_text())
    blob = (vec_path.parent / v["blob"]).read_bytes()
    key, blob_id = bytes.fromhex(v["key"]), bytes.fromhex(v["blob_id"])
    header = blob[:HEADER]
    version = header[7]
    assert header[:7] == b"CLVBLOB" and version in (1, 2), "magic/version"
    key_version, chunk_size = struct.unpack(">II", header[8:16])
    assert key_version == v["key_version"] and chunk_size == v["chunk_size"]
    blob_nonce = header[16:48]
    assert blob_nonce.hex() == v["blob_nonce"]
    blob_key = blake3(key + blob_nonce, derive_key_context=KDF_CONTEXT).digest()
    ad = header + blob_id
    body, record = blob[HEADER:], None
    if version == 2:
        (sealed_len,) = struct.unpack(">I", body[-4:])
        sealed, body = body[-4 - sealed_len:-4], body[:-4 - sealed_len]
        record_nonce = blob_nonce[:19] + struct.pack(">I", 0) + bytes([RECORD_FLAG])
        record = crypto_aead_xchacha20poly1305_ietf_decrypt(sealed, ad, record_nonce, blob_key)
        assert record.hex() == v["record"], "record differs"
    plain, index = b"", 0
    while True:
        chunk, body = body[:chunk_size + TAG], body[chunk_size + TAG:]
        last = len(body) == 0
        plain += crypto_aead_xchacha20poly1305_ietf_decrypt(chunk, ad, nonce(blob_nonce, index, last), blob_key)
        if last:
            break
        index += 1
    assert plain == bytes.fromhex(v["plaintext"]), "plaintext differs"
    # Re-encrypt: the final chunk may be full, and is empty only for an empty payload.
    chunks = [plain[i:i + chunk_size] for i in range(0, len(plain), chunk_size)] or [b""]
    again = header + b"".join(
        crypto_aead_xchacha20poly1305_ietf_encrypt(c, ad, nonce(blob_nonce, i, i == len(chunks) - 1), blob_key)
        for i, c in enumerate(chunks))
    if version == 2:
        sealed = crypto_aead_xchacha20poly1305_ietf_encrypt(record, ad, record_nonce, blob_key)
        again += sealed + struct.pack(">I", len(sealed))
    assert again == blob, "re-encryption differs"


def main():
    d = pathlib.Path(sys.argv[1])
    goods = sorted(p for p in d.glob("*.json") if not p.name.startswith("fail_"))
    if not goods:
        sys.exit("no good vectors found in " + str(d))
    for p in goods:
        check(p)
        print("ok", p.stem)


if __name__ == "__main__":
    main()
