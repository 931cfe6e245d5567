"""TLS certificates, Ed25519 node keys and the signed challenge: real files, real handshakes, real signatures."""

import base64
import ipaddress
import os
import shutil
import stat
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.x509.oid import ExtendedKeyUsageOID

from corolla.transport.credentials import (
    AUTH_CONTEXT,
    CertPaths,
    CredentialError,
    challenge_payload,
    channel_credentials,
    fingerprint,
    load_authorized_keys,
    load_private_key,
    make_dev_certs,
    new_key_pair,
    new_nonce,
    public_bytes,
    server_credentials,
    sign_challenge,
    verify_challenge,
)

SSH_ED25519_PREFIX = b"\x00\x00\x00\x0bssh-ed25519\x00\x00\x00\x20"  # OpenSSH wire format before the raw key
posix_only = pytest.mark.skipif(sys.platform == "win32", reason="file modes are POSIX")


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> CertPaths:
    return make_dev_certs(tmp_path_factory.mktemp("certs"))


def _cert(path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


# --------------------------------------------------------------------------------------------------------------------
# development certificates
# --------------------------------------------------------------------------------------------------------------------


def test_dev_certs_files(certs):
    for p in (certs.ca_cert, certs.server_cert, certs.server_key, certs.client_cert, certs.client_key):
        assert p.is_file() and p.parent == certs.ca_cert.parent
    assert [
        p.name for p in (certs.ca_cert, certs.server_cert, certs.server_key, certs.client_cert, certs.client_key)
    ] == [
        "ca.pem",
        "server.pem",
        "server.key",
        "client.pem",
        "client.key",
    ]
    assert not (certs.ca_cert.parent / "ca.key").exists()  # the CA cannot sign anything else later
    for key in (certs.server_key, certs.client_key):
        assert key.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS8, unencrypted
        serialization.load_pem_private_key(key.read_bytes(), password=None)


@posix_only
def test_dev_cert_keys_are_owner_only(certs):
    assert stat.S_IMODE(certs.server_key.stat().st_mode) == 0o600
    assert stat.S_IMODE(certs.client_key.stat().st_mode) == 0o600


def test_dev_certs_chain_and_extensions(certs):
    ca, server, client = _cert(certs.ca_cert), _cert(certs.server_cert), _cert(certs.client_cert)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    ca.verify_directly_issued_by(ca)  # self-signed
    server.verify_directly_issued_by(ca)  # raises if the signature or issuer is wrong
    client.verify_directly_issued_by(ca)
    assert server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False

    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ipaddress.ip_address("127.0.0.1") in san.get_values_for_type(x509.IPAddress)
    assert "localhost" in san.get_values_for_type(x509.DNSName)
    assert "127.0.0.1" not in san.get_values_for_type(x509.DNSName)

    assert ExtendedKeyUsageOID.SERVER_AUTH in server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.CLIENT_AUTH in client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH not in client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value

    # the key files belong to the certificates
    server_key = serialization.load_pem_private_key(certs.server_key.read_bytes(), password=None)
    assert server_key.public_key() == server.public_key()


def test_dev_certs_custom_hosts_and_days(tmp_path):
    paths = make_dev_certs(tmp_path / "nested" / "dir", hosts=["10.0.0.7", "::1", "coord.example"], days=3)
    server = _cert(paths.server_cert)
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address("10.0.0.7"),
        ipaddress.ip_address("::1"),
    }
    assert san.get_values_for_type(x509.DNSName) == ["coord.example"]
    lifetime = server.not_valid_after_utc - server.not_valid_before_utc
    assert 3 * 86400 <= lifetime.total_seconds() <= 3 * 86400 + 3600


def test_dev_certs_refuse_to_overwrite(tmp_path):
    paths = make_dev_certs(tmp_path)
    before = paths.ca_cert.read_bytes()
    with pytest.raises(CredentialError, match="ca.pem"):
        make_dev_certs(tmp_path)
    assert paths.ca_cert.read_bytes() == before

    # one stray file is enough to refuse, and nothing else gets written
    other = tmp_path / "other"
    other.mkdir()
    (other / "server.key").write_text("mine")
    with pytest.raises(CredentialError, match="server.key"):
        make_dev_certs(other)
    assert sorted(p.name for p in other.iterdir()) == ["server.key"]

    again = make_dev_certs(tmp_path, overwrite=True)
    assert again.ca_cert.read_bytes() != before


def test_dev_certs_bad_arguments(tmp_path):
    with pytest.raises(CredentialError, match="host"):
        make_dev_certs(tmp_path, hosts=[])
    with pytest.raises(CredentialError, match="days"):
        make_dev_certs(tmp_path, days=0)


