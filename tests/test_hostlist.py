"""Slurm host lists and tasks-per-node lists expand exactly as ``scontrol show hostnames`` would."""

import os
import stat

import pytest

from pretrain.cluster.hostlist import expand_nodelist, parse_nodelist, parse_tasks_per_node


@pytest.mark.parametrize(
    ("nodelist", "hosts"),
    [
        ("localhost", ["localhost"]),
        ("node1,node2", ["node1", "node2"]),
        ("gpu[001-004,010],cpu7", ["gpu001", "gpu002", "gpu003", "gpu004", "gpu010", "cpu7"]),
        ("n[8-11]", ["n8", "n9", "n10", "n11"]),
        ("n[08-11]", ["n08", "n09", "n10", "n11"]),
        ("n[098-101]", ["n098", "n099", "n100", "n101"]),
        ("a[1,3],b[2-3]", ["a1", "a3", "b2", "b3"]),
        ("gpu[1-2]-ib", ["gpu1-ib", "gpu2-ib"]),
        ("rack[1-2]-n[1-2]", ["rack1-n1", "rack1-n2", "rack2-n1", "rack2-n2"]),
        ("x[5]", ["x5"]),
        ("node-a,node-b[1-2]", ["node-a", "node-b1", "node-b2"]),
        ("  gpu[1-2]\n", ["gpu1", "gpu2"]),
        ("10.0.0.[1-2]", ["10.0.0.1", "10.0.0.2"]),
    ],
)
def test_parse_nodelist_expands_every_form(nodelist, hosts):
    assert parse_nodelist(nodelist) == hosts


@pytest.mark.parametrize(
    ("nodelist", "message"),
    [
        ("", "empty Slurm host list"),
        ("gpu[1-2", "unbalanced '[' in Slurm host list 'gpu[1-2'"),
        ("gpu1-2]", "unbalanced ']' in Slurm host list 'gpu1-2]'"),
        ("gpu[[1]]", "nested '[' in Slurm host list 'gpu[[1]]'"),
        ("gpu[4-2]", "descending range '4-2' in Slurm host list 'gpu[4-2]'"),
        ("gpu[a-b]", "bad range 'a-b' in Slurm host list 'gpu[a-b]'"),
        ("gpu1,,gpu2", "empty entry in Slurm host list 'gpu1,,gpu2'"),
    ],
)
def test_parse_nodelist_rejects_malformed_lists(nodelist, message):
    with pytest.raises(ValueError) as err:
        parse_nodelist(nodelist)
    assert str(err.value) == message


@pytest.mark.parametrize(
    ("spec", "counts"),
    [("4", [4]), ("4(x2)", [4, 4]), ("2(x3),1", [2, 2, 2, 1]), ("8,4(x2),1", [8, 4, 4, 1])],
)
def test_parse_tasks_per_node(spec, counts):
    assert parse_tasks_per_node(spec) == counts


def test_parse_tasks_per_node_rejects_garbage():
    with pytest.raises(ValueError, match=r"^bad Slurm tasks-per-node entry '4\(2\)' in '4\(2\)'$"):
        parse_tasks_per_node("4(2)")


def _stub_scontrol(tmp_path, script):
    stub = tmp_path / "scontrol"
    stub.write_text("#!/bin/sh\n" + script)
    stub.chmod(stub.stat().st_mode | stat.S_IEXEC)
    return str(tmp_path) + os.pathsep + "/usr/bin:/bin"


def test_expand_nodelist_prefers_scontrol(tmp_path):
    path = _stub_scontrol(tmp_path, '[ "$1 $2" = "show hostnames" ] && printf "alpha\\nbeta\\n"\n')
    assert expand_nodelist("whatever[1-2]", path=path) == ["alpha", "beta"]


def test_expand_nodelist_falls_back_when_scontrol_fails(tmp_path):
    path = _stub_scontrol(tmp_path, "exit 1\n")
    assert expand_nodelist("gpu[1-2]", path=path) == ["gpu1", "gpu2"]
    assert expand_nodelist("gpu[1-2]", path=str(tmp_path / "empty")) == ["gpu1", "gpu2"]
