"""Pure unit tests of the API edge: selectors, table rows, and error ↔ Status mapping."""

from datetime import datetime, timedelta, timezone

import pytest

from thingdoer.api.selectors import field_selector, label_selector
from thingdoer.api.status import error_from_status, status_body
from thingdoer.api.tables import NODE_COLUMNS, POD_COLUMNS, age, node_row, pod_row, pod_status_text, table
from thingdoer.errors import (AlreadyExists, BadRequest, Cause, Conflict, Gone, Invalid, NotFound,
                              ThingdoerError, Unavailable)
from thingdoer.models import Node, Pod


def make_pod(name: str = "web", *, labels: dict | None = None, node: str | None = None, phase: str = "Pending",
             namespace: str | None = "default", reason: str | None = None, statuses: list | None = None,
             deleting: bool = False, containers: int = 1, pod_ip: str | None = None,
             created: str | None = None) -> Pod:
    meta = {"name": name, "namespace": namespace, "labels": labels, "creationTimestamp": created}
    if deleting:
        meta["deletionTimestamp"] = "2024-01-01T00:00:00Z"
    return Pod.model_validate({
        "metadata": meta,
        "spec": {"nodeName": node, "containers": [{"name": f"c{i}", "image": "busybox"} for i in range(containers)]},
        "status": {"phase": phase, "reason": reason, "containerStatuses": statuses, "podIP": pod_ip}})


def cstatus(state: dict, *, name: str = "c0", ready: bool = False, restarts: int = 0) -> dict:
    return {"name": name, "image": "busybox", "state": state, "ready": ready, "restartCount": restarts}


WAITING = {"waiting": {"reason": "ContainerCreating"}}
RUNNING_STATE = {"running": {"startedAt": "2024-01-01T00:00:00Z"}}
COMPLETED = {"terminated": {"exitCode": 0, "reason": "Completed"}}
ERROR = {"terminated": {"exitCode": 1, "reason": "Error"}}


# --- selectors --------------------------------------------------------------------------------

LABELLED = make_pod(labels={"env": "prod", "tier": "web", "app.kubernetes.io/name": "shop"})
UNLABELLED = make_pod(labels=None)


@pytest.mark.parametrize("selector, labelled, unlabelled", [
    ("env=prod", True, False),
    ("env==prod", True, False),
    (" env = prod ", True, False),
    ("env=dev", False, False),
    ("env!=dev", True, True),            # != also matches objects without the label
    ("env!=prod", False, True),
    ("env", True, False),                # existence
    ("missing", False, False),
    ("env=prod,tier=web", True, False),  # terms are ANDed
    ("env=prod,tier=db", False, False),
    ("app.kubernetes.io/name=shop", True, False),
    ("env=prod,,", True, False),         # empty terms are ignored
    ("", True, True),
    (None, True, True),
])
def test_label_selector(selector, labelled, unlabelled):
    """label_selector() implements =, ==, != and existence, ANDed, over metadata.labels."""
    match = label_selector(selector)
    assert match(LABELLED) is labelled
    assert match(UNLABELLED) is unlabelled


@pytest.mark.parametrize("selector", ["!env", "env in (prod)", "a=b=c", "env=prod/x", "=prod", "env>1"])
def test_label_selector_refuses_unparseable(selector):
    """Selectors outside key=value / key!=value / key are a BadRequest naming the selector."""
    with pytest.raises(BadRequest, match="unable to parse labelSelector"):
        label_selector(selector)


@pytest.mark.parametrize("parse, selector", [(label_selector, "env staging"),
                                             (field_selector, "metadata.name other")])
def test_selector_with_a_space_instead_of_an_operator_is_refused(parse, selector):
    """'key value' without an operator is unparseable, not an existence test."""
    with pytest.raises(BadRequest):
        parse(selector)


@pytest.mark.parametrize("selector, matches", [
    ("metadata.name=web", True),
    ("metadata.name!=web", False),
    ("metadata.namespace=default", True),
    ("spec.nodeName=", False),           # unscheduled pods: nodeName is ""
    ("spec.nodeName=n1", True),
    ("spec.nodeName!=n1", False),
    ("status.phase=Running", True),
    ("status.phase!=Succeeded,metadata.name=web", True),
    ("status.phase=Running,metadata.name=other", False),
])
def test_field_selector_on_a_bound_pod(selector, matches):
    """field_selector() compares the supported fields of the object."""
    assert field_selector(selector)(make_pod(node="n1", phase="Running")) is matches