# --------------------------------------------------------------------------------------------------------------------
# real TLS handshakes through grpc
# --------------------------------------------------------------------------------------------------------------------


def _echo_server(creds: grpc.ServerCredentials) -> tuple[grpc.Server, int]:
    server = grpc.server(ThreadPoolExecutor(max_workers=2))
    handler = grpc.unary_unary_rpc_method_handler(lambda request, context: request)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.Echo", {"Say": handler}),))
    port = server.add_secure_port("127.0.0.1:0", creds)
    assert port > 0
    server.start()
    return server, port


def _call(channel: grpc.Channel) -> bytes:
    with channel:
        return channel.unary_unary("/test.Echo/Say")(b"ping", timeout=5)


def test_tls_handshake(certs):
    server, port = _echo_server(server_credentials(certs.server_cert, certs.server_key))
    try:
        # the certificate names 127.0.0.1 as an IP SAN, so no target-name override is needed
        assert _call(grpc.secure_channel(f"127.0.0.1:{port}", channel_credentials(certs.ca_cert))) == b"ping"
        assert _call(grpc.secure_channel(f"localhost:{port}", channel_credentials(certs.ca_cert))) == b"ping"

        with pytest.raises(grpc.RpcError) as err:
            _call(grpc.insecure_channel(f"127.0.0.1:{port}"))
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        server.stop(None)


def test_tls_rejects_a_server_from_another_ca(certs, tmp_path):
    stranger = make_dev_certs(tmp_path)
    server, port = _echo_server(server_credentials(stranger.server_cert, stranger.server_key))
    try:
        with pytest.raises(grpc.RpcError) as err:
            _call(grpc.secure_channel(f"127.0.0.1:{port}", channel_credentials(certs.ca_cert)))
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        server.stop(None)


def test_tls_rejects_a_host_not_in_the_certificate(tmp_path):
    only_name = make_dev_certs(tmp_path, hosts=["coord.example"])
    server, port = _echo_server(server_credentials(only_name.server_cert, only_name.server_key))
    try:
        with pytest.raises(grpc.RpcError) as err:
            _call(grpc.secure_channel(f"127.0.0.1:{port}", channel_credentials(only_name.ca_cert)))
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        server.stop(None)


def test_mutual_tls(certs, tmp_path):
    server, port = _echo_server(server_credentials(certs.server_cert, certs.server_key, client_ca=certs.ca_cert))
    target = f"127.0.0.1:{port}"
    try:
        with pytest.raises(grpc.RpcError) as err:
            _call(grpc.secure_channel(target, channel_credentials(certs.ca_cert)))
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE

        stranger = make_dev_certs(tmp_path)  # a client cert from a CA the server does not trust
        with pytest.raises(grpc.RpcError) as err:
            _call(
                grpc.secure_channel(
                    target, channel_credentials(certs.ca_cert, stranger.client_cert, stranger.client_key)
                )
            )
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE

        creds = channel_credentials(certs.ca_cert, certs.client_cert, certs.client_key)
        assert _call(grpc.secure_channel(target, creds)) == b"ping"
    finally:
        server.stop(None)


def test_grpc_credential_errors_name_the_file(certs, tmp_path):
    missing = tmp_path / "nope.pem"
    with pytest.raises(CredentialError, match="nope.pem"):
        server_credentials(missing, certs.server_key)
    with pytest.raises(CredentialError, match="nope.pem"):
        server_credentials(certs.server_cert, missing)
    with pytest.raises(CredentialError, match="nope.pem"):
        server_credentials(certs.server_cert, certs.server_key, client_ca=missing)
    with pytest.raises(CredentialError, match="nope.pem"):
        channel_credentials(missing)

    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    with pytest.raises(CredentialError, match="junk.pem.*not a PEM certificate"):
        server_credentials(junk, certs.server_key)
    with pytest.raises(CredentialError, match="junk.pem.*not a PEM private key"):
        server_credentials(certs.server_cert, junk)
    with pytest.raises(CredentialError, match="junk.pem"):
        channel_credentials(junk)
    # a certificate where the key should be is also not a key
    with pytest.raises(CredentialError, match="server.pem"):
        server_credentials(certs.server_cert, certs.server_cert)

    # a key that does not match its certificate is caught before the first handshake
    with pytest.raises(CredentialError, match="client.key.*server.pem"):
        server_credentials(certs.server_cert, certs.client_key)

    with pytest.raises(CredentialError, match="without"):
        channel_credentials(certs.ca_cert, cert=certs.client_cert)
    with pytest.raises(CredentialError, match="without"):
        channel_credentials(certs.ca_cert, key=certs.client_key)


def test_channel_credentials_system_roots():
    assert isinstance(channel_credentials(), grpc.ChannelCredentials)


# --------------------------------------------------------------------------------------------------------------------
# Ed25519 keys
# --------------------------------------------------------------------------------------------------------------------


