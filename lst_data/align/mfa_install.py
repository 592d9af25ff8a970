"""Where MFA lives and what it runs with: executable, interpreter, model, MFA roots.

MFA runs in its own environment (kalpy-kaldi needs a Kaldi build): `make setup-mfa` makes
`.venv-mfa` in the project checkout, users may have a conda environment. Two kinds of MFA
root are kept apart:
- the *pretrained root* (MFA_ROOT_DIR where `mfa model download/save` put models), shared
  and only read: named models and dictionaries are resolved there to files, here;
- one *work root* per worker or batch run, where MFA writes its SQLite database, extracted
  models and config. Two processes sharing one would collide, so each gets a fresh one
  with a link to the pretrained models, and it is removed when the work is done.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from lst_data.align.config import MfaConfig
from lst_data.core.errors import ConfigError

MFA_VENV = ".venv-mfa"
PROJECT_ROOT = Path(__file__).resolve().parents[2]


class MfaUnavailable(ConfigError):
    """MFA's executable, interpreter or model cannot be found (a setup problem, not a reject)."""


@dataclass(frozen=True)
class MfaInstall:
    executable: Path
    python: Path
    pretrained_root: Path

    def env(self, work_root: Path) -> dict[str, str]:
        """MFA's environment: its own bin first (MFA checks for Kaldi programs on PATH; a
        `make setup-mfa` venv holds the stubs there), and a private MFA_ROOT_DIR."""
        path = os.pathsep.join([str(self.executable.parent), os.environ.get("PATH", "")])
        return {**os.environ, "PATH": path, "MFA_ROOT_DIR": str(work_root)}


def _project_venv_executable() -> Path | None:
    for base in dict.fromkeys([Path.cwd(), PROJECT_ROOT]):
        candidate = base / MFA_VENV / "bin" / "mfa"
        if candidate.is_file():
            return candidate.absolute()
    return None


def find_mfa(config: MfaConfig) -> MfaInstall:
    """The configured MFA, else `mfa` on PATH, else `.venv-mfa` (cwd or project checkout)."""
    executable: Path | None
    if config.executable:
        found = shutil.which(config.executable)
        if found is None:
            raise MfaUnavailable(f"align.mfa.executable {config.executable!r} not found (run `make setup-mfa`)")
        executable = Path(found).absolute()
    elif config.python:
        executable = Path(config.python).absolute().parent / "mfa"
    else:
        on_path = shutil.which("mfa")
        executable = Path(on_path).absolute() if on_path else _project_venv_executable()
        if executable is None:
            raise MfaUnavailable(
                f"MFA not found: no `mfa` on PATH and no {MFA_VENV}; run `make setup-mfa` or set align.mfa.executable"
            )
    python = Path(config.python) if config.python else executable.parent / "python"
    if not python.exists():
        raise MfaUnavailable(f"MFA's interpreter {python} does not exist; set align.mfa.python")
    return MfaInstall(executable, python, pretrained_root(config, executable))


def mfa_missing(config: MfaConfig | None = None) -> str | None:
    """Why MFA cannot run here (for skips and benchmark lines), or None when it can."""
    try:
        find_mfa(config or MfaConfig())
    except MfaUnavailable as err:
        return str(err)
    return None


def pretrained_root(config: MfaConfig, executable: Path) -> Path:
    if config.pretrained_root:
        return Path(config.pretrained_root).expanduser().absolute()
    if os.environ.get("MFA_ROOT_DIR"):
        return Path(os.environ["MFA_ROOT_DIR"]).expanduser().absolute()
    beside = executable.parent.parent / "mfa_root"  # what `make setup-mfa` fills
    return beside if beside.is_dir() else Path("~/Documents/MFA").expanduser()


def resolve_model(name_or_path: str, kind: str, suffixes: tuple[str, ...], install: MfaInstall) -> Path:
    """A model file: the path itself, else `<pretrained root>/pretrained_models/<kind>/<name><suffix>`."""
    path = Path(name_or_path).expanduser()
    if path.exists():
        return path.absolute()
    folder = install.pretrained_root / "pretrained_models" / kind
    for suffix in suffixes:
        candidate = folder / f"{name_or_path}{suffix}"
        if candidate.is_file():
            return candidate
    field = "acoustic_model" if kind == "acoustic" else kind
    raise MfaUnavailable(
        f"align.mfa.{field} {name_or_path!r} is neither a file nor a model in {folder} "
        f"(`mfa model download {kind} NAME` with MFA_ROOT_DIR={install.pretrained_root})"
    )


def acoustic_model_phones(model: Path) -> frozenset[str]:
    """The phones an MFA acoustic model (.zip or extracted folder) knows, from its meta.json."""
    if model.is_dir():
        meta = json.loads(next(model.rglob("meta.json")).read_text(encoding="utf-8"))
    else:
        with zipfile.ZipFile(model) as archive:
            name = next(n for n in archive.namelist() if n.endswith("meta.json"))
            meta = json.loads(archive.read(name))
    return frozenset(meta["phones"])


def make_work_root(config: MfaConfig, install: MfaInstall, prefix: str) -> Path:
    """A fresh folder whose `mfa_root` is a private MFA_ROOT_DIR seeing the pretrained models."""
    parent = Path(config.root_dir).expanduser() if config.root_dir else None
    if parent is not None:
        parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    (work / "mfa_root").mkdir()
    models = install.pretrained_root / "pretrained_models"
    if models.is_dir():
        (work / "mfa_root" / "pretrained_models").symlink_to(models, target_is_directory=True)
    return work