def test_field_selector_unbound_pod_and_missing_namespace():
    """An unbound pod has spec.nodeName "" and a namespace-less object namespace ""."""
    pod = make_pod(namespace=None)
    assert field_selector("spec.nodeName=")(pod)
    assert field_selector("metadata.namespace=")(pod)


def test_field_selector_on_a_node():
    """Fields a Node lacks (spec.nodeName, status.phase) read as empty rather than failing."""
    node = Node.model_validate({"metadata": {"name": "n1"}})
    assert field_selector("metadata.name=n1,spec.nodeName=,status.phase=")(node)


@pytest.mark.parametrize("selector, message", [
    ("metadata.labels=x", '"metadata.labels" is not a known field selector'),
    ("spec.hostname=x", "use one of metadata.name, metadata.namespace, spec.nodeName, status.phase"),
    ("status.phase in (Running)", "unable to parse fieldSelector"),
])
def test_field_selector_refuses_unknown_fields(selector, message):
    """Unknown fields and unparseable terms are a BadRequest saying what is accepted."""
    with pytest.raises(BadRequest) as caught:
        field_selector(selector)
    assert message in str(caught.value)


# --- tables: age ------------------------------------------------------------------------------

NOW = datetime(2024, 6, 1, 12, 0, 0, tzinfo=timezone.utc)


