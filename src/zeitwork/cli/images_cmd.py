"""``images import`` and ``images ls``: OCI images in the operator's store."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer

from zeitwork.cli.console import echo_json, run_with_client, table
from zeitwork.cli.releases_cmd import JsonOption


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else "-"


def _size(value: int | None) -> str:
    if value is None:
        return "-"
    return f"{value / (1024 * 1024):.1f} MiB"


def import_image(
    archive: Annotated[
        Path,
        typer.Argument(exists=True, dir_okay=False, readable=True, help="an OCI archive (tar)"),
    ],
    name: Annotated[str, typer.Option("--name", help="the image's name")],
) -> None:
    """Import an OCI image archive (as `buildah push IMAGE oci-archive:FILE` writes it)."""
    image = run_with_client(lambda c: c.import_image(archive, name=name))
    table(
        ("ID", "NAME", "STATUS", "DIGEST", "SIZE"),
        [(str(image.id), image.name, image.status, image.digest or "-", _size(image.size))],
    )


def list_images(as_json: JsonOption = False) -> None:
    """List images."""
    found = run_with_client(lambda c: c.images())
    if as_json:
        echo_json(found)
        return
    table(
        ("ID", "NAME", "STATUS", "DIGEST", "SIZE", "CREATED"),
        [
            (
                str(i.id),
                i.name,
                i.status,
                (i.digest or "-")[:19],
                _size(i.size),
                _when(i.created_at),
            )
            for i in found
        ],
    )


def register(app: typer.Typer) -> None:
    images = typer.Typer(help="OCI images in the operator's store.", no_args_is_help=True)
    images.command("import")(import_image)
    images.command("ls")(list_images)
    app.add_typer(images, name="images")
