"""DomainPlan <-> the libxl-style config a save file's xl header carries."""
from __future__ import annotations

from pathlib import Path

from xenpy.toolstack.domain import DomainSpec
from xenpy.toolstack.hostd import DomainPlan

KERNEL = Path(__file__).resolve().parents[2] / "guests" / "build" / "hello-x86_64.elf"


def test_round_trip(tmp_path):
    spec = f"format=raw, vdev=xvdb, access=r, target={tmp_path / 'a.img'}"
    plan = DomainPlan(DomainSpec("vm", KERNEL, 24, 2, "quiet"), "preserve", "restart",
                      "coredump-restart", (spec,))
    again = DomainPlan.from_xl_config(plan.xl_config(), "vm")
    assert again == plan


def test_a_config_this_host_cannot_use_gives_no_plan(tmp_path):
    good = DomainPlan(DomainSpec("vm", KERNEL, 16)).xl_config()
    assert DomainPlan.from_xl_config(good, "vm") is not None
    missing = DomainPlan(DomainSpec("vm", tmp_path / "nope.elf", 16)).xl_config()
    bad_disk = dict(good, disks=[{"xenpy_spec": "format=qcow2, vdev=xvda, target=/x"}])
    for cfg in (missing, bad_disk, None, {}, {"b_info": 5}, {"b_info": {"type.pv": {}}}):
        assert DomainPlan.from_xl_config(cfg, "vm") is None
