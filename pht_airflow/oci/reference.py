"""Image and artifact references: ``[host[:port]/]path[:tag][@sha256:hex]``.

Parsing follows Docker's rules (``distribution/reference``): the first path component is
a registry host only if it contains ``.`` or ``:`` or is ``localhost``; otherwise the
registry is ``docker.io`` and a one-component name gets ``library/``. A reference with
neither tag nor digest gets the tag ``latest``, as ``docker pull`` does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from ..errors import InvalidReferenceError

DEFAULT_REGISTRY = "docker.io"

# distribution/reference grammar (reference.go), restricted to what we accept.
_COMPONENT_RE = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_DOMAIN_LABEL = r"(?:[A-Za-z0-9]|[A-Za-z0-9][A-Za-z0-9-]*[A-Za-z0-9])"
_HOST_RE = re.compile(
    rf"(?:{_DOMAIN_LABEL}(?:\.{_DOMAIN_LABEL})*|\[[0-9A-Fa-f:.]+\])(?::[0-9]{{1,5}})?"
)
_DIGEST_SHAPE_RE = re.compile(r"([A-Za-z0-9+._-]*):(.*)")
_SHA256_HEX_RE = re.compile(r"[0-9a-f]{64}")
_MAX_NAME = 255


def _fail(problem: str, text: str | None) -> InvalidReferenceError:
    where = f" in {text!r}" if text is not None else ""
    return InvalidReferenceError(f"invalid image reference{where}: {problem}")


def check_registry(registry: str, text: str | None = None) -> str:
    """Validate a registry host (``host``, ``host:port``, ``[v6]:port``); return it."""
    if not registry:
        raise _fail("the registry host is empty", text)
    if not _HOST_RE.fullmatch(registry):
        raise _fail(f"{registry!r} is not a valid registry host[:port]", text)
    return registry


def check_repository(repository: str, text: str | None = None) -> str:
    """Validate a repository path (lowercase components separated by ``/``); return it."""
    if not repository:
        raise _fail("the repository name is empty", text)
    if len(repository) > _MAX_NAME:
        raise _fail(f"the repository name is longer than {_MAX_NAME} characters", text)
    if repository != repository.lower():
        raise _fail(f"repository {repository!r} must be lowercase", text)
    for component in repository.split("/"):
        if not component:
            raise _fail(f"repository {repository!r} has an empty path component", text)
        if not _COMPONENT_RE.fullmatch(component):
            raise _fail(
                f"repository component {component!r} may only hold a-z, 0-9 and single "
                "'.', '_', '__' or '-' separators between them",
                text,
            )
    return repository


def check_tag(tag: str, text: str | None = None) -> str:
    """Validate a tag (``[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}``); return it."""
    if not tag:
        raise _fail("the tag after ':' is empty", text)
    if len(tag) > 128:
        raise _fail(f"tag {tag[:20]!r}… is longer than 128 characters", text)
    if not _TAG_RE.fullmatch(tag):
        raise _fail(
            f"tag {tag!r} may only hold letters, digits, '_', '.' and '-' "
            "and must not start with '.' or '-'",
            text,
        )
    return tag


def check_digest(digest: str, text: str | None = None) -> str:
    """Validate a ``sha256:<64 lowercase hex>`` digest; return it."""
    m = _DIGEST_SHAPE_RE.fullmatch(digest)
    if not m:
        raise _fail(f"digest {digest!r} is not of the form sha256:<hex>", text)
    algorithm, encoded = m.groups()
    if algorithm != "sha256":
        raise _fail(
            f"digest algorithm {algorithm!r} is not supported; only sha256 digests are", text
        )
    if not _SHA256_HEX_RE.fullmatch(encoded):
        raise _fail(
            f"digest {digest!r} must be 'sha256:' followed by 64 lowercase hex digits", text
        )
    return digest


def is_digest(text: str) -> bool:
    """True if ``text`` is a well-formed ``sha256:`` digest (as opposed to a tag)."""
    return text.startswith("sha256:") and _SHA256_HEX_RE.fullmatch(text[7:]) is not None


@dataclass(frozen=True)
class Reference:
    """A parsed reference to a manifest in a registry: host, repository, tag and/or digest.

    Valid by construction: every field is checked in ``__post_init__``.
    """

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    def __post_init__(self) -> None:
        check_registry(self.registry)
        check_repository(self.repository)
        if self.tag is not None:
            check_tag(self.tag)
        if self.digest is not None:
            check_digest(self.digest)

    @classmethod
    def parse(cls, text: str) -> Reference:
        """Parse ``[host[:port]/]repo/path[:tag][@sha256:hex]``.

        Raises :class:`InvalidReferenceError` whose message names the problem and the text.
        """
        if not isinstance(text, str) or not text:
            raise _fail("the reference is empty", None)
        if "://" in text:
            raise _fail(
                "a reference has no URL scheme; drop the 'http://' or 'https://' prefix", text
            )
        if any(c.isspace() for c in text):
            raise _fail("it contains whitespace", text)

        rest, digest = text, None
        if "@" in rest:
            rest, digest = rest.split("@", 1)
            if not digest:
                raise _fail("the digest after '@' is empty", text)
            check_digest(digest, text)

        # A ':' after the last '/' separates the tag; one before it belongs to host:port.
        tag = None
        colon = rest.rfind(":")
        if colon > rest.rfind("/"):
            rest, tag = rest[:colon], rest[colon + 1 :]
            check_tag(tag, text)

        if not rest:
            raise _fail("the repository name is empty", text)
        first, slash, remainder = rest.partition("/")
        if slash and ("." in first or ":" in first or first == "localhost"):
            registry, repository = first, remainder
        else:
            registry, repository = DEFAULT_REGISTRY, rest
        check_registry(registry, text)
        if registry == "index.docker.io":
            registry = DEFAULT_REGISTRY
        if registry == DEFAULT_REGISTRY and repository and "/" not in repository:
            repository = "library/" + repository
        check_repository(repository, text)

        if tag is None and digest is None:
            tag = "latest"
        return cls(registry=registry, repository=repository, tag=tag, digest=digest)

    @property
    def name(self) -> str:
        """``registry/repository``: the cosign ``docker-reference`` of this artifact."""
        return f"{self.registry}/{self.repository}"

    @property
    def reference(self) -> str:
        """What goes after ``/manifests/``: the digest if set, else the tag, else ``latest``."""
        return self.digest or self.tag or "latest"

    def with_tag(self, tag: str) -> Reference:
        """The same repository with ``tag`` and no digest."""
        return replace(self, tag=check_tag(tag), digest=None)

    def with_digest(self, digest: str) -> Reference:
        """The same repository pinned to ``digest``, with no tag."""
        return replace(self, tag=None, digest=check_digest(digest))

    def __str__(self) -> str:
        text = self.name
        if self.tag is not None:
            text += f":{self.tag}"
        if self.digest is not None:
            text += f"@{self.digest}"
        return text
