"""Secrets (tokens, passwords, API keys, webhook URLs) from an environment variable or a file.

Never from the config itself, never into a log line: the errors here name the variable or the
file, not the value. Read at the moment of use, so a rotated token file is picked up without a
restart. One implementation for every part that needs a secret (chat notifiers, Zabbix,
Elasticsearch). (Named ``credentials`` so that it never shadows the standard library's ``secrets``.)
"""

from __future__ import annotations

import logging
import os
import stat

log = logging.getLogger(__name__)


class SecretError(ValueError):
    """A secret could not be read; the message names the variable or file, never the value."""


def secret(value_env: str | None, file: str | None, what: str) -> str:
    """The secret ``what`` from the environment variable ``value_env`` if it is set and not
    empty, else from ``file`` (surrounding whitespace and the final newline stripped).

    Raises :class:`SecretError` with one line naming the variable and/or file, never the value.
    A file readable by group or others is used but logged as a warning.
    """
    if value_env:
        value = os.environ.get(value_env, "").strip()
        if value:
            return value
    if file:
        path = os.path.expanduser(file)
        try:
            with open(path, encoding="utf-8") as fh:
                value = fh.read().strip()
            mode = os.stat(path).st_mode
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
            env = f"environment variable {value_env} is not set and " if value_env else ""
            raise SecretError(f"{what}: {env}secret file {file} cannot be read ({reason})") from None
        if not value:
            raise SecretError(f"{what}: secret file {file} is empty")
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning("%s: secret file %s is readable by group or others (chmod 600 it)", what, file)
        return value
    if value_env:
        raise SecretError(f"{what}: environment variable {value_env} is not set or empty (and no secret file is configured)")
    raise SecretError(f"{what}: no environment variable or secret file is configured")




def section_secret(section: object, name: str, what: str) -> str | None:
    """The secret ``name`` of a config section, read from the section's ``<name>_env`` or
    ``<name>_file`` key (``token`` → ``token_env``/``token_file``); None when it sets neither.

    The one way a part reads a secret its config names, so every part reads secrets alike.
    """
    env: str | None = getattr(section, f"{name}_env", None)
    file = getattr(section, f"{name}_file", None)
    if not (env or file):
        return None
    return secret(env, str(file) if file else None, what)


__all__ = ["SecretError", "secret", "section_secret"]
