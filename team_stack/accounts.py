"""The team's MLflow accounts and what each may do, set through the server's REST API as its admin.

The permission model (MLflow basic-auth):
- ``default_permission = READ``: every signed-in user reads every experiment, run and model; a request
  without valid credentials gets nothing (401).
- The team's experiment and registered models (params.yaml's ``mlflow.experiment`` and
  ``mlflow.registered_models``) are created by the admin, who alone may delete them, rename them (the
  server's team_stack.mlflow_auth) or change who may do what. Each member gets EDIT on the experiment
  (create runs and log to them; not delete or restore runs) and EDIT on each registered model (register
  versions, tag them, set an alias such as ``champion``; not delete a model, a version or an alias, which
  needs MANAGE).
- What a member creates for themself (a scratch experiment) is theirs: the others only read it.
"""

from __future__ import annotations

import requests

from team_stack.servers import StackError

API = "/api/2.0/mlflow"


class Admin:
    def __init__(self, uri: str, password: str):
        self.uri, self.auth = uri.rstrip("/"), ("admin", password)

    def call(self, method: str, path: str, ok=(200,), **kwargs) -> requests.Response:
        response = requests.request(method, self.uri + path, auth=self.auth, timeout=30, **kwargs)
        if response.status_code not in ok:
            raise StackError(f"MLflow {method} {path} answered {response.status_code}: {response.text[:200]}")
        return response

    def ensure_user(self, username: str, password: str) -> None:
        if self.call("GET", f"{API}/users/get", ok=(200, 404), params={"username": username}).status_code == 404:
            self.call("POST", f"{API}/users/create", json={"username": username, "password": password})

    def ensure_experiment(self, name: str, tags: dict[str, str]) -> str:
        found = self.call("GET", f"{API}/experiments/get-by-name", ok=(200, 404), params={"experiment_name": name})
        if found.status_code == 200:
            return found.json()["experiment"]["experiment_id"]
        created = self.call(
            "POST",
            f"{API}/experiments/create",
            json={"name": name, "tags": [{"key": k, "value": v} for k, v in tags.items()]},
        )
        return created.json()["experiment_id"]

    def ensure_registered_model(self, name: str) -> None:
        if self.call("GET", f"{API}/registered-models/get", ok=(200, 404), params={"name": name}).status_code == 404:
            self.call("POST", f"{API}/registered-models/create", json={"name": name})

    def grant(self, username: str, resource_type: str, resource_id: str, permission: str) -> None:
        """Set (not add to) the user's permission on one resource: revoke what a previous up granted."""
        resource = {"username": username, "resource_type": resource_type, "resource_id": resource_id}
        self.call("POST", "/api/3.0/mlflow/users/permissions/revoke", ok=(200, 400, 404), json=resource)
        self.call("POST", "/api/3.0/mlflow/users/permissions/grant", json={**resource, "permission": permission})


def set_up_team(
    uri: str,
    admin_password: str,
    passwords: dict[str, str],
    experiment: str,
    experiment_tags: dict[str, str],
    registered_models: list[str],
) -> None:
    admin = Admin(uri, admin_password)
    experiment_id = admin.ensure_experiment(experiment, experiment_tags)
    for name in registered_models:
        admin.ensure_registered_model(name)
    for username, password in passwords.items():
        admin.ensure_user(username, password)
        admin.grant(username, "experiment", experiment_id, "EDIT")
        for name in registered_models:
            admin.grant(username, "registered_model", name, "EDIT")
