"""Encryption of vendor credentials at rest (AES-256-GCM from ``cryptography``).

A ciphertext is ``v1.<key id>.<base64url(nonce || ciphertext+tag)>``. The key id is the first
8 hex digits of SHA-256 of the key, so any key in ``TILLGATE_SECRET_KEYS`` can decrypt what it
encrypted (rotation: put the new key first, run ``tillgate secrets rotate``, drop the old key).
The associated data binds a ciphertext to its tenant and connection: moving it to another row
makes decryption fail.
"""

from __future__ import annotations

import base64
import hashlib
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM


class DecryptionError(Exception):
    """The ciphertext was not made by any configured key for this tenant and connection."""


def key_id(key: bytes) -> str:
    """Return the 8-hex-digit id of a 32-byte key."""
    return hashlib.sha256(key).hexdigest()[:8]


class CredentialCipher:
    """Encrypts and decrypts credential blobs; the first key encrypts, every key decrypts.

    Args:
        keys: 32-byte AES keys, primary first.

    Raises:
        ValueError: no key, or a key that is not 32 bytes.
    """

    def __init__(self, keys: list[bytes]) -> None:
        if not keys:
            raise ValueError("at least one secret key is needed")
        for key in keys:
            if len(key) != 32:
                raise ValueError("secret keys must be 32 bytes")
        self._primary = keys[0]
        self._by_id = {key_id(key): AESGCM(key) for key in keys}
        self.primary_id = key_id(self._primary)

    @staticmethod
    def _aad(tenant_id: str, connection_id: str) -> bytes:
        return f"tillgate:credentials:{tenant_id}:{connection_id}".encode()

    def encrypt(self, plaintext: bytes, *, tenant_id: str, connection_id: str) -> str:
        """Encrypt ``plaintext`` for one (tenant, connection) with the primary key."""
        nonce = os.urandom(12)
        sealed = self._by_id[self.primary_id].encrypt(nonce, plaintext, self._aad(tenant_id, connection_id))
        return f"v1.{self.primary_id}.{base64.urlsafe_b64encode(nonce + sealed).decode()}"

    def decrypt(self, token: str, *, tenant_id: str, connection_id: str) -> bytes:
        """Decrypt a token made by :meth:`encrypt` for the same tenant and connection.

        Raises:
            DecryptionError: unknown key id, tampered data, or another row's ciphertext.
        """
        try:
            version, kid, payload = token.split(".", 2)
            blob = base64.urlsafe_b64decode(payload)
        except ValueError as exc:
            raise DecryptionError("malformed credential ciphertext") from exc
        aead = self._by_id.get(kid)
        if version != "v1" or aead is None:
            raise DecryptionError(f"no configured secret key has id {kid!r}")
        try:
            return aead.decrypt(blob[:12], blob[12:], self._aad(tenant_id, connection_id))
        except InvalidTag as exc:
            raise DecryptionError("credential ciphertext does not belong to this connection") from exc

    def needs_rotation(self, token: str) -> bool:
        """True when ``token`` was not encrypted with the primary key."""
        parts = token.split(".", 2)
        return len(parts) != 3 or parts[1] != self.primary_id
