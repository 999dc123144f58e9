"""What a local process without the stack's keys gets from each of its ports: one read and one write each.

``python -m team_stack doors`` finds every TCP port the running stack's processes listen on (``ss -ltnp``)
and probes each; a port no probe knows counts as open. The team e2e test runs the same probes. A door is shut when neither request gets an answer that
carries or changes data: a refused connection or TLS handshake, an HTTP 4xx, a gRPC call that never reaches
a handler (UNAVAILABLE). HTTP ports are tried in plain HTTP and over TLS with no client certificate; gRPC ports
in plain text and over TLS that trusts the stack's CA but shows no certificate.
"""

from __future__ import annotations

import re
import subprocess
import warnings
from pathlib import Path

import requests

from team_stack import servers

PROBE = "anonymous-probe"  # the name anything a probe might create carries
VOLUME_FID = "1,01637037d6"  # a file id in the first volume (SeaweedFS's own example)


# Protobuf by hand (wire types 0 and 2): a probe needs no generated SeaweedFS code.
def _varint(value: int) -> bytes:
    out = b""
    while True:
        byte, value = value & 0x7F, value >> 7
        out += bytes([byte | (0x80 if value else 0)])
        if not value:
            return out


def _text(field: int, value: bytes | str) -> bytes:
    data = value.encode() if isinstance(value, str) else value
    return _varint(field << 3 | 2) + _varint(len(data)) + data


def _number(field: int, value: int) -> bytes:
    return _varint(field << 3) + _varint(value)


# port name -> read and write: ("http", method, path) or ("grpc", method, request bytes) or ("postgres", sql)
PROBES = {
    "mlflow": {
        "read": ("http", "GET", "/api/2.0/mlflow/experiments/search?max_results=5"),
        "write": ("http", "POST", "/api/2.0/mlflow/experiments/create"),
    },
    "postgres": {
        "read": ("postgres", "SELECT datname FROM pg_database"),
        "write": ("postgres", f"CREATE TABLE {PROBE.replace('-', '_')} (x int)"),
    },
    "s3": {"read": ("http", "GET", "/doveseg-dvc?list-type=2"), "write": ("http", "PUT", f"/doveseg-dvc/{PROBE}")},
    "weed_master": {"read": ("http", "GET", "/dir/lookup?volumeId=1"), "write": ("http", "POST", "/dir/assign")},
    "weed_volume": {"read": ("http", "GET", f"/{VOLUME_FID}"), "write": ("http", "PUT", f"/{VOLUME_FID}")},
    "weed_filer": {
        "read": ("http", "GET", "/buckets/doveseg-dvc/"),
        "write": ("http", "PUT", f"/buckets/doveseg-dvc/{PROBE}"),
    },
    "weed_admin": {"read": ("http", "GET", "/metrics"), "write": ("http", "POST", "/api/s3/buckets")},
    "s3_grpc": {  # S3's IAM cache: an identity put there is a key to every bucket
        "read": ("grpc", "/messaging_pb.SeaweedS3IamCache/ListPolicies", b""),
        "write": ("grpc", "/messaging_pb.SeaweedS3IamCache/PutIdentity", _text(1, _text(1, PROBE))),
    },
    "weed_master_grpc": {
        "read": ("grpc", "/master_pb.Seaweed/VolumeList", b""),
        "write": ("grpc", "/master_pb.Seaweed/Assign", _number(1, 1)),
    },
    "weed_volume_grpc": {
        "read": ("grpc", "/volume_server_pb.VolumeServer/VolumeServerStatus", b""),
        "write": ("grpc", "/volume_server_pb.VolumeServer/AllocateVolume", _number(1, 9999)),
    },
    "weed_filer_grpc": {
        "read": ("grpc", "/filer_pb.SeaweedFiler/ListEntries", _text(1, "/buckets")),
        "write": ("grpc", "/filer_pb.SeaweedFiler/CreateEntry", _text(1, "/") + _text(2, _text(1, PROBE))),
    },
    "weed_admin_grpc": {  # the worker stream: whoever joins it is handed the cluster's maintenance tasks
        "read": ("grpc", "/worker_pb.WorkerService/WorkerStream", _text(1, PROBE)),
        "write": ("grpc", "/worker_pb.WorkerService/WorkerStream", _text(1, PROBE)),
    },
}


def grpc_call(port: int, method: str, request: bytes, ca: bytes | None = None, client=None) -> str:
    """One call, in plain text (no ``ca``) or over TLS trusting ``ca`` with the client's (key, certificate)
    or none. Returns the gRPC status's name: OK, or an error a handler gave (UNKNOWN, ...), means it got in."""
    import grpc

    target = f"127.0.0.1:{port}"
    if ca is None:
        channel = grpc.insecure_channel(target)
    else:
        key, cert = client or (None, None)
        credentials = grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)
        channel = grpc.secure_channel(target, credentials, [("grpc.ssl_target_name_override", "localhost")])
    with channel:
        try:
            if method.endswith("Stream"):  # bidirectional: say one thing, wait for the first answer
                next(iter(channel.stream_stream(method)(iter([request]), timeout=5)), None)
            elif method.endswith("ListEntries"):  # server streaming
                next(iter(channel.unary_stream(method)(request, timeout=5)), None)
            else:
                channel.unary_unary(method)(request, timeout=5)
        except grpc.RpcError as error:
            return error.code().name
    return "OK"


