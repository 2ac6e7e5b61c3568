"""Index build time and search latency on synthetic descriptors, through vggfeat's index API.

Synthetic data: ``--rows`` x ``--dim`` float32, a mixture of ``--clusters`` Gaussian clusters
(retrieval databases are clustered; uniform noise would be the worst case for approximate indexes)
made non-negative as pooled post-ReLU descriptors are. Queries are database rows plus noise.

For each kind: build time (L2-normalisation and FAISS training/adding included), latency of one
query at a time (median and 95th percentile over ``--queries``), time per query in one batch of
``--queries``, and recall@10 against the exact result. ``ivfpq-factory`` is the baseline of
``ivfpq``: the same lists, bytes and training rows, as FAISS's ``index_factory`` trains them by
default (with polysemous training, which vggfeat turns off).

    python benchmarks/bench_retrieval.py --rows 1000000 --dim 512 --kinds numpy,flat,ivfpq,hnsw
    python benchmarks/bench_retrieval.py --rows 100000 --dim 512 --kinds flat,ivfpq,ivfpq-factory
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np

from vggfeat.index import build_index


def synthetic(rows: int, dim: int, clusters: int, seed: int = 0) -> np.ndarray:
    """[rows, dim] float32: Gaussian clusters around random centres, clipped at zero like post-ReLU pooling."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim)).astype(np.float32)
    X = np.empty((rows, dim), dtype=np.float32)
    step = 100_000
    for start in range(0, rows, step):
        n = min(step, rows - start)
        X[start : start + n] = centres[rng.integers(clusters, size=n)] + 0.7 * rng.normal(size=(n, dim)).astype(np.float32)
    np.maximum(X, 0, out=X)
    return X


class FactoryIVFPQ:
    """The baseline of vggfeat's ivfpq: the same lists, bytes per vector and training rows (vggfeat's
    sample), trained as ``faiss.index_factory`` sets the index up, polysemous training included."""

    def __init__(self, X: np.ndarray, params: dict | None) -> None:
        import faiss

        if params is None:
            raise SystemExit("--kinds: ivfpq-factory needs ivfpq before it (its lists and bytes)")
        self.params, (nlist, m) = params, (params["nlist"], params["m"])
        sample = min(len(X), max(64 * nlist, 16_384))  # as vggfeat.index._ivfpq samples
        rows = np.sort(np.random.default_rng(0).choice(len(X), size=sample, replace=False)) if sample < len(X) else slice(None)
        self.index = faiss.index_factory(X.shape[1], f"IVF{nlist},PQ{m}", faiss.METRIC_INNER_PRODUCT)
        self.index.train(self.prepare(X[rows]))
        self.index.add(self.prepare(X))
        self.index.nprobe = params["nprobe"]

    @staticmethod
    def prepare(X: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(X / np.linalg.norm(X, axis=1, keepdims=True), dtype=np.float32)

    def search(self, Q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self.index.search(Q, k)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--nlist", type=int, help="ivfpq lists [default: vggfeat's, about 4 sqrt(rows)]")
    parser.add_argument("--pq-m", type=int, help="ivfpq bytes per vector [default: vggfeat's, the largest divisor of dim up to dim / 8]")
    parser.add_argument("--kinds", default="numpy,flat,ivfpq,hnsw",
                        help="numpy (flat, NumPy backend), flat (FAISS), ivfpq, hnsw, ivfpq-factory (after ivfpq)")
    args = parser.parse_args()

    began = time.perf_counter()
    X = synthetic(args.rows, args.dim, args.clusters)
    rng = np.random.default_rng(1)
    picked = rng.choice(args.rows, size=args.queries, replace=False)
    raw_queries = X[picked] + 0.05 * rng.normal(size=(args.queries, args.dim)).astype(np.float32)
    paths = [f"{i:07d}.jpg" for i in range(args.rows)]
    config = {"dim": args.dim}
    print(f"{args.rows:,} x {args.dim} float32 ({X.nbytes / 2**30:.2f} GiB), {args.clusters} clusters, made in "
          f"{time.perf_counter() - began:.1f} s; {platform.processor() or platform.machine()}, numpy {np.__version__}")
    try:
        import faiss

        print(f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads")
    except ImportError:
        print("faiss not installed")

    exact_rows, ivfpq_params = None, None
    print("| index | build s | one query at a time: median ms | p95 ms | batch of "
          f"{args.queries}: ms per query | recall@{args.k} vs exact |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    # The exact kinds first: the approximate ones' recall is measured against their result.
    for kind in sorted(args.kinds.split(","), key=lambda kind: kind not in ("numpy", "flat")):
        began = time.perf_counter()
        if kind == "numpy":
            index = build_index(X, paths, config, kind="flat", backend="numpy")
        elif kind == "ivfpq-factory":
            index = FactoryIVFPQ(X, ivfpq_params)
        else:
            index = build_index(X, paths, config, kind=kind, backend="faiss", nlist=args.nlist, m=args.pq_m)
        build = time.perf_counter() - began
        if kind == "ivfpq":
            ivfpq_params = index.params
        Q = index.prepare(raw_queries)
        index.search(Q[:1], args.k)  # warm-up
        single = []
        for q in Q:
            began = time.perf_counter()
            index.search(q[None], args.k)
            single.append(time.perf_counter() - began)
        began = time.perf_counter()
        _, rows = index.search(Q, args.k)
        batch = (time.perf_counter() - began) / len(Q)
        if exact_rows is None and kind in ("numpy", "flat"):
            exact_rows = rows
        recall = (np.mean([len(set(a) & set(b)) / args.k for a, b in zip(rows, exact_rows)])
                  if exact_rows is not None else float("nan"))
        name = {"numpy": "flat, NumPy fallback", "flat": "flat, FAISS IndexFlatIP",
                "ivfpq-factory": "ivfpq as FAISS's factory trains it"}.get(kind, f"{kind} {index.params}")
        print(f"| {name} | {build:.1f} | {1e3 * np.median(single):.1f} | {1e3 * np.percentile(single, 95):.1f} | "
              f"{1e3 * batch:.2f} | {recall:.3f} |", flush=True)
        del index


if __name__ == "__main__":
    main()
