"""Housekeeping: sweep what dead processes left, share unchanged export files, prune old versions.

- :func:`sweep` removes temporary files and folders (:mod:`medhall.tempfiles`) whose process is
  gone: a store version half written, an atomic write, an export's DuckDB folder, a catalog
  being built. Every build and ingest sweeps at its start; ``medhall gc`` sweeps too.
- :func:`share_unchanged` makes each file of a new export folder that has the same bytes as a
  file of the previous export (or an earlier file of the same export, like ``frac_100`` and
  ``full``) a hard link to it, so unchanged files cost nothing. Hashes are kept beside each
  export in ``.medhall-files.json``.
- :func:`prune_exports` keeps the newest ``keep`` export folders of a dataset (setting
  ``MEDHALL_KEEP_EXPORTS``, default 1): exports are derived files, rebuilt from the store.
- :func:`collect` (``medhall gc [--keep N] [--dry-run]``) removes table versions older than the
  newest ``keep`` of each table, never the latest, nor any version a kept version was made
  from (its manifest's ``inputs``, followed transitively across datasets), with the export
  folders of the instruction versions it removes, and the PNG renders of DICOM images no kept
  version has (``images/<dataset>/``). A dataset being written (its lock held) is
  left alone. A removed version is first renamed to a hidden ``.gc-*`` name (readers see it
  gone at once; a crash mid-delete leaves a leftover the next sweep removes).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from medhall import atomic
from medhall.ids import file_sha256
from medhall.store.artifacts import Artifact, ArtifactStore
from medhall.tempfiles import STALE_AFTER_S, is_leftover, is_temp_name, owner_tag

FILES_INDEX = ".medhall-files.json"
EXPORT_DIR_PREFIX = "v"


def _all_files(paths: Iterable[Path]) -> Iterator[Path]:
    for root in paths:
        if root.is_file():
            yield root
            continue
        for top, _dirs, files in os.walk(root):
            for name in files:
                yield Path(top) / name


def disk_usage(paths: Iterable[Path]) -> int:
    """Bytes on disk under ``paths``, each inode counted once (hard links share their blocks)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for p in _all_files(paths):
        try:
            st = p.lstat()
        except FileNotFoundError:
            continue
        if (st.st_dev, st.st_ino) not in seen:
            seen.add((st.st_dev, st.st_ino))
            total += st.st_blocks * 512
    return total


def freed_by(paths: Iterable[Path]) -> int:
    """Bytes that removing ``paths`` frees: files whose every hard link lies under them."""
    links: dict[tuple[int, int], list[int]] = {}
    for p in _all_files(paths):
        try:
            st = p.lstat()
        except FileNotFoundError:
            continue
        entry = links.setdefault((st.st_dev, st.st_ino), [0, st.st_nlink, st.st_blocks * 512])
        entry[0] += 1
    return sum(size for seen, nlink, size in links.values() if seen >= nlink)


# ----------------------------------------------------------------------------------- leftovers


def sweep(root: Path | str, *, stale_after_s: float = STALE_AFTER_S, dry_run: bool = False) -> list[Path]:
    """Remove temporary files and folders under ``root`` whose owner process is gone (see
    :func:`medhall.tempfiles.is_leftover`). Returns what was (or, with ``dry_run``, would be)
    removed. Safe while other medhall processes run: their temporaries are alive."""
    root = Path(root)
    removed: list[Path] = []
    if not root.is_dir():
        return removed
    now = time.time()
    for top, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            if not is_temp_name(name):
                continue
            p = Path(top) / name
            try:
                mtime = p.lstat().st_mtime
            except FileNotFoundError:
                continue
            if not is_leftover(name, mtime, now=now, stale_after_s=stale_after_s):
                continue
            removed.append(p)
            if dry_run:
                continue
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
        dirs[:] = [d for d in dirs if not is_temp_name(d)]  # never descend into a temporary folder
    return removed


# ----------------------------------------------------------------------------------- exports


def _index(folder: Path) -> dict[str, list]:
    try:
        return json.loads((folder / FILES_INDEX).read_text())
    except (OSError, ValueError):
        return {}


