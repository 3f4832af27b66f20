"""A real registry for tests: Debian's ``docker-registry`` on a free loopback port, optionally
behind bearer-token auth served by a small token endpoint of our own (JWTs signed with a key
``openssl`` makes per run), images built here (multi-layer, with whiteouts) pushed with skopeo.

Everything started here is stopped by its pid at teardown; data lives in the test's tmp dir.
"""

from __future__ import annotations

import contextlib

import base64
import http.server
import io
import json
import shutil
import subprocess
import tarfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from thingdoer.oci.busybox import DEFAULT_PATH, busybox_layer, goarch, write_image

from .conftest import free_port, wait_until

needs_registry = pytest.mark.skipif(
    not (shutil.which("docker-registry") and shutil.which("skopeo") and shutil.which("openssl")),
    reason="needs docker-registry, skopeo and openssl (Debian packages)")

USER, PASSWORD = "alice", "s3cret"
SERVICE, ISSUER = "thingdoer-test", "thingdoer-test-issuer"


@dataclass
class Registry:
    host: str                       # 127.0.0.1:PORT
    proc: subprocess.Popen
    token_server: http.server.HTTPServer | None = None
    token_requests: list = field(default_factory=list)

    def push(self, layout: Path, ref: str, repo_tag: str) -> None:
        """skopeo copy ``oci:layout:ref`` → this registry's ``repo_tag``."""
        cmd = ["skopeo", "copy", "--quiet", "--dest-tls-verify=false",
               f"oci:{layout}:{ref}", f"docker://{self.host}/{repo_tag}"]
        if self.token_server is not None:
            cmd[2:2] = ["--dest-creds", f"{USER}:{PASSWORD}"]
        subprocess.run(cmd, check=True, capture_output=True, timeout=60)

    def stop(self) -> None:
        if self.token_server is not None:
            self.token_server.shutdown()
            self.token_server.server_close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_registry(tmp: Path, *, token_auth: bool = False) -> Registry:
    tmp.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = {"version": 0.1, "log": {"level": "error"},
              "storage": {"filesystem": {"rootdirectory": str(tmp / "data")},
                          "delete": {"enabled": True}},
              "http": {"addr": f"127.0.0.1:{port}"}}
    token_server = None
    requests: list = []
    if token_auth:
        key, cert = tmp / "key.pem", tmp / "cert.pem"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                        str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=token"],
                       check=True, capture_output=True)
        token_server = _token_server(key, cert, requests)
        config["auth"] = {"token": {
            "realm": f"http://127.0.0.1:{token_server.server_address[1]}/token",
            "service": SERVICE, "issuer": ISSUER, "rootcertbundle": str(cert)}}
    (tmp / "config.yml").write_text(json.dumps(config))  # JSON is YAML
    log = open(tmp / "registry.log", "wb")
    proc = subprocess.Popen(["docker-registry", "serve", str(tmp / "config.yml")],
                            stdout=log, stderr=subprocess.STDOUT)
    registry = Registry(f"127.0.0.1:{port}", proc, token_server, requests)

    def up() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"docker-registry exited: {(tmp / 'registry.log').read_text()}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=1)
            return True
        except urllib.error.HTTPError as err:
            return err.code == 401
        except OSError:
            return False
    try:
        wait_until(up, timeout=20, what="docker-registry to listen")
    except BaseException:
        registry.stop()
        raise
    return registry


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _token_server(key: Path, cert: Path, requests: list) -> http.server.HTTPServer:
    """Issues RS256 JWTs the registry accepts: pull of ``public/*`` to anyone, pull and push
    of everything to alice (basic auth); anything else gets a token with no access."""
    der = subprocess.run(["openssl", "x509", "-in", str(cert), "-outform", "DER"],
                         check=True, capture_output=True).stdout
    header = {"typ": "JWT", "alg": "RS256", "x5c": [base64.b64encode(der).decode()]}

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            from urllib.parse import parse_qs, urlparse
            query = parse_qs(urlparse(self.path).query)
            auth = self.headers.get("Authorization", "")
            user = None
            if auth.startswith("Basic "):
                name, _, pw = base64.b64decode(auth[6:]).decode().partition(":")
                if (name, pw) != (USER, PASSWORD):
                    self.send_response(401)
                    self.end_headers()
                    self.wfile.write(b'{"details": "wrong user or password"}')
                    return
                user = name
            requests.append({"user": user, "scope": query.get("scope", [])})
            access = []
            for scope in query.get("scope", []):
                kind, _, rest = scope.partition(":")
                name, _, actions = rest.rpartition(":")
                wanted = actions.split(",")
                allowed = wanted if user else (["pull"] if name.startswith("public/") else [])
                access.append({"type": kind, "name": name,
                               "actions": [a for a in wanted if a in allowed]})
            now = int(time.time())
            claims = {"iss": ISSUER, "sub": user or "", "aud": SERVICE, "exp": now + 300,
                      "nbf": now - 10, "iat": now, "jti": f"{now}-{len(requests)}",
                      "access": access}
            signing_input = (_b64url(json.dumps(header).encode()) + "."
                             + _b64url(json.dumps(claims).encode()))
            signature = subprocess.run(["openssl", "dgst", "-sha256", "-sign", str(key)],
                                       input=signing_input.encode(), check=True,
                                       capture_output=True).stdout
            token = signing_input + "." + _b64url(signature)
            body = json.dumps({"token": token, "access_token": token, "expires_in": 300}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


# ---- test images --------------------------------------------------------------------------------


def tar_of(*entries: tuple[str, bytes | None, str]) -> bytes:
    """A tar from (name, data or None for a dir, symlink target or "")."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data, link in entries:
            info = tarfile.TarInfo(name)
            info.mtime = 946684800
            if link:
                info.type, info.linkname = tarfile.SYMTYPE, link
                tar.addfile(info)
            elif data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                info.size, info.mode = len(data), 0o644
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def layered_image(layout: Path, ref: str = "layered:v1", *, marker: str = "one") -> str:
    """busybox + two layers: the second deletes a file (``.wh.``) and empties a dir (opaque)."""
    layer1 = tar_of(("data", None, ""), ("data/keep", b"keep\n", ""),
                    ("data/gone", b"gone\n", ""), ("cfg", None, ""), ("cfg/old", b"old\n", ""))
    layer2 = tar_of(("data/.wh.gone", b"", ""), ("cfg/.wh..wh..opq", b"", ""),
                    ("cfg/new", b"new\n", ""), ("marker", marker.encode() + b"\n", ""))
    config = {"architecture": goarch(), "os": "linux",
              "config": {"Env": [DEFAULT_PATH], "Cmd": ["sh"]}}
    return write_image(layout, ref, [busybox_layer(), layer1, layer2], config)


@contextlib.contextmanager
def serving(tmp: Path, source: Path, *, token_auth: bool = False):
    """A registry started in ``tmp`` holding ``layered:v1`` of ``source`` as
    ``test/layered:v1``; stopped on exit, even after a failure."""
    reg = start_registry(tmp, token_auth=token_auth)
    try:
        reg.push(source, "layered:v1", "test/layered:v1")
        yield reg
    finally:
        reg.stop()
