"""Age encryption and decryption of a result's archive, as streams.

Implements the encryption of the layer in PROTOCOL.md "A result" (age, to the hop's
recipients). pyrage's streaming calls push into a writer while HTTP uploads and tar readers
pull: :func:`_pump` runs pyrage in a worker thread with a bounded queue of ciphertext or
plaintext chunks between the two, so memory does not grow with the result.
:class:`ChunkReader` turns an iterator of byte chunks (a blob download) into a readable file
and keeps the iterator's own error, so the real cause (a digest mismatch) wins over pyrage's
wrapper.
"""

from __future__ import annotations

import io
import queue
import threading
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from typing import IO, Any

import pyrage
from pyrage import x25519

from ..errors import PhtError
from ..keys import AgeIdentity
from .archive import _READ

__all__ = ["ChunkReader", "decrypt_file", "decrypt_stream", "encrypt_stream"]

_QUEUE_CHUNK = 1024 * 1024
_QUEUE_DEPTH = 8


# --- threads between push and pull ------------------------------------------------------


class ChunkReader(io.RawIOBase):
    """A readable stream over an iterator of byte chunks; remembers the iterator's error.

    Hands a blob download to pyrage or :mod:`tarfile` as a file. ``error`` holds the exception
    the iterator raised (a digest mismatch, a broken connection), which a reader that wraps
    I/O errors (pyrage) would otherwise hide.
    """

    def __init__(self, chunks: Iterable[bytes]) -> None:
        super().__init__()
        self._it = iter(chunks)
        self._pending = memoryview(b"")
        self.error: BaseException | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        while not self._pending:
            try:
                self._pending = memoryview(next(self._it))
            except StopIteration:
                return 0
            except BaseException as exc:
                # pyrage sees only an I/O failure; the caller re-raises the real error.
                self.error = exc
                raise
        n = min(len(view), len(self._pending))
        view[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n


class _Cancelled(Exception):
    pass


def _pump(
    work: Callable[[io.RawIOBase], None], sources: Sequence[ChunkReader] = ()
) -> Generator[bytes, None, None]:
    """Run ``work(writer)`` in a thread and yield what it writes, in chunks of about 1 MiB.

    pyrage's streaming calls push into a writer while HTTP uploads and tar readers pull;
    a bounded queue between them keeps memory constant. Errors in the worker are raised
    here (the real error of a source iterator wins over pyrage's wrapper); closing the
    generator early stops the worker.
    """
    q: queue.Queue[object] = queue.Queue(maxsize=_QUEUE_DEPTH)
    cancelled = threading.Event()
    done = object()

    def put(item: object) -> None:
        while not cancelled.is_set():
            try:
                q.put(item, timeout=0.2)
                return
            except queue.Full:
                continue
        raise _Cancelled

    class _Writer(io.RawIOBase):
        # pyrage writes one bytes object per 64 KiB age chunk: keep them and join once per
        # queue chunk (one copy) rather than growing and copying a bytearray.
        def __init__(self) -> None:
            super().__init__()
            self.parts: list[bytes] = []
            self.size = 0

        def writable(self) -> bool:
            return True

        def write(self, data: Any) -> int:
            self.parts.append(data if type(data) is bytes else bytes(data))
            self.size += len(data)
            if self.size >= _QUEUE_CHUNK:
                self.hand_over()
            return len(data)

        def hand_over(self) -> None:
            if self.parts:
                put(self.parts[0] if len(self.parts) == 1 else b"".join(self.parts))
                self.parts = []
                self.size = 0

    def run() -> None:
        writer = _Writer()
        try:
            work(writer)
            writer.hand_over()
            put(done)
        except _Cancelled:
            return
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer thread
            real = next((s.error for s in sources if s.error is not None), None)
            try:
                put(real or exc)
            except _Cancelled:
                return

    thread = threading.Thread(target=run, name="pht-stream", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is done:
                break
            if isinstance(item, BaseException):
                raise item
            yield item  # type: ignore[misc]
    finally:
        cancelled.set()
        while thread.is_alive():
            try:
                q.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.1)


# --- age ------------------------------------------------------------------------------


def _recipients(recipients: Sequence[str]) -> list[x25519.Recipient]:
    if not recipients:
        raise PhtError("a result needs at least one recipient")
    parsed = []
    for r in recipients:
        try:
            parsed.append(x25519.Recipient.from_str(r))
        except (pyrage.RecipientError, ValueError) as exc:
            raise PhtError(f"not an age X25519 recipient: {r!r}") from exc
    return parsed


def encrypt_stream(source: io.RawIOBase, recipients: Sequence[str]) -> Iterator[bytes]:
    """Yield the age encryption of ``source`` to ``recipients``, streaming."""
    parsed = _recipients(recipients)
    # pyrage reads 8 KiB at a time; a buffer serves those reads in C and calls the
    # (Python) source once per 1 MiB.
    buffered = io.BufferedReader(source, _READ)

    def work(writer: io.RawIOBase) -> None:
        pyrage.encrypt_io(buffered, writer, parsed)

    return _pump(work)


def _not_a_recipient(exc: pyrage.DecryptError) -> bool:
    text = str(exc).lower()
    return "no matching keys" in text or "no identity matched" in text


def _decrypt_error(
    exc: pyrage.DecryptError, identity: AgeIdentity, reader: ChunkReader | None
) -> BaseException:
    """The error to raise for pyrage's ``exc``: the source's own, not a recipient, damaged."""
    if reader is not None and reader.error is not None:
        return reader.error
    if _not_a_recipient(exc):
        return PhtError(
            f"this age identity ({identity.recipient}) is not a recipient of the result"
        )
    return PhtError(f"the result's ciphertext is damaged: {exc}")


def decrypt_stream(chunks: Iterable[bytes], identity: AgeIdentity) -> Iterator[bytes]:
    """Yield the plaintext of an age ciphertext given as chunks, streaming.

    Raises :class:`PhtError` when ``identity`` is not a recipient or the ciphertext is
    damaged; an error of the chunk source itself (a digest mismatch) is raised as is.
    Opening a result does not use this on a download (see :func:`decrypt_file`): it would
    decrypt bytes whose digest has not been checked yet.
    """
    reader = ChunkReader(chunks)
    buffered = io.BufferedReader(reader, _READ)  # see encrypt_stream

    def work(writer: io.RawIOBase) -> None:
        try:
            pyrage.decrypt_io(buffered, writer, [identity.identity])
        except pyrage.DecryptError as exc:
            error = _decrypt_error(exc, identity, reader)
            if reader.error is None and not _not_a_recipient(exc):
                # Read the rest so the blob's digest check can say whether the registry
                # served other bytes than the signed manifest names.
                try:
                    while reader.read(_READ):
                        pass
                except Exception:  # noqa: BLE001 - reader.error holds the real one
                    if reader.error is not None:
                        raise reader.error from None
                    raise
            raise error from None

    return _pump(work, sources=[reader])


def decrypt_file(source: IO[bytes], identity: AgeIdentity) -> Generator[bytes, None, None]:
    """Yield the plaintext of the age file ``source`` (already verified), streaming.

    ``source`` is a local file (the downloaded, digest-checked blob); pyrage reads it
    directly. Raises :class:`PhtError` when ``identity`` is not a recipient or the
    ciphertext is damaged. Close the iterator to stop early.
    """

    def work(writer: io.RawIOBase) -> None:
        try:
            pyrage.decrypt_io(source, writer, [identity.identity])
        except pyrage.DecryptError as exc:
            raise _decrypt_error(exc, identity, None) from None

    return _pump(work)
