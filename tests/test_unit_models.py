"""Pure unit tests of thingdoer.models: quantities, Pod/Node validation and admission, phases."""

from decimal import Decimal

import pytest

from thingdoer.errors import Invalid
from thingdoer.models import (FAILED, PENDING, RUNNING, SUCCEEDED, UNKNOWN, Node, Pod, PodStatus,
                              admit_pod, can_move, is_terminal, parse_object, quantity)
from thingdoer.models.pod import ResourceRequirements

REGEX_HINT = "quantities must match the regular expression"


def pod_data(*containers: dict, name: str = "web", **spec) -> dict:
    """A minimal valid Pod manifest; ``containers`` default to one busybox container."""
    containers = containers or ({"name": "main", "image": "localhost/busybox:latest"},)
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"containers": list(containers), **spec}}


def container(name: str = "main", **fields) -> dict:
    return {"name": name, "image": "localhost/busybox:latest", **fields}


def invalid(data: dict) -> Invalid:
    with pytest.raises(Invalid) as caught:
        parse_object(Pod, data)
    return caught.value


# --- quantity ---------------------------------------------------------------------------------

@pytest.mark.parametrize("text, value", [
    ("250m", Decimal("0.25")),
    ("1.5", Decimal("1.5")),
    ("64Mi", Decimal(64 * 2**20)),
    ("1Ki", Decimal(1024)),
    ("1Ei", Decimal(2**60)),
    ("1G", Decimal(10**9)),
    ("1k", Decimal(1000)),
    ("1E", Decimal(10**18)),              # bare E is the exa suffix, not an exponent
    ("128974848", Decimal(128974848)),
    ("1e3", Decimal(1000)),
    ("1E3", Decimal(1000)),
    ("1.5e3", Decimal(1500)),
    ("1e-3", Decimal("0.001")),
    (".5", Decimal("0.5")),
    ("+2", Decimal(2)),
    ("-1", Decimal(-1)),
    (5, Decimal(5)),                      # YAML integers
    (0.5, Decimal("0.5")),                # YAML floats
])
def test_parse_accepts_kubernetes_forms(text, value):
    """parse() reads every Kubernetes quantity form exactly, in base units."""
    assert quantity.parse(text) == value


@pytest.mark.parametrize("text, needle", [
    ("lots", REGEX_HINT),
    ("", REGEX_HINT),
    ("1.2.3", REGEX_HINT),
    ("0x10", REGEX_HINT),
    ("e3", REGEX_HINT),
    ("1Zi", "unknown suffix 'Zi'"),
    ("1K", "unknown suffix 'K'"),          # Kubernetes spells kilo lower-case
    ("1ee", "unknown suffix 'ee'"),
    (True, "must be a quantity string"),  # YAML booleans are not numbers
])
def test_parse_refuses_malformed_quantities(text, needle):
    """parse() raises ValueError saying what is wrong for anything that is not a quantity."""
    with pytest.raises(ValueError) as caught:
        quantity.parse(text)
    assert needle in str(caught.value)


@pytest.mark.parametrize("text, millis", [
    ("250m", 250), ("1.5", 1500), ("2", 2000), ("0", 0), ("1e3", 1_000_000),
    ("0.1m", 1),       # a fraction of a millicore rounds up
    ("1.0001", 1001),  # rounds up, never down
    ("100u", 1),
])
def test_cpu_millis(text, millis):
    """cpu_millis() converts to whole millicores, rounding up like Kubernetes."""
    assert quantity.cpu_millis(text) == millis


@pytest.mark.parametrize("text, nbytes", [
    ("64Mi", 64 * 2**20), ("1G", 10**9), ("128974848", 128974848), ("1e3", 1000),
    ("1Gi", 2**30), ("0.5", 1), ("1m", 1), ("1.5Ki", 1536),
])
def test_memory_bytes(text, nbytes):
    """memory_bytes() converts to whole bytes, rounding fractions up."""
    assert quantity.memory_bytes(text) == nbytes


@pytest.mark.parametrize("millis, text", [(0, "0"), (250, "250m"), (1000, "1"), (1500, "1500m"), (4000, "4")])
def test_format_cpu(millis, text):
    """format_cpu() writes whole cores bare and anything else in millicores."""
    assert quantity.format_cpu(millis) == text
    assert quantity.cpu_millis(text) == millis


