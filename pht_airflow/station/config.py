"""The station's configuration file (``PHT_STATION_CONFIG``), validated at load.

Every problem is reported at once, each with the file and line it comes from. Secrets are
never in the file itself: the file says where to find them (a file path, an environment
variable, or an Airflow Variable, which a secrets backend such as HashiCorp Vault can
serve), and they are read only when a task needs them. See ``config/station.example.yaml``
for every field with its meaning.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml

from ..central_client import check_central_url
from ..errors import ConfigError, KeyFileError
from ..keys import (
    AgeIdentity,
    PublicKey,
    SigningKey,
    age_identity_from_bytes,
    load_recipient,
    public_key_from_pem,
    signing_key_from_pem,
    validate_recipient,
)
from ..oci.reference import check_registry, check_repository
from ..protocol import STATION_ID
from ..spec import parse_duration
from .data.model import DataSet, parse_datasets
from .disclosure import DisclosurePolicy, parse_disclosure_policy
from .sandbox import ALL_GPUS, Limits, check_gpus
from .secrets import NO_LOOKUPS, Lookups, SecretRef

CONFIG_ENV = "PHT_STATION_CONFIG"
# One Airflow deployment hosting several stations: a folder of station configs, one per
# ``<station>.yaml`` (the demo uses this to fit three stations on a 2-core machine).
CONFIG_DIR_ENV = "PHT_STATION_CONFIG_DIR"
DEFAULT_TASK_TIMEOUT = timedelta(hours=6)
"""Default ``policy.task_timeout``: the longest any one task of a hop may run."""
INTAKES = ("webhook", "poll", "both")
DEFAULT_POLL_INTERVAL = timedelta(seconds=60)
"""Default ``poll_interval``: how often a polling station asks the registry for trains."""
MIN_POLL_INTERVAL = timedelta(seconds=1)
_SIZE_RE = re.compile(r"(\d+(?:\.\d+)?)\s*([KMGT]i?B?|B)?", re.IGNORECASE)
_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)\s*(s|m|h|d)?")
_UNITS = {"": 1, "b": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}
_IUNITS = {"ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}
_MAX_NUMBER = 2**62  # sizes and durations beyond this are typos (or hostile), not limits
#: Largest station config file read (bytes).
MAX_CONFIG_BYTES = 1024 * 1024


def parse_size(text: Any) -> int:
    """``"2GiB"``, ``"512MiB"``, ``"1G"``, ``1048576`` → bytes."""
    if isinstance(text, int) and not isinstance(text, bool) and 0 < text < _MAX_NUMBER:
        return text
    m = _SIZE_RE.fullmatch(str(text).strip())
    if not m:
        raise ValueError(f"{text!r} is not a size like 512MiB or 2GiB")
    number, unit = float(m.group(1)), (m.group(2) or "").lower().rstrip("b")
    factor = _IUNITS.get(unit) or _UNITS.get(unit)
    if factor is None or number <= 0:
        raise ValueError(f"{text!r} is not a size like 512MiB or 2GiB")
    if not number * factor < _MAX_NUMBER:  # also catches an infinite float
        raise ValueError(f"{str(text)[:40]!r} is too large a size")
    if number * factor < 1:  # 0 bytes would mean "no limit" to the Docker engine
        raise ValueError(f"{str(text)[:40]!r} is less than one byte")
    return int(number * factor)


def parse_seconds(text: Any) -> float:
    """``"90s"``, ``"30m"``, ``"2h"``, ``3600`` → seconds."""
    if isinstance(text, int | float) and not isinstance(text, bool) and 0 < text < _MAX_NUMBER:
        return float(text)
    m = _DURATION_RE.fullmatch(str(text).strip())
    if not m or float(m.group(1)) <= 0:
        raise ValueError(f"{str(text)[:40]!r} is not a duration like 90s, 30m or 2h")
    seconds = float(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2) or "s"]
    if not seconds < _MAX_NUMBER:  # also catches an infinite float
        raise ValueError(f"{str(text)[:40]!r} is too long a duration")
    return seconds


#: What a trusted key's ``name`` may be (it is shown on approval cards and in logs).
KEY_NAME_RULE = "must be a name of 1 to 120 printable characters (no control characters)"


def _key_name_ok(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    return bool(value.strip()) and len(value) <= 120 and value.isprintable()


# --- the config -----------------------------------------------------------------------------


@dataclass(frozen=True)
class RegistrySettings:
    """Where the station's project lives and how to log in."""

    host: str
    project: str
    connection_id: str | None = None
    username: str | None = None
    password: SecretRef | None = None
    insecure: bool = False
    lookups: Lookups = field(default=NO_LOOKUPS, compare=False, repr=False)
    #: Harbor's base URL: polling lists the project's repositories through Harbor's API
    #: (a robot account may not read ``/v2/_catalog``); None: the registry's catalog.
    harbor_url: str | None = None

    def credentials(self) -> tuple[str | None, str | None]:
        """(username, password) from the Airflow Connection or the file's references."""
        if self.connection_id:
            found = self.lookups.connection(self.connection_id)
            if found is None:
                raise ConfigError(
                    f"Airflow Connection {self.connection_id!r} (registry.connection_id) is not set"
                )
            return found
        password = self.password.read_text() if self.password else None
        return self.username, password


