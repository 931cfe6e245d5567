"""Keys, certificates and the signed challenge that let nodes and drivers talk to a coordinator safely.

Two separate things live here, on purpose:

* **TLS** (``make_dev_certs``, ``server_credentials``, ``channel_credentials``) encrypts the connection and proves the
  coordinator's identity to the nodes. ``make_dev_certs`` makes a throwaway CA for development; production setups
  bring their own certificates and pass the same three kinds of files.
* **Ed25519 keys** (``new_key_pair``, ``load_authorized_keys``, ``sign_challenge``/``verify_challenge``) say *which*
  node or driver is connecting. They are plain OpenSSH-style keys so operators can manage them like SSH keys: a
  private key file per node and an ``authorized_keys`` file on the coordinator.

The challenge is bound to a fresh per-stream nonce, the role, the public key and the coordinator id, so a captured
signature can neither be replayed later nor be presented to a different coordinator or for a different role.

Every failure that a person has to fix raises ``CredentialError`` with the file name and what to do about it.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import ipaddress
import os
import secrets
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "AUTH_CONTEXT",
    "CertPaths",
    "CredentialError",
    "challenge_payload",
    "channel_credentials",
    "fingerprint",
    "load_authorized_keys",
    "load_private_key",
    "make_dev_certs",
    "new_key_pair",
    "new_nonce",
    "public_bytes",
    "server_credentials",
    "sign_challenge",
    "verify_challenge",
]

_KEY_MODE = 0o600  # private keys: owner only, like ssh insists on
_PUBLIC_MODE = 0o644
_CERTS_HINT = "make development certificates with `corolla certs --out DIR`"
_KEYS_HINT = "make one with `corolla keys new --out FILE`"


class CredentialError(ValueError):
    """A key, certificate or signature that cannot be used; the message names the file and the fix."""


# --------------------------------------------------------------------------------------------------------------------
# file helpers
# --------------------------------------------------------------------------------------------------------------------


def _refuse_existing(paths: Sequence[Path], overwrite: bool, hint: str) -> None:
    """Fail before generating anything, so a refused run leaves no half-written set of files behind."""
    if overwrite:
        return
    existing = [str(p) for p in paths if p.exists()]
    if existing:
        raise CredentialError(f"{', '.join(existing)} already exist(s); {hint}")


def _write(path: Path, data: bytes, mode: int, overwrite: bool) -> None:
    """Write with the final mode from the first byte: a key must never be readable by others, even briefly."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | (0 if overwrite else os.O_EXCL)
    try:
        fd = os.open(path, flags, mode)
    except FileExistsError:
        raise CredentialError(f"{path} already exists; delete it or pass overwrite=True") from None
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, mode)  # os.open's mode is filtered by the umask and ignored for an existing file


def _read(path: str | Path, what: str, hint: str) -> bytes:
    p = Path(path)
    try:
        return p.read_bytes()
    except FileNotFoundError:
        raise CredentialError(f"{p}: no such {what} file; {hint}") from None
    except IsADirectoryError:
        raise CredentialError(f"{p}: is a directory, expected a {what} file; {hint}") from None
    except OSError as e:
        raise CredentialError(f"{p}: cannot read {what} file ({e.strerror}); check its permissions") from None


# --------------------------------------------------------------------------------------------------------------------
# development TLS certificates
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CertPaths:
    """Where ``make_dev_certs`` put its files."""

    ca_cert: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "corolla"), x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    )


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _leaf(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    common_name: str,
    usage: x509.ObjectIdentifier,
    days: int,
    hosts: Sequence[str] = (),
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A certificate signed by the CA, with the extensions strict verifiers (OpenSSL 3, Python 3.13) expect."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))  # tolerate small clock skew between machines
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
    )
    if hosts:
        builder = builder.add_extension(x509.SubjectAlternativeName([_san(h) for h in hosts]), critical=False)
    return key, builder.sign(ca_key, hashes.SHA256())