def _files(folder: Path) -> Iterator[Path]:
    for top, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not is_temp_name(d))
        for name in sorted(files):
            if name != FILES_INDEX and not is_temp_name(name):
                yield Path(top) / name


def _hashes(folder: Path) -> dict[str, list]:
    """``{relative path: [size, sha256, mtime_ns]}`` of every file, from the index when current."""
    known = _index(folder)
    out: dict[str, list] = {}
    for p in _files(folder):
        rel = p.relative_to(folder).as_posix()
        st = p.stat()
        entry = known.get(rel)
        if entry and entry[0] == st.st_size and entry[2] == st.st_mtime_ns:
            out[rel] = entry
        else:
            out[rel] = [st.st_size, file_sha256(p), st.st_mtime_ns]
    return out


def export_versions(store: ArtifactStore, dataset: str) -> list[Path]:
    """The dataset's export folders, oldest first."""
    base = store.root / "exports" / dataset
    if not base.is_dir():
        return []
    return sorted(p for p in base.iterdir() if p.is_dir() and p.name.startswith(EXPORT_DIR_PREFIX) and p.name[1:].isdigit())


def _link_onto(source: Path, target: Path) -> None:
    tmp = target.with_name(f".{target.name}.{owner_tag()}.{uuid.uuid4().hex}.tmp")
    os.link(source, tmp)
    try:
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def share_unchanged(folder: Path, previous: Iterable[Path] = ()) -> dict[str, int]:
    """Hard-link each file of ``folder`` whose bytes equal a file of ``previous`` folders (or an
    earlier file of ``folder``) to it. Returns ``{"files", "linked", "bytes_saved"}``."""
    by_hash: dict[tuple[int, str], Path] = {}
    for old in previous:
        for rel, (size, sha, _m) in _hashes(old).items():
            by_hash.setdefault((size, sha), old / rel)
    mine = _hashes(folder)
    linked = saved = 0
    for rel, (size, sha, _m) in mine.items():
        target = folder / rel
        source = by_hash.get((size, sha))
        if source is None or not source.exists():
            by_hash[(size, sha)] = target
            continue
        s, t = source.stat(), target.stat()
        if (s.st_dev, s.st_ino) != (t.st_dev, t.st_ino):
            if s.st_dev != t.st_dev:
                continue  # another file system: no hard link possible
            _link_onto(source, target)
            linked += 1
            saved += size
        mine[rel] = [size, sha, (folder / rel).stat().st_mtime_ns]
    atomic.write_bytes(folder / FILES_INDEX, json.dumps(mine, sort_keys=True).encode())
    return {"files": len(mine), "linked": linked, "bytes_saved": saved}


def _remove_tree(path: Path) -> None:
    """Rename ``path`` to a hidden leftover name (gone for readers at once), then delete it."""
    if not path.is_dir() or path.is_symlink():
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return
    grave = path.with_name(f".gc-{owner_tag()}-{uuid.uuid4().hex}")
    try:
        os.rename(path, grave)
    except FileNotFoundError:
        return
    shutil.rmtree(grave, ignore_errors=True)


def prune_exports(store: ArtifactStore, dataset: str, keep: int | None = None, *, dry_run: bool = False) -> list[Path]:
    """Remove all but the newest ``keep`` export folders of ``dataset`` (default: the setting)."""
    from medhall.config import get_settings

    keep = get_settings().keep_exports if keep is None else keep
    old = export_versions(store, dataset)[: -max(keep, 1)]
    if not dry_run:
        for p in old:
            _remove_tree(p)
    return old


def settle_exports(store: ArtifactStore, dataset: str, folder: Path) -> dict[str, int]:
    """After an export into ``folder`` completed: share unchanged files with the previous export,
    then prune exports beyond the kept number. Returns the sharing counts and ``pruned``."""
    older = [p for p in export_versions(store, dataset) if p != folder and p.name < folder.name]
    counts = share_unchanged(folder, older[-1:])
    counts["pruned"] = len(prune_exports(store, dataset))
    return counts


# ----------------------------------------------------------------------------------- versions


