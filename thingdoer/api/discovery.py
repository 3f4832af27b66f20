"""The discovery documents kubectl and client libraries read before anything else.

``/openapi/v3`` exists for one reason: kubectl validates ``create -f`` on the server
("server-side field validation") only if the OpenAPI v3 document shows a ``fieldValidation``
parameter on the pod path; apid then enforces it itself (unknown fields are refused).
"""

from __future__ import annotations

import hashlib
import json
import platform

from .. import __version__

KUBE_MINOR = "32"  # the core/v1 behaviour apid follows


def version() -> dict:
    machine = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
    return {"major": "1", "minor": KUBE_MINOR, "gitVersion": f"v1.{KUBE_MINOR}.0+thingdoer-{__version__}",
            "gitCommit": "", "gitTreeState": "clean", "buildDate": "", "goVersion": "",
            "compiler": "thingdoer", "platform": f"linux/{machine}"}


def api_versions(server_address: str) -> dict:
    return {"kind": "APIVersions", "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}]}


def api_groups() -> dict:
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": []}


def _resource(name: str, kind: str, namespaced: bool, verbs: list[str], short: list[str] | None = None) -> dict:
    entry = {"name": name, "singularName": "" if "/" in name else kind.lower(), "namespaced": namespaced,
             "kind": kind, "verbs": verbs}
    if short:
        entry["shortNames"] = short
    return entry


def core_v1_resources() -> dict:
    read = ["get", "list", "watch"]
    return {"kind": "APIResourceList", "groupVersion": "v1", "resources": [
        _resource("pods", "Pod", True, ["create", "delete"] + read, ["po"]),
        _resource("pods/log", "Pod", True, ["get"]),
        _resource("pods/status", "Pod", True, ["get"]),
        _resource("nodes", "Node", False, ["delete"] + read, ["no"]),
        _resource("namespaces", "Namespace", False, ["get", "list"], ["ns"]),
    ]}


def _gvk(kind: str) -> list[dict]:
    return [{"group": "", "version": "v1", "kind": kind}]


def openapi_v1() -> dict:
    validation = {"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": True}}
    ok = {"responses": {"200": {"description": "OK"}}}

    def op(kind: str, action: str) -> dict:
        return {**ok, "x-kubernetes-action": action, "x-kubernetes-group-version-kind": _gvk(kind)[0],
                "parameters": [validation]}

    return {"openapi": "3.0.0", "info": {"title": "thingdoer", "version": __version__}, "paths": {
        "/api/v1/namespaces/{namespace}/pods": {"post": op("Pod", "post"), "get": op("Pod", "list")},
        "/api/v1/namespaces/{namespace}/pods/{name}": {
            "get": op("Pod", "get"), "patch": op("Pod", "patch"), "put": op("Pod", "put"),
            "delete": op("Pod", "delete")},
        "/api/v1/nodes": {"get": op("Node", "list")},
        "/api/v1/nodes/{name}": {"get": op("Node", "get"), "patch": op("Node", "patch")},
    }, "components": {"schemas": {
        "io.k8s.api.core.v1.Pod": {"type": "object", "x-kubernetes-group-version-kind": _gvk("Pod")},
        "io.k8s.api.core.v1.Node": {"type": "object", "x-kubernetes-group-version-kind": _gvk("Node")},
    }}}


def openapi_root() -> dict:
    digest = hashlib.sha256(json.dumps(openapi_v1(), sort_keys=True).encode()).hexdigest()[:16].upper()
    return {"paths": {"api/v1": {"serverRelativeURL": f"/openapi/v3/api/v1?hash={digest}"}}}
