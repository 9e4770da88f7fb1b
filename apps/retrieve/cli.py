"""``cnnapps retrieve``, ``cnnapps index ...``, ``cnnapps dedup`` and ``cnnapps eval retrieve``.

Imports typer only; each command imports what it needs, so ``cnnapps --help`` loads no torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from cnnapps.errors import CnnappsError
from cnnapps.terminal import (
    EXIT_SOME_FAILED,
    echo,
    echo_json,
    first_few,
    free_picture,
    images,
    output_folder,
    plural,
    predict_images,
    progress,
    report_failed,
)

_MODEL_HELP = "Registry name or trained model file [default: efficientnet_lite0]."
_HEAD_HELP = "The embedding head of a multi-head model file to embed with [default: its first]."


def eval_retrieve(
    model: str = typer.Option(..., "--model", "-m", help="Model file or registry name."),
    head: str = typer.Option(None, "--head", help=_HEAD_HELP),
    data: str = typer.Option(..., "--data", help="Class-per-folder tree or a path,label CSV."),
    pooling: str = typer.Option("avg", "--pooling", help="For registry names and classifiers: avg or gem."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """recall@1/5/10 and mAP@R with every image querying all the others (an image alone in its class is searched
    among but not scored as a query)."""
    from cnnapps.apps.retrieve.evaluate import evaluate_retrieval
    from cnnapps.datasets.folders import read_labeled

    missing: list[dict[str, str]] = []  # the CSV's rows whose image is not there: inputs that failed
    labelled = read_labeled(data, missing=missing)
    with progress(len(labelled), "embedding") as advance:
        report = evaluate_retrieval(_embedder(model, pooling, device, head), labelled, progress=advance)
    report["failed"] = [*missing, *report["failed"]]
    if as_json:
        echo_json(report)
    else:
        echo(
            f"{report['n']} images: recall@1 {report['recall@1']:.2%}, recall@5 {report['recall@5']:.2%}, "
            f"recall@10 {report['recall@10']:.2%}, mAP@R {report['map@r']:.3f}"
        )
        if report["left_out"]:
            left = plural(report["left_out"], "image")
            echo(f"  left out as queries (alone in their class, still searched among): {left}")
    report_failed(report["failed"] if not as_json else [])
    if report["failed"]:
        raise typer.Exit(EXIT_SOME_FAILED)


index_app = typer.Typer(help="Build and keep an image index (FAISS + SQLite) for retrieval.", no_args_is_help=True)

_INDEX_HELP = "Index folder (FAISS file + SQLite database)."
ENGINE_HELP = "auto, jit, compile, eager, onnxruntime, onnx-cuda, tensorrt or openvino (cnnapps models --engines)."


def _embedder(model: str | None, pooling: str, device: str, head: str | None = None) -> Any:
    from cnnapps.apps.retrieve.embedder import Embedder
    from cnnapps.backbones.registry import DEFAULT_BACKBONE

    return Embedder(model or DEFAULT_BACKBONE, pooling=pooling, device=device, head=head)


@index_app.command("build")
def index_build(
    folder: list[str] = typer.Argument(..., help="Images: folders (recursive), files or globs."),
    index: Path = typer.Option(..., "--index", help=_INDEX_HELP),
    model: str = typer.Option(None, "--model", "-m", help=_MODEL_HELP),
    head: str = typer.Option(None, "--head", help=_HEAD_HELP),
    kind: str = typer.Option(
        "auto", "--kind", help="auto (exact below 100,000 images, then IVF-PQ), flat, ivfpq, hnsw."
    ),
    pooling: str = typer.Option("avg", "--pooling", help="avg or gem (generalised mean)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    rank: int = typer.Option(
        None, "--rank", min=0, help="This process's share of a sharded build [default: from torchrun or SLURM]."
    ),
    world_size: int = typer.Option(
        None, "--world-size", min=1, help="Processes sharing the build [default: from torchrun or SLURM, else 1]."
    ),
    part_size: int = typer.Option(10_000, "--part-size", min=1, help="Images per part file of a sharded build."),
    on_ray: bool = typer.Option(False, "--ray", help="Embed the parts on Ray actors, then merge them."),
    workers: int = typer.Option(None, "--workers", min=1, help="With --ray: actors [default: one per CPU]."),
    address: str = typer.Option(None, "--address", help="With --ray: a running cluster [default: start one here]."),
    gpus_per_worker: float = typer.Option(0.0, "--gpus-per-worker", min=0, help="With --ray: GPUs per actor."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Embed every image under FOLDER into a new index (run again after an interruption, it resumes).

    Started on several processes (torchrun, srun, or --rank/--world-size), each embeds its share into part
    files under INDEX/parts; `cnnapps index merge` then writes the index. With --ray, Ray actors embed the parts
    and the merge follows. A rerun skips finished parts. The index remembers the model (and its --head): `index add`,
    `sync` and `cnnapps retrieve` embed with it."""
    from cnnapps.apps.retrieve.index import Index
    from cnnapps.apps.retrieve.sharded import launcher_rank

    if not index.is_file():  # a file named as the index is the index's to refuse ("exists and is not a folder")
        output_folder(index, "--index")  # a file in its way, or a folder not writable: refused before any work
    if on_ray:
        _build_on_ray(folder, index, model, head, pooling, device, part_size, kind, as_json,
                      address=address, workers=workers, gpus_per_worker=gpus_per_worker)  # fmt: skip
        return
    launched = launcher_rank()[1]
    if world_size is not None and world_size > 1 and rank is None and launched == 1:
        raise CnnappsError(f"--world-size {world_size}: give this process's --rank too (or start it with torchrun)")
    world_size = world_size or launched
    if rank is not None or world_size > 1:
        _build_shard(folder, index, model, head, pooling, device, rank, world_size, part_size, as_json)
        return
    paths = images(folder)
    embedder = _embedder(model, pooling, device, head)
    with progress(len(paths), "embedding") as advance:
        built, added, failed = Index.build(index, paths, embedder, kind=kind, progress=advance)
    _index_done(built.info(), as_json, f"indexed {plural(added, 'image')}", failed, added=added)