@dataclass
class GCReport:
    removed: list[Path] = field(default_factory=list)  # version folders and export folders
    swept: list[Path] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # dataset -> why
    bytes_freed: int = 0
    kept: int = 0

    def summary(self, dry_run: bool = False) -> str:
        verb = "would remove" if dry_run else "removed"
        mb = self.bytes_freed / 1e6
        lines = [f"{verb} {len(self.removed)} old version(s) and export(s) ({mb:,.1f} MB), "
                 f"{len(self.swept)} leftover temporary file(s); {self.kept} version(s) kept"]
        lines += [f"skipped {d}: {why}" for d, why in sorted(self.skipped.items())]
        return "\n".join(lines)


def _plan(store: ArtifactStore, keep: int) -> tuple[list[Artifact], list[Artifact]]:
    """(to remove, to keep): newest ``keep`` versions of each table, plus their inputs."""
    by_table: dict[tuple[str, str], list[Artifact]] = {}
    for art in store.artifacts():
        by_table.setdefault((art.dataset, art.table), []).append(art)
    by_fp: dict[str, list[Artifact]] = {}
    for arts in by_table.values():
        for a in arts:
            by_fp.setdefault(a.fingerprint, []).append(a)
    kept: dict[Path, Artifact] = {}
    todo = [a for arts in by_table.values() for a in sorted(arts, key=lambda a: a.version)[-keep:]]
    while todo:
        a = todo.pop()
        if a.path in kept:
            continue
        kept[a.path] = a
        for fp in a.manifest.get("inputs") or []:
            todo.extend(by_fp.get(fp, []))
    remove = [a for arts in by_table.values() for a in arts if a.path not in kept]
    return remove, list(kept.values())


def _unused_pngs(store: ArtifactStore, kept_images: list[Artifact], free: set[str]) -> list[Path]:
    """PNG renders of DICOM images (``images/<dataset>/``) that no kept images version has, or
    that an older rendering made."""
    from medhall.export.render import png_name

    wanted: set[str] = set()
    for art in kept_images:
        wanted |= {png_name(s) for s in art.read(columns=["sha256"]).column("sha256").to_pylist() if s}
    base = store.root / "images"
    if not base.is_dir():
        return []
    return sorted(p for d in base.iterdir() if d.is_dir() and d.name in free
                  for p in d.iterdir() if p.suffix == ".png" and p.name not in wanted)


def collect(store: ArtifactStore, keep: int = 3, *, dry_run: bool = False) -> GCReport:
    """Prune versions older than the newest ``keep`` of each table (see the module docstring)."""
    from medhall.store.locks import DatasetBusy, dataset_lock

    if keep < 1:
        raise ValueError("--keep must be at least 1: the latest version of a table is never removed")
    report = GCReport(swept=sweep(store.root, dry_run=dry_run))
    remove, kept = _plan(store, keep)
    report.kept = len(kept)
    datasets = sorted({a.dataset for a in remove} | set(store.datasets()))
    with contextlib.ExitStack() as held:
        free: set[str] = set()
        for ds in datasets:
            try:
                held.enter_context(dataset_lock(store, ds, "gc"))
                free.add(ds)
            except DatasetBusy as e:
                report.skipped[ds] = f"being written (pid {e.holder.get('pid', '?')})"
        doomed: list[Path] = [a.path for a in remove if a.dataset in free]
        kept_instr: dict[str, set[int]] = {}
        for a in kept:
            if a.table == "instructions":
                kept_instr.setdefault(a.dataset, set()).add(a.version)
        for ds in free:
            versions = kept_instr.get(ds, set())
            exports = export_versions(store, ds)
            newest = exports[-1:] if exports else []
            doomed += [p for p in exports if p not in newest and int(p.name[1:]) not in versions]
        doomed += _unused_pngs(store, [a for a in kept if a.table == "images"], free)
        report.bytes_freed = freed_by(doomed)
        report.removed = doomed
        if not dry_run:
            for p in doomed:
                _remove_tree(p)
            if doomed:
                store._bump_generation()  # the catalog's version views change
    return report


__all__ = ["GCReport", "collect", "disk_usage", "freed_by", "export_versions", "prune_exports", "settle_exports",
           "share_unchanged", "sweep"]
