"""What a train image adds on top of its base image: its own layers, their files, and its small
text files (the analysis script, a README) to show a reviewer inline.

A train is an ordinary image: a base image (Python, R, …) with the researcher's code on top.
A reviewer decides on the code, not on the 200 files of a Python installation, so the image
says which of its first layers are the base's: ``pht train build`` writes the labels of
:data:`~pht_airflow.protocol.BASE_LAYERS_LABEL` (a count) and
:data:`~pht_airflow.protocol.BASE_TOP_LAYER_LABEL` (the diff id of the base's last layer) into
the image config. The config is the blob the signed manifest names by digest, so the split is
part of what the creator and the approvers signed; it is used only when the count fits the
manifest and the diff id matches the config's ``rootfs.diff_ids``. An image without a
usable declaration has every layer shown as the train's (more to read, nothing hidden), with
the reason.

Everything is read bounded: the config (:data:`~pht_airflow.spec.MAX_CONFIG_BYTES`), each
layer streamed once and at most ``max_read_bytes`` of layers in all, tar headers refused
before they are read when larger than :data:`MAX_LAYER_HEADER_BYTES`, at most ``max_files``
names kept and at most ``inline_files`` files of at most ``inline_bytes`` held. A layer's
facts are used only after its digest checked out (the stream is read to its end). Every
string here came from the train: :meth:`TrainCode.to_dict` passes each through
:func:`~pht_airflow.text.safe_text`.
"""

from __future__ import annotations

import posixpath
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from .errors import InvalidManifestError, PhtError
from .oci import Descriptor, Manifest, Reference, RegistryClient, parse_image_config
from .protocol import (
    BASE_DIGEST_LABEL,
    BASE_LAYERS_LABEL,
    BASE_NAME_LABEL,
    BASE_TOP_LAYER_LABEL,
    TRAIN_LABEL,
)
from .results import ChunkReader
from .spec import MAX_CONFIG_BYTES
from .strictjson import StrictJSONError
from .text import safe_text

__all__ = [
    "MAX_LAYER_HEADER_BYTES",
    "MAX_LISTED_NAME",
    "BaseImage",
    "TrainCode",
    "TrainFile",
    "TrainLayer",
    "image_config",
    "layer_members",
    "read_train_code",
]

#: The largest extended header (PAX or GNU long name) a train layer may carry when its files
#: are listed. tarfile reads such a header whole into memory; real ones are a few hundred bytes.
MAX_LAYER_HEADER_BYTES = 64 * 1024
#: Longest file name kept for the listing (a PAX path may be longer; it is cut).
MAX_LISTED_NAME = 4096
#: Defaults of :func:`read_train_code`.
MAX_FILES = 200
INLINE_FILES = 10
INLINE_BYTES = 16 * 1024
MAX_READ_BYTES = 512 * 1024 * 1024

_EXTENDED_HEADERS = (
    tarfile.XHDTYPE,
    tarfile.XGLTYPE,
    tarfile.SOLARIS_XHDTYPE,
    tarfile.GNUTYPE_LONGNAME,
    tarfile.GNUTYPE_LONGLINK,
)
_NOP = "/bin/sh -c #(nop) "
_SHELL = "/bin/sh -c "
_WHITEOUT = ".wh."
_OPAQUE = ".wh..wh..opq"


class _BoundedTarInfo(tarfile.TarInfo):
    """A TarInfo that refuses, before tarfile reads it, an extended header larger than
    :data:`MAX_LAYER_HEADER_BYTES` and a GNU sparse member (whose extension blocks tarfile
    collects without bound). Hooks tarfile's per-member processing, where those reads happen.

    It also refuses the headers on whose meaning Python's tarfile and Go's archive/tar (the
    Docker engine's) disagree, so the listing names what the engine writes: a global PAX
    header (tarfile applies its ``path`` to every later entry, the engine ignores it), and an
    entry named by more than one extended header (two PAX headers, two GNU long names, or PAX
    and GNU together: tarfile keeps the first, Go the last, or always the GNU name). One GNU
    long name with one GNU long link name is the usual pair and is read."""

    def _proc_member(self, tarfile_: tarfile.TarFile) -> tarfile.TarInfo:
        if self.type in _EXTENDED_HEADERS and self.size > MAX_LAYER_HEADER_BYTES:
            raise _LayerRefused(
                f"an extended tar header of {self.size} bytes (at most "
                f"{MAX_LAYER_HEADER_BYTES} are read)"
            )
        if self.type == tarfile.GNUTYPE_SPARSE:
            raise _LayerRefused("a GNU sparse member")
        if self.type == tarfile.XGLTYPE:
            raise _LayerRefused(
                "a global PAX header (the Docker engine ignores it, a listing would apply it)"
            )
        # The extended headers read so far for the entry being read (tarfile reads the next
        # header from inside an extended header's processing, so they nest).
        before: list[bytes] = getattr(tarfile_, "_pht_headers", [])
        chain = [*before, self.type] if self.type in _EXTENDED_HEADERS else before
        if len(chain) > 1 and sorted(chain) != [tarfile.GNUTYPE_LONGLINK, tarfile.GNUTYPE_LONGNAME]:
            raise _LayerRefused(
                "an entry named by more than one extended header (the Docker engine and a "
                "listing would not agree on its name)"
            )
        tarfile_._pht_headers = chain  # type: ignore[attr-defined]
        try:
            return super()._proc_member(tarfile_)  # type: ignore[misc]
        finally:
            if not before:  # the entry's first header: the entry is read
                tarfile_._pht_headers = []  # type: ignore[attr-defined]