def _key_pem(key: ec.EllipticCurvePrivateKey | Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def make_dev_certs(
    out: str | Path,
    hosts: Sequence[str] = ("127.0.0.1", "localhost"),
    days: int = 365,
    overwrite: bool = False,
) -> CertPaths:
    """Make a development CA plus a server and a client certificate signed by it, in ``out``.

    The server certificate names every host in ``hosts`` (IP addresses as IP entries, everything else as DNS names),
    which is what TLS clients check, so list each address nodes will dial. The CA's private key is *not* written:
    nothing more can be signed with this CA later, so a leaked dev directory cannot mint new trusted certificates.
    """
    if isinstance(hosts, str):  # a bare string would silently become one SAN per character
        hosts = (hosts,)
    hosts = [h.strip() for h in hosts if h.strip()]
    if not hosts:
        raise CredentialError("make_dev_certs needs at least one host (the address nodes dial, e.g. 127.0.0.1)")
    if days < 1:
        raise CredentialError(f"make_dev_certs: days must be at least 1, got {days}")

    out = Path(out)
    paths = CertPaths(
        ca_cert=out / "ca.pem",
        server_cert=out / "server.pem",
        server_key=out / "server.key",
        client_cert=out / "client.pem",
        client_key=out / "client.key",
    )
    all_paths = [paths.ca_cert, paths.server_cert, paths.server_key, paths.client_cert, paths.client_key]
    _refuse_existing(all_paths, overwrite, "delete them, choose another --out, or pass overwrite=True")
    out.mkdir(parents=True, exist_ok=True)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    ca_name = _name("corolla development CA")
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    server_key, server_cert = _leaf(ca_key, ca_cert, hosts[0], ExtendedKeyUsageOID.SERVER_AUTH, days, hosts)
    client_key, client_cert = _leaf(ca_key, ca_cert, "corolla client", ExtendedKeyUsageOID.CLIENT_AUTH, days)

    pem = serialization.Encoding.PEM
    _write(paths.ca_cert, ca_cert.public_bytes(pem), _PUBLIC_MODE, overwrite)
    _write(paths.server_cert, server_cert.public_bytes(pem), _PUBLIC_MODE, overwrite)
    _write(paths.server_key, _key_pem(server_key), _KEY_MODE, overwrite)
    _write(paths.client_cert, client_cert.public_bytes(pem), _PUBLIC_MODE, overwrite)
    _write(paths.client_key, _key_pem(client_key), _KEY_MODE, overwrite)
    return paths


# --------------------------------------------------------------------------------------------------------------------
# Ed25519 node / driver keys
# --------------------------------------------------------------------------------------------------------------------


def new_key_pair(out: str | Path, overwrite: bool = False) -> tuple[Path, Path]:
    """Write a new Ed25519 private key to ``out`` and its one-line OpenSSH public key to ``out.pub``.

    The ``.pub`` line is what goes into the coordinator's authorized_keys file, exactly like SSH.
    """
    private_path = Path(out)
    public_path = Path(f"{private_path}.pub")
    _refuse_existing([private_path, public_path], overwrite, "delete it, choose another --out, or pass overwrite=True")
    private_path.parent.mkdir(parents=True, exist_ok=True)

    key = Ed25519PrivateKey.generate()
    line = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    _write(private_path, _key_pem(key), _KEY_MODE, overwrite)
    _write(public_path, line + b" corolla\n", _PUBLIC_MODE, overwrite)
    return private_path, public_path


def load_private_key(path: str | Path) -> Ed25519PrivateKey:
    """Load an unencrypted Ed25519 private key in PEM (PKCS8) or OpenSSH format, e.g. one ``ssh-keygen`` made."""
    data = _read(path, "private key", _KEYS_HINT)
    try:
        if b"-----BEGIN OPENSSH PRIVATE KEY-----" in data:
            key = serialization.load_ssh_private_key(data, password=None)
        else:
            key = serialization.load_pem_private_key(data, password=None)
    except TypeError:  # cryptography's way of saying "this key is encrypted"
        raise CredentialError(
            f"{path}: the private key is password-protected; corolla needs an unencrypted key (keep it mode 0600), "
            f"{_KEYS_HINT}"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise CredentialError(f"{path}: not a PEM or OpenSSH private key; {_KEYS_HINT}") from None
    if not isinstance(key, Ed25519PrivateKey):
        kind = f"an EC ({key.curve.name})" if isinstance(key, ec.EllipticCurvePrivateKey) else f"a {type(key).__name__}"
        raise CredentialError(
            f"{path}: is {kind} private key, but corolla node and driver keys must be Ed25519 "
            f"(a TLS key from `corolla certs` is not a node key); {_KEYS_HINT}"
        )
    return key


def public_bytes(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    """The raw 32-byte public key: the identity that authorized_keys lists and challenges are bound to."""
    if isinstance(key, Ed25519PrivateKey):
        key = key.public_key()
    if not isinstance(key, Ed25519PublicKey):
        raise TypeError(f"expected an Ed25519 key, got {type(key).__name__}")
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def fingerprint(public_key: bytes) -> str:
    """``SHA256:<base64, no padding>`` of the key's OpenSSH blob: what ``ssh-keygen -lf KEY.pub`` prints.

    A short, stable name for a key in logs and errors that an operator can check with standard tools.
    """
    name = b"ssh-ed25519"
    blob = len(name).to_bytes(4, "big") + name + len(public_key).to_bytes(4, "big") + public_key
    digest = hashlib.sha256(blob).digest()
    return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")


def _bare_key(token: str) -> bytes | None:
    """A raw 32-byte key written as 64 hex digits or base64 (padding optional); None if it is neither."""
    if len(token) == 64:
        try:
            return bytes.fromhex(token)
        except ValueError:
            pass
    try:
        raw = base64.b64decode(token + "=" * (-len(token) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw if len(raw) == 32 else None


def load_authorized_keys(path: str | Path) -> dict[bytes, str]:
    """Read the coordinator's list of allowed node/driver keys: raw public key -> comment (or its fingerprint).

    Each line is ``ssh-ed25519 BASE64 [comment]`` (a ``.pub`` file line) or a bare hex/base64 raw key with an
    optional comment; blank lines and ``#`` comments are skipped. A bad line is an error rather than skipped, so a
    typo cannot silently lock a node out.
    """
    p = Path(path)
    text = _read(p, "authorized keys", "create it with one public key (a `.pub` line) per line").decode(
        "utf-8", errors="replace"
    )
    keys: dict[bytes, str] = {}
    for lineno, raw_line in enumerate(text.splitlines(), start=1):
        line = raw_line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(None, 2)
        where = f"{p}, line {lineno}"
        if parts[0] == "ssh-ed25519":
            if len(parts) < 2:
                raise CredentialError(f"{where}: `ssh-ed25519` without the key; paste the whole `.pub` line")
            try:
                pub = serialization.load_ssh_public_key(f"ssh-ed25519 {parts[1]}".encode("ascii"))
            except (ValueError, UnsupportedAlgorithm, UnicodeEncodeError):
                raise CredentialError(
                    f"{where}: the ssh-ed25519 key is not valid base64 / is truncated; paste the whole `.pub` line"
                ) from None
            key = public_bytes(pub)  # type: ignore[arg-type]  # load_ssh_public_key checked the type tag
            comment = parts[2].strip() if len(parts) > 2 else ""
        elif parts[0].startswith(("ssh-", "ecdsa-", "sk-")):
            raise CredentialError(
                f"{where}: {parts[0]} keys are not supported, only ssh-ed25519; {_KEYS_HINT} (or ssh-keygen -t ed25519)"
            )
        else:
            bare = _bare_key(parts[0])
            if bare is None:
                raise CredentialError(
                    f"{where}: expected `ssh-ed25519 BASE64 [comment]` or a raw 32-byte key as 64 hex digits or "
                    f"base64, got {parts[0][:20]!r}"
                )
            key = bare
            comment = line[len(parts[0]) :].strip()
        keys[key] = comment or fingerprint(key)
    return keys


# --------------------------------------------------------------------------------------------------------------------
# the signed challenge
# --------------------------------------------------------------------------------------------------------------------

AUTH_CONTEXT = b"corolla-auth-v1"


def new_nonce() -> bytes:
    """32 fresh random bytes; the coordinator sends one per stream, so every signature is single-use."""
    return secrets.token_bytes(32)


def challenge_payload(nonce: bytes, role: str, public_key: bytes, coordinator_id: str) -> bytes:
    """The exact bytes that get signed: each field length-prefixed, so no two field tuples encode the same."""
    fields = (AUTH_CONTEXT, role.encode("utf-8"), bytes(nonce), bytes(public_key), coordinator_id.encode("utf-8"))
    return b"".join(struct.pack(">I", len(f)) + f for f in fields)


def sign_challenge(key: Ed25519PrivateKey, nonce: bytes, role: str, coordinator_id: str) -> bytes:
    """Sign the challenge for this nonce, role and coordinator with the node's or driver's private key."""
    return key.sign(challenge_payload(nonce, role, public_bytes(key), coordinator_id))


def verify_challenge(public_key: bytes, signature: bytes, nonce: bytes, role: str, coordinator_id: str) -> bool:
    """True only for a valid signature by ``public_key`` over this exact challenge; malformed input is just False.

    Returning False instead of raising keeps the caller's rejection path single: anything a peer sends that does
    not verify is "not authenticated", whatever the reason.
    """
    try:
        pub = Ed25519PublicKey.from_public_bytes(bytes(public_key))
        pub.verify(bytes(signature), challenge_payload(nonce, role, public_key, coordinator_id))
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


# --------------------------------------------------------------------------------------------------------------------
# gRPC credentials
# --------------------------------------------------------------------------------------------------------------------


def _load_certs(path: str | Path, what: str) -> tuple[bytes, list[x509.Certificate]]:
    """Read and parse a PEM certificate (chain) so a wrong file fails here, not as an opaque handshake error."""
    data = _read(path, what, _CERTS_HINT)
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise CredentialError(
            f"{path}: not a PEM certificate (expected -----BEGIN CERTIFICATE-----); {_CERTS_HINT}"
        ) from None
    return data, certs


def _load_tls_key(path: str | Path) -> tuple[bytes, object]:
    data = _read(path, "TLS private key", _CERTS_HINT)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise CredentialError(f"{path}: the TLS key is password-protected; gRPC needs an unencrypted PEM key") from None
    except (ValueError, UnsupportedAlgorithm):
        raise CredentialError(
            f"{path}: not a PEM private key (expected -----BEGIN PRIVATE KEY-----); {_CERTS_HINT}"
        ) from None
    return data, key


def _key_and_chain(cert: str | Path, key: str | Path) -> tuple[bytes, bytes]:
    """Load a key and its certificate chain, checking they belong together (a classic mix-up with several dirs)."""
    cert_pem, certs = _load_certs(cert, "certificate")
    key_pem, private_key = _load_tls_key(key)
    public = private_key.public_key()  # type: ignore[attr-defined]
    raw = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if public.public_bytes(*raw) != certs[0].public_key().public_bytes(*raw):
        raise CredentialError(
            f"{key} does not belong to the certificate {cert}; use the key file made together with that certificate"
        )
    return key_pem, cert_pem


def server_credentials(
    cert: str | Path, key: str | Path, client_ca: str | Path | None = None
) -> grpc.ServerCredentials:
    """TLS for the coordinator's port; with ``client_ca`` every client must also show a certificate signed by it."""
    key_pem, cert_pem = _key_and_chain(cert, key)
    client_ca_pem = _load_certs(client_ca, "client CA certificate")[0] if client_ca is not None else None
    return grpc.ssl_server_credentials(
        [(key_pem, cert_pem)], root_certificates=client_ca_pem, require_client_auth=client_ca is not None
    )


def channel_credentials(
    root_cert: str | Path | None = None, cert: str | Path | None = None, key: str | Path | None = None
) -> grpc.ChannelCredentials:
    """TLS for a node or driver dialing the coordinator.

    ``root_cert`` is the CA to trust (None: the system's roots, for publicly signed certificates); ``cert``/``key``
    are this client's certificate for a coordinator that requires mutual TLS.
    """
    if (cert is None) != (key is None):
        given, missing = ("cert", "key") if key is None else ("key", "cert")
        raise CredentialError(f"channel_credentials: {given} given without {missing}; mutual TLS needs both files")
    root_pem = _load_certs(root_cert, "CA certificate")[0] if root_cert is not None else None
    key_pem, cert_pem = _key_and_chain(cert, key) if cert is not None and key is not None else (None, None)
    return grpc.ssl_channel_credentials(root_certificates=root_pem, private_key=key_pem, certificate_chain=cert_pem)
