"""The ``onnxprune view`` command: the model in Netron on localhost, and its provenance printed."""

from __future__ import annotations

import time
from pathlib import Path

import click

from onnxprune import view
from onnxprune.console import handle_errors

#: How often the command checks that the server still runs while it waits for Ctrl-C.
POLL_SECONDS = 0.25


@click.command("view")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--port", type=int, help="Port to serve on (default: 8080, 8081 or a free one).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--no-browser", is_flag=True, help="Do not open a browser (headless machines): open the URL yourself.")
@click.option("-v", "--verbose", is_flag=True, help="Log what happens.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
@handle_errors
def view_command(model: Path, port: int | None, host: str, no_browser: bool, verbose: bool, debug: bool) -> None:
    """Open MODEL in Netron (served on localhost) and print what onnxprune recorded in it."""
    view.require_netron()  # fail before printing anything when the extra is missing
    lines = view.provenance(model)  # loads and checks the model: a bad file fails before serving
    if lines:
        click.echo(f"onnxprune provenance of {model} (Netron: Model Properties, and each node's properties):")
        click.echo("\n".join(f"  {line}" for line in lines))
    else:
        click.echo(f"{model} carries no onnxprune provenance (onnxprune did not write it)")
    address = view.serve(model, port=port, browse=not no_browser, host=host)
    try:  # Ctrl-C from the moment the address is printed (a loaded machine may deliver it before the loop)
        click.echo(f"Netron serves {model} at {address.url} (Ctrl-C to stop)")
        while view.is_serving(address):
            time.sleep(POLL_SECONDS)
    except KeyboardInterrupt:
        pass
    finally:
        view.stop(address)
    click.echo("stopped")
