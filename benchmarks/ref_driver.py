"""Drive the reference implementation (pht-train-container-library 2.0.5) for bench_seal.py.

Runs inside ``benchmarks/.ref-venv`` (``.ref-venv/bin/python benchmarks/ref_driver.py …``),
never in the project's own venv. Every mode prints one JSON object on stdout; timed modes
report the elapsed seconds of the measured part and this process's own peak RSS
(``ru_maxrss``; start it under ``/usr/bin/time`` so that it is not inherited from a parent).

Modes:

``crypto SIZE_DIR``
    (b1) The station's crypto core on the result files in ``SIZE_DIR``:
    ``SecurityProtocol._post_run_outside_container``, which is exactly: SHA-512 of the
    results + session id (``hash_results``), an RSA-PSS signature of that hash, the
    station's digital signature over the route (another SHA-512 + RSA-PSS), a fresh
    AES-256 key, ``FileEncryptor.encrypt_files`` (AES-CBC, PKCS7, whole files in memory)
    and the key wrapped with RSA-OAEP for every station on the route and the creator. The
    files are handed over as open files on disk (the station hands over members of an
    in-memory tar, which costs more). RSA keys are generated before the clock starts.

``prepare SIZE_DIR IMAGE --state DIR``
    Generates the RSA keys of a two-station route, a creator and a builder into ``DIR``,
    writes a valid ``train_config.json`` (creator and builder signatures over the train
    files, as the reference's own test fixtures make it), and builds two images with
    ``docker import`` (nothing is pulled): ``IMAGE:base`` (the train: ``/opt/pht_train``
    and ``/opt/train_config.json``) and ``IMAGE:latest`` (the same plus the result files in
    ``/opt/pht_results``, as after the train ran at station 1).

``protocol IMAGE --state DIR``
    (b2) What the station does after a run: ``extract_train_config`` and then the full
    ``SecurityProtocol.post_run_protocol(img=IMAGE:latest, private_key_path=…)`` with its
    default ``rebase=True``. Afterwards (not timed) checks the new image: its config holds
    the SHA-512 of our files and the station's route signature. With ``--push-to
    HOST/REPO:TAG`` it then also times ``docker push`` of the image (what the station does
    next to send the train on) and reports it separately as ``push_seconds``.

``cleanup IMAGE --state DIR``
    Removes ``IMAGE:latest``, ``IMAGE:base`` and every image the protocol committed on
    top of them (only those), then ``DIR``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tarfile
import time
from io import BytesIO
from pathlib import Path

import docker
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from loguru import logger
from train_lib.docker_util.docker_ops import extract_train_config
from train_lib.security.hashing import hash_immutable_files
from train_lib.security.protocol import SecurityProtocol
from train_lib.security.train_config import TrainConfig

STATIONS = ("station_1", "station_2")
STATION = STATIONS[0]
TRAIN_FILES = {
    "entrypoint.py": b'import pathlib\npathlib.Path("/opt/pht_results/done").write_text("ok")\n',
    "analysis.py": b"def analyse(rows):\n    return len(rows)\n",
    "requirements.txt": b"pandas\n",
}
DOCKER_TIMEOUT = 600


def _peak_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _quiet_logs() -> None:
    # loguru logs every file at DEBUG to stderr by default; keep warnings and errors only.
    logger.remove()
    logger.add(sys.stderr, level="WARNING")


def result_files(folder: Path) -> list[Path]:
    """The regular files under ``folder``, in sorted path order."""
    return sorted(p for p in folder.rglob("*") if p.is_file())


# --- keys and train config ---------------------------------------------------------------


def _pem_private(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


def _hex_public(key: rsa.RSAPrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .hex()
    )


def make_train(state: Path) -> dict:
    """Generate keys into ``state`` and return a valid train config (as JSON data).

    Follows ``train_lib/tests/conftest.py::train_config``: a 2048-bit RSA key per station,
    creator and builder; the creator signs the hash of the train files (PKCS1v15, SHA-512)
    and the builder signs hash + creator signature; station 1 holds the symmetric key the
    train files were sent with.
    """
    state.mkdir(mode=0o700, parents=True, exist_ok=True)
    keys = {
        name: rsa.generate_private_key(public_exponent=65537, key_size=2048)
        for name in (*STATIONS, "user", "builder")
    }
    key_path = state / "station_1.pem"
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(_pem_private(keys[STATION]))
    session_id = os.urandom(64)
    names = list(TRAIN_FILES)
    immutable_hash = hash_immutable_files(
        immutable_files=[BytesIO(TRAIN_FILES[n]) for n in names],
        user_id="bench-user",
        session_id=session_id,
        binary_files=True,
        ordered_file_list=names,
        immutable_file_names=names,
    )
    user_sig = keys["user"].sign(immutable_hash, padding.PKCS1v15(), hashes.SHA512())
    build_sig = keys["builder"].sign(
        bytes.fromhex(immutable_hash.hex() + user_sig.hex()), padding.PKCS1v15(), hashes.SHA512()
    )
    sym_key = os.urandom(32)
    oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA512()), algorithm=hashes.SHA512(), label=None)
    route = [
        {
            "station": name,
            "eco_system": "tue",
            "rsa_public_key": _hex_public(keys[name]),
            "index": i,
            **(
                {"encrypted_key": keys[name].public_key().encrypt(sym_key, oaep).hex()}
                if i == 0
                else {}
            ),
        }
        for i, name in enumerate(STATIONS)
    ]
    config = {
        "@id": "bench-train",
        "@context": {"link": "https://www.w3.org/2018/credentials/v1"},
        "session_id": session_id.hex(),
        "proposal_id": "bench-proposal",
        "source": {"type": "docker_repository", "tag": "latest", "address": "bench"},
        "creator": {"id": "bench-user", "rsa_public_key": _hex_public(keys["user"])},
        "build": {"signature": build_sig.hex(), "rsa_public_key": _hex_public(keys["builder"])},
        "route": route,
        "file_list": names,
        "hash": immutable_hash.hex(),
        "signature": user_sig.hex(),
    }
    TrainConfig(**config)  # the reference's own model must accept it
    (state / "train_config.json").write_text(json.dumps(config, indent=2))
    return config


def expected_result_hash(folder: Path, session_id_hex: str) -> str:
    """``hash_results`` recomputed by streaming (to check what the reference wrote)."""
    h = hashlib.sha512()
    for path in result_files(folder):
        with open(path, "rb") as f:
            while block := f.read(1 << 20):
                h.update(block)
    h.update(bytes.fromhex(session_id_hex))
    return h.hexdigest()


# --- (b1) crypto core ----------------------------------------------------------------------


def crypto(size_dir: Path, state: Path) -> dict:
    config = TrainConfig(**make_train(state))
    protocol = SecurityProtocol(STATION, config=config)
    files = [open(p, "rb") for p in result_files(size_dir)]  # noqa: SIM115 - closed below
    try:
        cpu0, start = _cpu(), time.perf_counter()
        encrypted, _key = protocol._post_run_outside_container(files, str(state / "station_1.pem"))
        seconds, cpu = time.perf_counter() - start, _cpu() - cpu0
    finally:
        for f in files:
            f.close()
    out_bytes = sum(e.getbuffer().nbytes for e in encrypted)
    expected = expected_result_hash(size_dir, config.session_id)
    if protocol.config.result_hash != expected:
        raise SystemExit("reference crypto core: result hash differs from SHA-512 of the files")
    if not protocol.route_stop.signature or not protocol.config.creator.encrypted_key:
        raise SystemExit("reference crypto core: no route signature or wrapped key")
    return {
        "seconds": seconds,
        "cpu": cpu,
        "maxrss_kib": _peak_kib(),
        "files": len(files),
        "ciphertext_bytes": out_bytes,
    }


# --- (b2) post_run_protocol on an image --------------------------------------------------


def _import(root_entries: list[tuple[str, Path | bytes | None]], image: str) -> str:
    """``docker import`` a tar streamed from ``root_entries``; return the image id.

    Each entry is (archive name, source): a Path (file on disk), bytes, or None (a folder).
    """
    proc = subprocess.Popen(
        ["docker", "import", "--change", 'CMD ["/bin/sh"]', "-", image],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert proc.stdin is not None
    with tarfile.open(fileobj=proc.stdin, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for name, source in root_entries:
            info = tarfile.TarInfo(name)
            info.mtime = int(time.time())
            if source is None:
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                tar.addfile(info)
            elif isinstance(source, bytes):
                info.size = len(source)
                info.mode = 0o644
                tar.addfile(info, BytesIO(source))
            else:
                info.size = source.stat().st_size
                info.mode = 0o644
                with open(source, "rb") as f:
                    tar.addfile(info, f)
    proc.stdin.close()
    out = proc.stdout.read().decode().strip() if proc.stdout else ""
    if proc.wait() != 0:
        raise SystemExit(f"docker import {image} failed")
    return out


def prepare(size_dir: Path, image: str, state: Path) -> dict:
    start = time.perf_counter()
    config = make_train(state)
    train: list[tuple[str, Path | bytes | None]] = [("opt", None), ("opt/pht_train", None)]
    train += [(f"opt/pht_train/{n}", data) for n, data in TRAIN_FILES.items()]
    train.append(("opt/train_config.json", json.dumps(config, indent=2).encode()))
    results: list[tuple[str, Path | bytes | None]] = [("opt/pht_results", None)]
    for path in sorted(size_dir.rglob("*")):
        rel = path.relative_to(size_dir).as_posix()
        results.append((f"opt/pht_results/{rel}", None if path.is_dir() else path))
    base_id = _import(train, f"{image}:base")
    latest_id = _import(train + results, f"{image}:latest")
    (state / "images.json").write_text(json.dumps({"base": base_id, "latest": latest_id}))
    return {"seconds": time.perf_counter() - start, "base": base_id, "latest": latest_id}


def push(client: docker.DockerClient, image: str, target: str) -> float:
    """Tag ``image`` as ``target`` (``host:port/repo:tag``) and ``docker push`` it; seconds."""
    repo, tag = target.rsplit(":", 1)
    client.images.get(image).tag(repo, tag)
    start = time.perf_counter()
    for line in client.api.push(repo, tag=tag, stream=True, decode=True):
        if "error" in line or "errorDetail" in line:
            raise SystemExit(f"docker push {target} failed: {line.get('error')}")
    return time.perf_counter() - start


def protocol(image: str, state: Path, size_dir: Path | None, push_to: str | None) -> dict:
    client = docker.from_env(timeout=DOCKER_TIMEOUT)
    img = f"{image}:latest"
    cpu0, start = _cpu(), time.perf_counter()
    config = extract_train_config(img)
    sp = SecurityProtocol(STATION, config=config, docker_client=client)
    sp.post_run_protocol(img=img, private_key_path=str(state / "station_1.pem"))
    seconds, cpu = time.perf_counter() - start, _cpu() - cpu0
    peak = _peak_kib()
    after = extract_train_config(img)
    if not after.route[0].signature or not after.creator.encrypted_key:
        raise SystemExit("post_run_protocol left no route signature or wrapped key in the image")
    if size_dir is not None and after.result_hash != expected_result_hash(
        size_dir, config.session_id
    ):
        raise SystemExit("post_run_protocol: result hash differs from SHA-512 of the files")
    out = {"seconds": seconds, "cpu": cpu, "maxrss_kib": peak}
    if push_to:
        out["push_seconds"] = push(client, img, push_to)
    client.close()
    return out


def cleanup(image: str, state: Path) -> dict:
    client = docker.from_env(timeout=DOCKER_TIMEOUT)
    ours: set[str] = set()
    images_file = state / "images.json"
    if images_file.exists():
        ours.update(json.loads(images_file.read_text()).values())
    for tag in ("latest", "base"):
        with contextlib.suppress(docker.errors.ImageNotFound):
            ours.add(client.images.get(f"{image}:{tag}").id)
    listing = client.api.images(all=True)
    grew = True
    while grew:  # every image committed on top of ours (the protocol's commits)
        grew = False
        for entry in listing:
            if entry.get("ParentId") in ours and entry["Id"] not in ours:
                ours.add(entry["Id"])
                grew = True
    parents = {e["Id"]: e.get("ParentId") for e in listing}
    removed = 0
    while ours:
        leaves = [i for i in ours if not any(parents.get(o) == i for o in ours)]
        if not leaves:
            break
        for image_id in leaves:
            with contextlib.suppress(docker.errors.ImageNotFound):
                client.images.remove(image_id, force=True)
                removed += 1
            ours.discard(image_id)
    client.close()
    shutil.rmtree(state, ignore_errors=True)
    return {"removed": removed}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=["crypto", "prepare", "protocol", "cleanup"])
    parser.add_argument("target", help="SIZE_DIR (crypto) or IMAGE repository (others)")
    parser.add_argument("size_dir", nargs="?", help="the result folder (prepare)")
    parser.add_argument("--state", type=Path, help="keys, config and image ids of IMAGE")
    parser.add_argument("--check", type=Path, help="protocol: the result folder, to check")
    parser.add_argument("--push-to", help="protocol: then docker push the image as HOST/REPO:TAG")
    args = parser.parse_args()
    _quiet_logs()
    if args.mode == "crypto":
        state = Path(args.state or Path(args.target).parent / ".ref-crypto-keys")
        try:
            out = crypto(Path(args.target), state)
        finally:
            shutil.rmtree(state, ignore_errors=True)
    elif args.state is None:
        parser.error(f"{args.mode} needs --state DIR")
    elif args.mode == "prepare":
        if not args.size_dir:
            parser.error("prepare needs SIZE_DIR after IMAGE")
        out = prepare(Path(args.size_dir), args.target, args.state)
    elif args.mode == "protocol":
        out = protocol(args.target, args.state, args.check, args.push_to)
    else:
        out = cleanup(args.target, args.state)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
