"""API keys and roles, shared by every door into recsvc: the gRPC service and the console.

A file of "KEY ROLE" lines; each role can do what the ones before it can: client (a shop
frontend: recommendations and events), analyst (customers' data, alone or in bulk), admin
(operations: deletions, rollbacks, campaigns).
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from pathlib import Path

from recsvc.errors import BadInput

ROLES = ("client", "analyst", "admin")  # each can do what the ones before it can


@dataclass(frozen=True)
class ApiKeys:
    """Keys and their roles, read from a file of "KEY ROLE" lines. Each role can do what the
    one before it can: client (a shop frontend), analyst (customer data), admin (operations)."""

    roles: dict[str, str]

    @classmethod
    def load(cls, path: Path) -> ApiKeys:
        roles = {}
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.split()
            if len(parts) != 2 or parts[1] not in ROLES:
                raise BadInput(
                    f"{path}:{number}: expected 'KEY ROLE', ROLE one of {', '.join(ROLES)}"
                )
            roles[parts[0]] = parts[1]
        if not roles:
            raise BadInput(f"{path} holds no API keys")
        return cls(roles)

    def role_of(self, key: str) -> str | None:
        # Compare in constant time so that response timing does not leak key prefixes.
        found = None
        for candidate, role in self.roles.items():
            if hmac.compare_digest(candidate.encode(), key.encode()):
                found = role
        return found
