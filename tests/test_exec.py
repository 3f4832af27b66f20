"""``thingdoer exec``: a process run in a running container through apid → the node agent →
``runc exec``; its stdout and stderr arrive apart and the CLI exits with its exit code.
Real etcd, daemons and runc."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from thingdoer.errors import ThingdoerError
from thingdoer.models import streams

from .conftest import needs_etcd, needs_root, needs_runc, pod_manifest



def thingdoer(cluster, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "thingdoer", "--server", cluster.server, *args],
                          capture_output=True, text=True, timeout=60)


@pytest.mark.runc
@pytest.mark.etcd
@needs_root
@needs_runc
@needs_etcd
def test_exec_streams_output_apart_and_exits_with_the_commands_code(cluster):
    cluster.add_worker("node-a")
    cluster.apply(pod_manifest("box", ["sh", "-c", "echo hello > /tmp/greeting; sleep 1000"]))
    cluster.wait_phase("box", "Running")

    run = thingdoer(cluster, "exec", "box", "--", "sh", "-c",
                    "cat /tmp/greeting; echo to-stderr >&2; exit 5")
    assert (run.returncode, run.stdout, run.stderr) == (5, "hello\n", "to-stderr\n")

    run = thingdoer(cluster, "exec", "box", "-c", "main", "--", "hostname")
    assert (run.returncode, run.stdout) == (0, "box\n")

    frames = list(cluster.client.exec("default", "box", ["ls", "/no/such/dir"]))
    channels = [c for c, _ in frames]
    assert channels[-1] == streams.STATUS and streams.STDERR in channels
    assert streams.exit_code(json.loads(frames[-1][1])) != 0


@pytest.mark.runc
@pytest.mark.etcd
@needs_root
@needs_runc
@needs_etcd
def test_exec_refuses_a_container_that_is_not_running(cluster):
    cluster.add_worker("node-a")
    cluster.apply(pod_manifest("done", ["true"]))
    cluster.wait_phase("done", "Succeeded")
    with pytest.raises(ThingdoerError, match="not running"):
        list(cluster.client.exec("default", "done", ["true"]))
    run = thingdoer(cluster, "exec", "done", "--", "true")
    assert run.returncode == 1 and run.stderr.startswith("error: ") and "not running" in run.stderr
    assert "Traceback" not in run.stderr


@pytest.mark.parametrize("chunk", [1, 3, 5, 1000])
def test_frames_survive_any_chunking_and_carry_the_exit_code(chunk):
    """The exec wire format (pure): frames split anywhere are reassembled in order, and the
    final Status gives back the exit code."""
    wire = (streams.frame(streams.STDOUT, b"out") + streams.frame(streams.STDERR, b"")
            + streams.frame(streams.STDERR, b"e" * 300) + streams.exit_status(42))
    reader = streams.FrameReader()
    frames = [f for i in range(0, len(wire), chunk) for f in reader.feed(wire[i:i + chunk])]
    assert [c for c, _ in frames] == [streams.STDOUT, streams.STDERR, streams.STDERR, streams.STATUS]
    assert frames[0][1] == b"out" and frames[2][1] == b"e" * 300
    assert streams.exit_code(json.loads(frames[3][1])) == 42
    assert streams.exit_code(json.loads(streams.exit_status(0)[5:])) == 0


@pytest.mark.runc
@pytest.mark.etcd
@pytest.mark.kubectl
@needs_root
@needs_runc
@needs_etcd
@pytest.mark.skipif(not shutil.which("kubectl"), reason="kubectl is not installed")
def test_kubectl_exec_speaks_the_websocket_channel_protocol(cluster, tmp_path):
    """kubectl exec (websocket, v5/v4.channel.k8s.io): output on its streams, exit code back."""
    from .test_kubectl import Kubectl

    cluster.add_worker("node-a")
    cluster.apply(pod_manifest("box", ["sleep", "1000"]))
    cluster.wait_phase("box", "Running")
    kubectl = Kubectl(cluster.server, tmp_path)
    run = kubectl.run("exec", "box", "--", "sh", "-c", "echo hi; echo there >&2; exit 4")
    assert (run.returncode, run.stdout, run.stderr.strip().splitlines()[0]) == (4, "hi\n", "there"), run.stderr
    assert kubectl.ok("exec", "box", "-c", "main", "--", "hostname") == "box\n"