def _build_shard(folder: list[str], index: Path, model: str | None, head: str | None, pooling: str, device: str,
                 rank: int | None, world_size: int, part_size: int, as_json: bool) -> None:  # fmt: skip
    """One rank of a sharded ``index build``: its parts, a line on what it did, the merge hint; exit 1 when some
    of its images failed."""
    from cnnapps.apps.retrieve.sharded import build_shard, launcher_rank

    env_rank, _, local_rank = launcher_rank()
    rank = env_rank if rank is None else rank
    if rank >= world_size:
        raise CnnappsError(f"--rank {rank}: must be below --world-size {world_size}")
    if device == "auto" and local_rank is not None:
        import torch

        device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"  # one GPU per local process
    paths = images(folder)
    embedder = _embedder(model, pooling, device, head)
    share = -(-len(paths) // world_size)
    with progress(share, f"rank {rank} embedding") as advance:
        report = build_shard(paths, index, embedder, rank, world_size, part_size, progress=advance)
    if as_json:
        echo_json(report.to_dict())
    else:
        echo(
            f"rank {rank} of {world_size}: {report.parts} parts ({report.skipped} already finished), "
            f"embedded {report.embedded} images; when every rank is done: cnnapps index merge --index {index}"
        )
    report_failed(report.failed)  # exit 0 all the same: a launcher (torchrun) stops every rank when one exits
    # non-zero; `index merge` lists every rank's failed files and exits 1 for them


def _build_on_ray(folder: list[str], index: Path, model: str | None, head: str | None, pooling: str, device: str,
                  part_size: int, kind: str, as_json: bool, **ray_options: Any) -> None:  # fmt: skip
    """``index build --ray``: the parts on Ray actors, each with its own embedder, then the merge."""
    from functools import partial

    from cnnapps.apps.retrieve.embedder import Embedder
    from cnnapps.apps.retrieve.sharded import build_on_ray
    from cnnapps.backbones.registry import DEFAULT_BACKBONE

    paths = images(folder)
    make = partial(Embedder, model or DEFAULT_BACKBONE, pooling=pooling, device=device, head=head)
    with progress(len(paths), "embedding on Ray") as advance:
        built, report = build_on_ray(paths, index, make(), make, part_size, kind, advance, **ray_options)
    _index_done(built.info(), as_json, f"indexed {len(built)} images ({report.skipped} of {report.parts} parts "
                "finished before)", report.failed)  # fmt: skip


def _index_done(
    info: dict[str, Any], as_json: bool, headline: str, failed: list[dict[str, str]], **counts: int
) -> None:
    """After an index write: its state, the inputs that failed, and exit 1 when some did. JSON carries ``counts``
    (``added``) and ``failed`` beside the state, as `sync` and `dedup` print them."""
    _print_index({**info, **counts, "failed": failed} if as_json else info, as_json, headline)
    report_failed(failed)
    if failed:
        raise typer.Exit(EXIT_SOME_FAILED)


def _print_index(info: dict[str, Any], as_json: bool, headline: str | None = None) -> None:
    if as_json:
        echo_json(info)
        return
    if headline:
        echo(headline)
    for key, value in info.items():
        echo(f"  {key:>14}: {value}")


@index_app.command("merge")
def index_merge(
    index: Path = typer.Option(..., "--index", help=_INDEX_HELP),
    kind: str = typer.Option(
        "auto", "--kind", help="auto (exact below 100,000 images, then IVF-PQ), flat, ivfpq, hnsw."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Write the parts of a sharded `index build` into the index (IVF-PQ trained once, on a sample)."""
    from cnnapps.apps.retrieve.sharded import merge_parts

    built, failed = merge_parts(index, kind=kind)
    _index_done(built.info(), as_json, f"merged {plural(len(built), 'image')}", failed)


@index_app.command("add")
def index_add(
    paths: list[str] = typer.Argument(..., help="Images: files, folders or globs."),
    index: Path = typer.Option(..., "--index", help=_INDEX_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Embed and add images (re-embeds ones already indexed)."""
    from cnnapps.apps.retrieve.index import Index

    files = images(paths)  # no image at all is an error (exit 2) before the index is opened
    opened = Index.open(index)
    with progress(len(files), "embedding") as advance:
        added, failed = opened.add(files, progress=advance)
    _index_done(opened.info(), as_json, f"added {plural(added, 'image')}", failed, added=added)


@index_app.command("remove")
def index_remove(
    paths: list[str] = typer.Argument(..., help="Indexed image paths."),
    index: Path = typer.Option(..., "--index", help=_INDEX_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Drop images from the index (the files themselves are untouched)."""
    from cnnapps.apps.retrieve.index import Index, index_path

    opened = Index.open(index)
    present = opened.indexed(paths)
    removed = opened.remove(paths)
    info = opened.info()
    _print_index({**info, "removed": removed} if as_json else info, as_json, f"removed {plural(removed, 'image')}")
    missing = [k for k in dict.fromkeys(index_path(p) for p in paths) if k not in present]
    if missing:
        echo(f"{plural(len(missing), 'path')} given not in {index}: {first_few(missing, 3)}", err=True)
        raise typer.Exit(EXIT_SOME_FAILED)


@index_app.command("info")
def index_info(
    index: Path = typer.Option(..., "--index", help=_INDEX_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Items, model, embedding size, index kind and size on disk."""
    from cnnapps.apps.retrieve.index import Index

    opened = Index.open(index)
    _print_index(opened.info(), as_json)
    _warn_unfinished(opened)


def _warn_unfinished(opened: Any) -> None:
    """One line on stderr for an index whose build or merge has not finished: it holds only what was committed so
    far (searched all the same, as a service searches an index another process is adding to)."""
    from cnnapps.apps.retrieve.index import unfinished_problem

    if opened.unfinished:
        problem = unfinished_problem(opened.path, opened.unfinished)
        echo(f"warning: {opened.path}: {problem} ({plural(len(opened), 'image')} indexed so far)", err=True)


@index_app.command("sync")
def index_sync(
    folder: str = typer.Argument(..., help="The folder the index mirrors."),
    index: Path = typer.Option(..., "--index", help=_INDEX_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Add new images, re-embed changed ones, drop deleted ones."""
    from cnnapps.apps.retrieve.index import Index

    report = Index.open(index).sync(folder)
    if as_json:
        echo_json(report)
    else:
        echo(
            f"added {report['added']}, re-embedded {report['changed']}, removed {report['removed']}; "
            f"{report['items']} images indexed"
        )
    report_failed(report["failed"])
    if report["failed"]:
        raise typer.Exit(EXIT_SOME_FAILED)


@index_app.command("check")
def index_check(
    index: Path = typer.Option(..., "--index", help=_INDEX_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Say what is wrong with an index, changing nothing. Exit code 0: sound; 1: problems (each says what to run);
    2: no index."""
    from cnnapps.apps.retrieve.index import Index

    report = Index.check(index)
    if as_json:
        echo_json(report)
    elif report["ok"]:
        echo(f"{index}: sound ({report['items']} images, generation {report['generation']})")
    else:
        for problem in report["problems"]:
            echo(f"{index}: {problem}")
    if not report["ok"]:
        raise typer.Exit(EXIT_SOME_FAILED)


@index_app.command("repair")
def index_repair(
    index: Path = typer.Option(..., "--index", help=_INDEX_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Make an index usable again: rebuild its FAISS file from the vectors kept in its database (missing,
    truncated or of the wrong size), drop stale entries, clear an interrupted creation. Exit code 0: sound;
    1: something is left (an interrupted build or merge: run it again); 2: error."""
    from cnnapps.apps.retrieve.index import Index

    report = Index.repair(index)
    if as_json:
        echo_json(report)
    else:
        for done in report["repaired"] or ["nothing to repair"]:
            echo(f"{index}: {done}")
        for problem in report["problems"]:
            echo(f"{index}: still: {problem}")
        echo(f"{index}: {report['items']} images indexed")
    if report["problems"]:
        raise typer.Exit(EXIT_SOME_FAILED)


def retrieve(
    query: list[str] = typer.Option(..., "--query", "-q", help="Query image; repeat for several."),
    index: Path = typer.Option(..., "--index", help=_INDEX_HELP),
    k: int = typer.Option(10, "-k", min=1, help="Results per query."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    save_grid: Path = typer.Option(None, "--save-grid", help="Draw each query beside its top-k (one file per query)."),
    engine: str = typer.Option("auto", "--engine", help=ENGINE_HELP),
) -> None:
    """Rank the indexed images by cosine similarity to each query."""
    from cnnapps.apps.retrieve.index import Index
    from cnnapps.apps.retrieve.search import query_grid, retrieve

    if save_grid is not None:
        targets = (
            [save_grid]
            if len(query) == 1
            else [save_grid.with_stem(f"{save_grid.stem}-{i}") for i in range(len(query))]
        )
        for target in targets:
            free_picture(target, "--save-grid")
    opened = Index.open(index)
    _warn_unfinished(opened)
    results = retrieve(opened, query, k, embedder=opened.embedder(engine=engine))
    if as_json:
        echo_json([r.with_engine() for r in results])
    else:
        for r in results:
            echo(f"{r.source}:" + (f" error: {r.error}" if r.error else ""))
            for hit in r.hits:
                echo(f"  {hit.rank:3d}  {hit.score:.4f}  {hit.path}")
    if save_grid is not None:
        from cnnapps.datasets.io import read_image, write_image

        for target, r in zip(targets, results, strict=True):
            if r.ok:
                write_image(target, query_grid(read_image(r.source), r.hits))
                echo(f"wrote {target}", err=True)
    if any(not r.ok for r in results):
        raise typer.Exit(EXIT_SOME_FAILED)


def dedup(
    folder: list[str] = typer.Argument(..., help="Images: folders (recursive), files or globs."),
    threshold: float = typer.Option(
        0.9,
        "--threshold",
        min=-1.0,
        max=1.0,
        help="Cosine similarity of embeddings at which two images count as duplicates (see also --hash-bits).",
    ),
    hash_bits: int = typer.Option(
        6,
        "--hash-bits",
        min=-1,
        max=32,
        help="Also group images whose 64-bit perceptual hashes differ in at most this many bits (shrunk and "
        "re-encoded copies, which embeddings can miss); -1: embeddings only.",
    ),
    model: str = typer.Option(None, "--model", "-m", help=_MODEL_HELP),
    head: str = typer.Option(None, "--head", help=_HEAD_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Groups of near-duplicate images.

    Two images join a group when their embeddings are similar (crops, edits) or their perceptual hashes are
    (rescaled or re-encoded copies)."""
    from cnnapps.apps.retrieve.index import index_path
    from cnnapps.apps.retrieve.search import find_duplicates

    paths = images(folder)
    hashes = hash_bits if hash_bits >= 0 else None
    embedder = _embedder(model, "avg", "auto", head)
    with progress(len(paths), "embedding") as advance:
        groups, failed = find_duplicates(paths, embedder, threshold, progress=advance, hash_bits=hashes)
    if as_json:  # with the engine that embedded the images, as every verb's --json
        echo_json({"groups": groups, "failed": failed, "engine": embedder.engine})
    else:
        rule = f"threshold {threshold}" + (f", or hashes at most {hash_bits} bits apart" if hashes is not None else "")
        # a file named twice is one image; one that failed was not looked at
        embedded = len({index_path(p) for p in paths}) - len(failed)
        echo(f"{plural(len(groups), 'group')} of near-duplicates among {plural(embedded, 'image')} ({rule})")
        for n, group in enumerate(groups, start=1):
            echo(f"group {n} (similarity >= {group['min_similarity']:.3f}):")
            for path in group["images"]:
                echo(f"  {path}")
    report_failed(failed if not as_json else [])
    if failed:
        raise typer.Exit(EXIT_SOME_FAILED)


def embed(
    paths: list[str] = typer.Argument(..., help="Image files, folders (searched recursively) or globs."),
    model: str = typer.Option(None, "--model", "-m", help=_MODEL_HELP),
    head: str = typer.Option(None, "--head", help=_HEAD_HELP),
    pooling: str = typer.Option("avg", "--pooling", help="For registry names and classifiers: avg or gem."),
    batch_size: int = typer.Option(None, "--batch-size", "-b", min=1, help="Images per forward pass."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    engine: str = typer.Option("auto", "--engine", help=ENGINE_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print JSON: one object per input with its embedding."),
) -> None:
    """Embed images as unit vectors (cosine similarity = dot product). Exit code 0: all done; 1: some inputs
    failed (reported, others done); 2: error."""
    from cnnapps.api import load

    inputs = images(paths)
    options = {"head": head} if head is not None else {}
    embedder = load(model, task="retrieve", pooling=pooling, batch_size=batch_size, device=device, engine=engine,
                    **options)  # fmt: skip
    results = predict_images(embedder, inputs, "embedding")  # Ctrl-C: the answers so far
    if as_json:
        echo_json([r.with_engine() for r in results])
    else:
        for r in results:
            echo(f"{r.source}: {len(r.vector)}-d vector" if r.ok else f"{r.source}: error: {r.error}")
    failed = [r for r in results if not r.ok]
    if failed:
        if as_json:
            report_failed([{"path": r.source, "error": r.error} for r in failed])
        raise typer.Exit(EXIT_SOME_FAILED)


def register(app: typer.Typer, eval_app: typer.Typer, task: str) -> None:
    """Add the retrieval commands to the ``cnnapps`` command."""
    app.command("embed")(embed)
    app.command("retrieve")(retrieve)
    app.command("dedup")(dedup)
    app.add_typer(index_app, name="index")
    eval_app.command("retrieve")(eval_retrieve)