def test_new_key_pair_round_trip(tmp_path):
    private_path, public_path = new_key_pair(tmp_path / "keys" / "node1")
    assert private_path == tmp_path / "keys" / "node1"
    assert public_path == tmp_path / "keys" / "node1.pub"
    assert private_path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")

    key = load_private_key(private_path)
    assert isinstance(key, Ed25519PrivateKey)
    raw = public_bytes(key)
    assert len(raw) == 32 and public_bytes(key.public_key()) == raw

    text = public_path.read_text()
    assert text.count("\n") == 1 and text.endswith("\n")  # one line
    kind, b64, comment = text.split()
    assert (kind, comment) == ("ssh-ed25519", "corolla")
    loaded = serialization.load_ssh_public_key(f"{kind} {b64}".encode())
    assert isinstance(loaded, Ed25519PublicKey) and public_bytes(loaded) == raw

    assert load_authorized_keys(public_path) == {raw: "corolla"}


@posix_only
def test_private_key_is_owner_only(tmp_path):
    old = os.umask(0)  # even a permissive umask must not widen the key's mode
    try:
        private_path, public_path = new_key_pair(tmp_path / "k")
    finally:
        os.umask(old)
    assert stat.S_IMODE(private_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(public_path.stat().st_mode) == 0o644


def test_new_key_pair_refuses_to_overwrite(tmp_path):
    private_path, public_path = new_key_pair(tmp_path / "k")
    raw = public_bytes(load_private_key(private_path))
    with pytest.raises(CredentialError) as err:
        new_key_pair(tmp_path / "k")
    assert str(private_path) in str(err.value)
    assert public_bytes(load_private_key(private_path)) == raw

    private_path.unlink()  # a leftover .pub alone is also refused: it would no longer match the key
    with pytest.raises(CredentialError, match=r"k\.pub"):
        new_key_pair(tmp_path / "k")
    assert not private_path.exists()

    new_key_pair(tmp_path / "k", overwrite=True)
    assert public_bytes(load_private_key(private_path)) != raw


def test_load_private_key_openssh_format(tmp_path):
    key = Ed25519PrivateKey.generate()
    path = tmp_path / "id_ed25519"
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption())
    )
    assert public_bytes(load_private_key(path)) == public_bytes(key)