class _LayerRefused(Exception):
    """A layer the listing will not read (message says why); becomes InvalidManifestError."""


@contextmanager
def layer_members(
    client: RegistryClient, train: Reference, manifest: Manifest, layer: Descriptor
) -> Iterator[Iterator[tuple[tarfile.TarInfo, tarfile.TarFile]]]:
    """Stream one layer of ``train`` as tar members (bounded headers, see
    :class:`_BoundedTarInfo`); each comes with its archive, so a caller may read the current
    member with ``archive.extractfile``. When the caller's loop is done the rest of the blob
    is read, so its digest is checked before the ``with`` block ends without an error: treat
    what was read as untrusted until then. A layer that is not a readable tar raises
    :class:`~pht_airflow.errors.InvalidManifestError`."""
    where = f"layer {layer.digest} of {train.name}@{manifest.digest}"
    stream = ChunkReader(client.open_blob(train.repository, layer.digest, max_bytes=layer.size))
    try:
        with tarfile.open(fileobj=stream, mode="r|*", tarinfo=_BoundedTarInfo) as archive:

            def members() -> Iterator[tuple[tarfile.TarInfo, tarfile.TarFile]]:
                while (member := archive.next()) is not None:
                    yield member, archive
                    archive.members.clear()  # type: ignore[attr-defined]  # bounded memory

            yield members()
            fileobj: Any = archive.fileobj
            while fileobj is not None and fileobj.read(1 << 16):
                pass  # the end of the tar, then the compression trailer
        while stream.read(1 << 16):
            pass  # the rest of the blob: the digest is checked at its end
    except PhtError:
        raise
    except _LayerRefused as exc:
        raise InvalidManifestError(f"{where} holds {exc}; refusing to list it") from None
    except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
        if stream.error is not None and isinstance(stream.error, PhtError):
            raise stream.error from None
        raise InvalidManifestError(
            f"{where} is not a readable tar archive ({type(exc).__name__})"
        ) from None


def image_config(client: RegistryClient, train: Reference, manifest: Manifest) -> dict[str, Any]:
    """The image config the (verified) ``manifest`` names, read bounded and digest-checked."""
    where = f"{train.name}@{manifest.digest}"
    if manifest.config is None:
        raise InvalidManifestError(f"{where} has no config")
    if manifest.config.size > MAX_CONFIG_BYTES:
        raise InvalidManifestError(
            f"the image config of {where} is larger than {MAX_CONFIG_BYTES} bytes"
        )
    raw = client.get_blob(train.repository, manifest.config.digest, max_bytes=MAX_CONFIG_BYTES)
    try:
        return parse_image_config(raw)
    except StrictJSONError as exc:
        raise InvalidManifestError(f"the image config of {where} is {exc}") from None


@dataclass(frozen=True)
class BaseImage:
    """The base image a train declares: its name and digest as labelled, and its layer count."""

    name: str | None
    digest: str | None
    layers: int


@dataclass
class TrainFile:
    """One entry a train layer adds: ``kind`` is ``file``, ``link`` (``target`` says where
    to), ``other`` (a device, FIFO) or ``removed`` (a whiteout: the train deletes it, or
    everything under a folder for an opaque whiteout). ``text`` holds a small text file."""

    path: str
    kind: str
    size: int
    layer: int
    target: str | None = None
    text: str | None = None


@dataclass(frozen=True)
class TrainLayer:
    """One of the train's own layers: its position in the manifest, digest, compressed size,
    the build step that made it (from the config's history, when it maps one to one), how
    many entries it holds, and whether it was read (``False``: over the read limit)."""

    index: int
    digest: str
    size: int
    step: str | None
    entries: int
    read: bool


