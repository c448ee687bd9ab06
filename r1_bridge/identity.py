"""OpenClaw device identity: an Ed25519 key per device, its id derived from the key, the nonce signed.

A client that sends ``device.publicKey`` and ``device.signature`` in ``connect`` proves it holds
the key: the id must be the SHA-256 (hex) of the raw 32-byte public key, and the signature
must cover OpenClaw's device-auth payload v3 for this connection's challenge nonce::

    v3|deviceId|clientId|clientMode|role|scope1,scope2|signedAtMs|token|nonce|platform|deviceFamily

(``platform`` and ``deviceFamily`` trimmed and lower-cased, ``token`` the one sent in ``auth``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

MAX_SKEW_MS = 10 * 60 * 1000  # how far ``signedAt`` may be from the gateway's clock


class IdentityError(ValueError):
    """The device's identity does not hold; the message says which part."""


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def device_id_of(raw_public_key: bytes) -> str:
    return hashlib.sha256(raw_public_key).hexdigest()


def normalized(value: object) -> str:
    return value.strip().lower() if isinstance(value, str) else ""


def auth_payload(device_id: str, client: dict, role: str, scopes: list[str], signed_at: int, token: str,
                 nonce: str) -> str:
    """The v3 string the device signs."""
    return "|".join(["v3", device_id, str(client.get("id", "")), str(client.get("mode", "")), role, ",".join(scopes),
                     str(signed_at), token, nonce, normalized(client.get("platform")),
                     normalized(client.get("deviceFamily"))])


def verify(device: dict, client: dict, role: str, scopes: list[str], tokens: list[str], nonce: str,
           now_ms: int) -> str:
    """The device's public key (Base64url) once its identity holds; IdentityError says what does not."""
    public_key, signature, signed_at = device.get("publicKey"), device.get("signature"), device.get("signedAt")
    if not isinstance(public_key, str) or not isinstance(signature, str):
        raise IdentityError("device identity needs publicKey and signature")
    try:
        raw = b64url_decode(public_key)
        key = Ed25519PublicKey.from_public_bytes(raw)
    except (binascii.Error, ValueError):
        raise IdentityError("device public key invalid") from None
    if device.get("id") != device_id_of(raw):
        raise IdentityError("device identity mismatch: the id is not the public key's fingerprint")
    if device.get("nonce") != nonce:
        raise IdentityError("device nonce mismatch: sign the nonce of this connection's challenge")
    if not isinstance(signed_at, int) or isinstance(signed_at, bool) or abs(now_ms - signed_at) > MAX_SKEW_MS:
        raise IdentityError("device signature expired: signedAt is too far from the gateway's clock")
    try:
        signature_bytes = b64url_decode(signature)
    except (binascii.Error, ValueError):
        raise IdentityError("device signature invalid") from None
    for token in dict.fromkeys([*tokens, ""]):
        try:
            key.verify(signature_bytes, auth_payload(device["id"], client, role, scopes, signed_at, token,
                                                     nonce).encode())
            return public_key
        except InvalidSignature:
            continue
    raise IdentityError("device signature invalid")
