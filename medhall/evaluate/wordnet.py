"""WordNet 3.0 for METEOR, offline, from the operating system's package.

nltk's METEOR matches synonyms through WordNet, which is not on PyPI in a usable form. Debian's
``wordnet-base`` package (``apt-get install wordnet-base``) installs WordNet 3.0's database in
``/usr/share/wordnet``; nltk also wants a ``lexnames`` file that the package lacks, so medhall
writes that one itself (WordNet's fixed list of its 45 lexicographer files).

:func:`ensure_wordnet` assembles ``<cache>/nltk_data/corpora/wordnet/`` from those files (copies:
nltk refuses files that resolve outside its data directories, which symlinks would), puts
``<cache>/nltk_data`` on ``nltk.data.path`` and returns the corpus directory.
:func:`wordnet_reader` gives a ready reader (about 2 s to load, once per process).

Where the files are looked for: ``$MEDHALL_WORDNET_DIR`` (any directory with WordNet 3.0's
``data.*``, ``index.*`` and ``*.exc`` files, e.g. an unpacked nltk ``wordnet`` corpus), then
the usual system locations (:data:`SYSTEM_DIRS`).
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Any

from medhall.errors import MedhallError

ENV_DIR = "MEDHALL_WORDNET_DIR"
SYSTEM_DIRS = (Path("/usr/share/wordnet"), Path("/usr/local/share/wordnet"), Path("/usr/share/wordnet/dict"))
POS = ("noun", "verb", "adj", "adv")
REQUIRED_FILES = tuple(f"{kind}.{pos}" for kind in ("data", "index") for pos in POS) + tuple(f"{pos}.exc" for pos in POS)
OPTIONAL_FILES = ("cntlist.rev", "index.sense", "sentidx.vrb", "sents.vrb")
INSTALL_HINT = (
    "METEOR needs WordNet 3.0: install it with `apt-get install -y --no-install-recommends "
    "wordnet-base` (Debian/Ubuntu), or set MEDHALL_WORDNET_DIR to a directory holding WordNet "
    "3.0's data.*, index.* and *.exc files"
)
_MARKER = ".medhall-wordnet.json"

#: WordNet's lexicographer files in file-number order, with their syntactic category
#: (1 noun, 2 verb, 3 adjective, 4 adverb): the content of WordNet's ``lexnames`` file.
LEXICOGRAPHER_FILES: tuple[tuple[str, int], ...] = (
    ("adj.all", 3), ("adj.pert", 3), ("adv.all", 4),
    *((f"noun.{n}", 1) for n in (
        "Tops", "act", "animal", "artifact", "attribute", "body", "cognition", "communication",
        "event", "feeling", "food", "group", "location", "motive", "object", "person",
        "phenomenon", "plant", "possession", "process", "quantity", "relation", "shape",
        "state", "substance", "time",
    )),
    *((f"verb.{n}", 2) for n in (
        "body", "change", "cognition", "communication", "competition", "consumption",
        "contact", "creation", "emotion", "motion", "perception", "possession", "social",
        "stative", "weather",
    )),
    ("adj.ppl", 3),
)


class WordNetMissing(MedhallError, RuntimeError):
    """WordNet 3.0 is not installed where medhall looks; the message says how to fix it."""


def lexnames_text() -> str:
    """WordNet 3.0's ``lexnames`` file: ``NN<TAB>name<TAB>category`` per line, 45 lines."""
    return "".join(f"{i:02d}\t{name}\t{cat}\n" for i, (name, cat) in enumerate(LEXICOGRAPHER_FILES))


def find_wordnet_source() -> Path:
    """The directory holding WordNet 3.0's database files, or :class:`WordNetMissing`."""
    env = os.environ.get(ENV_DIR)
    candidates = [Path(env).expanduser()] if env else list(SYSTEM_DIRS)
    for folder in candidates:
        if all((folder / name).is_file() for name in REQUIRED_FILES):
            return folder
    if env:
        missing = [n for n in REQUIRED_FILES if not (Path(env) / n).is_file()]
        raise WordNetMissing(f"{ENV_DIR}={env} lacks {', '.join(missing)}. {INSTALL_HINT}")
    raise WordNetMissing(f"WordNet not found in {', '.join(map(str, SYSTEM_DIRS))}. {INSTALL_HINT}")


def default_cache_dir() -> Path:
    """``$MEDHALL_HOME/cache`` (see :mod:`medhall.config`)."""
    from medhall.config import get_settings

    return get_settings().resolved_home() / "cache"


def ensure_wordnet(cache_dir: str | Path | None = None) -> Path:
    """Assemble (once) and return ``<cache>/nltk_data/corpora/wordnet``; nltk is pointed at it.

    Idempotent and cheap when already assembled from the same source files. Raises
    :class:`WordNetMissing` naming the fix when WordNet is not installed.
    """
    source = find_wordnet_source()
    data_root = Path(cache_dir or default_cache_dir()).expanduser().resolve() / "nltk_data"
    target = data_root / "corpora" / "wordnet"
    fingerprint = _fingerprint(source)
    if _marker(target) != fingerprint:
        _assemble(source, target, fingerprint)
    _point_nltk_at(data_root)
    return target


def _fingerprint(source: Path) -> dict[str, Any]:
    files = [n for n in (*REQUIRED_FILES, *OPTIONAL_FILES) if (source / n).is_file()]
    return {
        "source": str(source),
        "files": {n: (source / n).stat().st_size for n in files},
        "lexnames": lexnames_text(),
    }


def _marker(target: Path) -> dict[str, Any] | None:
    try:
        return json.loads((target / _MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _assemble(source: Path, target: Path, fingerprint: dict[str, Any]) -> None:
    """Copy the files and write ``lexnames`` into a temporary folder, then swap it in."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    tmp.mkdir()
    try:
        for name in fingerprint["files"]:
            shutil.copyfile(source / name, tmp / name)
        (tmp / "lexnames").write_text(lexnames_text(), encoding="utf-8")
        (tmp / _MARKER).write_text(json.dumps(fingerprint, indent=1), encoding="utf-8")
        if target.exists():
            shutil.rmtree(target, ignore_errors=True)
        try:
            os.replace(tmp, target)
        except OSError:
            if _marker(target) != fingerprint:  # not a concurrent twin that got there first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _point_nltk_at(data_root: Path) -> None:
    import nltk

    if str(data_root) not in [str(p) for p in nltk.data.path]:
        nltk.data.path.insert(0, str(data_root))


@lru_cache(maxsize=4)
def _reader(corpus_dir: str) -> Any:
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    class WordNet30Reader(WordNetCorpusReader):
        """nltk's reader without the WordNet-3.0-to-itself sense map it builds on load.

        That map only serves the multilingual (OMW) functions and needs ``index.sense``,
        which ``wordnet-base`` lacks; METEOR needs synsets and lemma names only.
        """

        def map_wn(self, version: str = "wordnet") -> Any:
            if self.get_version() == "3.0" and not (Path(corpus_dir) / "index.sense").is_file():
                return None
            return super().map_wn(version)

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The multilingual functions are not available")
        return WordNet30Reader(corpus_dir, None)


def wordnet_reader(cache_dir: str | Path | None = None) -> Any:
    """An nltk ``WordNetCorpusReader`` over WordNet 3.0 (loaded once per process)."""
    return _reader(str(ensure_wordnet(cache_dir)))


__all__ = [
    "ENV_DIR",
    "INSTALL_HINT",
    "LEXICOGRAPHER_FILES",
    "WordNetMissing",
    "ensure_wordnet",
    "find_wordnet_source",
    "lexnames_text",
    "wordnet_reader",
]