@pytest.mark.parametrize("nbytes, text", [
    (0, "0"), (1000, "1000"), (1536, "1536"), (2048, "2Ki"), (64 * 2**20, "64Mi"), (2**30, "1Gi"),
    (3 * 2**40, "3Ti"), (2**60, "1Ei"), (1025 * 2**20, "1025Mi"),
])
def test_format_memory(nbytes, text):
    """format_memory() uses the largest binary suffix that divides exactly, and round-trips."""
    assert quantity.format_memory(nbytes) == text
    assert quantity.memory_bytes(text) == nbytes


@pytest.mark.parametrize("amount", ["1e9999999", "1e999998"])
def test_absurdly_large_quantity_is_invalid(amount):
    """A quantity too large to count is refused as Invalid, not raised as a decimal error."""
    with pytest.raises(Invalid):
        parse_object(Pod, pod_data(container(resources={"limits": {"cpu": amount}})))


# --- parse_object(Pod) ------------------------------------------------------------------------

def test_parse_object_builds_a_pod_with_defaults():
    """A minimal manifest parses into a Pod with Kubernetes' defaults filled in."""
    pod = parse_object(Pod, pod_data(container(resources={"limits": {"cpu": "500m", "memory": "64Mi"}})))
    assert pod.metadata.name == "web"
    assert pod.key == ("default", "web")
    assert pod.spec.restartPolicy == "Always"
    assert pod.spec.terminationGracePeriodSeconds == 30
    assert pod.status.phase == PENDING
    assert pod.spec.containers[0].resources.limits == {"cpu": "500m", "memory": "64Mi"}


def test_parse_object_keeps_quantities_as_written_and_stringifies_numbers():
    """Quantities are stored as the user wrote them; YAML numbers become strings."""
    pod = parse_object(Pod, pod_data(container(resources={"requests": {"cpu": 1, "memory": "1e3"}})))
    assert pod.spec.containers[0].resources.requests == {"cpu": "1", "memory": "1e3"}


@pytest.mark.parametrize("policy", ["Always", "OnFailure", "Never"])
def test_every_allowed_restart_policy_parses(policy):
    """The three Kubernetes restart policies are accepted."""
    assert parse_object(Pod, pod_data(restartPolicy=policy)).spec.restartPolicy == policy


