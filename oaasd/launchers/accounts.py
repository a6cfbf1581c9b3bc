"""Who a task runs as, and the clean environment it starts from.

A daemon without ``[[users]]`` (the single-user default) runs tasks as its
own account. A daemon with ``[[users]]`` is shared: every task runs as its
API user's ``unix_user``, or as ``launch.default_user`` when none is mapped,
and never as the daemon's own uid (``config.launch_problems`` refuses a
configuration that cannot honour this before anything starts).

Either way a task never inherits the daemon's environment: it starts from
``PATH`` and ``LANG`` of ``[launch]``, ``HOME`` and ``USER`` of its account,
the variables named in ``launch.pass_env`` (copied from the launching side),
then its own ``env`` and the ``OAAS_*`` protocol variables.
"""

from __future__ import annotations

import os
import pwd
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

from oaasd.config import UNIX_NAME, LaunchConfig, UserConfig
from oaasd.errors import OaasError


class AccountError(OaasError):
    """A task's Unix account cannot be used (gone since start, or not a valid name)."""

    status = 500


@dataclass(frozen=True)
class RunAs:
    """A Unix account a task runs as: uid, primary gid, supplementary groups, home."""

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]
    home: str


def lookup(name: str) -> RunAs:
    """The account ``name`` from the passwd and group databases; AccountError when unknown."""
    if not re.match(UNIX_NAME, name):
        raise AccountError(f"not a Unix account name: {name!r}")
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        raise AccountError(f"no Unix account {name!r} on this host") from None
    return RunAs(name, pw.pw_uid, pw.pw_gid, tuple(os.getgrouplist(name, pw.pw_gid)), pw.pw_dir)


def own_account() -> RunAs:
    """The daemon's own account (HOME and USER of single-user tasks)."""
    pw = pwd.getpwuid(os.geteuid())
    return RunAs(pw.pw_name, pw.pw_uid, pw.pw_gid, tuple(os.getgroups()), pw.pw_dir)


class Accounts:
    """Maps an API user to the Unix account and base environment of their tasks."""

    def __init__(self, launch: LaunchConfig | None = None,
                 users: Callable[[], Sequence[UserConfig]] | None = None, source_env: Mapping[str, str] | None = None):
        self.launch = launch or LaunchConfig()
        self._users = users or (lambda: ())
        self.shared = bool(self._users())  # fixed at start: a reload cannot turn tasks back into root
        self.source_env = dict(os.environ if source_env is None else source_env)

    def account_name(self, api_user: str | None) -> str | None:
        """The Unix account name of ``api_user``'s tasks; None: the daemon's own."""
        if not self.shared:
            return None
        mapped = next((u.unix_user for u in self._users() if u.name == api_user), None)
        return mapped or self.launch.default_user

    def run_as(self, api_user: str | None) -> RunAs | None:
        """The resolved account of ``api_user``'s tasks; None: the daemon's own."""
        name = self.account_name(api_user)
        if name is None:
            return None
        who = lookup(name)
        if who.uid in (0, os.geteuid()):
            raise AccountError(f"{name!r} is uid {who.uid}: tasks never run as the daemon's own uid or root")
        return who

    def base_env(self, who: RunAs | None) -> dict[str, str]:
        """PATH, LANG, HOME, USER and the passed variables a local task starts from."""
        who = who or own_account()
        env = {"PATH": self.launch.path, "LANG": self.launch.lang, "HOME": who.home, "USER": who.name}
        env.update({k: self.source_env[k] for k in self.launch.pass_env if k in self.source_env})
        return env

    def startup_line(self) -> str:
        """One log line saying whom tasks run as."""
        if self.shared:
            return (f"[[users]] declared: tasks run as their users' unix_user, else as "
                    f"{self.launch.default_user!r}, never as the daemon's uid {os.geteuid()}")
        me = own_account()
        return f"no [[users]]: tasks run as the daemon's own account {me.name!r} (uid {me.uid}), clean environment"


def closed_ancestor(path: Path) -> Path | None:
    """The first folder above ``path`` other accounts may not traverse (no o+x), or None."""
    for folder in path.absolute().parents:
        try:
            if not folder.stat().st_mode & 0o001:
                return folder
        except OSError:
            return folder
    return None


def give_attempt_dir(attempt_dir: Path, who: RunAs, logs: Sequence[Path]) -> None:
    """Hand an attempt's directory and files to ``who`` (0700/0600): it writes its
    result and exit record there, other task users read nothing of it."""
    for path in logs:
        path.touch(mode=0o600, exist_ok=True)
    for path in [attempt_dir, *attempt_dir.iterdir()]:
        os.chown(path, who.uid, who.gid, follow_symlinks=False)
        if not path.is_symlink():
            os.chmod(path, 0o700 if path.is_dir() else 0o600)
