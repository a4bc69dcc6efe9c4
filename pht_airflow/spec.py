"""The train spec (PROTOCOL.md "The train"): model, canonical JSON, validation, and reading it
from an image's config label through the registry API without pulling any layer.

Validation collects every problem and raises one :class:`SpecError` listing them all, so a
researcher fixes a spec in one go rather than one error per attempt.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from .errors import ConfigError, InvalidManifestError, KeyFileError, SpecError
from .keys import public_key_from_pem, validate_recipient
from .oci import MANIFEST_TYPES, Reference, RegistryClient, parse_image_config
from .oci.media import INDEX_TYPES
from .protocol import STATION_ID, TRAIN_LABEL
from .strictjson import StrictJSONError

VERSION = 1
MODES = ("sequential", "parallel")
VISIBILITIES = ("final", "all")
MAX_CONFIG_BYTES = 4 * 1024 * 1024

_FIELDS = {
    "version",
    "id",
    "name",
    "creator",
    "mode",
    "route",
    "result_recipients",
    "results_visibility",
    "dataset",
    "created",
    "expires",
}
_CREATOR_FIELDS = {"id", "key", "recipient"}
_ROUTE_FIELDS = {"station", "key", "recipient"}
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._-]{0,127}")
_KEY_ID_RE = re.compile(r"sha256:[0-9a-f]{64}")
_TIME_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z")
_DURATION_RE = re.compile(r"([0-9]{1,9})([dhm])")
#: Longest lifetime or timeout :func:`parse_duration` accepts (ten years).
MAX_DURATION = timedelta(days=3650)
#: Most stations on a route, and most result recipients.
MAX_ROUTE = 256
#: Most problems one SpecError lists (a hostile spec may have thousands).
MAX_PROBLEMS = 20
_SHOW_MAX = 80


def _show(value: Any) -> str:
    """A short ``repr`` of a (bad) value for a problem line: bounded, controls escaped."""
    text = repr(value) if not isinstance(value, dict | list) else f"<a JSON {type(value).__name__}>"
    return text if len(text) <= _SHOW_MAX else text[: _SHOW_MAX - 1] + "…"


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def format_time(moment: datetime) -> str:
    """RFC 3339 UTC with a ``Z`` and whole seconds, as the spec stores times."""
    return moment.astimezone(UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_duration(text: str) -> timedelta:
    """``30d``, ``12h`` or ``90m`` as a timedelta (a train's lifetime, a hop's timeout)."""
    m = _DURATION_RE.fullmatch(text.strip()) if isinstance(text, str) else None
    if not m or int(m.group(1)) == 0:
        raise ConfigError(f"not a duration: {_show(text)} (use e.g. 30d, 12h or 90m)")
    n, unit = int(m.group(1)), m.group(2)
    if n > {"d": 3650, "h": 3650 * 24, "m": 3650 * 24 * 60}[unit]:
        raise ConfigError(f"{_show(text)} is longer than {MAX_DURATION.days} days")
    return {"d": timedelta(days=n), "h": timedelta(hours=n), "m": timedelta(minutes=n)}[unit]


def canonical_json(data: Any) -> str:
    """UTF-8-safe JSON with sorted keys and no insignificant whitespace."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True)
class Creator:
    """Who built the train: a name, their signing key id, their age recipient."""

    id: str
    key: str
    recipient: str


@dataclass(frozen=True)
class RouteEntry:
    """One stop: the station id, its signing public key (PEM) and age recipient."""

    station: str
    key: str
    recipient: str

    @property
    def key_id(self) -> str:
        """The id of the route key (``sha256:`` of its DER SubjectPublicKeyInfo)."""
        return public_key_from_pem(self.key, f"route entry {self.station}").key_id


