"""xl disk specs and vdev numbers (libxl__device_disk_dev_number)."""
import pytest
from hypothesis import given, strategies as st

from xenpy.errors import ConfigError
from xenpy.toolstack.disk import DiskSpec, parse_disk_spec, vdev_to_devid


@pytest.mark.parametrize("spec, want", [
    ("format=raw, vdev=xvda, access=rw, target=/img/a,b.img",
     DiskSpec("/img/a,b.img", "xvda", 51712, False, "raw", "file")),
    ("file:/a.img,xvda,w", DiskSpec("/a.img", "xvda", 51712, False, "raw", "file")),
    ("phy:/dev/loop2,xvdb,r", DiskSpec("/dev/loop2", "xvdb", 51728, True, "raw", "phy")),
    ("/a.img,raw,xvdc,ro", DiskSpec("/a.img", "xvdc", 51744, True, "raw", "file")),
    ("vdev=hdc, target=/a.img", DiskSpec("/a.img", "hdc", 22 << 8, False, "raw", "file")),
    ("/x.iso,,hdd,devtype=cdrom", DiskSpec("/x.iso", "hdd", (22 << 8) | 64, True, "raw",
                                           "file", True)),
])
def test_specs(spec, want):
    assert parse_disk_spec(spec) == want


@pytest.mark.parametrize("vdev, devid", [("xvda", 202 << 8), ("xvdb1", (202 << 8) | 17),
                                         ("xvdq", (1 << 28) | (16 << 8)), ("sda", 8 << 8),
                                         ("sdb2", (8 << 8) | 18), ("hda", 3 << 8),
                                         ("51712", 51712), ("xvdaa", (1 << 28) | (26 << 8))])
def test_vdev_numbers(vdev, devid):
    assert vdev_to_devid(vdev) == devid


@pytest.mark.parametrize("spec, msg", [
    ("format=qcow2, vdev=xvda, target=/a", "format: expected raw"),
    ("/a.img", "expected a vdev"),
    ("vdev=xvda", "expected a target"),
    ("/a.img,xvda,rx", "unexpected positional"),
    ("/a.img,floppy0,w", "expected xvdX"),
    ("colour=red, target=/a", "unknown key 'colour'"),
])
def test_bad_specs(spec, msg):
    with pytest.raises(ConfigError, match=msg):
        parse_disk_spec(spec)


@given(st.text(max_size=60))
def test_any_text_parses_or_config_error(text):
    try:
        parse_disk_spec(text)
    except ConfigError:
        pass
