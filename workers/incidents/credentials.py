"""Who may post to the receiver: bearer token and/or basic auth, compared in constant time."""

from __future__ import annotations

import base64
import binascii
import hmac
from dataclasses import dataclass

from workers.errors import UsageError
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


def require_auth(receiver: ReceiverSettings) -> None:
    """Refuse to serve without credentials, unless explicitly allowed and bound to loopback.

    Called by the CLI before it starts uvicorn and by the app factory itself, so that an app built
    any other way (uvicorn run by hand, a test, an embedding) cannot serve unauthenticated either.

    Raises:
        UsageError: no OPS_RECEIVER_TOKEN / OPS_RECEIVER_BASIC_AUTH and serving without auth is not allowed.
    """
    if Credentials.from_settings(receiver).required:
        return
    if receiver.allow_no_auth and receiver.bind.is_loopback:
        return
    if receiver.allow_no_auth:
        raise UsageError(
            f"OPS_RECEIVER_ALLOW_NO_AUTH=1 only applies on loopback; {receiver.bind} is not: "
            "set OPS_RECEIVER_TOKEN or OPS_RECEIVER_BASIC_AUTH"
        )
    raise UsageError(
        "the receiver needs OPS_RECEIVER_TOKEN and/or OPS_RECEIVER_BASIC_AUTH "
        "(or OPS_RECEIVER_ALLOW_NO_AUTH=1 on a loopback OPS_RECEIVER_BIND)"
    )
