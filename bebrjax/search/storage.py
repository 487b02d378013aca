"""The on-disk format of a `BinaryIndex`, and crash-safe directory replacement.

`BinaryIndex.save(path)` writes a directory holding
  * `header.json`: {"format": "bebrjax.BinaryIndex", "version": 2, "m", "u",
    "metric", "count", "words_per_plane", "versions": [{"name", "u"}, ...]},
    where "versions" lists the code versions in order and "u" is their
    largest u (the stored planes - 1), and an optional "query_bits" says how
    queries are served (absent: as codes; B: a model's pre-sign output at
    B bits per dimension, `Binarizer.encode_query`);
  * `codes.npy`: uint32 [count, u+1, words_per_plane], bit c % 32 of word
    c // 32 of plane i set where s_i[c] = -1 (see `bebrjax.search.codes`);
    a document of a version with fewer loops has zero words in the planes
    it lacks;
  * `inv_norms.npy`: float32 [count], 1/||b|| of each code;
  * `versions.npy` (only when there is more than one version): uint8
    [count], each document's index into "versions".
An `IVFIndex` adds `ivf.json` ({"format": "bebrjax.IVFIndex", "version":
1, "nlist", "m", "nprobe"}; "nprobe", the default lists per query, may be
null or absent: every list), `centroids.npy` and `lists.npy` (see
`bebrjax.search.ivf`; `read_ivf_meta` checks the first). An index of one
version writes exactly the first three files. Version-1
directories (no "versions", no versions.npy) still load, as one version
named "default". `read_index` memory-maps the arrays copy-on-write
(mmap_mode="c"): changing a loaded index never writes into its files.

Every save builds the new directory beside `path` and swaps it into place
while holding the index's write lock (`bebrjax.search.safe_write`), so a
crash at any instant leaves either the previous index or the new one at
`path`, never a mixture, and two writers never interleave.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil

import numpy as np

from bebrjax.errors import IndexFormatError, read_json
from bebrjax.search import codes as codes_lib
from bebrjax.search.safe_write import index_lock, move_into_place, staging_dir

FORMAT = "bebrjax.BinaryIndex"
VERSION = 2
HEADER, CODES, NORMS, VERSIONS = "header.json", "codes.npy", "inv_norms.npy", "versions.npy"
PARTIAL = "progress.json"  # in a directory an unfinished incremental write left
IVF_FILE, CENTROIDS, LISTS = "ivf.json", "centroids.npy", "lists.npy"  # an IVFIndex's additions
IVF_FORMAT, IVF_VERSION = "bebrjax.IVFIndex", 1
MAX_VERSIONS = 256  # a document's version is a uint8


def write_header(
    directory: str,
    m: int,
    u: int,
    metric: str,
    count: int,
    versions: list[dict] | None = None,
    query_bits: int = 0,
) -> None:
    """Writes (and syncs) an index directory's header.json, the last file of a save.

    Args:
      directory: the index directory being built.
      m: code width.
      u: the stored planes - 1 (the largest u of the versions).
      metric: "ip" or "hamming".
      count: documents.
      versions: [{"name": str, "u": int}, ...] in order; None is one version
        named "default" of loops `u`.
      query_bits: how its queries are served (0: as codes, omitted from the
        header; B >= 1: a model's pre-sign output at B bits per dimension).
    """
    if versions is None:
        versions = [{"name": "default", "u": int(u)}]
    header = {
        "format": FORMAT,
        "version": VERSION,
        "m": int(m),
        "u": int(u),
        "metric": metric,
        "count": int(count),
        "words_per_plane": codes_lib.num_words(m),
        "versions": [{"name": str(v["name"]), "u": int(v["u"])} for v in versions],
    }
    if query_bits:
        header["query_bits"] = int(query_bits)
    with open(os.path.join(directory, HEADER), "w") as f:
        json.dump(header, f, indent=2)
        f.flush()
        os.fsync(f.fileno())


def write_index(
    path: str, arrays: dict[str, np.ndarray], json_files: dict[str, dict] | None = None, **header
) -> None:
    """Saves an index directory at `path` crash-safely: staged beside it, then swapped in.

    Args:
      path: the index directory, replaced whole (it may be the directory the
        arrays are memory-mapped from).
      arrays: file name -> array, each written as .npy and synced.
      json_files: file name -> JSON object, written and synced before the header.
      **header: the arguments of `write_header` after `directory`.

    The staging directory is removed if anything fails. The whole save
    holds `index_lock(path, "save")`.

    Raises:
      FileExistsError: when `path` is something other than a directory (a
        file is never replaced by an index).
      IndexLockedError: when another writer holds the index.
    """
    if os.path.lexists(path) and not os.path.isdir(path):
        raise FileExistsError(
            f"{path}: exists and is not a directory; an index does not replace it"
        )
    with index_lock(path, "save"):
        tmp = staging_dir(path, ".tmp-index-")
        try:
            for name, x in arrays.items():
                with open(os.path.join(tmp, name), "wb") as f:
                    np.save(f, x)
                    f.flush()
                    os.fsync(f.fileno())
            for name, content in (json_files or {}).items():
                with open(os.path.join(tmp, name), "w") as f:
                    json.dump(content, f, indent=2)
                    f.flush()
                    os.fsync(f.fileno())
            write_header(tmp, **header)
            move_into_place(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


@dataclasses.dataclass
class StoredIndex:
    """What `read_index` found: the header's fields and the memory-mapped arrays."""

    m: int
    u: int
    metric: str
    versions: list[tuple[str, int]]
    words: np.ndarray
    inv_norms: np.ndarray
    doc_versions: np.ndarray | None  # None: one version
    query_bits: int = 0


def _read_header(path: str) -> dict:
    header_path = os.path.join(path, HEADER)
    if not os.path.isfile(header_path):
        if os.path.isfile(os.path.join(path, PARTIAL)):
            raise IndexFormatError(
                f"{path}: an unfinished index (an interrupted encode); run the same "
                "encode command again to finish it"
            )
        raise IndexFormatError(f"{path}: not a saved index (no header.json)")
    header = read_json(header_path, IndexFormatError)
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise IndexFormatError(
            f"{path}: not a {FORMAT} (format {header.get('format')!r})"
            if isinstance(header, dict)
            else f"{path}: foreign header"
        )
    if header.get("version") not in (1, VERSION):
        raise IndexFormatError(
            f"{path}: format version {header.get('version')} is not "
            f"supported (this bebrjax reads versions 1 and {VERSION})"
        )
    need = {"m", "u", "metric", "count", "words_per_plane"} | (
        {"versions"} if header["version"] >= 2 else set()
    )
    missing = need - set(header)
    if missing:
        raise IndexFormatError(f"{path}: header.json lacks {', '.join(sorted(missing))}")
    for key in ("m", "u", "count", "words_per_plane"):
        if not isinstance(header[key], int) or isinstance(header[key], bool) or header[key] < 0:
            raise IndexFormatError(f"{path}: header.json: {key}={header[key]!r} is not a count")
    bits = header.get("query_bits", 0)
    if not isinstance(bits, int) or isinstance(bits, bool):
        raise IndexFormatError(f"{path}: header.json: query_bits={bits!r} is not an integer")
    if not 0 <= bits <= codes_lib.MAX_QUERY_PLANES:
        raise IndexFormatError(
            f"{path}: header.json: query_bits={bits} is outside [0, {codes_lib.MAX_QUERY_PLANES}]"
        )
    return header


def _versions(path: str, header: dict) -> list[tuple[str, int]]:
    """The header's [(name, u)], checked (version 1: one version named "default")."""
    if header["version"] == 1:
        return [("default", header["u"])]
    listed = header["versions"]
    if not isinstance(listed, list) or not 1 <= len(listed) <= MAX_VERSIONS:
        raise IndexFormatError(
            f"{path}: header.json: versions must be a list of 1 to {MAX_VERSIONS} entries"
        )
    out = []
    for entry in listed:
        name, u = (entry.get("name"), entry.get("u")) if isinstance(entry, dict) else (None, None)
        if not isinstance(name, str) or not name or not isinstance(u, int) or not 0 <= u <= 3:
            raise IndexFormatError(
                f"{path}: header.json: bad version entry {entry!r} (need a name and u in 0..3)"
            )
        out.append((name, u))
    if len({name for name, _ in out}) != len(out):
        raise IndexFormatError(f"{path}: header.json: version names repeat")
    if max(u for _, u in out) != header["u"]:
        raise IndexFormatError(
            f"{path}: header.json: u={header['u']} but the versions' largest u is "
            f"{max(u for _, u in out)}"
        )
    return out


def load_array(path: str, name: str, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    """The array `name` of the index at `path`, memory-mapped copy-on-write, checked.

    Raises:
      IndexFormatError: when it cannot be read or has another shape or dtype.
    """
    try:
        x = np.load(os.path.join(path, name), mmap_mode="c")
    except (OSError, ValueError, EOFError) as e:
        raise IndexFormatError(f"{path}: {name} cannot be read ({e})") from None
    if x.shape != shape:
        raise IndexFormatError(
            f"{path}: {name} has shape {list(x.shape)}, the header says {list(shape)} (truncated?)"
        )
    if x.dtype != np.dtype(dtype):
        raise IndexFormatError(f"{path}: {name} has dtype {x.dtype}, expected {np.dtype(dtype)}")
    return x


def read_index(path: str) -> StoredIndex:
    """Reads and checks the index directory `path`, memory-mapping its arrays copy-on-write.

    Raises:
      IndexFormatError: naming `path` and the problem: missing, unfinished,
        foreign, of an unknown format version, a bad header or versions
        list, arrays missing, truncated or disagreeing with the header, or a
        document's version out of range.
    """
    header = _read_header(path)
    versions = _versions(path, header)
    m, u, count, words = header["m"], header["u"], header["count"], header["words_per_plane"]
    if words != codes_lib.num_words(m):
        raise IndexFormatError(f"{path}: words_per_plane={words} does not fit m={m}")
    doc_versions = None
    if len(versions) > 1:
        doc_versions = load_array(path, VERSIONS, (count,), "u1")
        if count and doc_versions.max() >= len(versions):
            raise IndexFormatError(
                f"{path}: {VERSIONS} holds version index {doc_versions.max()}, but only "
                f"{len(versions)} versions are listed"
            )
    return StoredIndex(
        m=m,
        u=u,
        metric=header["metric"],
        versions=versions,
        words=load_array(path, CODES, (count, u + 1, words), "<u4"),
        inv_norms=load_array(path, NORMS, (count,), "<f4"),
        doc_versions=doc_versions,
        query_bits=header.get("query_bits", 0),
    )


def read_ivf_meta(path: str, m: int) -> dict:
    """ivf.json of the index at `path`, checked against the codes' width m.

    Its "nprobe" (the default lists per query, 1..nlist) is None where the
    file has none (written before the field existed): every list.
    """
    name = os.path.join(path, IVF_FILE)
    if not os.path.isfile(name):
        raise IndexFormatError(
            f"{path}: a BinaryIndex without inverted lists (no {IVF_FILE}); build them "
            "with IVFIndex.from_index or `bebrjax ivf`"
        )
    meta = read_json(name, IndexFormatError)
    if not isinstance(meta, dict) or meta.get("format") != IVF_FORMAT:
        raise IndexFormatError(f"{path}: {IVF_FILE} is not a {IVF_FORMAT} file")
    if meta.get("version") != IVF_VERSION:
        raise IndexFormatError(
            f"{path}: {IVF_FILE} format version {meta.get('version')} is not supported "
            f"(this bebrjax reads version {IVF_VERSION})"
        )
    nlist = meta.get("nlist")
    if not isinstance(nlist, int) or isinstance(nlist, bool) or nlist < 1:
        raise IndexFormatError(f"{path}: {IVF_FILE}: nlist={nlist!r} is not a positive count")
    if meta.get("m") != m:
        raise IndexFormatError(
            f"{path}: {IVF_FILE}: the lists were trained for m={meta.get('m')}, "
            f"the codes have m={m}"
        )
    nprobe = meta.setdefault("nprobe", None)
    if nprobe is not None and (
        not isinstance(nprobe, int) or isinstance(nprobe, bool) or not 1 <= nprobe <= nlist
    ):
        raise IndexFormatError(f"{path}: {IVF_FILE}: nprobe={nprobe!r} is not in [1, {nlist}]")
    return meta