@dataclass(frozen=True)
class TrustStore:
    """Keys this station trusts, and how many approvals it wants; ``names`` maps a key id to
    the name the station gave it (``{key: …, name: …}`` entries), for people to read."""

    creators: tuple[PublicKey, ...]
    approvers: tuple[PublicKey, ...]
    required_approvals: int
    names: Mapping[str, str] = field(default_factory=dict)

    def name_of(self, key_id: str | None) -> str | None:
        """The station's name for the trusted key ``key_id``, or None if it gave none."""
        return self.names.get(key_id) if key_id else None


@dataclass(frozen=True)
class Policy:
    """Whether a person must approve a run, and release its output; the station's
    disclosure threshold (a count below it is never shown, counts are rounded to it); how
    long any one task of a hop may run before Airflow stops it (``task_timeout``, the tasks'
    ``execution_timeout``; longer than the sandbox's ``wall_time``)."""

    require_approval: bool = True
    require_release_approval: bool = False
    min_cell_count: int = 10
    task_timeout: timedelta = DEFAULT_TASK_TIMEOUT
    #: The automatic disclosure control of every output (``policy.disclosure``).
    disclosure: DisclosurePolicy = DisclosurePolicy()


@dataclass(frozen=True)
class StationConfig:
    """A validated station configuration. Load it with :func:`load_config`."""

    source: Path
    station_id: str
    signing_key: SecretRef
    signing_passphrase: SecretRef | None
    age_identity: SecretRef
    age_passphrase: SecretRef | None
    public_key: PublicKey
    registry: RegistrySettings
    trust: TrustStore
    datasets: Mapping[str, DataSet]
    limits: Limits
    policy: Policy
    audit_log: Path
    work_dir: Path
    webhook_secret: SecretRef | None = None
    central_url: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    #: How trains reach the station: ``webhook`` (the registry calls the station),
    #: ``poll`` (the station asks the registry every ``poll_interval``), or ``both``.
    intake: str = "webhook"
    poll_interval: timedelta = DEFAULT_POLL_INTERVAL
    #: The station's own age recipient (``keys.age_recipient``), if configured: the hop then
    #: encrypts its resting output to the station without opening the identity (whose
    #: passphrase costs a scrypt run); opening the identity checks the two belong together.
    age_recipient: str | None = None

    def load_signing_key(self) -> SigningKey:
        """The station's private signing key (read now; never cached on disk or logged)."""
        passphrase = (
            self.signing_passphrase.read_text().encode() if self.signing_passphrase else None
        )
        key = signing_key_from_pem(
            self.signing_key.read_bytes(),
            passphrase,
            f"station signing key ({self.signing_key.describe()})",
        )
        if key.key_id != self.public_key.key_id:
            raise KeyFileError(
                f"the station signing key ({self.signing_key.describe()}) does not belong to "
                f"keys.public_key ({self.public_key.key_id})"
            )
        return key

    def load_age_identity(self) -> AgeIdentity:
        """The station's age identity (read now); it must be ``keys.age_recipient``'s."""
        passphrase = self.age_passphrase.read_text().encode() if self.age_passphrase else None
        identity = age_identity_from_bytes(
            self.age_identity.read_bytes(),
            passphrase,
            f"station age identity ({self.age_identity.describe()})",
        )
        if self.age_recipient is not None and identity.recipient != self.age_recipient:
            raise KeyFileError(
                f"the station age identity ({self.age_identity.describe()}) does not belong to "
                f"keys.age_recipient ({self.age_recipient}); give the identity's own recipient "
                "(its NAME.age.pub) as keys.age_recipient"
            )
        return identity

    def own_recipient(self) -> str:
        """The station's own age recipient: ``keys.age_recipient``, else the identity's."""
        return self.age_recipient or self.load_age_identity().recipient


