"""``thingdoer image ls|pull|import|rm|prune``: the node's image store (``<state-dir>/images``).

Thin: parse, call ``oci.registry`` / ``oci.image``, print. Registered on the ``image`` group of
``cli/__init__.py`` by ``register``. An image a container on this node was started from (its
bundle's ``image.id``) is in use: ``rm`` refuses it and ``prune`` keeps it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from ..errors import Conflict
from ..node.containers import IMAGE_ID, NodeConfig


def _store(state_dir: Path):
    from ..oci.image import ImageStore

    return ImageStore(NodeConfig(state_dir).images_dir / "oci")


def _layers(state_dir: Path) -> Path:
    return NodeConfig(state_dir).images_dir / "layers"


def in_use(state_dir: Path) -> set[str]:
    """Manifest digests that containers on this node were started from."""
    pods = NodeConfig(state_dir).pods_dir
    return {p.read_text().strip() for p in pods.glob(f"*/*/{IMAGE_ID}")} if pods.is_dir() else set()


def _docker_config() -> Path | None:
    path = Path(os.environ.get("DOCKER_CONFIG", Path.home() / ".docker")) / "config.json"
    return path if path.is_file() else None


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024
    return str(n)


def register(group: click.Group, default_state_dir: Path) -> None:
    state_dir_option = click.option("--state-dir", type=click.Path(path_type=Path),
                                    default=default_state_dir, show_default=True)

    @group.command("ls")
    @state_dir_option
    @click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table")
    def ls(state_dir: Path, output: str) -> None:
        """List the node's named images."""
        images = _store(state_dir).images()
        if output == "json":
            click.echo(json.dumps([i.__dict__ for i in images], indent=2))
            return
        rows = [("NAME", "DIGEST", "SIZE", "CREATED")] + [
            (i.name, i.digest[:19], _size(i.size), i.created[:19]) for i in images]
        widths = [max(len(r[c]) for r in rows) for c in range(3)]
        for row in rows:
            click.echo("   ".join(v.ljust(w) for v, w in zip(row, widths)) + "   " + row[3])

    @group.command("pull")
    @click.argument("ref")
    @state_dir_option
    @click.option("--insecure-registry", "insecure", multiple=True, metavar="HOST:PORT",
                  help="Registry spoken to over plain HTTP, repeatable.")
    @click.option("--registry-config", type=click.Path(path_type=Path, dir_okay=False),
                  default=None, help="Docker config.json with credentials "
                                     "[$DOCKER_CONFIG/config.json or ~/.docker/config.json].")
    @click.option("-q", "--quiet", is_flag=True, help="No progress bar; print the digest only.")
    def pull(ref: str, state_dir: Path, insecure, registry_config, quiet: bool) -> None:
        """Pull REF (registry/repo:tag or @sha256:...; docker.io defaults) and unpack it."""
        from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn,
                                   TransferSpeedColumn)

        from ..oci import registry

        settings = registry.Settings.load(insecure, registry_config or _docker_config())
        bar = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                       TransferSpeedColumn(), disable=quiet, transient=False)
        tasks: dict[str, int] = {}

        def progress(kind: str, digest: str, size: int, n: int) -> None:
            if kind == "start":
                tasks[digest] = bar.add_task(digest[7:19], total=size or None)
            elif kind == "advance":
                bar.advance(tasks[digest], n)
            else:
                bar.update(tasks[digest], completed=size,
                           description=digest[7:19] + (" pulled" if n else " exists"))
        with bar:
            image = registry.pull(ref, _store(state_dir), settings, progress, _layers(state_dir))
        click.echo(image.manifest_digest if quiet else f"{image.ref} {image.manifest_digest}")

    @group.command("import")
    @click.argument("path", type=click.Path(path_type=Path, exists=True))
    @click.option("--name", help="Name for the image (an archive holding one image).")
    @state_dir_option
    def import_(path: Path, name: str | None, state_dir: Path) -> None:
        """Import an OCI layout dir, an oci-archive tar or a `docker save` tar."""
        from ..oci import registry

        for imported in registry.import_path(path, _store(state_dir), name, _layers(state_dir)):
            click.echo(imported)

    @group.command("rm")
    @click.argument("refs", nargs=-1, required=True)
    @state_dir_option
    def rm(refs: tuple[str, ...], state_dir: Path) -> None:
        """Remove image names; `prune` then frees their space."""
        store, used = _store(state_dir), in_use(state_dir)
        for ref in refs:
            digest = store.resolve(ref).manifest_digest
            if digest in used:
                raise Conflict(f'image "{ref}" ({digest}) is in use by a container on this node:'
                               " delete its pods first")
            store.untag(ref)
            click.echo(f"removed {ref}")

    @group.command("prune")
    @state_dir_option
    def prune(state_dir: Path) -> None:
        """Delete blobs and unpacked layers no named or in-use image needs."""
        removed, freed = _store(state_dir).prune(_layers(state_dir), in_use(state_dir))
        click.echo(f"removed {removed} blobs and layers, freed {_size(freed)}")
