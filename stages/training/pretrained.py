"""Pretrained weights named in a PaddleSeg config, checked before training starts.

A model's or backbone's ``pretrained:`` may be a URL, which PaddleSeg downloads (once, into its cache,
``~/.paddleseg/pretrained_model`` or ``$SEG_HOME``), or a local ``.pdparams`` file. ``check_pretrained``
runs before any process or MLflow run starts: a local file that does not exist, or a URL that is neither
in PaddleSeg's cache nor reachable within a short connect timeout (offline), stops the stage with one line
naming the config key and how to give a local file instead, not a hang or a traceback in PaddleSeg's
downloader.
"""

from __future__ import annotations

import concurrent.futures
import socket
from pathlib import Path
from urllib.parse import unquote, urlparse

from stages.common.config import StageError

CONNECT_TIMEOUT_S = 5.0
ARCHIVE_SUFFIXES = ("tgz", "tar.gz", "tar", "zip")


def pretrained_entries(node, key: str = "model") -> list[tuple[str, str]]:
    """(dotted config key, value) of every non-empty ``pretrained:`` under ``node``."""
    found = []
    if isinstance(node, dict):
        for name, value in node.items():
            if name == "pretrained" and value not in (None, ""):
                found.append((f"{key}.{name}", str(value)))
            else:
                found += pretrained_entries(value, f"{key}.{name}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += pretrained_entries(value, f"{key}[{index}]")
    return found


def is_url(value: str) -> bool:
    return bool(urlparse(value).netloc)


def cached_download(url: str) -> Path:
    """Where PaddleSeg's download_pretrained_model keeps ``url``'s weights once downloaded."""
    from paddleseg.utils.env import seg_env

    url = unquote(url)
    parts = url.rstrip("/").split("/")
    if parts[-1].endswith(ARCHIVE_SUFFIXES):
        folder, filename = parts[-1].split(".")[0], "model.pdparams"
    else:
        folder, filename = parts[-2], parts[-1]
    return Path(seg_env.PRETRAINED_MODEL_HOME) / folder / filename


def unreachable(url: str, timeout_s: float) -> str | None:
    """Why ``url``'s host cannot be reached within ``timeout_s`` (name lookup included), or None."""
    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)

    def connect():
        with socket.create_connection((parsed.hostname, port), timeout=timeout_s):
            pass

    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    try:  # a name lookup has no timeout of its own: wait for it in a thread
        pool.submit(connect).result(timeout=timeout_s)
    except concurrent.futures.TimeoutError:
        return f"no answer from {parsed.hostname}:{port} within {timeout_s:g} s"
    except OSError as err:
        return f"{parsed.hostname}:{port}: {err.strerror or err}"
    finally:
        pool.shutdown(wait=False)
    return None


def check_pretrained(document: dict, source: str | Path, timeout_s: float = CONNECT_TIMEOUT_S) -> list[str]:
    """Check every ``pretrained:`` of the resolved config's model (``source``: the template, for messages);
    returns the weights it names. Raises StageError on the first that cannot be loaded."""
    weights = []
    for key, value in pretrained_entries(document.get("model", {})):
        if is_url(value):
            if not cached_download(value).is_file():
                why = unreachable(value, timeout_s)
                if why:
                    raise StageError(
                        f"{source}: {key} is the URL {value}, which cannot be downloaded ({why}); download it "
                        f"where there is network and give its local path instead ({key}: path/to/model.pdparams), "
                        "or null to train from scratch"
                    )
        elif not Path(value).is_file():
            raise StageError(
                f"{source}: {key}: {value} is not a file; give an existing .pdparams file, "
                "a URL, or null to train from scratch"
            )
        weights.append(value)
    return weights
