"""Self-describing artifact folders: what `from_pretrained` opens, plus `danlu.json`.

Every stage writes its output through `atomic_dir`: into a temporary sibling folder that is renamed
into place only when complete, so a crash never leaves a half-written artifact.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import shutil
import tempfile
import time
from dataclasses import dataclass, field, fields
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

from danlu.errors import DanluError

MANIFEST = "danlu.json"
_VERSIONED = ["danlu", "torch", "transformers", "tokenizers", "accelerate", "peft", "safetensors"]


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


OWNED = ".danlu-owned"  # marks a working folder danlu made (OUT.run, compress's OUT): danlu may empty it
_TEMP = ".danlu-temp"  # inside a temporary folder of atomic_dir's: the id of the process writing it


def made_by_danlu(folder: str | Path) -> bool:
    """Whether `folder` is an artifact (danlu.json) or a working folder that danlu marked as its own."""
    folder = Path(folder)
    return (folder / MANIFEST).is_file() or (folder / OWNED).is_file()


def _is_empty_dir(folder: Path) -> bool:
    return folder.is_dir() and not any(folder.iterdir())


def check_out(target: str | Path, overwrite: bool, flag: str = "--out") -> None:
    """Refuse an output folder that danlu may not replace: a file, a non-empty folder danlu did not make,
    or an existing danlu artifact without `overwrite`. Danlu never deletes what it did not make."""
    target = Path(target)
    if not target.exists() and not target.is_symlink():
        return
    if not target.is_dir() or target.is_symlink():
        raise DanluError(f"{flag} {target} exists and is not a folder; danlu will not replace it: "
                         f"choose another {flag}")
    if _is_empty_dir(target):
        return
    if not made_by_danlu(target):
        raise DanluError(f"{flag} {target} is a non-empty folder that danlu did not make (no {MANIFEST}); danlu "
                         f"never deletes it: choose another {flag}, or move it away yourself")
    if not overwrite:
        raise DanluError(f"{flag} {target} already holds a danlu artifact; pass --overwrite to replace it")


def claim_dir(folder: str | Path, flag: str = "--out", reuse: bool = True, how_to_reuse: str = "") -> Path:
    """Make `folder` (absent or empty) a working folder of danlu's, or accept one danlu already marked
    (only with `reuse`; else the error says `how_to_reuse`); refuse a non-empty folder that danlu did not
    make. Only in a claimed folder may danlu delete what is inside."""
    folder = Path(folder)
    if folder.exists() and not _is_empty_dir(folder):
        if not (folder / OWNED).is_file():
            what = "not a folder" if not folder.is_dir() else "a non-empty folder that danlu did not make"
            raise DanluError(f"{flag} {folder} is {what}; danlu never deletes it: choose another --out, or move "
                             "it away yourself")
        if not reuse:
            raise DanluError(f"{flag} {folder} holds the results of an earlier run; {how_to_reuse}")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / OWNED).touch()
    return folder


def remove_own_dir(folder: str | Path) -> None:
    """Delete a working folder, but only one that danlu marked as its own (see `claim_dir`)."""
    folder = Path(folder)
    if (folder / OWNED).is_file():
        shutil.rmtree(folder, ignore_errors=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _writer_pid(path: Path, target: Path) -> int | None:
    """The process that made a leftover beside `target`, when the leftover is provably danlu's."""
    if path.name.startswith(f".{target.name}.tmp-"):
        mark = path / _TEMP
        text = mark.read_text().strip() if mark.is_file() else ""
        return int(text) if text.isdigit() else None
    suffix = path.name.rsplit("-", 1)[-1]  # .NAME.old-PID: an artifact (or empty folder) moved aside
    return int(suffix) if suffix.isdigit() and (made_by_danlu(path) or _is_empty_dir(path)) else None


def remove_stale_temps(target: Path) -> list[Path]:
    """Delete the `.NAME.tmp-*` / `.NAME.old-*` folders that an atomic_dir of a killed danlu left beside
    `target`: only those that are provably danlu's and whose writing process is gone."""
    removed = []
    for path in [*target.parent.glob(f".{target.name}.tmp-*"), *target.parent.glob(f".{target.name}.old-*")]:
        pid = _writer_pid(path, target)
        if pid is not None and pid != os.getpid() and not _process_alive(pid):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


