"""OpenClaw device identity: an Ed25519 key per device, its id derived from the key, the nonce signed.

A client that sends ``device.publicKey`` and ``device.signature`` in ``connect`` proves it holds
the key: the id must be the SHA-256 (hex) of the raw 32-byte public key, ``signedAt`` within two
minutes of the gateway's clock, and the signature must cover one of OpenClaw's device-auth
payloads for this connection's challenge nonce, v3 or the older v2::

    v3|deviceId|clientId|clientMode|role|scope1,scope2|signedAtMs|token|nonce|platform|deviceFamily
    v2|deviceId|clientId|clientMode|role|scope1,scope2|signedAtMs|token|nonce

(``platform`` and ``deviceFamily`` trimmed and ASCII lower-cased, ``token`` the one sent in ``auth``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

MAX_SKEW_MS = 2 * 60 * 1000  # how far ``signedAt`` may be from the gateway's clock, as in OpenClaw

# OpenClaw's reasons for refusing a device proof, and the ``details.code`` each is reported with.
DETAIL_CODES = {
    "device-public-key": "DEVICE_AUTH_PUBLIC_KEY_INVALID",
    "device-id-mismatch": "DEVICE_AUTH_DEVICE_ID_MISMATCH",
    "device-nonce-missing": "DEVICE_AUTH_NONCE_REQUIRED",
    "device-nonce-mismatch": "DEVICE_AUTH_NONCE_MISMATCH",
    "device-signature-stale": "DEVICE_AUTH_SIGNATURE_EXPIRED",
    "device-signature": "DEVICE_AUTH_SIGNATURE_INVALID",
}


class IdentityError(ValueError):
    """The device's identity does not hold; the message says which part, ``reason`` is OpenClaw's."""

    def __init__(self, message: str, reason: str = "device-signature") -> None:
        super().__init__(message)
        self.reason = reason

    @property
    def details(self) -> dict:
        return {"code": DETAIL_CODES.get(self.reason, "DEVICE_AUTH_INVALID"), "reason": self.reason}


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def device_id_of(raw_public_key: bytes) -> str:
    return hashlib.sha256(raw_public_key).hexdigest()


def normalized(value: object) -> str:
    """Trimmed, with A-Z lower-cased and nothing else changed (as OpenClaw normalizes)."""
    if not isinstance(value, str):
        return ""
    return value.strip().translate(str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz"))


def auth_payloads(device_id: str, client: dict, role: str, scopes: list[str], signed_at: int, token: str,
                  nonce: str) -> list[str]:
    """The strings a device may have signed: payload v3, then v2."""
    v2 = [device_id, str(client.get("id", "")), str(client.get("mode", "")), role, ",".join(scopes),
          str(signed_at), token, nonce]
    return ["|".join(["v3", *v2, normalized(client.get("platform")), normalized(client.get("deviceFamily"))]),
            "|".join(["v2", *v2])]


def verify(device: dict, client: dict, role: str, scopes: list[str], tokens: list[str], nonce: str,
           now_ms: int) -> str:
    """The device's public key (Base64url) once its identity holds; IdentityError says what does not."""
    public_key, signature, signed_at = device.get("publicKey"), device.get("signature"), device.get("signedAt")
    if not isinstance(public_key, str) or not isinstance(signature, str):
        raise IdentityError("device identity needs publicKey and signature", "device-public-key")
    try:
        raw = b64url_decode(public_key)
        key = Ed25519PublicKey.from_public_bytes(raw)
    except (binascii.Error, ValueError):
        raise IdentityError("device public key invalid", "device-public-key") from None
    if device.get("id") != device_id_of(raw):
        raise IdentityError("device identity mismatch: the id is not the public key's fingerprint",
                            "device-id-mismatch")
    if not isinstance(signed_at, int) or isinstance(signed_at, bool) or abs(now_ms - signed_at) > MAX_SKEW_MS:
        raise IdentityError("device signature expired: signedAt is more than two minutes from the gateway's clock",
                            "device-signature-stale")
    if not isinstance(device.get("nonce"), str) or not device["nonce"].strip():
        raise IdentityError("device nonce required: sign the nonce of this connection's challenge",
                            "device-nonce-missing")
    if device["nonce"].strip() != nonce:
        raise IdentityError("device nonce mismatch: sign the nonce of this connection's challenge",
                            "device-nonce-mismatch")
    try:
        signature_bytes = b64url_decode(signature)
    except (binascii.Error, ValueError):
        raise IdentityError("device signature invalid") from None
    for token in dict.fromkeys([*tokens, ""]):
        for payload in auth_payloads(device["id"], client, role, scopes, signed_at, token, nonce):
            try:
                key.verify(signature_bytes, payload.encode())
                return public_key
            except InvalidSignature:
                continue
    raise IdentityError("device signature invalid")