@pytest.mark.parametrize("data, field, message", [
    (pod_data(container(resources={"limits": {"memory": "lots"}})),
     "spec.containers[0].resources.limits.memory", 'Invalid value: "lots": ' + REGEX_HINT),
    (pod_data(container(resources={"requests": {"cpu": "1Zi"}})),
     "spec.containers[0].resources.requests.cpu", 'Invalid value: "1Zi": unknown suffix'),
    (pod_data(container(foo="bar")),
     "spec.containers[0].foo", "Unsupported value: unknown field"),
    (dict(pod_data(), status={"phase": "Pending", "extra": 1}),
     "status.extra", "Unsupported value: unknown field"),
    (pod_data(name="Web"), "metadata.name", 'Invalid value: "Web": a lowercase RFC 1123 label'),
    (pod_data(name="a" * 64), "metadata.name", "must be no more than 63 characters"),
    (pod_data(name="a/b"), "metadata.name", 'Invalid value: "a/b": a lowercase RFC 1123 label'),
    (pod_data(name=".."), "metadata.name", 'Invalid value: "..": a lowercase RFC 1123 label'),
    (pod_data(container(name="Main")), "spec.containers[0].name", "a lowercase RFC 1123 label"),
    (pod_data(container("a"), container("b"), container("a")),
     "spec.containers[2].name", 'Duplicate value: "a"'),
    (pod_data(container(resources={"requests": {"cpu": "2"}, "limits": {"cpu": "1"}})),
     "spec.containers[0].resources.requests.cpu",
     'Invalid value: "2": must be less than or equal to cpu limit of 1'),
    (pod_data(container(resources={"requests": {"memory": "1Gi"}, "limits": {"memory": "1G"}})),
     "spec.containers[0].resources.requests.memory", "must be less than or equal to memory limit of 1G"),
    (pod_data(container(resources={"limits": {"gpu": "1"}})),
     "spec.containers[0].resources.limits.gpu", 'Unsupported value: "gpu": supported resources: cpu, memory'),
    (pod_data({"name": "main"}), "spec.containers[0].image", "Required value"),
    (pod_data(container(image="")), "spec.containers[0].image", 'Invalid value: "": must be an image reference'),
    (pod_data(container(image="busy box")), "spec.containers[0].image", "must be an image reference"),
    (pod_data(restartPolicy="Sometimes"), "spec.restartPolicy",
     "Unsupported value: \"Sometimes\": supported values: 'Always', 'OnFailure' or 'Never'"),
    (pod_data(container(resources={"limits": {"memory": "-1"}})),
     "spec.containers[0].resources.limits.memory", 'Invalid value: "-1": must be greater than or equal to 0'),
    (pod_data(container(resources={"requests": {"cpu": -5}})),
     "spec.containers[0].resources.requests.cpu", 'Invalid value: "-5": must be greater than or equal to 0'),
    (pod_data(container(workingDir="srv")), "spec.containers[0].workingDir", "must be an absolute path"),
    (pod_data(container(env=[{"name": "A=B"}])), "spec.containers[0].env[0].name", "without '='"),
    ({"metadata": {"name": "web"}, "spec": {"containers": []}}, "spec.containers", "at least 1 item"),
    ({"metadata": {"name": "web"}}, "spec", "Required value"),
    (dict(pod_data(), metadata={"name": "web", "namespace": "Prod"}), "metadata.namespace",
     'Invalid value: "Prod"'),
])
def test_invalid_pod_names_the_field_and_why(data, field, message):
    """Each kind of bad input raises Invalid with a cause naming the field path and the reason."""
    err = invalid(data)
    assert err.kind == "Pod"
    matching = [c for c in err.causes if c.field == field]
    assert matching, f"no cause for {field}: {err.causes}"
    assert message in matching[0].message
    assert f"{field}: {matching[0].message}" in str(err)


def test_bad_memory_message_is_the_kubectl_form():
    """The whole message reads like kubectl's: kind, name, field path, value in quotes."""
    err = invalid(pod_data(container(resources={"limits": {"memory": "lots"}})))
    assert str(err).startswith('Pod "web" is invalid: ')
    assert 'spec.containers[0].resources.limits.memory: Invalid value: "lots"' in str(err)
    assert err.name == "web"


def test_every_bad_field_is_reported_at_once():
    """Several bad fields give one Invalid with one cause each."""
    err = invalid(pod_data(container(image="", resources={"limits": {"memory": "lots"}}),
                           restartPolicy="Sometimes"))
    assert {c.field for c in err.causes} == {"spec.containers[0].image",
                                             "spec.containers[0].resources.limits.memory",
                                             "spec.restartPolicy"}


def test_qualified_resource_name_is_reported_on_its_own_field():
    """An unsupported resource like nvidia.com/gpu is named in the field path, not dumped as a map."""
    err = invalid(pod_data(container(resources={"limits": {"nvidia.com/gpu": "1"}})))
    cause = err.causes[0]
    assert cause.field.startswith("spec.containers[0].resources.limits")
    assert "nvidia.com/gpu" in cause.field
    assert cause.message.startswith('Unsupported value: "nvidia.com/gpu": supported resources: cpu, memory')


@pytest.mark.parametrize("data", [[], "pod", None, 3])
def test_parse_object_refuses_non_maps(data):
    """Anything but a map is refused as Invalid, not a crash."""
    with pytest.raises(Invalid, match="must be a JSON/YAML map"):
        parse_object(Pod, data)


# --- admit_pod --------------------------------------------------------------------------------

