"""The model store: named bundles under ``$CAPCLI_HOME/models`` (``capcli models``, ``--model NAME``).

``$CAPCLI_HOME`` defaults to capcli's folder in the user's data directory, as
each platform arranges it: ``$XDG_DATA_HOME/capcli`` or
``~/.local/share/capcli`` on Linux and other Unixes, ``~/Library/Application
Support/capcli`` on macOS, ``%LOCALAPPDATA%\\capcli`` on Windows.  Each model
is a bundle directory named after the model; a model is added by writing it
into a hidden folder beside its place and renaming it in, so a name never
shows a half-copied bundle.  This module imports no onnxruntime: name
resolution runs before every caption run.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

from capcli.atomic import move_into_place, temp_dir_beside
from capcli.errors import FatalError, UsageError

HOME_VAR = "CAPCLI_HOME"
DEFAULT = "default"  # the packaged model's name; never a folder in the store
# Lower case only: two names that differ in case would be one folder on macOS and Windows.
NAME_RULE = re.compile(r"[a-z0-9](?:[a-z0-9._-]{0,62}[a-z0-9])?")
# Windows cannot create these folder names, with or without an extension.
_WINDOWS_DEVICES = frozenset({"con", "prn", "aux", "nul", *(f"{d}{i}" for d in ("com", "lpt") for i in range(1, 10))})


def user_data_dir(platform: str) -> Path:
    """The per-user application data directory on ``platform`` (a ``sys.platform`` value)."""
    if platform == "win32":
        local = os.environ.get("LOCALAPPDATA", "")
        return Path(local) if local else Path.home() / "AppData" / "Local"
    if platform == "darwin":
        return Path.home() / "Library" / "Application Support"
    xdg = os.environ.get("XDG_DATA_HOME", "")
    # The XDG base directory spec: a relative path in the variable is invalid and ignored.
    return Path(xdg) if os.path.isabs(xdg) else Path.home() / ".local" / "share"


def home() -> Path:
    """capcli's own folder: ``$CAPCLI_HOME``, else ``capcli`` in the user's data directory."""
    explicit = os.environ.get(HOME_VAR, "")
    return Path(explicit).expanduser() if explicit else user_data_dir(sys.platform) / "capcli"


def models_dir() -> Path:
    return home() / "models"


def check_name(name: str) -> str:
    """``name`` when it can name an installed model; UsageError saying why not."""
    if name == DEFAULT:
        raise UsageError(f"{DEFAULT!r} is the packaged model's name; choose another")
    if not NAME_RULE.fullmatch(name) or name.split(".")[0] in _WINDOWS_DEVICES:
        raise UsageError(
            f"bad model name {name!r}: use 1 to 64 lower-case letters, digits, '.', '_' or '-', "
            "starting and ending with a letter or digit"
        )
    return name


def could_be_name(value: str) -> bool:
    """Whether ``--model VALUE`` may mean a name: a single word, not a path like ``./x`` or ``a/b``."""
    separators = "/" + os.sep + (os.altsep or "")
    return value not in ("", ".", "..") and not any(s in value for s in separators)


def installed() -> dict[str, Path]:
    """Installed models by name, sorted (hidden folders are adds and removals in progress)."""
    folder = models_dir()
    if not folder.is_dir():
        return {}
    return {p.name: p for p in sorted(folder.iterdir()) if p.is_dir() and NAME_RULE.fullmatch(p.name)}


def add(name: str, files: Mapping[str, bytes], *, check: Callable[[Path], object], force: bool = False) -> Path:
    """Write ``files`` (file name -> bytes) into the store as the model ``name``; its path.

    ``check`` validates the written folder before it is renamed into place (it
    raises on a bad copy); an installed model of that name is replaced only with
    ``force``.  :func:`capcli.bundle.install_bundle` is the caller that copies a bundle.
    """
    target = models_dir() / check_name(name)
    refuse_existing(name, force)
    target.parent.mkdir(parents=True, exist_ok=True)
    with temp_dir_beside(target) as tmp:
        for file_name, data in files.items():
            (tmp / file_name).write_bytes(data)
        check(tmp)
        move_into_place(tmp, target)
    return target


def refuse_existing(name: str, force: bool) -> None:
    """FatalError when ``name`` is installed and ``force`` is not given (before any slow work)."""
    target = models_dir() / name
    if target.exists() and not force:
        raise FatalError(f"a model named {name!r} is already installed ({target}); pass --force to replace it")


def remove(name: str) -> Path:
    """Delete the installed model ``name``; the path it had."""
    if name == DEFAULT:
        raise UsageError(f"{DEFAULT!r} is the packaged model; it cannot be removed")
    target = installed().get(name)
    if target is None:
        known = ", ".join(installed()) or "none"
        raise UsageError(f"no installed model named {name!r} (installed: {known})")
    with temp_dir_beside(target) as tmp:
        os.replace(target, tmp / name)  # the name disappears at once; the files go with the temporary folder
    return target
