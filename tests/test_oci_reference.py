"""Reference parsing (``pht_airflow.oci.reference``): Docker's rules, clear error messages."""

from __future__ import annotations

import re

import pytest

from pht_airflow.errors import InvalidReferenceError
from pht_airflow.oci import Reference, is_digest

HEX = "0123456789abcdef" * 4
DIGEST = f"sha256:{HEX}"


@pytest.mark.parametrize(
    ("text", "registry", "repository", "tag", "digest"),
    [
        # everything at once: host with port, a deep path, tag and digest
        (f"localhost:5000/a/b/c:tag@{DIGEST}", "localhost:5000", "a/b/c", "tag", DIGEST),
        # defaults: docker.io, library/, latest
        ("ubuntu", "docker.io", "library/ubuntu", "latest", None),
        ("ubuntu:22.04", "docker.io", "library/ubuntu", "22.04", None),
        ("alice/train", "docker.io", "alice/train", "latest", None),
        ("docker.io/ubuntu", "docker.io", "library/ubuntu", "latest", None),
        ("index.docker.io/ubuntu", "docker.io", "library/ubuntu", "latest", None),
        # a digest alone gets no default tag
        (f"ubuntu@{DIGEST}", "docker.io", "library/ubuntu", None, DIGEST),
        # hosts: with a port, localhost without a dot, a dotted name, IPv6 in brackets
        ("127.0.0.1:5000/x", "127.0.0.1:5000", "x", "latest", None),
        ("localhost/x", "localhost", "x", "latest", None),
        ("harbor.example.org/project/train:v1", "harbor.example.org", "project/train", "v1", None),
        ("[::1]:5000/x", "[::1]:5000", "x", "latest", None),
        (f"[::1]:5000/x/y@{DIGEST}", "[::1]:5000", "x/y", None, DIGEST),
        # separators allowed inside components; tags may hold upper case and dots
        (
            "localhost:5000/a.b_c__d--e/f:V1.0_rc-2",
            "localhost:5000",
            "a.b_c__d--e/f",
            "V1.0_rc-2",
            None,
        ),
    ],
)
def test_parse_valid(
    text: str, registry: str, repository: str, tag: str | None, digest: str | None
) -> None:
    ref = Reference.parse(text)
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == (
        registry,
        repository,
        tag,
        digest,
    )
    assert ref.name == f"{registry}/{repository}"
    # what goes after /manifests/: the digest wins over the tag
    assert ref.reference == (digest or tag)
    # the canonical text parses back to the same reference
    assert Reference.parse(str(ref)) == ref


def test_str_is_fully_qualified() -> None:
    assert str(Reference.parse("ubuntu")) == "docker.io/library/ubuntu:latest"
    assert (
        str(Reference.parse(f"localhost:5000/a/b/c:tag@{DIGEST}"))
        == f"localhost:5000/a/b/c:tag@{DIGEST}"
    )


def test_with_tag_and_with_digest() -> None:
    ref = Reference.parse(f"127.0.0.1:5000/x:one@{DIGEST}")
    tagged = ref.with_tag("two")
    assert (tagged.tag, tagged.digest, tagged.reference) == ("two", None, "two")
    pinned = Reference.parse("127.0.0.1:5000/x:one").with_digest(DIGEST)
    assert (pinned.tag, pinned.digest, pinned.reference) == (None, DIGEST, DIGEST)
    with pytest.raises(InvalidReferenceError, match=r"tag '\.bad'"):
        ref.with_tag(".bad")
    with pytest.raises(InvalidReferenceError, match="64 lowercase hex"):
        ref.with_digest("sha256:1234")


def test_constructor_validates() -> None:
    with pytest.raises(InvalidReferenceError, match="must be lowercase"):
        Reference(registry="localhost:5000", repository="Train")
    with pytest.raises(InvalidReferenceError, match="not a valid registry host"):
        Reference(registry="bad host", repository="x")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "the reference is empty"),
        ("localhost:5000/Train/x", "repository 'Train/x' must be lowercase"),
        ("Ubuntu", "repository 'library/Ubuntu' must be lowercase"),
        ("localhost:5000/x:", "the tag after ':' is empty"),
        ("localhost:5000/x:-v1", "tag '-v1' may only hold letters"),
        ("localhost:5000/x:" + "v" * 129, "longer than 128 characters"),
        ("localhost:5000/x@", "the digest after '@' is empty"),
        ("localhost:5000/x@sha256:abc", "'sha256:' followed by 64 lowercase hex digits"),
        (f"localhost:5000/x@sha256:{HEX.upper()}", "64 lowercase hex digits"),
        (f"localhost:5000/x@sha256:{HEX}0", "64 lowercase hex digits"),
        (f"localhost:5000/x@sha512:{HEX}", "algorithm 'sha512' is not supported"),
        (f"localhost:5000/x@{HEX}", "is not of the form sha256:<hex>"),
        ("https://localhost:5000/x", "no URL scheme; drop the 'http://' or 'https://' prefix"),
        ("http://127.0.0.1:5000/x:v1", "no URL scheme"),
        ("localhost:5000/x :v1", "it contains whitespace"),
        (" localhost:5000/x", "it contains whitespace"),
        ("localhost:5000/x\t", "it contains whitespace"),
        ("localhost:5000/x\n", "it contains whitespace"),
        ("localhost:5000/", "the repository name is empty"),
        ("localhost:5000/a//b", "repository 'a//b' has an empty path component"),
        ("localhost:5000/a_-b", "repository component 'a_-b' may only hold"),
        ("localhost:5000/-a", "repository component '-a' may only hold"),
        ("bad_host.org:5000/x", "'bad_host.org:5000' is not a valid registry host"),
        ("localhost:5000/" + "a" * 256, "longer than 255 characters"),
    ],
)
def test_parse_invalid(text: str, message: str) -> None:
    with pytest.raises(InvalidReferenceError, match=re.escape(message)) as info:
        Reference.parse(text)
    # every message starts the same way and (except for the empty one) quotes the input
    msg = str(info.value)
    assert msg.startswith("invalid image reference")
    if text:
        assert repr(text) in msg


@pytest.mark.parametrize("value", [None, 5000, b"localhost:5000/x"])
def test_parse_rejects_non_strings(value: object) -> None:
    with pytest.raises(InvalidReferenceError, match="^invalid image reference"):
        Reference.parse(value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (DIGEST, True),
        ("sha256:" + HEX[:-1], False),
        ("sha256:" + HEX.upper(), False),
        ("latest", False),
        ("sha512:" + HEX, False),
    ],
)
def test_is_digest(text: str, expected: bool) -> None:
    assert is_digest(text) is expected
