"""POSIX ACLs enforced as on ext4 with `acl`, on a real mount used by an unprivileged user:
named-user entries deny and allow, default ACLs are inherited by what is created under
them (the umask applies only without one), chmod moves the mask, setfacl the mode, and
getfacl shows what setfacl set."""

import os
import stat
import subprocess
import time

import pytest

NOBODY = 65534  # the unprivileged user the kernel checks


def as_nobody(cwd, script: str) -> subprocess.CompletedProcess:
    """`sh -c script` as uid/gid NOBODY in `cwd` (entered as root: the test's temp
    directories are closed to others), umask 022 unless the script sets one."""
    return subprocess.run(["sh", "-c", script], cwd=cwd, user=NOBODY, group=NOBODY, extra_groups=[],
                          umask=0o022, capture_output=True, text=True)


def facl(*args) -> str:
    return subprocess.run(["getfacl", "-cpn", *map(str, args)], check=True, capture_output=True,
                          text=True).stdout


def setfacl(*args) -> None:
    subprocess.run(["setfacl", *map(str, args)], check=True)


@pytest.fixture
def mnt(cluster_factory):
    """A mount others may use (allow_other: the kernel refuses them otherwise)."""
    return cluster_factory().mount("m", options=["allow_other"])


def test_named_user_entry_denies_though_the_mode_allows(cluster_factory):
    c = cluster_factory()
    mnt, other = c.mount("m", options=["allow_other"]), c.mount("o", options=["allow_other"])
    (mnt / "f").write_text("secret\n")
    os.chmod(mnt / "f", 0o666)
    assert as_nobody(mnt, "cat f").stdout == as_nobody(other, "cat f").stdout == "secret\n"
    setfacl("-m", f"u:{NOBODY}:---", mnt / "f")
    r = as_nobody(mnt, "cat f; echo more >> f")
    assert r.stdout == "" and r.stderr.count("Permission denied") == 2
    # on the other mount too, once the change feed has told it (its kernel had read the file)
    deadline = time.monotonic() + 2
    while as_nobody(other, "cat f").stdout and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "Permission denied" in as_nobody(other, "cat f").stderr
    # getfacl shows what setfacl set; the mode's group bits are the mask now
    assert facl(mnt / "f") == f"user::rw-\nuser:{NOBODY}:---\ngroup::rw-\nmask::rw-\nother::rw-\n\n"
    setfacl("-m", "m::r", mnt / "f")
    assert stat.S_IMODE(os.stat(mnt / "f").st_mode) == 0o646
    # an allowing entry allows where the mode does not
    (mnt / "g").write_text("shared\n")
    os.chmod(mnt / "g", 0o600)
    assert "Permission denied" in as_nobody(mnt, "cat g").stderr
    setfacl("-m", f"u:{NOBODY}:r", mnt / "g")
    assert as_nobody(mnt, "cat g").stdout == "shared\n"


def test_default_acl_is_inherited_by_files_and_directories(mnt):
    (mnt / "d").mkdir(mode=0o755)
    setfacl("-m", f"u:{NOBODY}:rwx,d:u:{NOBODY}:rwx,d:g::r-x,d:o::---", mnt / "d")
    default = facl("-d", mnt / "d")
    assert f"user:{NOBODY}:rwx" in default
    # the default ACL, not the umask (077 here), decides: 0666 and 0777 asked for
    r = as_nobody(mnt / "d", "umask 077 && echo x > f && mkdir sub && echo y > sub/g")
    assert r.returncode == 0, r.stderr
    assert stat.S_IMODE(os.stat(mnt / "d/f").st_mode) == 0o660  # group class: the mask, rw- of rwx
    assert facl(mnt / "d/f") == (f"user::rw-\nuser:{NOBODY}:rwx\t#effective:rw-\ngroup::r-x\t#effective:r--\n"
                                 "mask::rw-\nother::---\n\n")
    assert stat.S_IMODE(os.stat(mnt / "d/sub").st_mode) == 0o770
    assert facl("-d", mnt / "d/sub") == default  # directories pass the default on
    assert facl(mnt / "d/sub/g") == facl(mnt / "d/f")
    # without a default ACL, the creator's umask applies
    (mnt / "open").mkdir()
    os.chmod(mnt / "open", 0o777)
    assert as_nobody(mnt / "open", "umask 027 && echo x > f && mkdir sub").returncode == 0
    assert stat.S_IMODE(os.stat(mnt / "open/f").st_mode) == 0o640
    assert stat.S_IMODE(os.stat(mnt / "open/sub").st_mode) == 0o750
    assert facl(mnt / "open/f") == "user::rw-\ngroup::r--\nother::---\n\n"


def test_chmod_moves_the_mask(mnt):
    (mnt / "f").write_text("x\n")
    os.chmod(mnt / "f", 0o644)
    setfacl("-m", f"u:{NOBODY}:rw", mnt / "f")
    assert as_nobody(mnt, "echo y >> f").returncode == 0
    os.chmod(mnt / "f", 0o640)
    assert facl(mnt / "f") == (f"user::rw-\nuser:{NOBODY}:rw-\t#effective:r--\ngroup::r--\n"
                               "mask::r--\nother::---\n\n")
    r = as_nobody(mnt, "cat f; echo z >> f")
    assert r.stdout == "x\ny\n" and "Permission denied" in r.stderr
    os.chmod(mnt / "f", 0o670)
    assert "mask::rwx" in facl(mnt / "f")
    assert as_nobody(mnt, "echo z >> f").returncode == 0


def test_an_acl_that_says_no_more_than_the_mode_is_a_chmod(mnt):
    """As on ext4: setting an ACL of owner, group and other entries only (what cp -a and
    setfacl -b leave) sets the mode and stores no ACL; one stored before is gone, with
    the rights it gave. Also when the file is still being written (cp -a does it on the
    open copy before close)."""
    (mnt / "f").write_text("x\n")
    setfacl("-m", f"u:{NOBODY}:rw", mnt / "f")
    assert as_nobody(mnt, "echo y >> f").returncode == 0
    setfacl("--set", "u::rw,g::r,o::-", mnt / "f")
    assert stat.S_IMODE(os.stat(mnt / "f").st_mode) == 0o640
    assert facl(mnt / "f") == "user::rw-\ngroup::r--\nother::---\n\n"
    assert "system.posix_acl_access" not in os.listxattr(mnt / "f")
    r = as_nobody(mnt, "echo z >> f")
    assert "Permission denied" in r.stderr
    subprocess.run(["cp", "-a", mnt / "f", mnt / "g"], check=True)
    with open(mnt / "h", "wb") as out:
        out.write(b"data")
        os.setxattr(out.fileno(), "system.posix_acl_access",
                    b"\2\0\0\0" + b"\1\0\6\0\xff\xff\xff\xff" + b"\4\0\0\0\xff\xff\xff\xff" + b"\x20\0\4\0\xff\xff\xff\xff")
        assert stat.S_IMODE(os.fstat(out.fileno()).st_mode) == 0o604
    for name, mode in (("g", 0o640), ("h", 0o604)):
        assert stat.S_IMODE(os.stat(mnt / name).st_mode) == mode
        assert os.listxattr(mnt / name) == []