class _LineLoader(yaml.SafeLoader):
    """A SafeLoader that remembers the line of every mapping key."""


def _load_with_lines(text: str, source: str) -> tuple[Any, dict[tuple[str, ...], int]]:
    lines: dict[tuple[str, ...], int] = {}
    seen: set[int] = set()
    try:
        node = yaml.compose(text, Loader=_LineLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark else source
        raise ConfigError(f"{where}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    except RecursionError:
        raise ConfigError(f"{source}: not valid YAML (nested too deeply)") from None

    def walk(n: yaml.Node, path: tuple[str, ...]) -> None:
        if id(n) in seen:  # an alias: the same node again (maybe inside itself)
            where = f"{source}:{n.start_mark.line + 1}"
            raise ConfigError(f"{where}: YAML aliases (*name) are not supported in a config")
        seen.add(id(n))
        lines[path] = n.start_mark.line + 1
        if isinstance(n, yaml.MappingNode):
            for k, v in n.value:
                key = str(k.value)
                lines[(*path, key)] = k.start_mark.line + 1
                walk(v, (*path, key))
        elif isinstance(n, yaml.SequenceNode):
            for i, v in enumerate(n.value):
                walk(v, (*path, str(i)))

    if node is not None:
        walk(node, ())
    try:
        data = yaml.load(text, Loader=_LineLoader)  # noqa: S506 - _LineLoader is a SafeLoader
    except yaml.YAMLError as exc:  # a tag it cannot construct, an unhashable key
        raise ConfigError(f"{source}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    except (ValueError, TypeError, RecursionError) as exc:  # e.g. a date 2001-02-30
        raise ConfigError(f"{source}: not valid YAML ({type(exc).__name__})") from None
    return data, lines


_SCHEMA: dict[str, Any] = {
    "station": {"id": None},
    "keys": {
        "public_key": None,
        "signing_key": None,
        "signing_passphrase": None,
        "age_identity": None,
        "age_passphrase": None,
        "age_recipient": None,
    },
    "registry": {
        "host": None,
        "project": None,
        "connection_id": None,
        "username": None,
        "password": None,
        "insecure": None,
        "harbor_url": None,
    },
    "trust": {"trusted_creators": None, "trusted_approvers": None, "required_approvals": None},
    "datasets": "*",
    "sandbox": {
        "memory": None,
        "cpus": None,
        "pids": None,
        "wall_time": None,
        "output_bytes": None,
        "tmp_bytes": None,
        "user": None,
        "gpus": None,
    },
    "policy": {
        "require_approval": None,
        "require_release_approval": None,
        "min_cell_count": None,
        "task_timeout": None,
        "disclosure": None,
    },
    "audit_log": None,
    "work_dir": None,
    "webhook": {"secret": None},
    "central": {"url": None},
    "intake": None,
    "poll_interval": None,
}


def _task_timeout(policy: Mapping[str, Any]) -> timedelta:
    value = policy.get("task_timeout")
    if value is None:
        return DEFAULT_TASK_TIMEOUT
    if not isinstance(value, str):
        raise ConfigError(f"not a duration: {value!r} (use e.g. 6h or 90m)")
    try:
        return parse_duration(value)
    except (ValueError, OverflowError):
        raise ConfigError(f"not a duration: {value[:40]!r} (use e.g. 6h or 90m)") from None


def _gpus(value: Any) -> int | tuple[str, ...] | str:
    """``sandbox.gpus``: ``none`` (or 0), ``all``, a count, or a list of device ids; a str
    saying what is wrong otherwise. Setting it is the station's decision to pass GPUs to
    every train it runs (a train cannot ask for them)."""
    rule = "must be none, all, a count such as 1, or a list of device ids such as [0, 1]"
    if value == "none":
        return 0
    if value == "all":
        return ALL_GPUS
    if isinstance(value, list):
        value = tuple(
            str(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in value
        )
    elif not isinstance(value, int) or isinstance(value, bool) or value < 0:
        return rule
    try:
        check_gpus(value)
    except ValueError as exc:
        return f"{rule} ({exc})"
    return value


def _harbor_url(value: Any, problem: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not re.fullmatch(r"https?://[^\s/?#]+(?:/[^\s?#]*)?", value):
        problem(("registry", "harbor_url"), "must be a URL like https://harbor.example.org")
        return None
    return value.rstrip("/")


def _age_recipient(value: Any, resolve_path: Any, problem: Any) -> str | None:
    """``keys.age_recipient``: an ``age1…`` recipient, or the path of a ``NAME.age.pub``."""
    if value is None:
        return None
    where = ("keys", "age_recipient")
    if not isinstance(value, str) or not value.strip():
        problem(where, "must be an age recipient (age1…) or the path of NAME.age.pub")
        return None
    try:
        if value.strip().upper().startswith(("AGE1", "AGE-SECRET-KEY-")):
            return validate_recipient(value, "keys.age_recipient")
        resolved = resolve_path(value, where)
        return load_recipient(resolved) if resolved is not None else None
    except KeyFileError as exc:
        problem(where, str(exc))
        return None


def _intake(data: Mapping[str, Any], problem: Any) -> tuple[str, timedelta]:
    """``intake`` and ``poll_interval`` (see config/station.example.yaml)."""
    intake = data.get("intake", "webhook")
    if intake not in INTAKES:
        problem(("intake",), f"must be one of {', '.join(INTAKES)}")
        intake = "webhook"
    interval = DEFAULT_POLL_INTERVAL
    raw = data.get("poll_interval")
    if raw is not None:
        try:
            interval = timedelta(seconds=parse_seconds(raw))
        except ValueError as exc:
            problem(("poll_interval",), str(exc))
        else:
            if interval < MIN_POLL_INTERVAL:
                problem(("poll_interval",), "must be at least 1s")
                interval = DEFAULT_POLL_INTERVAL
    return str(intake), interval


def station_intake(path: Path | str | None = None) -> tuple[str, timedelta]:
    """``intake`` and ``poll_interval`` of the config at ``path`` (or ``$PHT_STATION_CONFIG``),
    read at DAG-file parse time (the polling DAG's schedule): only these fields; the defaults
    when the file cannot be read or a field is wrong (:func:`load_config` reports it)."""
    path = path or os.environ.get(CONFIG_ENV)
    if not path:
        return "webhook", DEFAULT_POLL_INTERVAL
    try:
        data, _ = _read_config(Path(path))
    except ConfigError:
        return "webhook", DEFAULT_POLL_INTERVAL
    return _intake(data if isinstance(data, dict) else {}, lambda *_: None)


def _read_config(source: Path) -> tuple[Any, dict[tuple[str, ...], int]]:
    """The config file's YAML, read bounded (:data:`MAX_CONFIG_BYTES`), UTF-8, no aliases."""
    try:
        with source.open("rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read the station config {source}: {exc.strerror}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{source}: the station config is larger than {MAX_CONFIG_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{source}: not UTF-8 (byte {exc.start})") from None
    return _load_with_lines(text, str(source))


def policy_task_timeout(path: Path | str | None = None) -> timedelta:
    """``policy.task_timeout`` of the config at ``path`` (or ``$PHT_STATION_CONFIG``), read at
    DAG-file parse time: only that field, and the default when the file or the field cannot
    be read (the task then fails on :func:`load_config`, which reports every problem)."""
    path = path or os.environ.get(CONFIG_ENV)
    if not path:
        return DEFAULT_TASK_TIMEOUT
    try:
        data, _ = _read_config(Path(path))
        policy = data.get("policy") if isinstance(data, dict) else None
        return _task_timeout(policy if isinstance(policy, dict) else {})
    except ConfigError:
        return DEFAULT_TASK_TIMEOUT


def hosted_station_configs() -> dict[str, Path]:
    """The station configs this Airflow deployment hosts, by name.

    With ``$PHT_STATION_CONFIG_DIR`` set: every ``*.yaml`` in that folder, named by its file
    stem (``station-a.yaml`` -> ``station-a``), sorted. Otherwise an empty mapping: the
    deployment is one station whose config ``$PHT_STATION_CONFIG`` names. Only file names are
    read here (it runs at DAG-file parse time); each config is validated when a task runs.
    """
    folder = os.environ.get(CONFIG_DIR_ENV)
    if not folder:
        return {}
    root = Path(folder)
    if not root.is_dir():
        raise ConfigError(f"{CONFIG_DIR_ENV}={folder} is not a folder")
    found: dict[str, Path] = {}
    for path in sorted(root.glob("*.yaml")):
        if not STATION_ID.fullmatch(path.stem):
            raise ConfigError(
                f"{path}: a hosted station config is named <station-id>.yaml "
                "(lowercase letters, digits and '-')"
            )
        found[path.stem] = path.resolve()
    return found


def load_config(path: Path | str | None = None, lookups: Lookups = NO_LOOKUPS) -> StationConfig:
    """Load and validate the station config from ``path`` or ``$PHT_STATION_CONFIG``.

    ``lookups`` reads the Airflow Variables and Connections the file refers to; the Airflow
    edge passes Airflow's, and outside Airflow such a reference is a clear error when read.
    """
    if path is None:
        env = os.environ.get(CONFIG_ENV)
        if not env:
            raise ConfigError(f"no station config: set {CONFIG_ENV} to the YAML file's path")
        path = env
    source = Path(path)
    data, lines = _read_config(source)
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level")
    problems: list[str] = []
    base = source.resolve().parent

    def at(*path: str) -> str:
        for n in range(len(path), -1, -1):
            if path[:n] in lines:
                return f"{source}:{lines[path[:n]]}"
        return str(source)

    def problem(path: tuple[str, ...], text: str) -> None:
        problems.append(f"{at(*path)}: {'.'.join(path)}: {text}")

    def check_unknown(mapping: Any, schema: Any, path: tuple[str, ...]) -> None:
        if schema == "*" or schema is None or not isinstance(mapping, dict):
            return
        for key in mapping:
            if key not in schema:
                problem((*path, str(key)), f"unknown field (expected one of {', '.join(schema)})")
            else:
                check_unknown(mapping[key], schema[key], (*path, str(key)))

    check_unknown(data, _SCHEMA, ())

    def section(name: str) -> dict[str, Any]:
        value = data.get(name)
        if value is None:
            return {}
        if not isinstance(value, dict):
            problem((name,), "must be a mapping")
            return {}
        return value

    def resolve_path(value: Any, path: tuple[str, ...]) -> Path | None:
        if not isinstance(value, str) or not value:
            problem(path, "must be a path")
            return None
        p = Path(os.path.expanduser(value))
        return p if p.is_absolute() else base / p

    def secret(value: Any, path: tuple[str, ...], required: bool = True) -> SecretRef | None:
        if value is None:
            if required:
                problem(path, "missing (give file:, env: or variable:)")
            return None
        if not isinstance(value, dict) or len(value) != 1:
            problem(path, "must be one of {file: PATH}, {env: NAME}, {variable: NAME}")
            return None
        kind, name = next(iter(value.items()))
        if kind not in ("file", "env", "variable") or not isinstance(name, str) or not name:
            problem(path, "must be one of {file: PATH}, {env: NAME}, {variable: NAME}")
            return None
        if kind == "file":
            resolved = resolve_path(name, (*path, "file"))
            if resolved is None:
                return None
            if not resolved.is_file():
                problem((*path, "file"), f"no such file: {resolved}")
            name = str(resolved)
        return SecretRef(kind, name, at(*path), lookups)

    def public_key(value: Any, path: tuple[str, ...]) -> PublicKey | None:
        if not isinstance(value, str) or not value.strip():
            problem(path, "must be a public key file path or PEM text")
            return None
        try:
            if value.lstrip().startswith("-----BEGIN"):
                return public_key_from_pem(value, at(*path))
            resolved = resolve_path(value, path)
            if resolved is None:
                return None
            from ..keys import load_public_key

            return load_public_key(resolved)
        except KeyFileError as exc:
            problem(path, str(exc))
            return None

    station = section("station")
    station_id = station.get("id")
    if not isinstance(station_id, str) or not STATION_ID.fullmatch(station_id):
        problem(("station", "id"), "must be a station id (lowercase letters, digits, '-')")
        station_id = ""

    keys = section("keys")
    own_key = public_key(keys.get("public_key"), ("keys", "public_key"))
    signing = secret(keys.get("signing_key"), ("keys", "signing_key"))
    signing_pass = secret(keys.get("signing_passphrase"), ("keys", "signing_passphrase"), False)
    age = secret(keys.get("age_identity"), ("keys", "age_identity"))
    age_pass = secret(keys.get("age_passphrase"), ("keys", "age_passphrase"), False)
    age_recipient = _age_recipient(keys.get("age_recipient"), resolve_path, problem)

    reg = section("registry")
    host = reg.get("host")
    try:
        check_registry(str(host or ""))
    except Exception as exc:  # noqa: BLE001 - InvalidReferenceError
        problem(("registry", "host"), str(exc))
    project = reg.get("project")
    try:
        check_repository(str(project or ""))
    except Exception as exc:  # noqa: BLE001
        problem(("registry", "project"), str(exc))
    insecure = reg.get("insecure", False)
    if not isinstance(insecure, bool):
        problem(("registry", "insecure"), "must be true or false")
    registry = RegistrySettings(
        host=str(host or ""),
        project=str(project or ""),
        connection_id=reg.get("connection_id"),
        username=reg.get("username"),
        password=secret(reg.get("password"), ("registry", "password"), False),
        insecure=bool(insecure),
        lookups=lookups,
        harbor_url=_harbor_url(reg.get("harbor_url"), problem),
    )

    trust = section("trust")
    creators: list[PublicKey] = []
    approvers: list[PublicKey] = []
    key_names: dict[str, str] = {}
    for name, into in (("trusted_creators", creators), ("trusted_approvers", approvers)):
        value = trust.get(name, [])
        if not isinstance(value, list):
            problem(("trust", name), "must be a list of public key files or PEM texts")
            continue
        for i, item in enumerate(value):
            where: tuple[str, ...] = ("trust", name, str(i))
            label = None
            if isinstance(item, dict):  # {key: FILE-or-PEM, name: "Alice Smith (UKA)"}
                extra = sorted(str(k) for k in item if k not in ("key", "name"))
                if extra:
                    problem(where, f"unknown field(s) {', '.join(extra)} (expected key, name)")
                label = item.get("name")
                if label is not None and not _key_name_ok(label):
                    problem((*where, "name"), KEY_NAME_RULE)
                    label = None
                item = item.get("key")
                where = (*where, "key")
            key = public_key(item, where)
            if key is None:
                continue
            into.append(key)
            if label is not None:
                if key_names.get(key.key_id, label) != label:
                    problem(where, f"key {key.key_id} is named twice, differently")
                key_names[key.key_id] = label
    if not creators:
        problem(("trust", "trusted_creators"), "at least one trusted creator key is needed")
    required = trust.get("required_approvals", 1)
    if not isinstance(required, int) or isinstance(required, bool) or required < 0:
        problem(("trust", "required_approvals"), "must be a whole number ≥ 0")
        required = 1
    elif required > len(approvers):
        problem(
            ("trust", "required_approvals"),
            f"is {required} but only {len(approvers)} trusted approver key(s) are listed",
        )

    datasets = parse_datasets(
        data.get("datasets"),
        problem=problem,
        resolve_path=resolve_path,
        where=lambda path: at(*path),
        lookups=lookups,
    )

    sb = section("sandbox")
    limit_args: dict[str, Any] = {}
    for name_, arg, parse in (
        ("memory", "memory_bytes", parse_size),
        ("output_bytes", "output_bytes", parse_size),
        ("tmp_bytes", "tmp_bytes", parse_size),
        ("wall_time", "wall_seconds", parse_seconds),
    ):
        if name_ in sb:
            try:
                limit_args[arg] = parse(sb[name_])
            except ValueError as exc:
                problem(("sandbox", name_), str(exc))
    for name_, typ in (("cpus", float), ("pids", int)):
        if name_ in sb:
            try:
                limit_args[name_] = typ(sb[name_])
                if not math.isfinite(limit_args[name_]):
                    raise ValueError
            except (TypeError, ValueError, OverflowError):
                limit_args.pop(name_, None)
                problem(("sandbox", name_), "must be a number")
    if "user" in sb:
        limit_args["user"] = str(sb["user"])
    if sb.get("gpus") is not None:
        gpus = _gpus(sb["gpus"])
        if isinstance(gpus, str):
            problem(("sandbox", "gpus"), gpus)
        else:
            limit_args["gpus"] = gpus
    try:
        limits = Limits(**limit_args)
    except (TypeError, ValueError) as exc:
        problem(("sandbox",), str(exc))
        limits = Limits()

    pol = section("policy")
    flags: dict[str, bool] = {}
    for flag in ("require_approval", "require_release_approval"):
        value = pol.get(flag, flag == "require_approval")
        if not isinstance(value, bool):
            problem(("policy", flag), "must be true or false")
            value = True
        flags[flag] = value
    min_cell_count = pol.get("min_cell_count", Policy.min_cell_count)
    if (
        not isinstance(min_cell_count, int)
        or isinstance(min_cell_count, bool)
        or not (1 <= min_cell_count <= 1_000_000)
    ):
        problem(("policy", "min_cell_count"), "must be a whole number from 1 to 1000000")
        min_cell_count = Policy.min_cell_count
    disclosure = parse_disclosure_policy(
        pol.get("disclosure"),
        lambda path, text: problem(("policy", "disclosure", *path), text),
        parse_size,
    )
    task_timeout = DEFAULT_TASK_TIMEOUT
    try:
        task_timeout = _task_timeout(pol)
    except ConfigError as exc:
        problem(("policy", "task_timeout"), str(exc))
    if task_timeout.total_seconds() <= limits.wall_seconds:
        problem(
            ("policy", "task_timeout"),
            f"must be longer than sandbox.wall_time ({limits.wall_seconds:g} s): the hop's "
            "run task pulls and runs the train within it",
        )

    audit_log = resolve_path(data.get("audit_log", "audit.jsonl"), ("audit_log",))
    work_dir = resolve_path(data.get("work_dir", "work"), ("work_dir",))
    webhook = section("webhook")
    webhook_secret = secret(webhook.get("secret"), ("webhook", "secret"), False)
    central_url = section("central").get("url")
    if central_url is not None:
        try:
            central_url = check_central_url(central_url)
        except ConfigError as exc:
            problem(("central", "url"), str(exc))
            central_url = None

    intake, poll_interval = _intake(data, problem)

    if problems:
        head = f"invalid station config {source} ({len(problems)} problem(s)):"
        raise ConfigError("\n".join([head, *(f"  - {p}" for p in problems)]))
    assert own_key and signing and age and audit_log and work_dir  # noqa: S101 - checked
    return StationConfig(
        source=source,
        station_id=station_id,
        signing_key=signing,
        signing_passphrase=signing_pass,
        age_identity=age,
        age_passphrase=age_pass,
        age_recipient=age_recipient,
        public_key=own_key,
        registry=registry,
        trust=TrustStore(tuple(creators), tuple(approvers), int(required), key_names),
        datasets=datasets,
        limits=limits,
        policy=Policy(
            **flags,
            min_cell_count=min_cell_count,
            task_timeout=task_timeout,
            disclosure=disclosure,
        ),
        audit_log=audit_log,
        work_dir=work_dir,
        webhook_secret=webhook_secret,
        central_url=central_url,
        intake=intake,
        poll_interval=poll_interval,
    )
