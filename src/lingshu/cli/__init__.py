"""Command-line interface: ``lingshu train | generate | predict | evaluate | benchmark | data``.

Each subcommand lives in its own small module and registers itself on ``app``.
"""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(
    name="lingshu",
    help="Lingshu-Cell: generate single cells and predict perturbation responses from raw counts.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

_SUBCOMMAND_MODULES = ("data", "train", "generate", "predict", "evaluate", "benchmark")

for _name in _SUBCOMMAND_MODULES:
    try:
        importlib.import_module(f"lingshu.cli.{_name}")
    except ModuleNotFoundError as error:  # a subcommand module not written yet
        if error.name != f"lingshu.cli.{_name}":
            raise


def main() -> None:
    """Entry point of the ``lingshu`` console script."""
    app()
