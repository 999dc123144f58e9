"""python -m batch_segment INPUT OUTPUT [--model URI] [--master URL]: segment every photo under INPUT on Spark.

INPUT and OUTPUT are local folders (on a cluster: paths every worker sees, e.g. a shared mount) or S3 prefixes
(s3://bucket/prefix; keys and endpoint from the AWS_* variables, AWS_ENDPOINT_URL for a non-AWS store).
OUTPUT gets class_id/<name>.png per photo (predict's class-id PNGs, byte for byte), manifest.jsonl (one line
per photo: ok with its mask, or failed with the reason) and summary.json. A rerun skips the photos done.
"""

from __future__ import annotations

import argparse
import re
import sys

from batch_segment.job import BatchError, run
from batch_segment.storage import open_location

DEFAULT_MODEL = "models:/doveseg-segmenter@champion"


def parse_conf(values: list[str]) -> dict[str, str]:
    conf = {}
    for value in values:
        key, sep, setting = value.partition("=")
        if not sep or not key:
            raise BatchError(f"--conf {value!r}: write KEY=VALUE, e.g. --conf spark.executor.memory=4g")
        conf[key] = setting
    return conf


def root_cause(err: Exception) -> str:
    """The innermost "SomeError: message" line of an error that carries a Python or JVM trace."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    causes = [line for line in lines if re.match(r"^(Caused by: |: )?[\w.$]+(Error|Exception): ", line)]
    return (
        re.sub(r"^(Caused by: |: )", "", causes[-1]) if causes else f"{type(err).__name__}: {lines[0] if lines else ''}"
    )[:500]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m batch_segment", description=__doc__.split("\n\n")[0])
    parser.add_argument("input", help="folder or s3://bucket/prefix holding the photos (subfolders too)")
    parser.add_argument("output", help="folder or s3://bucket/prefix for class_id/, manifest.jsonl, summary.json")
    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"the served model's URI (default {DEFAULT_MODEL})")
    parser.add_argument("--master", default="local[*]", help="local[N] or spark://host:port (default local[*])")
    parser.add_argument("--conf", action="append", default=[], metavar="KEY=VALUE", help="a Spark setting (repeatable)")
    parser.add_argument(
        "--max-photo-mb", type=float, default=200, help="larger files fail without being read (default 200)"
    )
    args = parser.parse_args(argv)
    try:
        conf = parse_conf(args.conf)
        if args.max_photo_mb <= 0:
            raise BatchError(f"--max-photo-mb must be positive, not {args.max_photo_mb:g}")
        source, output = open_location(args.input), open_location(args.output)
        summary = run(source, output, args.model, args.master, conf, int(args.max_photo_mb * 1_000_000))
    except (BatchError, ValueError) as err:
        print(f"batch_segment: error: {err}", file=sys.stderr)
        return 1
    except Exception as err:  # noqa: BLE001 - Spark's and the storage's failures: one line, not a JVM trace
        print(f"batch_segment: error: {root_cause(err)}", file=sys.stderr)
        return 1
    rate = f"{summary['photos_per_s']:.2f} photos/s" if summary["photos_per_s"] else "nothing to do"
    print(
        f"batch_segment: {summary['photos']} photos: {summary['segmented']} segmented, {summary['failed']} failed, "
        f"{summary['skipped']} already done; {summary['seconds']:.1f} s ({rate}) with {summary['model_version']} "
        f"on {summary['master']}; manifest {output}{'' if str(output).endswith('/') else '/'}manifest.jsonl"
        + (
            f" ({summary['failed_in_manifest']} failed photos listed with their reasons)"
            if summary["failed_in_manifest"]
            else ""
        ),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
