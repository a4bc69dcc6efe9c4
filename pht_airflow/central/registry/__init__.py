"""Registry administration for the central service: one protocol, two adapters.

:class:`RegistryAdmin` is what the central service needs from a registry: private projects,
robot accounts limited to one project, push webhooks, and copying a train with everything
that belongs to it from one project to another (PROTOCOL.md, "Routing through a registry").

What :meth:`RegistryAdmin.copy_train` copies, from ``src`` to ``dst``:

- the train manifest, by digest, tagged ``train`` in the destination;
- its signature manifest (cosign's ``sha256-<hex>.sig`` tag), if there is one;
- every ``result-<k>`` artifact whose ``subject`` is the train, and each one's ``.sig``.

Digests never change: manifests are copied byte for byte, so every signature stays valid.
Copies are idempotent (what is already there with the same digest is left alone) and move
no layer bytes through the central service.

The modules:

- :mod:`.admin`: the protocol, :class:`CopyReport`, :class:`RobotAccount` and what both
  adapters share;
- :mod:`.plain`: :class:`PlainRegistryAdmin`, for a CNCF distribution registry;
- :mod:`.harbor`: :class:`HarborAdmin`, for Harbor, on :mod:`.harbor_api` (the REST API's
  request conventions: auth without cookies, request ids, errors, paging).
"""

from .admin import (
    PAYLOAD_FORMATS,
    CopyReport,
    Ensured,
    PayloadFormat,
    RegistryAdmin,
    RobotAccount,
)
from .harbor import HARBOR_PUSH_EVENT, HarborAdmin
from .plain import PlainRegistryAdmin

__all__ = [
    "HARBOR_PUSH_EVENT",
    "PAYLOAD_FORMATS",
    "CopyReport",
    "Ensured",
    "HarborAdmin",
    "PayloadFormat",
    "PlainRegistryAdmin",
    "RegistryAdmin",
    "RobotAccount",
]