def test_admit_pod_fills_in_server_owned_fields():
    """admit_pod sets namespace, a fresh uid and creationTimestamp, and resets status/rv."""
    data = pod_data()
    data["metadata"].update(uid="forged", resourceVersion="7", creationTimestamp="2000-01-01T00:00:00Z",
                            deletionTimestamp="2000-01-01T00:00:00Z")
    data["status"] = {"phase": "Running", "podIP": "10.0.0.9", "reason": "Forged"}
    pod = admit_pod(parse_object(Pod, data), "team-a")
    assert pod.metadata.namespace == "team-a"
    assert pod.metadata.uid and pod.metadata.uid != "forged"
    assert pod.metadata.creationTimestamp and pod.metadata.creationTimestamp.startswith("20")
    assert pod.metadata.creationTimestamp != "2000-01-01T00:00:00Z"
    assert pod.metadata.resourceVersion is None and pod.metadata.deletionTimestamp is None
    assert pod.status == PodStatus()
    assert pod.key == ("team-a", "web")


def test_admit_pod_gives_distinct_uids():
    """Two admissions of the same manifest get different uids."""
    a = admit_pod(parse_object(Pod, pod_data()), "default")
    b = admit_pod(parse_object(Pod, pod_data()), "default")
    assert a.metadata.uid != b.metadata.uid


@pytest.mark.parametrize("namespace", [None, "team-a"])
def test_admit_pod_accepts_matching_or_missing_namespace(namespace):
    """A body namespace equal to the URL's, or none, is accepted."""
    data = pod_data()
    if namespace:
        data["metadata"]["namespace"] = namespace
    assert admit_pod(parse_object(Pod, data), "team-a").metadata.namespace == "team-a"


def test_admit_pod_refuses_namespace_mismatch():
    """A body namespace different from the URL's is refused, naming both."""
    data = pod_data()
    data["metadata"]["namespace"] = "other"
    with pytest.raises(Invalid) as caught:
        admit_pod(parse_object(Pod, data), "team-a")
    assert caught.value.causes[0].field == "metadata.namespace"
    assert '"other"' in str(caught.value) and '"team-a"' in str(caught.value)


def test_admit_pod_generate_name():
    """generateName plus five random characters becomes the name."""
    data = pod_data(name="")
    data["metadata"] = {"generateName": "web-"}
    pod = admit_pod(parse_object(Pod, data), "default")
    assert pod.metadata.name.startswith("web-") and len(pod.metadata.name) == len("web-") + 5


@pytest.mark.parametrize("meta, field", [
    ({}, "metadata.name"),                                   # neither name nor generateName
    ({"generateName": "Web-"}, "metadata.generateName"),     # not a DNS label once suffixed
    ({"generateName": "a" * 60}, "metadata.generateName"),   # too long once suffixed
])
def test_admit_pod_refuses_bad_or_missing_names(meta, field):
    """Missing names and generateNames that make bad names are Invalid on that field."""
    data = pod_data()
    data["metadata"] = meta
    with pytest.raises(Invalid) as caught:
        admit_pod(parse_object(Pod, data), "default")
    assert caught.value.causes[0].field == field


# --- resources --------------------------------------------------------------------------------

@pytest.mark.parametrize("requests, limits, name, expected", [
    ({"cpu": "250m"}, {"cpu": "1"}, "cpu", "250m"),
    (None, {"cpu": "1"}, "cpu", "1"),              # no request: the limit is the request
    ({"memory": "1Mi"}, {"cpu": "1"}, "cpu", "1"),  # per resource
    ({"cpu": "0"}, {"cpu": "1"}, "cpu", "0"),      # an explicit zero request stands
    (None, None, "memory", None),
])
def test_request_falls_back_to_limit(requests, limits, name, expected):
    """ResourceRequirements.request() is the request, else the limit, else None."""
    assert ResourceRequirements(requests=requests, limits=limits).request(name) == expected


def test_total_requests_sums_containers_with_limit_fallback():
    """PodSpec.total_requests() adds every container's effective requests in millis and bytes."""
    pod = parse_object(Pod, pod_data(
        container("a", resources={"requests": {"cpu": "250m", "memory": "64Mi"}}),
        container("b", resources={"limits": {"cpu": "1", "memory": "1G"}}),
        container("c")))
    assert pod.spec.total_requests() == (1250, 64 * 2**20 + 10**9)


# --- phases -----------------------------------------------------------------------------------

ALL_PHASES = [PENDING, RUNNING, SUCCEEDED, FAILED, UNKNOWN]
ALLOWED = {
    PENDING: {PENDING, RUNNING, SUCCEEDED, FAILED, UNKNOWN},
    RUNNING: {RUNNING, SUCCEEDED, FAILED, UNKNOWN},
    UNKNOWN: {UNKNOWN, RUNNING, SUCCEEDED, FAILED},
    SUCCEEDED: {SUCCEEDED},
    FAILED: {FAILED},
}


