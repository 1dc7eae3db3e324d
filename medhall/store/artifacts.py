"""Versioned, atomically written Parquet artifacts with manifests.

Layout under the store root (``MEDHALL_HOME``, default ``~/.medhall``)::

    store/<dataset>/<table>/v000001/data.parquet
    store/<dataset>/<table>/v000001/manifest.json

A version is written into a hidden temporary directory (file fsynced, manifest fsynced) and
then renamed into place, so a reader sees a whole version or none. Versions are never
overwritten: a write whose content equals the latest version's returns that version instead
of adding a copy, and two writers racing for the same number end with two numbers.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from medhall import __version__, atomic
from medhall.config import get_settings
from medhall.errors import MedhallError
from medhall.ids import canonical_json, file_sha256, sha256_hex
from medhall.schema import SCHEMA_VERSION, conform, schema_for, upgrade
from medhall.tempfiles import owner_tag

DATASET_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
VERSION_RE = re.compile(r"^v(\d{6})$")
_SECRET_KEY = re.compile(r"(api[_-]?key|token|secret|password|authorization)", re.I)
DATA_FILE = "data.parquet"
MANIFEST = "manifest.json"


class StoreError(MedhallError, RuntimeError):
    """A problem with the artifact store, explained."""


def redact(config: Any) -> Any:
    """Config with every secret-looking key's value replaced, recursively.

    Manifests record the config that made an artifact; an API key must never land there.
    """
    if isinstance(config, Mapping):
        return {
            k: ("***" if _SECRET_KEY.search(str(k)) and v not in (None, "") else redact(v))
            for k, v in config.items()
        }
    if isinstance(config, list | tuple):
        return [redact(v) for v in config]
    if type(config).__name__ == "SecretStr":
        return "***"
    return config


def schema_fingerprint(schema: pa.Schema) -> str:
    return sha256_hex(canonical_json([[f.name, str(f.type), f.nullable] for f in schema]))[:16]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)



@dataclass(frozen=True)
class Artifact:
    """One written version of a table in a dataset."""

    table: str
    dataset: str
    version: int
    path: Path  # the version directory
    manifest: dict[str, Any]

    @property
    def data_path(self) -> Path:
        return self.path / DATA_FILE

    @property
    def fingerprint(self) -> str:
        return self.manifest["content_fingerprint"]

    @property
    def rows(self) -> int:
        return int(self.manifest["rows"])

    @property
    def name(self) -> str:
        return f"{self.dataset}/{self.table}/v{self.version:06d}"

    def read(self, columns: Sequence[str] | None = None) -> pa.Table:
        """The data (``columns`` only, when given), in the current schema's types: a version
        written under an older schema has its retyped fields cast (:func:`medhall.schema.upgrade`)."""
        data = pq.read_table(self.data_path, columns=list(columns) if columns else None)
        return upgrade(self.table, data, int(self.manifest.get("schema_version", SCHEMA_VERSION)))


class ArtifactStore:
    """The Parquet artifact store rooted at ``root`` (default: settings' ``home``)."""

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = Path(root).expanduser().resolve() if root else get_settings().resolved_home()

    def __repr__(self) -> str:
        return f"ArtifactStore({str(self.root)!r})"

    @property
    def tables_root(self) -> Path:
        return self.root / "store"

    @property
    def generation_file(self) -> Path:
        """Holds a new token after every write; the catalog records the token it was built from."""
        return self.root / ".generation"

    def table_dir(self, table: str, dataset: str) -> Path:
        schema_for(table)  # validates the name
        if not DATASET_RE.match(dataset):
            raise StoreError(
                f"invalid dataset name {dataset!r}: use letters, digits, '_', '-', '.' (max 64)"
            )
        return self.tables_root / dataset / table

    # ---- reading -------------------------------------------------------------------------

    def versions(self, table: str, dataset: str) -> list[Artifact]:
        tdir = self.table_dir(table, dataset)
        if not tdir.is_dir():
            return []
        out = []
        for child in tdir.iterdir():
            m = VERSION_RE.match(child.name)
            if m and (child / MANIFEST).is_file():
                manifest = json.loads((child / MANIFEST).read_text())
                out.append(Artifact(table, dataset, int(m.group(1)), child, manifest))
        return sorted(out, key=lambda a: a.version)

    def latest(self, table: str, dataset: str) -> Artifact | None:
        vs = self.versions(table, dataset)
        return vs[-1] if vs else None

    def get(self, table: str, dataset: str, version: int | None = None) -> Artifact:
        vs = self.versions(table, dataset)
        if not vs:
            having = sorted({a.dataset for a in self.artifacts() if a.table == table})
            raise StoreError(f"no {table} table for dataset {dataset!r} in {self.root}"
                             + (f" (datasets with one: {', '.join(having[:12])})" if having else
                                " (the store has none yet: `medhall demo`, or ingest and build a dataset first)"))
        if version is None:
            return vs[-1]
        for a in vs:
            if a.version == version:
                return a
        raise StoreError(f"{dataset}/{table} has no version {version} (have {[a.version for a in vs]})")

    def read(self, table: str, dataset: str, version: int | None = None) -> pa.Table:
        return self.get(table, dataset, version).read()

    def images_source(self, dataset: str) -> str:
        """The dataset holding ``dataset``'s images: itself, or the source a build was made from."""
        if self.latest("images", dataset) is None and (instr := self.latest("instructions", dataset)):
            return instr.manifest.get("config", {}).get("build", {}).get("source", dataset)
        return dataset

    def datasets(self) -> list[str]:
        if not self.tables_root.is_dir():
            return []
        return sorted(p.name for p in self.tables_root.iterdir() if p.is_dir() and DATASET_RE.match(p.name))

    def artifacts(self) -> Iterator[Artifact]:
        """Every version of every table in every dataset."""
        for ds in self.datasets():
            for tdir in sorted((self.tables_root / ds).iterdir()):
                if tdir.is_dir() and not tdir.name.startswith("."):
                    try:
                        yield from self.versions(tdir.name, ds)
                    except KeyError:  # a folder that is no table of ours
                        continue

    # ---- writing -------------------------------------------------------------------------

    def write(
        self,
        table: str,
        data: pa.Table | Iterable[pa.Table | pa.RecordBatch],
        *,
        dataset: str,
        config: Mapping[str, Any] | None = None,
        inputs: Sequence[str] = (),
        run_id: str | None = None,
        row_group_size: int = 128_000,
    ) -> Artifact:
        """Write a new version of ``table`` in ``dataset`` atomically and return it.

        ``data`` may be one table or an iterable of tables/batches (streamed, so memory stays
        flat for large artifacts). Rows are conformed to the spine's schema. ``inputs`` are the
        fingerprints of the artifacts this one was made from; ``config`` what made it (secret
        values are redacted).
        """
        schema = schema_for(table)
        tdir = self.table_dir(table, dataset)
        tdir.mkdir(parents=True, exist_ok=True)
        tmp = tdir / f".tmp-{owner_tag()}-{uuid.uuid4().hex}"  # swept if its process dies
        tmp.mkdir()
        try:
            rows = self._write_parquet(tmp / DATA_FILE, table, schema, data, row_group_size)
            fingerprint = file_sha256(tmp / DATA_FILE)
            latest = self.latest(table, dataset)
            if latest is not None and latest.fingerprint == fingerprint:
                shutil.rmtree(tmp, ignore_errors=True)
                return latest
            manifest = {
                "table": table,
                "dataset": dataset,
                "rows": rows,
                "schema_version": SCHEMA_VERSION,
                "schema_fingerprint": schema_fingerprint(schema),
                "content_fingerprint": fingerprint,
                "inputs": sorted(set(inputs)),
                "config": redact(dict(config or {})),
                "run_id": run_id,
                "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "medhall_version": __version__,
                "bytes": (tmp / DATA_FILE).stat().st_size,
            }
            return self._commit(tmp, tdir, table, dataset, manifest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    @staticmethod
    def _write_parquet(
        path: Path,
        table: str,
        schema: pa.Schema,
        data: pa.Table | Iterable[pa.Table | pa.RecordBatch],
        row_group_size: int,
    ) -> int:
        chunks = [data] if isinstance(data, pa.Table) else data
        rows = 0
        with pq.ParquetWriter(path, schema, compression="zstd") as writer:
            for chunk in chunks:
                if isinstance(chunk, pa.RecordBatch):
                    chunk = pa.Table.from_batches([chunk])
                chunk = conform(table, chunk)
                if chunk.num_rows:
                    writer.write_table(chunk, row_group_size=row_group_size)
                    rows += chunk.num_rows
        with path.open("rb+") as f:
            os.fsync(f.fileno())
        return rows

    def _commit(self, tmp: Path, tdir: Path, table: str, dataset: str, manifest: dict) -> Artifact:
        latest = self.latest(table, dataset)
        version = (latest.version if latest else 0) + 1
        while True:
            manifest["version"] = version
            mpath = tmp / MANIFEST
            mpath.write_text(json.dumps(manifest, indent=2, sort_keys=True))
            with mpath.open("rb+") as f:
                os.fsync(f.fileno())
            target = tdir / f"v{version:06d}"
            try:
                # rename(2) onto a non-empty directory fails: an existing version is never replaced.
                if target.exists():
                    raise FileExistsError(target)
                os.rename(tmp, target)
                break
            except (FileExistsError, OSError) as e:
                if not target.exists():
                    raise StoreError(f"could not commit {target}: {e}") from e
                version += 1
        _fsync_dir(tdir)
        self._bump_generation()
        return Artifact(table, dataset, version, target, manifest)

    def _bump_generation(self) -> None:
        # a token no other write ever had (not a time: two writes can share a clock tick), put
        # in place atomically; the catalog records the token it was built from
        token = f"{datetime.now(UTC).isoformat()} {os.getpid()} {uuid.uuid4().hex}"
        atomic.write_bytes(self.generation_file, token.encode())
