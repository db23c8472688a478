"""Resumable training checkpoints: written atomically, loaded without executing code.

A model's resume folder holds one complete checkpoint per save, in its own
subfolder, and a `LATEST` file naming the newest:

    checkpoints/run-7/flan-t5-small/resume/
        LATEST                  "step-000120"
        step-000120/
            model.safetensors   weights (safetensors: tensors only, no code)
            config.json, tokenizer files
            trainer_state.pt    optimizer, scheduler, RNG states, step, epoch, data order
            MANIFEST.json       size and SHA-256 of every file above

A save writes a new subfolder under a temporary name, fsyncs every file,
renames the folder into place, then replaces `LATEST` (temporary file, fsync,
rename) and only then deletes the older subfolder. A crash at any instant
leaves `LATEST` naming a complete checkpoint. Loading checks the manifest, reads
weights with safetensors and the trainer state with `torch.load(weights_only=True)`;
a damaged checkpoint is a `CheckpointError` naming the file.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

STATE_FILE = "trainer_state.pt"
MANIFEST = "MANIFEST.json"
LATEST = "LATEST"
FORMAT = 1


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used, reported as one line naming the file."""


def _first_line(exc: BaseException) -> str:
    text = str(exc)
    return text.splitlines()[0] if text else type(exc).__name__


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # Windows cannot open folders; its renames are durable enough
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file, read in 1 MiB blocks (data files, saved model files)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def atomic_write_text(path: Path, text: str, newline: str | None = None) -> None:
    """Write a small file so that readers see the old or the new content, never a mix. `newline`
    as for open(): "" writes the text's line endings untranslated (CSV's \\r\\n, JSONL's \\n)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with tmp.open("w", encoding="utf-8", newline=newline) as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_torch_save(obj: Any, path: Path) -> None:
    """`torch.save` to a temporary sibling, fsynced, then renamed over `path`: readers find the old
    file or the new one, never a part."""
    import torch

    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        torch.save(obj, tmp)
        _fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def rng_state() -> dict[str, Any]:
    """Every random state training draws from, as tensors and plain values only."""
    import random

    import numpy as np
    import torch

    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
    }


def set_rng_state(state: dict[str, Any]) -> None:
    import random

    import numpy as np
    import torch

    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))


class ResumeDir:
    """The resume checkpoints of one model of one run."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def latest(self) -> Path | None:
        """The folder of the newest complete checkpoint, or None when there is none."""
        pointer = self.root / LATEST
        if not pointer.exists():
            return None
        name = pointer.read_text(encoding="utf-8").strip()
        folder = self.root / name
        if not name or "/" in name or "\\" in name or not folder.is_dir():
            raise CheckpointError(f"{pointer}: names a checkpoint that does not exist ({name!r})")
        return folder

    def save(self, model, tokenizer, state: dict[str, Any]) -> Path:
        """Write a complete checkpoint of `model`, `tokenizer` and the trainer `state`."""
        import torch

        name = f"step-{int(state['step']):06d}"
        final = self.root / name
        with _staged(final, model, tokenizer) as tmp:
            with _writing(final / STATE_FILE):
                torch.save(dict(state, format=FORMAT), tmp / STATE_FILE)
            files = sorted(p for p in tmp.iterdir() if p.is_file())
            manifest = {p.name: {"bytes": p.stat().st_size, "sha256": file_sha256(p)} for p in files}
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True), encoding="utf-8")
        previous = None
        try:
            previous = self.latest()
        except CheckpointError:
            pass
        atomic_write_text(self.root / LATEST, name + "\n")
        for old in self.root.iterdir():  # older checkpoints and leftovers of crashed saves
            if old.is_dir() and old.name != name and (old == previous or old.name.startswith((".step-", "step-"))):
                shutil.rmtree(old, ignore_errors=True)
        return final

    def verify(self, folder: Path) -> None:
        """Check every file against the manifest written with it."""
        manifest_path = folder / MANIFEST
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            raise CheckpointError(f"{manifest_path}: unreadable checkpoint manifest ({exc})") from None
        for fname, meta in manifest.items():
            path = folder / fname
            if not path.is_file():
                raise CheckpointError(f"{path}: missing from the checkpoint")
            size = path.stat().st_size
            if size != meta.get("bytes"):
                raise CheckpointError(f"{path}: truncated or damaged ({size} bytes, expected {meta.get('bytes')})")
            if file_sha256(path) != meta.get("sha256"):
                raise CheckpointError(f"{path}: damaged (its SHA-256 does not match the checkpoint manifest)")

    def load_state(self, folder: Path) -> dict[str, Any]:
        """The trainer state, loaded as tensors and plain values only."""
        import pickle

        import torch

        path = folder / STATE_FILE
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                state = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            raise CheckpointError(f"{path}: cannot be loaded (it holds objects other than tensors and plain "
                                  "values; refused, since loading them could run code)") from None
        except (RuntimeError, EOFError, ValueError, OSError) as exc:
            raise CheckpointError(f"{path}: cannot be loaded ({_first_line(exc)})") from None
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            raise CheckpointError(f"{path}: not a wmg trainer state of format {FORMAT}")
        return state

    def clear(self) -> None:
        """Remove every resume checkpoint (the model finished and its final model is saved)."""
        shutil.rmtree(self.root, ignore_errors=True)


class _writing:
    """Turn any failure to write `path` (a full disk, a file size limit) into one CheckpointError."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self):
        return self

    def __exit__(self, typ, exc, _tb):
        if exc is None or not isinstance(exc, Exception) or isinstance(exc, CheckpointError):
            return False
        raise CheckpointError(f"{self.path}: cannot be written ({_first_line(exc)})") from None


@contextmanager
def _staged(final: Path, model, tokenizer) -> Iterator[Path]:
    """A folder written all or nothing: the model (safetensors) and tokenizer go into a temporary
    sibling, the caller adds its own files, then every file is fsynced and the folder renamed to
    `final` (replacing an older one). On any failure the temporary folder is removed."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        with _writing(final):
            model.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
        yield tmp
        with _writing(final):
            for p in tmp.iterdir():
                _fsync_file(p)
            _fsync_dir(tmp)
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            _fsync_dir(final.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def save_model_folder(folder: str | Path, model, tokenizer) -> Path:
    """Save a model (safetensors) and its tokenizer to `folder`, all or nothing: a crash or a full
    disk leaves no half-written folder behind."""
    with _staged(Path(folder), model, tokenizer):
        pass
    return Path(folder)


def load_model_folder(folder: Path, model_type: str):
    """Model and tokenizer from a checkpoint folder: weights from safetensors only."""
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    from .console import quiet_transformers

    quiet_transformers()
    weights = folder / "model.safetensors"
    if not weights.is_file():
        raise CheckpointError(f"{weights}: missing (wmg loads weights from safetensors only)")
    cls = AutoModelForSeq2SeqLM if model_type == "seq2seq" else AutoModelForCausalLM
    try:
        from .config import has_copy_head

        if has_copy_head(json.loads((folder / "config.json").read_text())):
            from .copyhead import GPT2WithCopy, T5WithCopy

            cls = T5WithCopy if model_type == "seq2seq" else GPT2WithCopy
        tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        model = cls.from_pretrained(folder, local_files_only=True, use_safetensors=True)
    except Exception as exc:  # transformers and safetensors raise many kinds; all mean "this folder is damaged"
        raise CheckpointError(f"{folder}: checkpoint cannot be loaded ({_first_line(exc)})") from None
    return model, tok