def http_call(port: int, method: str, path: str, tls: bool) -> str:
    """One request with no credentials (over TLS with no client certificate when ``tls``): its status code,
    or why no answer came."""
    url = f"{'https' if tls else 'http'}://127.0.0.1:{port}{path}"
    body = {"json": {"name": PROBE}} if method == "POST" and "mlflow" in path else {"data": PROBE.encode()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # verify=False: whose certificate it is does not matter here
        try:
            response = requests.request(method, url, timeout=10, verify=False, allow_redirects=False, **body)
        except requests.exceptions.SSLError:
            return "TLS refused"
        except requests.exceptions.RequestException as error:  # reset, closed, timed out: no answer
            return f"no answer ({type(error).__name__})"
    return str(response.status_code)


def postgres_call(port: int, sql: str) -> str:
    import psycopg2

    try:
        connection = psycopg2.connect(
            host="127.0.0.1", port=port, user="postgres", dbname="postgres", connect_timeout=5
        )
    except psycopg2.OperationalError as error:
        return f"refused: {str(error).strip().splitlines()[-1]}"
    with connection, connection.cursor() as cursor:
        cursor.execute(sql)
    connection.close()
    return "OK"


def shut(outcome: str) -> bool:
    """An answer that neither carried nor changed data."""
    if outcome.isdigit():
        return int(outcome) >= 400
    return outcome in ("UNAVAILABLE", "TLS refused") or outcome.startswith(("refused", "no answer"))


def try_door(name: str, port: int, ca: bytes | None) -> dict[str, list[str]]:
    """The outcomes of the read and the write on port ``name``: each in plain text, then over TLS (gRPC: TLS
    trusting ``ca``, when given)."""
    outcomes = {}
    for what, (kind, *probe) in PROBES[name].items():
        if kind == "http":
            outcomes[what] = [http_call(port, *probe, tls=False), http_call(port, *probe, tls=True)]
        elif kind == "grpc":
            outcomes[what] = [grpc_call(port, *probe)] + ([grpc_call(port, *probe, ca=ca)] if ca else [])
        else:
            outcomes[what] = [postgres_call(port, *probe)]
    return outcomes


def all_shut(outcomes: dict[str, list[str]]) -> bool:
    return all(shut(outcome) for found in outcomes.values() for outcome in found)


def stack_pids(folder: Path) -> set[int]:
    """The processes of the stack under ``folder`` (.team): the sessions of MLflow and SeaweedFS (each is
    started in its own), PostgreSQL's postmaster and its children."""
    sessions = {servers.running_pid(folder / "mlflow" / "mlflow.pid"), servers.running_pid(folder / "s3" / "weed.pid")}
    postmaster_pid = servers.postgres_cluster(folder / "postgres") / "data" / "postmaster.pid"
    postmaster = int(postmaster_pid.read_text().split()[0]) if postmaster_pid.exists() else None
    pids = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        pid, parent, session = int(stat.parent.name), int(fields[1]), int(fields[3])
        if session in sessions or postmaster in (pid, parent):
            pids.add(pid)
    return pids


def listening_ports(pids: set[int]) -> set[int]:
    """Every TCP port one of ``pids`` listens on, on any address (``ss -ltnp``)."""
    found = set()
    for line in subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout.splitlines():
        if {int(pid) for pid in re.findall(r"pid=(\d+)", line)} & pids:
            found.add(int(line.split()[3].rsplit(":", 1)[1]))
    return found


def report(folder: Path, ports: dict[str, int]) -> bool:
    """Try every door of the stack under ``folder`` (``ports``: its ports by name), print what each answered;
    True when all are shut."""
    ca_file = folder / "s3" / "tls" / "ca.crt"
    ca = ca_file.read_bytes() if ca_file.exists() else None
    names = {port: name for name, port in ports.items()}
    listening = listening_ports(stack_pids(folder))
    every_shut = True
    for port in sorted(listening):
        if port not in names:
            every_shut = False
            print(f"{port:>5}  {'?':<17} OPEN  (no probe knows this port)")
            continue
        outcomes = try_door(names[port], port, ca)
        every_shut &= all_shut(outcomes)
        said = "; ".join(f"{what}: {', '.join(found)}" for what, found in outcomes.items())
        print(f"{port:>5}  {names[port]:<17} {'shut' if all_shut(outcomes) else 'OPEN'}  ({said})")
    return every_shut and bool(listening)
