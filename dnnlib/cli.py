"""Command-line glue shared by the top-level tools."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar

import click

from dnnlib.util import UserError

F = TypeVar("F", bound=Callable)


def reports_user_errors(main: F) -> F:
    """Wraps a click command's function so that a ``UserError`` ends it with click's one-line ``Error: ...`` message
    and exit status 1, without a traceback. Apply it under ``@click.command`` and the options."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UserError as error:
            raise click.ClickException(str(error)) from None

    return wrapper  # type: ignore[return-value]