@dataclass
class TrainCode:
    """What the train adds on top of its base image (see the module docstring)."""

    base: BaseImage | None
    base_problem: str | None
    layers: list[TrainLayer]
    files: list[TrainFile]
    more_files: int
    inline: list[TrainFile]
    entrypoint: object = None
    cmd: object = None
    limits: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe facts, every string from the train made safe to show."""

        def s(value: object, limit: int = 500) -> str | None:
            return None if value is None else safe_text(value, limit=limit)

        def command(value: object) -> list[str] | None:
            if isinstance(value, list):
                return [safe_text(v, limit=1000) for v in value[:100]]
            return None if value is None else [safe_text(value, limit=1000)]

        return {
            "base": None
            if self.base is None
            else {
                "name": s(self.base.name),
                "digest": s(self.base.digest, 100),
                "layers": self.base.layers,
            },
            "base_problem": s(self.base_problem, 1000),
            "layers": [
                {
                    "index": layer.index,
                    "digest": layer.digest,
                    "size": layer.size,
                    "step": s(layer.step, 2000),
                    "entries": layer.entries,
                    "read": layer.read,
                }
                for layer in self.layers
            ],
            "files": [
                {
                    "path": safe_text(f.path, limit=MAX_LISTED_NAME),
                    "kind": f.kind,
                    "size": f.size,
                    "layer": f.layer,
                    "target": s(f.target, 1000),
                }
                for f in self.files
            ],
            "more_files": self.more_files,
            "inline": [
                {
                    "path": safe_text(f.path, limit=MAX_LISTED_NAME),
                    "size": f.size,
                    "text": safe_text(f.text, limit=None, multiline=True),
                }
                for f in self.inline
            ],
            "entrypoint": command(self.entrypoint),
            "cmd": command(self.cmd),
            "limits": dict(self.limits),
        }


def _declared_base(
    labels: dict[str, Any], layers: int, diff_ids: object
) -> tuple[BaseImage | None, str | None]:
    """The base image the labels declare, or None and why it is not used."""
    count = labels.get(BASE_LAYERS_LABEL)
    if count is None:
        return None, (
            f"the image does not say which layers are its base image ({BASE_LAYERS_LABEL}): "
            "every layer is shown as the train's"
        )
    if not isinstance(count, str) or not count.isdigit() or int(count) > layers:
        return None, (
            f"the image's {BASE_LAYERS_LABEL} label ({safe_text(count, limit=40)!s}) is not a "
            f"number of layers from 0 to {layers}: every layer is shown as the train's"
        )
    n = int(count)
    top = labels.get(BASE_TOP_LAYER_LABEL)
    if n > 0:
        ids = diff_ids if isinstance(diff_ids, list) else []
        if len(ids) != layers or ids[n - 1] != top:
            return None, (
                f"the image's {BASE_TOP_LAYER_LABEL} label does not match layer {n} of its "
                "rootfs: every layer is shown as the train's"
            )
    name, digest = labels.get(BASE_NAME_LABEL), labels.get(BASE_DIGEST_LABEL)
    return BaseImage(
        name if isinstance(name, str) else None,
        digest if isinstance(digest, str) else None,
        n,
    ), None


def _steps(config: dict[str, Any], layers: int) -> list[str | None]:
    """The build step of each layer, when the history's non-empty entries map one to one."""
    history = config.get("history")
    if not isinstance(history, list):
        return [None] * layers
    made = [h for h in history if not (isinstance(h, dict) and h.get("empty_layer"))]
    if len(made) != layers:
        return [None] * layers
    steps: list[str | None] = []
    for h in made:
        if isinstance(h, dict):
            text = _instruction(str(h.get("created_by", "")))
            comment = h.get("comment")
            steps.append(f"{text}  # {comment}" if comment else text)
        else:
            steps.append(str(h))
    return steps


def _instruction(created_by: str) -> str:
    """A build step as the Dockerfile said it: the classic builder records ``COPY``, ``ENV``
    … as ``/bin/sh -c #(nop) COPY …`` and ``RUN x`` as ``/bin/sh -c x``."""
    if created_by.startswith(_NOP):
        return created_by[len(_NOP) :].strip()
    if created_by.startswith(_SHELL):
        return "RUN " + created_by[len(_SHELL) :].strip()
    return created_by.strip()


def _copies(step: str | None) -> bool:
    """Whether a build step copies files from the build context (the researcher's own)."""
    if step is None:
        return False
    words = step.split()
    return bool(words) and words[0].upper() in ("COPY", "ADD")


def _norm(name: str) -> str:
    path = posixpath.normpath("/" + name[:MAX_LISTED_NAME]).lstrip("/")
    return "" if path == "." else path