@dataclass(frozen=True)
class TrainSpec:
    """A validated train spec. Build it with :meth:`from_dict` or :meth:`from_json`."""

    version: int
    id: str
    name: str
    creator: Creator
    mode: str
    route: tuple[RouteEntry, ...]
    result_recipients: tuple[str, ...]
    results_visibility: str
    dataset: str
    created: datetime
    expires: datetime

    # --- serialisation ----------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The spec as JSON-ready data (times as RFC 3339 strings)."""
        return {
            "version": self.version,
            "id": self.id,
            "name": self.name,
            "creator": {
                "id": self.creator.id,
                "key": self.creator.key,
                "recipient": self.creator.recipient,
            },
            "mode": self.mode,
            "route": [
                {"station": r.station, "key": r.key, "recipient": r.recipient} for r in self.route
            ],
            "result_recipients": list(self.result_recipients),
            "results_visibility": self.results_visibility,
            "dataset": self.dataset,
            "created": format_time(self.created),
            "expires": format_time(self.expires),
        }

    def to_canonical_json(self) -> str:
        """The label value: canonical JSON of :meth:`to_dict`."""
        return canonical_json(self.to_dict())

    @classmethod
    def from_json(
        cls,
        text: str | bytes,
        *,
        source: str | None = None,
        check_expiry: bool = True,
        now: datetime | None = None,
    ) -> TrainSpec:
        """Parse and validate label text."""
        try:
            data = json.loads(text, parse_constant=_no_constant)
        except RecursionError:
            raise SpecError(["not valid JSON (nested too deeply)"], source) from None
        except ValueError as exc:  # also UnicodeDecodeError
            raise SpecError([f"not valid JSON ({_show(str(exc))})"], source) from None
        return cls.from_dict(data, source=source, check_expiry=check_expiry, now=now)

    @classmethod
    def from_dict(
        cls,
        data: Any,
        *,
        source: str | None = None,
        check_expiry: bool = True,
        now: datetime | None = None,
    ) -> TrainSpec:
        """Validate ``data``; raise one :class:`SpecError` listing every problem."""
        problems: list[str] = []
        if not isinstance(data, dict):
            raise SpecError([f"expected a JSON object, got {type(data).__name__}"], source)
        try:  # lone surrogates (JSON's "\ud800") and non-JSON values end here, not deep inside
            canonical_json(data).encode("utf-8")
        except RecursionError:
            raise SpecError(["the spec is nested too deeply"], source) from None
        except (TypeError, ValueError):
            raise SpecError(["the spec holds text that is not valid Unicode"], source) from None
        version = data.get("version")
        if version != VERSION or isinstance(version, bool):
            raise SpecError(
                [f"unknown spec version {_show(version)} (this pht understands version {VERSION})"],
                source,
            )
        for unknown in sorted(set(data) - _FIELDS):
            problems.append(f"unknown field {_show(unknown)}")
        for missing in sorted(_FIELDS - set(data)):
            problems.append(f"missing field {missing!r}")

        def text(field: str, value: Any, pattern: re.Pattern[str] | None = None) -> str:
            if not isinstance(value, str) or not value:
                problems.append(f"{field} must be a non-empty string")
                return ""
            if pattern is not None and not pattern.fullmatch(value):
                problems.append(
                    f"{field} {_show(value)} is not allowed (pattern {pattern.pattern})"
                )
            return value

        def recipient(field: str, value: Any) -> str:
            if not isinstance(value, str):
                problems.append(f"{field} must be an age recipient string")
                return ""
            try:
                return validate_recipient(value, field)
            except KeyFileError as exc:
                problems.append(str(exc))
                return value

        def when(field: str, value: Any) -> datetime | None:
            if not isinstance(value, str) or not _TIME_RE.fullmatch(value):
                problems.append(f"{field} must be a UTC time like 2026-11-22T12:00:00Z")
                return None
            try:
                return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
            except ValueError:
                problems.append(f"{field} {_show(value)} is not a real date and time")
                return None

        train_id = text("id", data.get("id"))
        if train_id:
            try:
                parsed = uuid.UUID(train_id)
                if str(parsed) != train_id or parsed.version != 4:
                    raise ValueError
            except ValueError:
                problems.append(f"id {_show(train_id)} must be a lowercase UUID version 4")
        name = text("name", data.get("name"), _NAME_RE)
        dataset = text("dataset", data.get("dataset"), _NAME_RE)

        creator_data = data.get("creator")
        creator = Creator("", "", "")
        if not isinstance(creator_data, dict):
            problems.append("creator must be an object with id, key and recipient")
        else:
            for unknown in sorted(set(creator_data) - _CREATOR_FIELDS):
                problems.append(f"unknown field {_show(f'creator.{unknown}')}")
            creator = Creator(
                id=text("creator.id", creator_data.get("id"), _NAME_RE),
                key=text("creator.key", creator_data.get("key"), _KEY_ID_RE),
                recipient=recipient("creator.recipient", creator_data.get("recipient")),
            )

        mode = data.get("mode")
        if mode not in MODES:
            problems.append(f"mode {_show(mode)} must be one of {', '.join(MODES)}")
        visibility = data.get("results_visibility")
        if visibility not in VISIBILITIES:
            problems.append(
                f"results_visibility {_show(visibility)} must be one of {', '.join(VISIBILITIES)}"
            )

        route: list[RouteEntry] = []
        route_data = data.get("route")
        if not isinstance(route_data, list) or not route_data:
            problems.append("route must be a non-empty list of stations")
            route_data = []
        elif len(route_data) > MAX_ROUTE:
            problems.append(
                f"route has {len(route_data)} stations; at most {MAX_ROUTE} are allowed"
            )
            route_data = []
        seen: set[str] = set()
        for i, entry in enumerate(route_data):
            where = f"route[{i}]"
            if not isinstance(entry, dict):
                problems.append(f"{where} must be an object with station, key and recipient")
                continue
            for unknown in sorted(set(entry) - _ROUTE_FIELDS):
                problems.append(f"unknown field {_show(f'{where}.{unknown}')}")
            station = text(f"{where}.station", entry.get("station"), STATION_ID)
            if station in seen:
                problems.append(f"{where}.station {_show(station)} appears more than once")
            seen.add(station)
            key = entry.get("key")
            if not isinstance(key, str):
                problems.append(f"{where}.key must be a PEM public key string")
                key = ""
            else:
                try:
                    public_key_from_pem(key, f"{where}.key")
                except KeyFileError as exc:
                    problems.append(str(exc))
            route.append(
                RouteEntry(station, key, recipient(f"{where}.recipient", entry.get("recipient")))
            )

        recipients: list[str] = []
        rr = data.get("result_recipients")
        if not isinstance(rr, list) or not rr:
            problems.append("result_recipients must be a non-empty list of age recipients")
            rr = []
        elif len(rr) > MAX_ROUTE:
            problems.append(
                f"result_recipients has {len(rr)} entries; at most {MAX_ROUTE} are allowed"
            )
            rr = []
        for i, r in enumerate(rr):
            value = recipient(f"result_recipients[{i}]", r)
            if value in recipients:
                problems.append(f"result_recipients[{i}] is listed twice")
            recipients.append(value)
        if creator.recipient and recipients and creator.recipient not in recipients:
            problems.append("result_recipients must include the creator's recipient")

        created = when("created", data.get("created"))
        expires = when("expires", data.get("expires"))
        if created and expires and created >= expires:
            problems.append(
                f"created ({format_time(created)}) is not before expires ({format_time(expires)})"
            )
        if check_expiry and expires is not None:
            moment = now or datetime.now(UTC)
            if expires <= moment:
                problems.append(f"the train expired at {format_time(expires)}")

        if problems:
            if len(problems) > MAX_PROBLEMS:
                more = len(problems) - MAX_PROBLEMS + 1
                problems = [*problems[: MAX_PROBLEMS - 1], f"… and {more} more problems"]
            raise SpecError(problems, source)
        assert created is not None and expires is not None  # noqa: S101 - checked above
        return cls(
            version=VERSION,
            id=train_id,
            name=name,
            creator=creator,
            mode=str(mode),
            route=tuple(route),
            result_recipients=tuple(recipients),
            results_visibility=str(visibility),
            dataset=dataset,
            created=created,
            expires=expires,
        )

    # --- protocol helpers ---------------------------------------------------------------

    def is_expired(self, now: datetime | None = None) -> bool:
        """True once ``expires`` has passed."""
        return self.expires <= (now or datetime.now(UTC))

    def hop_of(self, station: str) -> int | None:
        """The route position of ``station``, or None if it is not on the route."""
        for i, entry in enumerate(self.route):
            if entry.station == station:
                return i
        return None

    def is_last_hop(self, hop: int) -> bool:
        """True for the last route position."""
        return hop == len(self.route) - 1

    def recipients_for_hop(self, hop: int) -> list[str]:
        """Who hop ``hop``'s result is encrypted to (PROTOCOL.md "A result")."""
        if not 0 <= hop < len(self.route):
            raise IndexError(f"hop {hop} is not on the route (0..{len(self.route) - 1})")
        if self.mode == "sequential" and not self.is_last_hop(hop):
            chosen = [self.route[hop + 1].recipient]
            if self.results_visibility == "all":
                chosen += list(self.result_recipients)
        else:
            chosen = list(self.result_recipients)
        return list(dict.fromkeys(chosen))


