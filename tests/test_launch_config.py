"""The start-time check of a shared daemon: tasks must be able to run as their own accounts."""

from __future__ import annotations

import hashlib
import os
import pwd

import pytest

from oaasd import config
from oaasd.config import CAPS_NEEDED, ConfigError, load_settings, missing_caps

TOKEN = hashlib.sha256(b"t").hexdigest()


def write(tmp_path, body: str):
    path = tmp_path / "oaasd.toml"
    path.write_text(body)
    return path


def users(*entries: str) -> str:
    return "".join(f'[[users]]\nname = "u{i}"\ntoken_sha256 = "{TOKEN}"\n{e}\n' for i, e in enumerate(entries))


@pytest.fixture
def task_account():
    """Any existing account other than root and the daemon's own (the default task account here)."""
    try:
        return pwd.getpwnam("oaasd-task").pw_name
    except KeyError:
        pytest.skip("no oaasd-task account")


def refusal(tmp_path, body: str) -> str:
    with pytest.raises(ConfigError) as exc:
        load_settings(write(tmp_path, body))
    return exc.value.message


def test_single_user_daemon_needs_no_account(tmp_path):
    settings = load_settings(write(tmp_path, '[launch]\ndefault_user = "oaas-nosuch"\n'))
    assert config.launch_problems(settings) == []


def test_shared_daemon_with_existing_accounts_starts(tmp_path, task_account):
    settings = load_settings(write(tmp_path, users(f'unix_user = "{task_account}"', "")))
    assert settings.users[0].unix_user == task_account and settings.launch.default_user == "oaasd-task"


@pytest.mark.parametrize("body, expected", [
    (users('unix_user = "oaas-nosuch"'), "users[u0].unix_user: no Unix account 'oaas-nosuch'"),
    ('[launch]\ndefault_user = "oaas-nosuch"\n' + users(""), "launch.default_user: no Unix account 'oaas-nosuch'"),
    (users('unix_user = "root"'), "users[u0].unix_user: 'root' is uid 0, the daemon's own or root"),
    (users("") + '[[nodes]]\nname = "g"\nlauncher = "mpi"\n', "nodes[g].launcher: 'mpi' cannot run ranks"),
])
def test_shared_daemon_that_cannot_isolate_is_refused(tmp_path, task_account, body, expected):
    assert expected in refusal(tmp_path, body)


def test_daemon_without_the_right_to_switch_accounts_is_refused(tmp_path, task_account, monkeypatch):
    monkeypatch.setattr(config, "can_switch_user", lambda: False)
    message = refusal(tmp_path, users(""))
    assert "run the daemon as root or give it CAP_CHOWN, CAP_DAC_OVERRIDE, CAP_KILL, CAP_SETGID, CAP_SETUID" in message


def test_capabilities_are_read_from_the_effective_mask():
    assert missing_caps(0) == list(CAPS_NEEDED)
    assert missing_caps(sum(1 << bit for bit in CAPS_NEEDED.values())) == []
    assert missing_caps((1 << 6) | (1 << 7)) == ["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_KILL"]


@pytest.mark.parametrize("body, field", [
    ('[launch]\npass_env = ["OAAS_EXIT_FILE"]\n', "launch.pass_env"),
    ('[launch]\npass_env = ["BAD-NAME"]\n', "launch.pass_env"),
    ('[launch]\npath = ""\n', "launch.path"),
    ('[launch]\ndefault_user = "Root; rm"\n', "launch.default_user"),
    (users('unix_user = "a b"'), "users.0.unix_user"),
])
def test_bad_launch_keys_name_the_key(tmp_path, body, field):
    assert field in refusal(tmp_path, body)


def test_relative_path_entries_are_taken_from_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = load_settings(write(tmp_path, '[launch]\npath = ".venv/bin:/usr/bin"\n'))
    assert settings.launch.path == f"{tmp_path}/.venv/bin:/usr/bin"
    assert os.path.isabs(settings.launch.path.split(":")[0])


async def test_mpi_gang_is_refused_on_a_shared_daemon(tmp_path):
    from oaasd.config import UserConfig
    from oaasd.launchers.accounts import AccountError, Accounts
    from oaasd.launchers.local import LocalLauncher
    from oaasd.launchers.mpi import MpiLauncher
    from oaasd.ports import Host, LaunchJob

    shared = Accounts(users=lambda: [UserConfig(name="alice", token_sha256=TOKEN)])
    launcher = MpiLauncher({}, local=LocalLauncher(shared))
    job = LaunchJob(task_id=1, attempt_id=1, argv=["/bin/true"], env={}, workdir=None, attempt_dir=tmp_path,
                    hosts=[Host("n1", "127.0.0.2", 1), Host("n2", "127.0.0.3", 1)], workers=2, user="alice")
    with pytest.raises(AccountError, match="cannot run as the user's own account"):
        await launcher.start(job)
    await launcher.close()