def _text(data: bytes) -> str | None:
    """``data`` as text if it is UTF-8 without NUL bytes (a script, a README), else None."""
    if b"\0" in data:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def read_train_code(
    client: RegistryClient,
    train: Reference,
    manifest: Manifest,
    *,
    max_files: int = MAX_FILES,
    inline_files: int = INLINE_FILES,
    inline_bytes: int = INLINE_BYTES,
    max_read_bytes: int = MAX_READ_BYTES,
) -> TrainCode:
    """What ``train`` (pinned; ``manifest`` its verified manifest) adds on top of its base.

    Lists at most ``max_files`` entries of the train's own layers (the last layer's version
    of each path; folders are not listed) sorted by path, with a count of the rest; holds at
    most ``inline_files`` text files of at most ``inline_bytes`` each, those from ``COPY`` and
    ``ADD`` steps first, then by path; reads layers until ``max_read_bytes`` (compressed) would
    be passed, and says which layers it did not read.
    """
    if max_files < 1 or inline_files < 0 or inline_bytes < 0 or max_read_bytes < 0:
        raise ValueError("the train code limits must be positive")
    config = image_config(client, train, manifest)
    inner = config.get("config")
    inner = inner if isinstance(inner, dict) else {}
    labels = inner.get("Labels")
    labels = (
        {k: v for k, v in labels.items() if k != TRAIN_LABEL} if isinstance(labels, dict) else {}
    )
    descriptors = manifest.layers
    rootfs = config.get("rootfs")
    diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    base, problem = _declared_base(labels, len(descriptors), diff_ids)
    first = base.layers if base is not None else 0
    steps = _steps(config, len(descriptors))

    files: dict[str, TrainFile] = {}
    inline: list[tuple[tuple[int, str], TrainFile]] = []
    total = 0
    budget = max_read_bytes
    layers: list[TrainLayer] = []

    def keep(entry: TrainFile) -> None:
        files[entry.path] = entry
        if len(files) > 2 * max_files:
            for name in sorted(files)[max_files:]:
                del files[name]

    def forget(path: str, *, under: bool = False) -> None:
        nonlocal inline
        gone = (lambda p: p == path or p.startswith(path + "/")) if under else (lambda p: p == path)
        inline = [c for c in inline if not gone(c[1].path)]
        for name in [n for n in files if gone(n) and files[n].kind != "removed"]:
            del files[name]

    for index in range(first, len(descriptors)):
        layer = descriptors[index]
        step = steps[index]
        if layer.size > budget:
            layers.append(TrainLayer(index, layer.digest, layer.size, step, 0, False))
            budget = 0
            continue
        budget -= layer.size
        entries = 0
        priority = 0 if _copies(step) else 1
        with layer_members(client, train, manifest, layer) as members:
            for member, archive in members:
                entries += 1
                path = _norm(member.name)
                if not path:
                    continue
                head, tail = posixpath.split(path)
                if tail == _OPAQUE:
                    forget(head, under=True)
                    keep(TrainFile(head + "/", "removed", 0, index))
                    total += 1
                    continue
                if tail.startswith(_WHITEOUT):
                    gone = posixpath.join(head, tail[len(_WHITEOUT) :])
                    forget(gone, under=True)
                    keep(TrainFile(gone, "removed", 0, index))
                    total += 1
                    continue
                if member.isdir():
                    continue
                total += 1
                forget(path)
                if member.issym() or member.islnk():
                    keep(
                        TrainFile(path, "link", 0, index, target=member.linkname[:MAX_LISTED_NAME])
                    )
                    continue
                if not member.isreg():
                    keep(TrainFile(path, "other", 0, index))
                    continue
                entry = TrainFile(path, "file", member.size, index)
                keep(entry)
                if inline_files and member.size <= inline_bytes:
                    key = (priority, path)
                    if len(inline) < inline_files or key < max(c[0] for c in inline):
                        handle = archive.extractfile(member)
                        text = _text(handle.read(inline_bytes + 1)) if handle else None
                        if text is not None:
                            shown = TrainFile(path, "file", member.size, index, text=text)
                            inline = sorted([*inline, (key, shown)], key=lambda c: c[0])
                            del inline[inline_files:]
        layers.append(TrainLayer(index, layer.digest, layer.size, step, entries, True))

    listed = [files[name] for name in sorted(files)[:max_files]]
    return TrainCode(
        base=base,
        base_problem=problem,
        layers=layers,
        files=listed,
        more_files=max(0, total - len(listed)),
        inline=[c[1] for c in inline],
        entrypoint=inner.get("Entrypoint"),
        cmd=inner.get("Cmd"),
        limits={
            "max_files": max_files,
            "inline_files": inline_files,
            "inline_bytes": inline_bytes,
            "max_read_bytes": max_read_bytes,
        },
    )