def ago(seconds: int, now: datetime = NOW) -> str:
    return (now - timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")


def hours_ago(hours: int) -> str:
    """A timestamp against the real clock, far enough from a unit boundary to be stable."""
    return ago(hours * 3600 + 1800, datetime.now(timezone.utc))


@pytest.mark.parametrize("seconds, text", [
    (-30, "0s"),            # clock skew: never negative
    (0, "0s"), (59, "59s"), (119, "119s"),
    (120, "2m"), (121, "2m1s"), (599, "9m59s"),
    (600, "10m"), (659, "10m"), (179 * 60 + 59, "179m"),
    (3 * 3600, "3h"), (47 * 3600 + 3599, "47h"),
    (48 * 3600, "2d"), (10 * 86400 + 5, "10d"),
])
def test_age_boundaries(seconds, text):
    """age() switches units at kubectl's boundaries: 120s, 10m, 180m, 48h."""
    assert age(ago(seconds), NOW) == text


@pytest.mark.parametrize("timestamp", [None, ""])
def test_age_unknown(timestamp):
    """An object without creationTimestamp has age <unknown>."""
    assert age(timestamp, NOW) == "<unknown>"


# --- tables: pod status -----------------------------------------------------------------------

@pytest.mark.parametrize("pod, text", [
    (make_pod(phase="Running", deleting=True, statuses=[cstatus(RUNNING_STATE)]), "Terminating"),
    (make_pod(phase="Failed", reason="NodeLost", deleting=True), "Terminating"),
    (make_pod(phase="Failed", reason="NodeLost", statuses=[cstatus(ERROR)]), "NodeLost"),
    (make_pod(phase="Pending", reason="Unschedulable"), "Unschedulable"),
    (make_pod(phase="Succeeded", statuses=[cstatus(COMPLETED)]), "Completed"),
    (make_pod(phase="Failed", statuses=[cstatus(ERROR)]), "Error"),
    (make_pod(phase="Pending", statuses=[cstatus(WAITING)]), "ContainerCreating"),
    (make_pod(phase="Pending", statuses=[cstatus({"waiting": {"reason": "ErrImagePull"}})]), "ErrImagePull"),
    (make_pod(phase="Running", statuses=[cstatus(RUNNING_STATE)]), "Running"),
    # While the pod runs, a container that already completed does not name its status.
    (make_pod(phase="Running", containers=2,
              statuses=[cstatus(COMPLETED), cstatus(RUNNING_STATE, name="c1")]), "Running"),
    (make_pod(phase="Pending"), "Pending"),
    (make_pod(phase="Unknown"), "Unknown"),
])
def test_pod_status_text(pod, text):
    """STATUS shows Terminating, else the pod reason, else a container's reason, else the phase."""
    assert pod_status_text(pod) == text


def test_pod_row_cells():
    """A pod row has name, ready/total, status, summed restarts, age, IP and node."""
    pod = make_pod(phase="Running", containers=2, node="n1", pod_ip="10.1.0.4", created=hours_ago(5), statuses=[
        cstatus(RUNNING_STATE, ready=True, restarts=2), cstatus(WAITING, name="c1", restarts=1)])
    row = pod_row(pod)
    assert row == ["web", "1/2", "ContainerCreating", "3", "5h", "10.1.0.4", "n1"]
    assert len(row) == len(POD_COLUMNS)


def test_unscheduled_pod_row_shows_none():
    """An unscheduled pod shows <none> for IP and node, 0/N ready and no restarts."""
    assert pod_row(make_pod())[1:] == ["0/1", "Pending", "0", "<unknown>", "<none>", "<none>"]


# --- tables: table() --------------------------------------------------------------------------

def make_node(name: str = "n1", *, ready: bool = True, cordoned: bool = False) -> Node:
    return Node.model_validate({
        "metadata": {"name": name, "creationTimestamp": hours_ago(3)},
        "spec": {"unschedulable": cordoned or None},
        "status": {"allocatable": {"cpu": "4", "memory": "8Gi"},
                   "conditions": [{"type": "Ready", "status": "True" if ready else "Unknown"}],
                   "addresses": [{"type": "InternalIP", "address": "192.168.1.5"}],
                   "nodeInfo": {"kubeletVersion": "v1.32.0+thingdoer", "osImage": "Debian",
                                "kernelVersion": "6.1.0", "containerRuntimeVersion": "runc://1.1"}}})


@pytest.mark.parametrize("kind, columns, wide", [
    ("Pod", POD_COLUMNS, ["IP", "Node"]),
    ("Node", NODE_COLUMNS, ["Internal-IP", "CPU", "Memory", "OS-Image", "Kernel-Version", "Container-Runtime"]),
])
def test_table_column_definitions(kind, columns, wide):
    """Table columns carry kubectl's fields; only the -o wide columns have priority 1."""
    t = table(kind, [])
    assert (t["kind"], t["apiVersion"]) == ("Table", "meta.k8s.io/v1")
    defs = t["columnDefinitions"]
    assert [d["name"] for d in defs] == [c[0] for c in columns]
    assert [d["name"] for d in defs if d["priority"] == 1] == wide
    assert all(d["priority"] in (0, 1) for d in defs)
    assert set(defs[0]) == {"name", "type", "format", "description", "priority"}
    assert [d["format"] for d in defs] == ["name"] + [""] * (len(defs) - 1)
    assert t["rows"] == []


def test_pod_table_rows_carry_cells_and_partial_metadata():
    """Each row has the pod's cells and a PartialObjectMetadata with its metadata."""
    pods = [make_pod("a", labels={"x": "1"}), make_pod("b")]
    t = table("Pod", pods, resource_version="42")
    assert t["metadata"] == {"resourceVersion": "42"}
    assert [r["cells"] for r in t["rows"]] == [pod_row(p) for p in pods]
    obj = t["rows"][0]["object"]
    assert (obj["kind"], obj["apiVersion"]) == ("PartialObjectMetadata", "meta.k8s.io/v1")
    assert obj["metadata"] == {"name": "a", "namespace": "default", "labels": {"x": "1"}}


@pytest.mark.parametrize("include, expected", [
    ("None", None),
    ("Metadata", {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                  "metadata": {"name": "a", "namespace": "default"}}),
])
def test_table_include_object_none_or_metadata(include, expected):
    """includeObject=None drops the object; Metadata (the default) carries PartialObjectMetadata."""
    row = table("Pod", [make_pod("a")], include_object=include)["rows"][0]
    assert row.get("object") == expected
    assert row["cells"] == pod_row(make_pod("a"))
    assert table("Pod", [make_pod("a")])["rows"][0]["object"]["kind"] == "PartialObjectMetadata"


def test_table_include_object_whole_object():
    """includeObject=Object carries the full object, so kubectl can --sort-by any field."""
    pod = make_pod("a", node="n1", phase="Running")
    assert table("Pod", [pod], include_object="Object")["rows"][0]["object"] == pod.dump()


@pytest.mark.parametrize("ready, cordoned, status", [
    (True, False, "Ready"), (False, False, "NotReady"),
    (True, True, "Ready,SchedulingDisabled"), (False, True, "NotReady,SchedulingDisabled"),
])
def test_node_table_rows(ready, cordoned, status):
    """A node row shows Ready/NotReady (plus SchedulingDisabled), version, address and capacity."""
    t = table("Node", [make_node(ready=ready, cordoned=cordoned)])
    cells = t["rows"][0]["cells"]
    assert cells == ["n1", status, "<none>", "3h", "v1.32.0+thingdoer", "192.168.1.5", "4", "8Gi",
                     "Debian", "6.1.0", "runc://1.1"]
    assert len(cells) == len(NODE_COLUMNS)


def test_node_row_without_reports():
    """A node that never reported shows NotReady, <none> address and empty info cells."""
    node = Node.model_validate({"metadata": {"name": "n2"}})
    assert node_row(node) == ["n2", "NotReady", "<none>", "<unknown>", "", "<none>", "", "", "", "", ""]


# --- status -----------------------------------------------------------------------------------

@pytest.mark.parametrize("err, code, reason", [
    (NotFound('pods "web" not found'), 404, "NotFound"),
    (AlreadyExists('pods "web" already exists'), 409, "AlreadyExists"),
    (Conflict("the object has been modified"), 409, "Conflict"),
    (Invalid(Cause("spec.containers[0].image", "Required value"), kind="Pod", name="web"), 422, "Invalid"),
    (Gone("too old resource version"), 410, "Expired"),
    (BadRequest("not JSON"), 400, "BadRequest"),
    (Unavailable("etcd is down"), 503, "ServiceUnavailable"),
    (ThingdoerError("a bug"), 500, "InternalError"),
])
def test_status_body_codes_and_reasons(err, code, reason):
    """Every error kind maps to its HTTP code and a Kubernetes Status with its reason and message."""
    got_code, body = status_body(err)
    assert got_code == code
    assert body == {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                    "message": str(err), "reason": reason, "code": code,
                    **({"details": body["details"]} if isinstance(err, Invalid) else {})}


@pytest.mark.parametrize("kind, name, details", [
    ("", "", None), ("pods", "", {"kind": "pods"}), ("", "web", {"name": "web"}),
    ("pods", "web", {"kind": "pods", "name": "web"}),
])
def test_status_body_details(kind, name, details):
    """details carries the kind and name when given, and is absent otherwise."""
    _, body = status_body(NotFound("x"), kind=kind, name=name)
    assert body.get("details") == details


def test_status_body_invalid_lists_every_cause():
    """An Invalid Status lists one cause per bad field: its path, its message, its Kubernetes type."""
    err = Invalid([Cause("spec.containers[0].image", "Required value"),
                   Cause("spec.restartPolicy", 'Unsupported value: "Sometimes"')], kind="Pod", name="web")
    _, body = status_body(err, kind="pods", name="web")
    assert body["message"] == ('Pod "web" is invalid: spec.containers[0].image: Required value, '
                               'spec.restartPolicy: Unsupported value: "Sometimes"')
    assert body["details"] == {"kind": "pods", "name": "web", "causes": [
        {"reason": "FieldValueRequired", "field": "spec.containers[0].image",
         "message": "Required value"},
        {"reason": "FieldValueNotSupported", "field": "spec.restartPolicy",
         "message": 'Unsupported value: "Sometimes"'}]}


@pytest.mark.parametrize("err", [
    NotFound('pods "web" not found'), AlreadyExists('pods "web" already exists'),
    Conflict("the object has been modified"), Gone("too old"), BadRequest("not JSON"),
    Unavailable("etcd is down"),
    Invalid(Cause("spec.containers[0].image", "Required value"), kind="Pod", name="web"),
])
def test_error_from_status_round_trips(err):
    """error_from_status(status_body(err)) rebuilds the same kind with the same message."""
    back = error_from_status(*status_body(err, kind="pods", name="web"), "fallback")
    assert type(back) is type(err)
    assert str(back) == str(err)


@pytest.mark.parametrize("code, body, kind, message", [
    (404, None, NotFound, "fallback"),                      # no body: the fallback message
    (409, {"message": "m"}, AlreadyExists, "m"),            # 409 without reason Conflict
    (409, {"message": "m", "reason": "Conflict"}, Conflict, "m"),
    (422, {"message": "m"}, Invalid, "m"),
    (500, {"message": "m", "reason": "InternalError"}, ThingdoerError, "m"),  # a server bug: not retryable
    (502, {}, Unavailable, "fallback"),
    (418, {"message": "teapot"}, ThingdoerError, "teapot"),
])
def test_error_from_status_by_code(code, body, kind, message):
    """The client maps codes (and reason Conflict) to kinds, using the fallback when no message."""
    err = error_from_status(code, body, "fallback")
    assert type(err) is kind
    assert str(err) == message


def test_a_field_selector_without_a_value_is_refused():
    """``spec.nodeName`` alone would match everything: refuse it and say how to write one."""
    with pytest.raises(BadRequest, match="needs a value"):
        field_selector("spec.nodeName")