@contextlib.contextmanager
def atomic_dir(target: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside `target`; on success it replaces `target` in one rename.

    `target` may be absent, an empty folder, or (with `overwrite`) a danlu artifact; anything else is
    refused before any work starts and again before the rename (see `check_out`). Temporary folders that
    a killed run left beside `target` are removed first.
    """
    target = Path(target)
    check_out(target, overwrite)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    tmp.chmod(0o777 & ~_current_umask())  # mkdtemp makes it private (0700); an artifact is shared like any folder
    (tmp / _TEMP).write_text(f"{os.getpid()}\n")
    try:
        yield tmp
        check_out(target, overwrite)  # the folder may have appeared while we worked
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    (tmp / _TEMP).unlink(missing_ok=True)
    if target.exists():
        # Move the old one aside first so that the rename below is the only moment of change. The old one
        # is an empty folder or a danlu artifact (checked above); a kill here leaves it for the next run.
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, target)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write a file by writing a temporary sibling and renaming it over the target."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.fchmod(fd, 0o666 & ~_current_umask())  # mkstemp makes it private (0600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _VERSIONED:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    return versions


def fingerprint_files(paths: list[str | Path]) -> str:
    """sha256 over the bytes of the given files (the data fingerprint recorded in danlu.json)."""
    digest = hashlib.sha256()
    for path in sorted(str(p) for p in paths):
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def write_manifest(folder: str | Path, *, task: str, stage: str, args: dict[str, Any],
                   parent: str | None = None, labels: list[str] | None = None,
                   data_fingerprint: str | None = None, metrics: dict[str, Any] | None = None,
                   **extra: Any) -> dict[str, Any]:
    """Write danlu.json into `folder` and return what was written."""
    manifest = {
        "task": task,
        "stage": stage,
        "labels": labels,
        "parent": parent,
        "args": args,
        "data_fingerprint": data_fingerprint,
        "metrics": metrics or {},
        "versions": package_versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **extra,
    }
    atomic_write_text(Path(folder) / MANIFEST, json.dumps(manifest, indent=2, default=str) + "\n")
    return manifest


@dataclass
class Manifest:
    """danlu.json, typed: what an artifact is, where it came from and how it scored.

    Read once with `Manifest.read(folder)`; a plain Hugging Face folder gives an empty Manifest
    (`exists` False). Keys this class does not name are kept in `extra` (stage-specific records such
    as `onnx` or `compress_info`)."""

    task: str | None = None
    stage: str | None = None
    labels: list[str] | None = None
    parent: str | None = None
    args: dict[str, Any] = field(default_factory=dict)
    data_fingerprint: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    created: str | None = None
    primary_metric: str | None = None
    data: dict[str, Any] | None = None  # {"source": ..., "split": {...}} of the fine-tuning data
    lora: bool = False
    base_model: str | None = None
    load: dict[str, Any] = field(default_factory=dict)  # how a compressed variant is rebuilt on load
    method: str | None = None  # the compress/export method that made it
    extra: dict[str, Any] = field(default_factory=dict)
    exists: bool = True

    @classmethod
    def from_dict(cls, values: dict[str, Any], exists: bool = True) -> "Manifest":
        names = {f.name for f in fields(cls)} - {"extra", "exists"}
        known = {k: v for k, v in values.items() if k in names and v is not None}
        return cls(**known, extra={k: v for k, v in values.items() if k not in names}, exists=exists)

    @classmethod
    def read(cls, folder: str | Path) -> "Manifest":
        """The manifest of `folder` (an empty one, `exists` False, for a plain model folder)."""
        values = read_manifest(folder)
        return cls.from_dict(values, exists=bool(values))

    @property
    def data_source(self) -> str | None:
        return (self.data or {}).get("source")


def read_manifest(folder: str | Path) -> dict[str, Any]:
    """danlu.json of an artifact, or {} for a plain Hugging Face model folder."""
    path = Path(folder) / MANIFEST
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DanluError(f"{path} is not valid JSON: {e}") from None


def update_metrics(folder: str | Path, metrics: dict[str, Any]) -> None:
    """Merge `metrics` into an artifact's danlu.json."""
    manifest = read_manifest(folder)
    manifest.setdefault("metrics", {}).update(metrics)
    atomic_write_text(Path(folder) / MANIFEST, json.dumps(manifest, indent=2, default=str) + "\n")


def check_safe_weights(folder: str | Path) -> None:
    """Refuse a model folder whose weights are pickles: we load safetensors only."""
    folder = Path(folder)
    if any(folder.glob("*.safetensors")) or (folder / "model.onnx").exists():
        return
    pickles = [p.name for p in folder.iterdir() if p.suffix in {".bin", ".pt", ".pth", ".ckpt", ".pkl"}]
    if pickles:
        raise DanluError(f"{folder} holds weights as {', '.join(sorted(pickles))}; danlu loads only "
                         "safetensors (pickled weights can run code). Convert them with "
                         "`model.save_pretrained(dir, safe_serialization=True)` in a trusted environment")
    raise DanluError(f"{folder} has no model.safetensors (nor model.onnx)")