def read_spec(
    client: RegistryClient,
    ref: Reference,
    *,
    check_expiry: bool = True,
    now: datetime | None = None,
) -> tuple[TrainSpec, str]:
    """Read and validate the spec label of the image ``ref``; return it and the manifest digest.

    Fetches only the manifest and the config blob (both digest-checked), never a layer.
    """
    manifest = client.get_manifest(ref.repository, ref.reference)
    where = f"{ref.name}@{manifest.digest}"
    if ref.digest is not None and manifest.digest != ref.digest:
        raise InvalidManifestError(f"{ref} resolved to {manifest.digest}")
    if manifest.media_type in INDEX_TYPES or manifest.media_type not in MANIFEST_TYPES:
        raise SpecError(
            [
                f"{manifest.media_type} is not a single image manifest (multi-platform trains "
                "are not supported)"
            ],
            where,
        )
    config_desc = manifest.config
    if config_desc is None:
        raise SpecError(["the image manifest has no config"], where)
    if config_desc.size > MAX_CONFIG_BYTES:
        raise SpecError([f"the image config is larger than {MAX_CONFIG_BYTES} bytes"], where)
    raw = client.get_blob(ref.repository, config_desc.digest, max_bytes=MAX_CONFIG_BYTES)
    return spec_from_config(raw, where, check_expiry=check_expiry, now=now), manifest.digest


def spec_from_config(
    raw: bytes,
    where: str,
    *,
    check_expiry: bool = True,
    now: datetime | None = None,
) -> TrainSpec:
    """The validated spec in an image config's :data:`TRAIN_LABEL` label (``raw`` is the
    config blob, at most :data:`MAX_CONFIG_BYTES`); ``where`` names the image in messages."""
    if len(raw) > MAX_CONFIG_BYTES:
        raise SpecError([f"the image config is larger than {MAX_CONFIG_BYTES} bytes"], where)
    try:
        config = parse_image_config(raw)
    except StrictJSONError as exc:
        raise SpecError([f"the image config is {exc}"], where) from None
    inner = config.get("config")
    labels = inner.get("Labels") if isinstance(inner, dict) else None
    label = labels.get(TRAIN_LABEL) if isinstance(labels, dict) else None
    if not isinstance(label, str):
        raise SpecError([f"the image has no {TRAIN_LABEL} label: it is not a train"], where)
    return TrainSpec.from_json(label, source=where, check_expiry=check_expiry, now=now)
