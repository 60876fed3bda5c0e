"""Who may post to the receiver: bearer token and/or basic auth, compared in constant time."""

from __future__ import annotations

import base64
import binascii
import hmac
from dataclasses import dataclass

from workers.settings import ReceiverSettings, Secret


@dataclass(frozen=True, slots=True)
class Credentials:
    token: Secret | None
    basic_auth: Secret | None  # "user:password"

    @classmethod
    def from_settings(cls, receiver: ReceiverSettings) -> Credentials:
        return cls(token=receiver.token, basic_auth=receiver.basic_auth)

    @property
    def required(self) -> bool:
        return self.token is not None or self.basic_auth is not None

    def allow(self, authorization: str | None) -> bool:
        """Whether an Authorization header value grants access; True for anyone when none is configured."""
        if not self.required:
            return True
        if not authorization:
            return False
        scheme, _, value = authorization.strip().partition(" ")
        value = value.strip()
        if scheme.lower() == "bearer" and self.token is not None:
            return hmac.compare_digest(value.encode("utf-8", "replace"), self.token.value.encode())
        if scheme.lower() == "basic" and self.basic_auth is not None:
            try:
                presented = base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                return False
            return hmac.compare_digest(presented, self.basic_auth.value.encode())
        return False

    def challenge(self) -> str:
        """The WWW-Authenticate value of a 401."""
        return 'Basic realm="ops-workers"' if self.token is None else 'Bearer realm="ops-workers"'