def test_load_private_key_errors_name_the_path(tmp_path, certs):
    with pytest.raises(CredentialError, match="missing-key.*corolla keys new"):
        load_private_key(tmp_path / "missing-key")

    with pytest.raises(CredentialError) as err:
        load_private_key(certs.server_key)  # an EC P-256 TLS key is not a node key
    assert str(certs.server_key) in str(err.value) and "Ed25519" in str(err.value)

    junk = tmp_path / "junk.key"
    junk.write_text("hello")
    with pytest.raises(CredentialError, match="junk.key"):
        load_private_key(junk)

    encrypted = tmp_path / "locked.key"
    encrypted.write_bytes(
        Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    with pytest.raises(CredentialError, match="locked.key.*password"):
        load_private_key(encrypted)

    with pytest.raises(CredentialError, match="directory"):
        load_private_key(tmp_path)


def test_fingerprint_format_matches_ssh_keygen(tmp_path):
    raw = bytes(range(32))
    fp = fingerprint(raw)
    assert fp.startswith("SHA256:") and not fp.endswith("=")
    assert len(fp) == len("SHA256:") + 43  # sha256 is 32 bytes -> 43 base64 characters without padding
    assert fingerprint(bytes(32)) != fp
    ssh_keygen = shutil.which("ssh-keygen")
    if ssh_keygen is None:
        pytest.skip("ssh-keygen not installed")
    _, pub = new_key_pair(tmp_path / "id")
    out = subprocess.run([ssh_keygen, "-lf", str(pub)], capture_output=True, text=True, check=True).stdout
    assert out.split()[1] == fingerprint(next(iter(load_authorized_keys(pub))))


def test_load_authorized_keys_formats(tmp_path):
    keys = [public_bytes(Ed25519PrivateKey.generate()) for _ in range(5)]
    _, pub = new_key_pair(tmp_path / "node")
    from_pub = public_bytes(load_private_key(tmp_path / "node"))
    ssh_line = pub.read_text().strip()
    ssh_no_comment = " ".join(ssh_line.split()[:2])
    path = tmp_path / "authorized_keys"
    path.write_text(
        "# coordinator's allowed nodes\n"
        "\n"
        f"{ssh_line}\n"
        f"   {ssh_no_comment}   \n"
        f"{keys[0].hex()} node one (hex)\n"
        f"{keys[1].hex().upper()}\n"
        f"{base64.b64encode(keys[2]).decode()}  driver\n"
        f"{base64.b64encode(keys[3]).decode().rstrip('=')}\n"
        "   # indented comment\n"
        f"ssh-ed25519 {base64.b64encode(SSH_ED25519_PREFIX + keys[4]).decode()} a b  c\n"
    )
    got = load_authorized_keys(path)
    assert got == {
        from_pub: fingerprint(from_pub),  # the later line without a comment wins
        keys[0]: "node one (hex)",
        keys[1]: fingerprint(keys[1]),
        keys[2]: "driver",
        keys[3]: fingerprint(keys[3]),
        keys[4]: "a b  c",
    }
    empty = tmp_path / "empty"
    empty.write_text("# nobody yet\n")
    assert load_authorized_keys(empty) == {}


@pytest.mark.parametrize(
    "bad",
    [
        "ssh-ed25519",
        "ssh-ed25519 AAAA!!notbase64",
        "ssh-ed25519 " + base64.b64encode(SSH_ED25519_PREFIX + bytes(10)).decode(),
        "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQ user@host",
        "abcd",
        bytes(31).hex(),
        base64.b64encode(bytes(33)).decode(),
        "g" * 64,
    ],
)
def test_load_authorized_keys_malformed_line(tmp_path, bad):
    good = public_bytes(Ed25519PrivateKey.generate()).hex()
    path = tmp_path / "authorized_keys"
    path.write_text(f"# header\n{good}\n\n{bad}\n{good}\n")
    with pytest.raises(CredentialError) as err:
        load_authorized_keys(path)
    assert f"{path}, line 4" in str(err.value)


def test_load_authorized_keys_missing_file(tmp_path):
    with pytest.raises(CredentialError, match="authorized_keys"):
        load_authorized_keys(tmp_path / "authorized_keys")


# --------------------------------------------------------------------------------------------------------------------
# the signed challenge
# --------------------------------------------------------------------------------------------------------------------


def test_nonce_is_fresh():
    a, b = new_nonce(), new_nonce()
    assert len(a) == 32 and len(b) == 32 and a != b


def test_challenge_payload_is_unambiguous():
    pk = bytes(32)
    nonce = bytes(range(32))
    payload = challenge_payload(nonce, "node", pk, "coord")
    assert AUTH_CONTEXT in payload and nonce in payload and b"node" in payload and b"coord" in payload
    # moving bytes between adjacent fields changes the encoding
    assert challenge_payload(nonce, "node", pk, "coord") != challenge_payload(nonce, "nod", pk, "ecoord")
    assert challenge_payload(b"ab", "x", b"c", "") != challenge_payload(b"a", "x", b"bc", "")
    assert challenge_payload(nonce, "node", pk, "coord") == payload  # deterministic


def test_sign_and_verify():
    key, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    pk = public_bytes(key)
    nonce = new_nonce()
    sig = sign_challenge(key, nonce, "node", "coord-1")
    assert len(sig) == 64
    assert verify_challenge(pk, sig, nonce, "node", "coord-1") is True
    # the signature is over challenge_payload, with the signer's own public key in it
    key.public_key().verify(sig, challenge_payload(nonce, "node", pk, "coord-1"))

    assert verify_challenge(pk, sig, new_nonce(), "node", "coord-1") is False  # replay on another stream
    assert verify_challenge(pk, sig, nonce, "driver", "coord-1") is False  # other role
    assert verify_challenge(pk, sig, nonce, "node", "coord-2") is False  # other coordinator
    assert verify_challenge(public_bytes(other), sig, nonce, "node", "coord-1") is False  # other key
    other_sig = sign_challenge(other, nonce, "node", "coord-1")
    assert verify_challenge(pk, other_sig, nonce, "node", "coord-1") is False  # signed by someone else

    tampered = bytearray(sig)
    tampered[0] ^= 1
    assert verify_challenge(pk, bytes(tampered), nonce, "node", "coord-1") is False
    assert verify_challenge(pk, sig[:-1], nonce, "node", "coord-1") is False
    assert verify_challenge(pk, b"", nonce, "node", "coord-1") is False
    assert verify_challenge(pk, sig + b"\x00", nonce, "node", "coord-1") is False

    for garbage in (b"", b"\x01" * 31, b"\x01" * 33, b"not a key at all"):
        assert verify_challenge(garbage, sig, nonce, "node", "coord-1") is False


def test_sign_with_a_loaded_key(tmp_path):
    private_path, public_path = new_key_pair(tmp_path / "driver")
    allowed = load_authorized_keys(public_path)
    key = load_private_key(private_path)
    nonce = new_nonce()
    sig = sign_challenge(key, nonce, "driver", "c")
    (pk,) = allowed
    assert verify_challenge(pk, sig, nonce, "driver", "c")
