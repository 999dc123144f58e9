"""Converting every annotation of a folder (convert_json): the output folders checked for clashes first, then
each annotation read, validated and converted (stages.labelme.processed_sample) on a process pool, each
image decoded once, and every problem in every file listed in one message.
"""

from __future__ import annotations

import ctypes
import functools
import multiprocessing
import os
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path

from tqdm import tqdm

from stages.labelme.processed_sample import SampleSettings, convert_one

CLASS_NAMES_FILE = "class_names.txt"
MANIFEST_FILE = "manifest.json"
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)


def output_folder_problems(json_paths: list[Path], raw_dir: Path) -> defaultdict[str, list[str]]:
    """Problems (by JSON source) of annotations whose output folder another one also claims.

    Stems are compared case-insensitively: on Windows and macOS ``A`` and ``a`` are one folder.
    """
    problems: defaultdict[str, list[str]] = defaultdict(list)
    by_folder: defaultdict[str, list[str]] = defaultdict(list)
    reserved = {CLASS_NAMES_FILE, MANIFEST_FILE}
    for path in json_paths:
        source = path.relative_to(raw_dir).as_posix()
        by_folder[path.stem.casefold()].append(source)
        if path.stem.casefold() in reserved:
            problems[source].append(
                f"its output folder name {path.stem!r} clashes with the stage's own {path.stem} file; rename the JSON"
            )
    for sources in by_folder.values():
        for source in sources if len(sources) > 1 else ():
            others = ", ".join(other for other in sources if other != source)
            problems[source].append(
                f"writes the same output folder as {others} (folders are named after "
                f"the JSON file name, compared case-insensitively); rename one"
            )
    return problems


def convert_all(
    json_paths: list[Path],
    settings: SampleSettings,
    out_dir: Path | None,
    workers: int,
    problems: defaultdict[str, list[str]],
) -> list[dict | None]:
    """Every annotation read, validated and (when ``out_dir`` is given) converted into ``out_dir``, on
    ``workers`` processes; adds each one's problems to ``problems`` and returns their manifest entries."""
    convert = functools.partial(convert_one, settings=settings, out_dir=out_dir)
    samples = []
    for source, sample_problems, sample in parallel_map(convert, json_paths, workers):
        problems[source] += sample_problems
        samples.append(sample)
    return samples


def worker_count(configured: int, jobs: int) -> int:
    workers = configured if configured > 0 else (os.cpu_count() or 1)
    return max(1, min(workers, jobs))


def parallel_map(func: Callable, items: list, workers: int) -> Iterator:
    """func over items, in order, on a process pool (in this process when workers == 1), with a progress bar."""
    progress = functools.partial(tqdm, total=len(items), desc="convert_json", unit="img")
    if workers == 1:
        yield from progress(map(func, items))
        return
    chunksize = max(1, len(items) // (workers * 8))  # few round trips, still balanced
    with multiprocessing.Pool(workers, initializer=_keep_freed_memory) as pool:
        yield from progress(pool.imap(func, items, chunksize=chunksize))


def _keep_freed_memory() -> None:
    """In a worker: have glibc's malloc serve big buffers from its heap and keep them when freed. By default
    each 12-48 MB buffer of a phone photo is mmapped and handed back to the kernel, so every photo pays
    ~30,000 page faults again: a third of the CPU time (measured: 596 -> 347 ms a photo). A no-op without
    glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    libc.mallopt(M_MMAP_THRESHOLD, 1 << 30)
    libc.mallopt(M_TRIM_THRESHOLD, 1 << 30)


def problems_message(problems: dict[str, list[str]], raw_dir: Path, total: int) -> str:
    bad = {source: found for source, found in sorted(problems.items()) if found}
    count = sum(len(found) for found in bad.values())
    lines = [f"convert_json: {count} problem(s) in {len(bad)} of {total} annotation file(s); nothing was written"]
    for source, found in bad.items():
        lines += [f"  {raw_dir / source}: {problem}" for problem in found]
    return "\n".join(lines)
