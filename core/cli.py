"""The ``sections`` command."""
from __future__ import annotations

import typer

app = typer.Typer(help="Embed document sections in large, fast, safe batches into Postgres/pgvector.",
                  no_args_is_help=True, add_completion=False)


@app.callback()
def main() -> None:
    """Embed document sections in large, fast, safe batches into Postgres/pgvector."""


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True}, add_help_option=False)
def simulate(ctx: typer.Context) -> None:
    """Run an OpenAI-compatible embeddings server on loopback (limits, faults, /stats); --help lists its flags."""
    from core import simulator

    simulator.main(ctx.args, prog="sections simulate")


if __name__ == "__main__":
    app()
