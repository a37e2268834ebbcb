"""Running Postgres when we are root: a system user of its own, and the permissions it needs.

Only the missing bit is ever added, and each change is logged.
"""

from __future__ import annotations

import logging
import os
import pwd
import shutil
import stat
import subprocess
from pathlib import Path

from event_ingest.devstack.embedded.server import EmbeddedServerError

log = logging.getLogger(__name__)


_R = (stat.S_IRUSR, stat.S_IRGRP, stat.S_IROTH)
_W = (stat.S_IWUSR, stat.S_IWGRP, stat.S_IWOTH)
_X = (stat.S_IXUSR, stat.S_IXGRP, stat.S_IXOTH)


def _class_bit(st: os.stat_result, uid: int, gids: set[int], bits: tuple[int, int, int]) -> int:
    """The permission bit that applies to (uid, gids) for this file (owner, group, other)."""
    if st.st_uid == uid:
        return bits[0]
    if st.st_gid in gids:
        return bits[1]
    return bits[2]


def _grant(path: Path, uid: int, gids: set[int], *needed: tuple[int, int, int]) -> bool:
    """Add the missing bits so that uid/gids get `needed` on path; True if changed."""
    st = os.stat(path)
    mode = stat.S_IMODE(st.st_mode)
    add = 0
    for bits in needed:
        b = _class_bit(st, uid, gids, bits)
        if not mode & b:
            add |= b
    if add:
        os.chmod(path, mode | add)
        return True
    return False


def ensure_traversable(path: Path, pw: pwd.struct_passwd) -> None:
    """Make `path` and all its ancestors searchable (x) for the user."""
    gids = set(os.getgrouplist(pw.pw_name, pw.pw_gid))
    changed = [str(d) for d in (path, *path.parents) if _grant(d, pw.pw_uid, gids, _X)]
    if changed:
        log.warning("granted search permission (x) to user %s on: %s", pw.pw_name, ", ".join(changed))


_readable_trees: set[tuple[str, int]] = set()


def ensure_readable_tree(root: Path, pw: pwd.struct_passwd) -> None:
    """Make an installed tree (binaries, libs, share) readable, and executables
    executable, for the user; plus search permission on its ancestors. Once per process."""
    key = (str(root), pw.pw_uid)
    if key in _readable_trees or not root.exists():
        return
    gids = set(os.getgrouplist(pw.pw_name, pw.pw_gid))
    changed = [str(d) for d in root.parents if _grant(d, pw.pw_uid, gids, _X)]
    for dirpath, _dirnames, filenames in os.walk(root):
        if _grant(Path(dirpath), pw.pw_uid, gids, _R, _X):
            changed.append(dirpath)
        for fn in filenames:
            p = Path(dirpath, fn)
            if p.is_symlink():
                continue
            needed = [_R]
            if stat.S_IMODE(os.stat(p).st_mode) & stat.S_IXUSR:
                needed.append(_X)
            if _grant(p, pw.pw_uid, gids, *needed):
                changed.append(str(p))
    if changed:
        shown = ", ".join(changed[:5]) + (f" and {len(changed) - 5} more" if len(changed) > 5 else "")
        log.warning("granted read/execute permission to user %s on: %s", pw.pw_name, shown)
    _readable_trees.add(key)


def chown_tree(root: Path, uid: int, gid: int) -> None:
    os.chown(root, uid, gid)
    for dirpath, dirnames, filenames in os.walk(root):
        for n in (*dirnames, *filenames):
            os.lchown(os.path.join(dirpath, n), uid, gid)


def ensure_system_user(name: str) -> pwd.struct_passwd:
    """Look up, or create once, a system user with its own group and no login/home."""
    try:
        return pwd.getpwnam(name)
    except KeyError:
        pass
    shells = ("/usr/sbin/nologin", "/sbin/nologin", "/bin/false")
    shell = next((s for s in shells if os.path.exists(s)), "/bin/false")
    if shutil.which("useradd"):
        cmd = [
            "useradd",
            "--system",
            "--user-group",
            "--no-create-home",
            "--home-dir",
            "/nonexistent",
            "--shell",
            shell,
            name,
        ]
    elif shutil.which("adduser"):  # busybox (Alpine)
        cmd = ["adduser", "-S", "-D", "-H", "-h", "/nonexistent", "-s", shell, name]
    else:
        raise EmbeddedServerError(
            f"running as root, Postgres needs an unprivileged user but neither useradd nor adduser "
            f"is available to create {name!r}; create it yourself or run as a normal user"
        )
    res = subprocess.run(cmd, capture_output=True, text=True)
    try:  # also covers a concurrent creation by another process
        pw = pwd.getpwnam(name)
    except KeyError:
        raise EmbeddedServerError(
            f"could not create system user {name!r} for Postgres: {' '.join(cmd)} exited with "
            f"{res.returncode}: {(res.stderr or res.stdout).strip()}"
        ) from None
    log.info("created system user %s (uid %s) to run Postgres", name, pw.pw_uid)
    return pw
