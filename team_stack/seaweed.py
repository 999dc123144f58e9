"""SeaweedFS's `weed mini` (master, volume, filer, S3 and admin in one process), with no door left open.

S3 (per-person access keys) is the only port meant for clients. Every other port of weed's demands the stack's
client certificate: mutual TLS on the gRPC ports and on the master, volume, filer and admin HTTP ports
(security.toml's [grpc.*] and [https.*], a CA of the stack's own: tls.py). Behind that, the volume and filer
HTTP ports also want a JWT signed with the stack's keys for every read and write ([jwt.*]), as S3 signs them.
The process runs with umask 077, so the unix sockets weed makes for its own gRPC and HTTP are its owner's only.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from team_stack.private import private_folder, write_private
from team_stack.servers import BIN, spawn
from team_stack.tls import make_authority

JWT_KEYS = ("jwt.signing", "jwt.signing.read", "jwt.filer_signing", "jwt.filer_signing.read")
GRPC_COMPONENTS = ("master", "volume", "filer", "s3", "admin", "worker", "msg_broker", "msg_agent", "mq", "client")
HTTPS_COMPONENTS = ("master", "volume", "filer", "admin")


def security_toml(tls: dict[str, Path], jwt_keys: dict[str, str]) -> str:
    """weed's security.toml: JWT keys for volume and filer reads and writes, mutual TLS everywhere but S3."""
    cert, key, ca = (str(tls[name]) for name in ("cert", "key", "ca"))
    lines = []
    for section in JWT_KEYS:
        lines += [f"[{section}]", f'key = "{jwt_keys[section]}"', "expires_after_seconds = 60", ""]
    lines += ["[access]", "ui = false", "", "[filer.expose_directory_metadata]", "enabled = false", ""]
    lines += ["[grpc]", f'ca = "{ca}"', ""]
    for component in GRPC_COMPONENTS:
        lines += [f"[grpc.{component}]", f'cert = "{cert}"', f'key = "{key}"', ""]
    lines += ["[https.client]", "enabled = true", f'cert = "{cert}"', f'key = "{key}"', f'ca = "{ca}"', ""]
    for component in HTTPS_COMPONENTS:
        lines += [f"[https.{component}]", f'cert = "{cert}"', f'key = "{key}"', f'ca = "{ca}"', ""]
    return "\n".join(lines)


def tls_files(folder: Path) -> dict[str, Path]:
    """The stack's CA, and the one certificate weed's parts serve and call each other with."""
    return make_authority(private_folder(folder / "tls"), "doveseg-team-seaweedfs", ["127.0.0.1", "localhost"])


def seaweed_start(folder: Path, ports: dict, identities: dict, buckets: list[str], jwt_keys: dict[str, str]):
    """``identities``: name -> (access key, secret key, buckets it may read, write and list). Runs in
    ``folder``, where weed reads its security.toml."""
    private_folder(folder / "data")
    config = folder / "s3.json"
    write_private(
        config,
        json.dumps(
            {
                "identities": [
                    {
                        "name": name,
                        "credentials": [{"accessKey": key, "secretKey": secret}],
                        "actions": [f"{action}:{bucket}" for bucket in allowed for action in ("Read", "Write", "List")],
                    }
                    for name, (key, secret, allowed) in identities.items()
                ]
            }
        ),
    )
    write_private(folder / "security.toml", security_toml(tls_files(folder), jwt_keys))
    p = ports
    argv = [
        str(BIN / "weed"),
        "mini",
        f"-dir={folder / 'data'}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-s3.config={config}",
        f"-bucket={','.join(buckets)}",
        "-master.telemetry=false",
        f"-s3.port={p['s3']}",
        f"-s3.port.grpc={p['s3_grpc']}",
        f"-master.port={p['weed_master']}",
        f"-master.port.grpc={p['weed_master_grpc']}",
        f"-volume.port={p['weed_volume']}",
        f"-volume.port.grpc={p['weed_volume_grpc']}",
        f"-filer.port={p['weed_filer']}",
        f"-filer.port.grpc={p['weed_filer_grpc']}",
        f"-admin.port={p['weed_admin']}",
        f"-admin.port.grpc={p['weed_admin_grpc']}",
        "-admin.ui=false",
        "-webdav=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-filer.localSocket={folder / 'filer.sock'}",
        f"-s3.localSocket={folder / 's3.sock'}",
    ]
    # WEED_* variables would win over security.toml: weed gets none of the caller's
    env = {name: value for name, value in os.environ.items() if not name.startswith("WEED_")}
    return spawn(argv, folder / "weed.pid", folder / "weed.log", env, cwd=folder)


def bucket_ready(endpoint: str, key: str, secret: str, bucket: str) -> bool:
    import boto3
    import botocore

    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        region_name="us-east-1",
        config=botocore.config.Config(retries={"max_attempts": 1}),
    )
    try:
        client.head_bucket(Bucket=bucket)
        return True
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError):
        return False


def s3_credentials(key: str, secret: str, profile: str) -> str:
    """An AWS shared-credentials file's text: DVC's remote reads a person's key from it (credentialpath and
    profile), so the key is never on a command line nor in .dvc/config.local."""
    return f"[{profile}]\naws_access_key_id = {key}\naws_secret_access_key = {secret}\n"
