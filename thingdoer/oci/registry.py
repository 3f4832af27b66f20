"""Pull images over the OCI distribution API, and import them from layouts and tarballs.

Owns: talking to registries (``/v2/<repo>/manifests/<ref>``, ``/v2/<repo>/blobs/<digest>``),
their auth, and reading ``oci-archive`` / ``docker save`` tarballs. Everything lands in an
``image.ImageStore``, which verifies every blob against its digest before keeping it.

Promises:
- Auth as Docker: anonymous first; a ``401`` with ``WWW-Authenticate: Bearer realm=..,
  service=.., scope=..`` fetches a token from the realm (with the basic credentials of a
  Docker ``config.json`` when it has some for the registry) and retries; ``Basic`` sends those
  credentials. HTTPS always, except registries named in ``insecure`` (plain HTTP).
- Manifests: OCI and Docker schema 2, image indexes and manifest lists (linux/<host arch> is
  picked). A manifest fetched by digest is checked against it.
- A pull writes blobs first and names the image last, so an interrupted pull leaves no name
  pointing at missing blobs; two pulls of one image at once download each blob once.
- Registry errors surface with the registry's own message (``MANIFEST_UNKNOWN: manifest
  unknown``) as ``NotFound`` (404), ``Unavailable`` (unreachable, 5xx, 429), or ``Invalid``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import httpx

from ..errors import BadRequest, Cause, Invalid, NotFound, Unavailable
from .image import (INDEX_TYPES, MANIFEST_TYPES, REF_NAME, Image, ImageStore,
                    check_layer_types, pick_platform, read_blob, unpack_layer)
from .reference import DOCKER_HUB, Reference, normalize, parse

log = logging.getLogger(__name__)

ACCEPT = ", ".join(sorted(MANIFEST_TYPES | INDEX_TYPES))
DOCKER_LAYER_TAR = "application/vnd.docker.image.rootfs.diff.tar"
DOCKER_CONFIG_TYPE = "application/vnd.docker.container.image.v1+json"
DOCKER_MANIFEST_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
CHUNK = 1 << 20

# progress(kind, digest, size, advanced): kind "start" (size known), "advance" (bytes) or "done".
Progress = Callable[[str, str, int, int], None]


@dataclass(frozen=True)
class Settings:
    """How this node reaches registries."""

    insecure: frozenset[str] = frozenset()   # host[:port] spoken to over plain HTTP
    auths: dict = field(default_factory=dict)  # a Docker config.json's "auths"
    timeout: float = 30.0

    @classmethod
    def load(cls, insecure: tuple[str, ...] | list[str] = (), config: Path | None = None,
             ) -> "Settings":
        auths = {}
        if config is not None:
            try:
                auths = json.loads(Path(config).read_text()).get("auths") or {}
            except (OSError, ValueError) as err:
                raise Invalid(Cause("registry-config", f"cannot read {config} as a Docker "
                                                       f"config.json ({err})")) from err
        return cls(frozenset(insecure), auths)

    def credentials(self, registry: str) -> tuple[str, str] | None:
        """(user, password) for ``registry`` from the config's ``auths``, keyed as Docker
        writes them (``host``, ``https://host``, ``https://index.docker.io/v1/`` for Hub)."""
        keys = [registry, f"https://{registry}", f"http://{registry}", f"https://{registry}/v1/"]
        if registry == DOCKER_HUB:
            keys += ["https://index.docker.io/v1/", "index.docker.io", "registry-1.docker.io"]
        for key in keys:
            entry = self.auths.get(key)
            if not entry:
                continue
            if entry.get("auth"):
                try:
                    user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
                except ValueError as err:
                    raise Invalid(Cause("registry-config", f'auths["{key}"].auth is not '
                                                           "base64 of user:password")) from err
                return user, password
            if entry.get("username"):
                return entry["username"], entry.get("password", "")
        return None


# ---- the distribution client --------------------------------------------------------------------


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """``Bearer realm="x",service="y"`` → ("bearer", {"realm": "x", "service": "y"})."""
    scheme, _, rest = header.strip().partition(" ")
    params = {k.lower(): v for k, v in re.findall(r'(\w+)="([^"]*)"', rest)}
    return scheme.lower(), params


class Client:
    """One registry, one repository: manifests and blobs, authenticating as challenged."""

    def __init__(self, ref: Reference, settings: Settings):
        self.ref, self.settings = ref, settings
        scheme = "http" if ref.registry in settings.insecure else "https"
        self.base = f"{scheme}://{ref.api_host}/v2/{ref.repository}"
        self.http = httpx.Client(timeout=settings.timeout, follow_redirects=True)
        self.auth_header: str | None = None

    def close(self) -> None:
        self.http.close()

    def manifest(self, version: str) -> tuple[bytes, str, str]:
        """(bytes, media type, digest) of the manifest or index named ``version``."""
        resp = self._get(f"{self.base}/manifests/{version}", {"Accept": ACCEPT})
        data = resp.content
        digest = "sha256:" + _sha256(data)
        if version.startswith("sha256:") and digest != version:
            raise Invalid(Cause(f"manifest {version}", f"{self.where} sent content with digest "
                                                       f"{digest}: refused"))
        media_type = resp.headers.get("content-type", "").split(";")[0].strip()
        try:
            doc = json.loads(data)
        except ValueError as err:
            raise Invalid(Cause(f"manifest {version}", f"{self.where} sent no JSON")) from err
        media_type = doc.get("mediaType") or media_type
        if media_type not in MANIFEST_TYPES | INDEX_TYPES:
            raise Invalid(Cause("image", f"{self.where}: manifest media type {media_type!r} is "
                                         f"not supported (OCI or Docker schema 2 only)"))
        return data, media_type, digest

    def blob(self, digest: str) -> Iterator[bytes]:
        url = f"{self.base}/blobs/{digest}"
        try:
            for attempt in (0, 1):
                with self.http.stream("GET", url, headers=self._headers()) as resp:
                    if resp.status_code == 401 and attempt == 0 and self._authenticate(resp):
                        continue
                    self._check(resp, f"blob {digest}")
                    yield from resp.iter_bytes(CHUNK)
                    return
        except httpx.HTTPError as err:
            raise Unavailable(f"{self.where}: blob {digest}: transfer failed ({err}); "
                              "pull again") from err

    @property
    def where(self) -> str:
        return f"{self.ref.registry}/{self.ref.repository}"

    def _headers(self, extra: dict | None = None) -> dict:
        headers = dict(extra or {})
        if self.auth_header:
            headers["Authorization"] = self.auth_header
        return headers

    def _get(self, url: str, headers: dict) -> httpx.Response:
        try:
            resp = self.http.get(url, headers=self._headers(headers))
            if resp.status_code == 401 and self._authenticate(resp):
                resp = self.http.get(url, headers=self._headers(headers))
        except httpx.HTTPError as err:
            hint = ("" if self.ref.registry in self.settings.insecure else
                    f"; if it serves plain HTTP, pass --insecure-registry {self.ref.registry}")
            raise Unavailable(f"registry {self.ref.registry} unreachable ({err}){hint}") from err
        self._check(resp, url.rsplit("/", 2)[-2] + " " + url.rsplit("/", 1)[-1])
        return resp

    def _authenticate(self, resp: httpx.Response) -> bool:
        """Answer a 401's challenge; False when there is nothing more to try."""
        scheme, params = parse_challenge(resp.headers.get("www-authenticate", ""))
        creds = self.settings.credentials(self.ref.registry)
        if scheme == "basic":
            if creds is None or self.auth_header:
                return False
            self.auth_header = "Basic " + base64.b64encode(":".join(creds).encode()).decode()
            return True
        if scheme != "bearer" or "realm" not in params:
            return False  # callers retry once, so an expired token is renewed, never looped
        query = {"scope": params.get("scope") or f"repository:{self.ref.repository}:pull"}
        if params.get("service"):
            query["service"] = params["service"]
        try:
            token_resp = self.http.get(params["realm"], params=query,
                                       auth=httpx.BasicAuth(*creds) if creds else None)
        except httpx.HTTPError as err:
            raise Unavailable(f"token endpoint {params['realm']} of {self.ref.registry} "
                              f"unreachable ({err})") from err
        if token_resp.status_code != 200:
            raise BadRequest(f"{self.where}: token endpoint {params['realm']} answered "
                             f"{token_resp.status_code} {token_resp.text.strip()[:200]}: check "
                             "the credentials in --registry-config")
        try:
            body = token_resp.json()
        except ValueError as err:
            raise BadRequest(f"{self.where}: token endpoint {params['realm']} sent no JSON"
                             ) from err
        token = body.get("token") or body.get("access_token")
        if not token:
            raise BadRequest(f"{self.where}: token endpoint {params['realm']} sent no token")
        self.auth_header = f"Bearer {token}"
        return True

    def _check(self, resp: httpx.Response, what: str) -> None:
        if resp.status_code < 400:
            return
        if resp.is_stream_consumed is False:
            resp.read()
        message = _registry_message(resp)
        text = f"{self.where}: {what}: {resp.status_code} {message}"
        if resp.status_code == 404:
            raise NotFound(text)
        if resp.status_code == 401 or resp.status_code == 403:
            raise BadRequest(text + " (check --registry-config credentials)")
        if resp.status_code == 429 or resp.status_code >= 500:
            raise Unavailable(text)
        raise BadRequest(text)


def _registry_message(resp: httpx.Response) -> str:
    """The registry's own words: ``CODE: message`` of its errors document, else the body."""
    try:
        errors = resp.json().get("errors") or []
        return "; ".join(f"{e.get('code')}: {e.get('message')}" for e in errors) or resp.text
    except ValueError:
        return resp.text.strip()[:200]


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---- pull ---------------------------------------------------------------------------------------


def pull(text: str, store: ImageStore, settings: Settings = Settings(),
         progress: Progress | None = None, layers_dir: Path | None = None) -> Image:
    """Pull ``text`` into ``store``, unpack its layers into ``layers_dir`` (when given), name
    it by its canonical reference, and return it. A layer the unpack refuses is deleted and
    the image is not named."""
    ref = parse(text)
    client = Client(ref, settings)
    try:
        data, media_type, digest = client.manifest(ref.version)
        if media_type in INDEX_TYPES:
            desc = pick_platform(json.loads(data), f"{client.where}:{ref.version}")
            data, media_type, digest = client.manifest(desc["digest"])
            if media_type in INDEX_TYPES:
                raise Invalid(Cause("image", f"{client.where}: an index inside an index"))
        manifest = json.loads(data)
        blobs = [manifest.get("config") or {}] + list(manifest.get("layers") or [])
        check_layer_types(ref.name, [(d.get("digest", ""), d.get("mediaType", ""))
                                     for d in blobs[1:]])
        for desc in blobs:
            blob_digest, size = desc.get("digest", ""), desc.get("size")
            if progress:
                progress("start", blob_digest, size or 0, 0)
            fetched = store.ingest(
                blob_digest, size, lambda d=blob_digest: client.blob(d),
                (lambda n, d=blob_digest: progress("advance", d, 0, n)) if progress else None)
            if progress:
                progress("done", blob_digest, size or 0, int(fetched))
        store.put_blob(data, digest)
        platform = json.loads(read_blob(store.root, blobs[0]["digest"]))
        if layers_dir is not None:
            unpack_all(store, digest, layers_dir)
        store.tag(ref.name, {"mediaType": media_type, "digest": digest, "size": len(data),
                             "platform": {"os": platform.get("os", "linux"),
                                          "architecture": platform.get("architecture", "")}})
    finally:
        client.close()
    return store.resolve(ref.name)


def unpack_all(store: ImageStore, manifest_digest: str, layers_dir: Path) -> None:
    """Unpack every layer of the manifest (once each); a refused layer's blob is deleted."""
    manifest = json.loads(read_blob(store.root, manifest_digest))
    layers = [(d["digest"], d["mediaType"]) for d in manifest.get("layers") or []]
    image = Image(manifest_digest, manifest_digest, {}, layers, store.root)
    for digest, media_type in layers:
        try:
            unpack_layer(image, digest, media_type, layers_dir)
        except Invalid:
            store.remove_blob(digest)
            raise


# ---- import -------------------------------------------------------------------------------------


def import_path(path: Path, store: ImageStore, name: str | None = None,
                layers_dir: Path | None = None) -> list[str]:
    """Import every image of an OCI layout dir, an ``oci-archive`` tar or a ``docker save``
    tar into ``store`` (unpacking the layers into ``layers_dir`` when given); return the names
    given. ``name`` renames a single image. A tar with a member named absolutely or with
    ``..`` is refused whole."""
    path = Path(path)
    if path.is_dir():
        source: _Source = _DirSource(path)
    elif path.is_file():
        source = _TarSource(path)
    else:
        raise NotFound(f"{path}: no such file or directory to import")
    try:
        if source.has("index.json") and not source.has("manifest.json"):
            images = _oci_images(source)
        elif source.has("manifest.json"):
            images = _docker_images(source, store)
        else:
            raise Invalid(Cause(str(path), "neither an OCI layout (index.json) nor a docker "
                                           "save archive (manifest.json)"))
        if name and len(images) != 1:
            raise Invalid(Cause("name", f"{path} holds {len(images)} images; import it "
                                        "without a name"))
        out = []
        for image_name, desc, blobs in images:
            for digest, size in blobs:
                store.ingest(digest, size, lambda d=digest: source.blob(d))
            if layers_dir is not None:
                unpack_all(store, _manifest_of(store, desc), layers_dir)
            final = normalize(name or image_name)
            store.tag(final, desc)
            out.append(final)
        return out
    finally:
        source.close()


def _manifest_of(store: ImageStore, desc: dict) -> str:
    if desc.get("mediaType") in INDEX_TYPES:
        return pick_platform(json.loads(read_blob(store.root, desc["digest"])), "index")["digest"]
    return desc["digest"]


class _Source:
    def has(self, member: str) -> bool: ...
    def read(self, member: str) -> bytes: ...
    def open(self, member: str) -> Iterator[bytes]: ...
    def close(self) -> None: ...

    def json(self, member: str):
        try:
            return json.loads(self.read(member))
        except ValueError as err:
            raise Invalid(Cause(member, f"not valid JSON ({err})")) from err

    def blob(self, digest: str) -> Iterator[bytes]:
        algo, _, hexdigest = digest.partition(":")
        if algo != "sha256" or not re.fullmatch(r"[0-9a-f]{64}", hexdigest):
            raise Invalid(Cause("digest", f'"{digest}" is not a sha256 digest'))
        return self.open(f"blobs/sha256/{hexdigest}")


class _DirSource(_Source):
    def __init__(self, root: Path):
        self.root = root

    def has(self, member: str) -> bool:
        return (self.root / member).is_file()

    def read(self, member: str) -> bytes:
        return (self.root / member).read_bytes()

    def open(self, member: str) -> Iterator[bytes]:
        try:
            with open(self.root / member, "rb") as f:
                while chunk := f.read(CHUNK):
                    yield chunk
        except FileNotFoundError as err:
            raise NotFound(f"{self.root}: {member} is missing") from err

    def close(self) -> None:
        pass


class _TarSource(_Source):
    """Members of a tar, read in place: nothing is extracted, so no name can escape."""

    def __init__(self, path: Path):
        try:
            self.tar = tarfile.open(path, "r:*")
            members = self.tar.getmembers()
        except (tarfile.TarError, OSError) as err:
            raise Invalid(Cause(str(path), f"not a readable tar ({err})")) from err
        self.path = path
        for m in members:
            if m.name.startswith("/") or ".." in m.name.split("/"):
                self.tar.close()
                raise Invalid(Cause(str(path), f'member "{m.name}" refused: a name outside the '
                                               "archive (tar slip); nothing was imported"))
        self.members = {m.name.removeprefix("./"): m for m in members if m.isreg()}

    def has(self, member: str) -> bool:
        return member in self.members

    def read(self, member: str) -> bytes:
        return b"".join(self.open(member))

    def open(self, member: str) -> Iterator[bytes]:
        info = self.members.get(member)
        if info is None:
            raise NotFound(f"{self.path}: {member} is missing")
        f = self.tar.extractfile(info)
        while chunk := f.read(CHUNK):
            yield chunk

    def close(self) -> None:
        self.tar.close()


def _oci_images(source: _Source) -> list[tuple[str, dict, list[tuple[str, int]]]]:
    """(name, descriptor, blobs to copy) for each named image of an OCI layout."""
    out = []
    for desc in source.json("index.json").get("manifests") or []:
        name = (desc.get("annotations") or {}).get(REF_NAME)
        if not name:
            continue
        blobs = [(desc["digest"], desc.get("size"))]
        doc = json.loads(b"".join(source.blob(desc["digest"])))
        manifests = [doc]
        if desc.get("mediaType") in INDEX_TYPES or "manifests" in doc:
            chosen = pick_platform(doc, f"{name} in the archive")
            blobs.append((chosen["digest"], chosen.get("size")))
            manifests = [json.loads(b"".join(source.blob(chosen["digest"])))]
        for manifest in manifests:
            for blob in [manifest["config"]] + list(manifest.get("layers") or []):
                blobs.append((blob["digest"], blob.get("size")))
        out.append((name, {k: v for k, v in desc.items() if k != "annotations"}, blobs))
    if not out:
        raise Invalid(Cause("index.json", "names no image (no "
                                          f"{REF_NAME} annotation): nothing to import"))
    return out


def _docker_images(source: _Source, store: ImageStore
                   ) -> list[tuple[str, dict, list[tuple[str, int]]]]:
    """``docker save``'s manifest.json → Docker schema-2 manifests written into the store (the
    tar's layers are uncompressed tars; their digests are what ``diff_ids`` says)."""
    out = []
    for entry in source.json("manifest.json"):
        config = source.read(entry["Config"])
        config_digest = store.put_blob(config)
        layers, blobs = [], []
        for member in entry.get("Layers") or []:
            head = b"".join(_take(source.open(member), 2))
            data_digest, size = _digest_of(source.open(member))
            media_type = ("application/vnd.docker.image.rootfs.diff.tar.gzip"
                          if head[:2] == b"\x1f\x8b" else DOCKER_LAYER_TAR)
            layers.append({"mediaType": media_type, "digest": data_digest, "size": size})
            store.ingest(data_digest, size, lambda m=member: source.open(m))
        manifest = json.dumps({"schemaVersion": 2, "mediaType": DOCKER_MANIFEST_TYPE,
                               "config": {"mediaType": DOCKER_CONFIG_TYPE, "size": len(config),
                                          "digest": config_digest},
                               "layers": layers}).encode()
        digest = store.put_blob(manifest)
        desc = {"mediaType": DOCKER_MANIFEST_TYPE, "digest": digest, "size": len(manifest)}
        for tag in entry.get("RepoTags") or [f"localhost/imported@{digest}"]:
            out.append((tag, desc, blobs))
    return out


def _take(chunks: Iterator[bytes], n: int) -> Iterator[bytes]:
    got = 0
    for chunk in chunks:
        yield chunk[: n - got]
        got += len(chunk)
        if got >= n:
            return


def _digest_of(chunks: Iterator[bytes]) -> tuple[str, int]:
    sha, size = hashlib.sha256(), 0
    for chunk in chunks:
        sha.update(chunk)
        size += len(chunk)
    return "sha256:" + sha.hexdigest(), size