@pytest.mark.parametrize("old", ALL_PHASES)
@pytest.mark.parametrize("new", ALL_PHASES)
def test_can_move_table(old, new):
    """can_move() allows exactly the transitions of the phase table; nothing goes back to Pending."""
    assert can_move(old, new) is (new in ALLOWED[old])


@pytest.mark.parametrize("terminal", [SUCCEEDED, FAILED])
def test_terminal_phases_are_final(terminal):
    """A Succeeded or Failed pod can move nowhere but its own phase."""
    assert is_terminal(terminal)
    assert [p for p in ALL_PHASES if can_move(terminal, p)] == [terminal]


@pytest.mark.parametrize("phase", [PENDING, RUNNING, UNKNOWN, None, "Bogus"])
def test_non_terminal_phases(phase):
    """Only Succeeded and Failed are terminal."""
    assert not is_terminal(phase)


def test_unknown_from_phase_allows_nothing():
    """A phase outside the table can move nowhere."""
    assert not any(can_move("Bogus", p) for p in ALL_PHASES)


# --- Node -------------------------------------------------------------------------------------

def node(**status) -> Node:
    return parse_object(Node, {"metadata": {"name": "node-1.example"}, "status": status})


@pytest.mark.parametrize("allocatable, expected", [
    ({"cpu": "4", "memory": "8Gi"}, (4000, 8 * 2**30)),
    ({"cpu": "3500m", "memory": "1G"}, (3500, 10**9)),
    ({}, (0, 0)),
])
def test_node_allocatable(allocatable, expected):
    """Node.allocatable() is (millicores, bytes), zero when unreported."""
    assert node(allocatable=allocatable).allocatable() == expected


@pytest.mark.parametrize("conditions, ready", [
    ([{"type": "Ready", "status": "True"}], True),
    ([{"type": "Ready", "status": "False"}], False),
    ([{"type": "Ready", "status": "Unknown"}], False),
    ([{"type": "MemoryPressure", "status": "True"}], False),
    ([], False),
])
def test_node_ready(conditions, ready):
    """Node.ready is true only with a Ready=True condition."""
    assert node(conditions=conditions).ready is ready


@pytest.mark.parametrize("kind, expected", [("InternalIP", "10.0.0.5"), ("Hostname", "node-1"), ("ExternalIP", None)])
def test_node_address(kind, expected):
    """Node.address() finds the address of the asked type (InternalIP by default)."""
    n = node(addresses=[{"type": "Hostname", "address": "node-1"}, {"type": "InternalIP", "address": "10.0.0.5"}])
    assert n.address(kind) == expected
    assert n.address() == "10.0.0.5"


@pytest.mark.parametrize("name", ["node-1.example.com", "n1"])
def test_node_names_may_be_subdomains(name):
    """Node names are DNS subdomains: dots are allowed."""
    assert parse_object(Node, {"metadata": {"name": name}}).metadata.name == name


@pytest.mark.parametrize("name", ["Node1", "a/b", "", "-a"])
def test_node_bad_names_are_invalid(name):
    """Node names that are not DNS subdomains are refused on metadata."""
    with pytest.raises(Invalid) as caught:
        parse_object(Node, {"metadata": {"name": name}})
    assert caught.value.kind == "Node"
    assert "RFC 1123 subdomain" in str(caught.value)


def test_node_bad_name_names_the_name_field():
    """A bad Node name is reported like a bad Pod name: on metadata.name, quoting the name."""
    with pytest.raises(Invalid) as caught:
        parse_object(Node, {"metadata": {"name": "Node1"}})
    cause = caught.value.causes[0]
    assert cause.field == "metadata.name"
    assert cause.message.startswith('Invalid value: "Node1": ')


@pytest.mark.parametrize("text", [" 1", "1 ", "64 Mi"])
def test_quantities_with_whitespace_are_refused(text):
    """Kubernetes refuses surrounding or inner spaces; so do we, rather than guess."""
    with pytest.raises(ValueError):
        quantity.parse(text)
