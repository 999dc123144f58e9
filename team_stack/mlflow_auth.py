"""MLflow's basic-auth with one rule more: only an admin renames a registered model.

In MLflow 3.17's basic-auth, renaming needs only can_update, as registering a version and setting an alias do,
so the EDIT a member needs would let them rename the team's models. The server's basic_auth.ini names
``authenticate_request`` as its ``authorization_function``: MLflow's hook for custom authentication, which
basic-auth calls first on every request (its FastAPI routes too), before any permission check. It logs in as
basic-auth does, then answers 403 to a rename, on every path MLflow routes renames to, from anyone but an admin.
"""

from __future__ import annotations

from flask import Response, request
from mlflow.protos.model_registry_pb2 import ModelRegistryService, RenameRegisteredModel
from mlflow.server import auth
from mlflow.server.handlers import get_service_endpoints
from werkzeug.datastructures import Authorization

# Every path of the RenameRegisteredModel call (/api/2.0/..., /ajax-api/2.0/..., any later version), from
# MLflow's own route table
RENAME_PATHS = frozenset(
    path
    for path, request_class, _ in get_service_endpoints(ModelRegistryService, lambda request_class: request_class)
    if request_class is RenameRegisteredModel
)


def authenticate_request() -> Authorization | Response:
    authorization = auth.authenticate_request_basic_auth()
    if (
        request.path in RENAME_PATHS
        and isinstance(authorization, Authorization)
        and not auth.store.get_user(authorization.username).is_admin
    ):
        return auth.make_forbidden_response()
    return authorization
