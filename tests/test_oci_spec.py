"""merge_process follows Kubernetes' command/args/env/workingDir rules; runtime_spec is a config
runc accepts (its structure here; real runs are in test_oci_runc.py)."""

import pytest

from thingdoer.errors import Invalid
from thingdoer.oci.spec import CAPABILITIES, merge_process, runtime_spec

IMAGE = {"config": {"Entrypoint": ["/entry"], "Cmd": ["default", "arg"],
                    "Env": ["PATH=/bin", "A=image"], "WorkingDir": "/srv"}}


@pytest.mark.parametrize("command, args, argv", [
    (None, None, ["/entry", "default", "arg"]),          # neither: Entrypoint + Cmd
    (["/cmd"], None, ["/cmd"]),                          # command: replaces Entrypoint, drops Cmd
    (None, ["x", "y"], ["/entry", "x", "y"]),            # args: replaces Cmd only
    (["/cmd"], ["x"], ["/cmd", "x"]),                    # both: command + args
    ([], [], ["/entry", "default", "arg"]),              # empty lists count as unset
])
def test_argv_follows_kubernetes_rules(command, args, argv):
    assert merge_process(IMAGE, command, args, [], None)[0] == argv


def test_image_without_entrypoint_uses_cmd_or_args():
    image = {"config": {"Cmd": ["sh"]}}
    assert merge_process(image, None, None, [], None)[0] == ["sh"]
    assert merge_process(image, None, ["-c", "true"], [], None)[0] == ["-c", "true"]


def test_no_command_anywhere_is_invalid_naming_the_field():
    with pytest.raises(Invalid) as exc:
        merge_process({"config": {}}, None, None, [], None)
    assert exc.value.causes[0].field == "spec.containers[].command"
    with pytest.raises(Invalid):
        merge_process({}, [], None, [], None)  # an image config with no "config" at all


def test_env_overrides_in_place_and_appends_new():
    _, env, _ = merge_process(IMAGE, None, None, [("A", "pod"), ("B", "new")], None)
    assert env == ["PATH=/bin", "A=pod", "B=new"]


def test_env_and_args_expand_pod_variables_like_kubernetes():
    env = [("X", "1"), ("Y", "$(X)-$(NOPE)"), ("Z", "$$(X)")]
    argv, envs, _ = merge_process(IMAGE, ["echo", "$(Y)", "$(A)", "$$", "$("], None, env, None)
    assert envs[-3:] == ["X=1", "Y=1-$(NOPE)", "Z=$(X)"]
    # $(A) is an image variable: Kubernetes only expands the pod's own.
    assert argv == ["echo", "1-$(NOPE)", "$(A)", "$", "$("]


def test_image_argv_is_not_expanded():
    image = {"config": {"Cmd": ["echo", "$(X)"]}}
    assert merge_process(image, None, None, [("X", "1")], None)[0] == ["echo", "$(X)"]


@pytest.mark.parametrize("working_dir, image, cwd", [
    ("/w", IMAGE, "/w"), (None, IMAGE, "/srv"), (None, {"config": {"Cmd": ["sh"]}}, "/"),
])
def test_cwd(working_dir, image, cwd):
    assert merge_process(image, None, None, [], working_dir)[2] == cwd


def spec(**kw):
    base = dict(args=["sh"], env=["A=1"], cwd="/", rootfs="rootfs", hostname="pod-a",
                cgroups_path="/thingdoer/pod-a/c", resources=None)
    return runtime_spec(**{**base, **kw})


def test_runtime_spec_shape():
    s = spec()
    assert s["ociVersion"] == "1.0.2"
    p = s["process"]
    assert p["args"] == ["sh"] and p["cwd"] == "/" and p["terminal"] is False
    assert p["user"] == {"uid": 0, "gid": 0} and p["noNewPrivileges"] is True
    assert "rlimits" not in p  # sessions here lack CAP_SYS_RESOURCE
    caps = p["capabilities"]
    for kind in ("bounding", "effective", "permitted"):
        assert caps[kind] == CAPABILITIES and "CAP_SYS_ADMIN" not in caps[kind]
    assert caps["inheritable"] == [] and caps["ambient"] == []
    assert len(CAPABILITIES) == 14
    assert s["root"] == {"path": "rootfs", "readonly": False}
    assert s["hostname"] == "pod-a"
    assert [m["destination"] for m in s["mounts"]] == [
        "/proc", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue", "/sys", "/sys/fs/cgroup"]
    sys_opts = next(m for m in s["mounts"] if m["destination"] == "/sys")["options"]
    assert {"ro", "nosuid", "noexec", "nodev"} <= set(sys_opts)
    linux = s["linux"]
    assert sorted(n["type"] for n in linux["namespaces"]) == [
        "ipc", "mount", "network", "pid", "uts"]
    assert all("path" not in n for n in linux["namespaces"])
    assert linux["cgroupsPath"] == "/thingdoer/pod-a/c"
    assert linux["resources"] == {"devices": [{"allow": False, "access": "rwm"}]}
    assert "/proc/kcore" in linux["maskedPaths"] and "/proc/sys" in linux["readonlyPaths"]
    assert "annotations" not in s


def test_runtime_spec_adds_path_and_hostname_only_when_missing():
    assert spec()["process"]["env"] == [
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "A=1",
        "HOSTNAME=pod-a"]
    assert spec(env=["PATH=/x", "HOSTNAME=h"])["process"]["env"] == ["PATH=/x", "HOSTNAME=h"]


def test_runtime_spec_resources_readonly_annotations_and_joined_netns():
    resources = {"memory": {"limit": 1 << 26}, "devices": [{"allow": True, "access": "r",
                                                            "type": "c", "major": 1, "minor": 3}]}
    s = spec(resources=resources, readonly_rootfs=True, annotations={"k": "v"},
             join_namespaces={"network": "/run/netns/p"})
    assert s["linux"]["resources"]["memory"] == {"limit": 1 << 26}
    assert s["linux"]["resources"]["devices"][0] == {"allow": False, "access": "rwm"}
    assert s["linux"]["resources"]["devices"][1]["allow"] is True
    assert len(resources["devices"]) == 1  # the caller's dict is not modified
    assert s["root"]["readonly"] is True
    assert s["annotations"] == {"k": "v"}
    assert {"type": "network", "path": "/run/netns/p"} in s["linux"]["namespaces"]
    with pytest.raises(Invalid):
        spec(join_namespaces={"nett": "/x"})
