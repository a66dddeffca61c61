"""deploy_config renders every file of deploy/ for one host, and refuses unsafe values."""

from __future__ import annotations

import io
import json
import os
import re
import runpy
import shlex
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from django.conf import settings
from django.core.management import CommandError, call_command

from iama_vetting import maintenance
from iama_vetting.management.commands import deploy_config
from iama_vetting.management.commands.deploy_config import template_names
from notifications.management.commands.send_outbox import EXIT_CONFIGURATION_ERROR

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")


def render(out, **options):
    defaults = {
        "domain": "rvi.example.org",
        "app_dir": "/srv/iama-rvi",
        "venv": "/srv/iama-rvi/.venv",
        "user": "rvi",
        "out": str(out),
        "resolver": "127.0.0.1",
    }
    call_command("deploy_config", **{**defaults, **options}, stdout=io.StringIO())
    return out


def test_renders_every_file_of_deploy_except_the_guide_and_partials(tmp_path):
    out = render(tmp_path / "out")
    rendered = sorted(path.relative_to(out).as_posix() for path in out.rglob("*") if path.is_file())
    assert rendered == template_names()
    assert "nginx/iama-rvi.conf" in rendered
    assert "systemd/rvi-web.service" in rendered
    assert not any(name.endswith((".inc", "README.md")) for name in rendered)


def test_rendered_files_keep_no_template_syntax(tmp_path):
    out = render(tmp_path / "out")
    for path in out.rglob("*"):
        if path.is_file():
            text = path.read_text()
            assert "{{" not in text and "{%" not in text, path


def test_web_unit_runs_gunicorn_without_control_socket_as_the_given_user(tmp_path):
    unit = (render(tmp_path / "out") / "systemd" / "rvi-web.service").read_text()
    assert (
        "ExecStart=/srv/iama-rvi/.venv/bin/gunicorn --config /etc/iama-rvi/gunicorn.conf.py "
        "--no-control-socket iama_vetting.wsgi"
    ) in unit
    assert "User=rvi\n" in unit
    assert "EnvironmentFile=/etc/iama-rvi/env\n" in unit


# What each service may write under ProtectSystem=strict: the evidence root for those that store
# or delete evidence (deleting an unconfirmed application deletes its files), the backup root for
# the backup; nothing for the others.
EVIDENCE_ROOT, BACKUP_ROOT = "/var/lib/iama-rvi/evidence", "/var/lib/iama-rvi/backups"
WRITABLE_ROOTS = {
    "rvi-web.service": [EVIDENCE_ROOT],
    "rvi-mail.service": [],
    "rvi-backup.service": [BACKUP_ROOT],
    "rvi-purge-evidence.service": [EVIDENCE_ROOT],
    "rvi-purge-unconfirmed.service": [EVIDENCE_ROOT],
    "rvi-sync-invitations.service": [],
    "rvi-security-report.service": [],
    "rvi-backup-check.service": [],
    "rvi-alert@.service": [],
}


@pytest.mark.parametrize(("unit", "writable"), WRITABLE_ROOTS.items())
def test_every_service_is_hardened_and_writes_only_its_own_root(tmp_path, unit, writable):
    text = (render(tmp_path / "out") / "systemd" / unit).read_text()
    for line in ("NoNewPrivileges=yes", "ProtectSystem=strict", "PrivateTmp=yes", "UMask=0027"):
        assert line + "\n" in text
    assert re.findall(r"^ReadWritePaths=(.*)$", text, flags=re.MULTILINE) == writable
    # The dedicated user, never root (no User= would be root); the app's ones with its settings.
    assert re.findall(r"^User=(.*)$", text, flags=re.MULTILINE) == ["rvi"]
    assert re.findall(r"^Group=(.*)$", text, flags=re.MULTILINE) == ["rvi"]
    if unit != "rvi-alert@.service":
        assert re.findall(r"^EnvironmentFile=(.*)$", text, flags=re.MULTILINE) == ["/etc/iama-rvi/env"]


# What hardening.inc gets every service, as systemd itself reads the unit
# (`systemd-analyze security`'s checks, each passed).
HARDENING_CHECKS = [
    "UserOrDynamicUser",
    "NoNewPrivileges",
    "ProtectSystem",
    "ProtectHome",
    "PrivateTmp",
    "PrivateDevices",
    "ProtectKernelTunables",
    "ProtectKernelModules",
    "ProtectKernelLogs",
    "ProtectControlGroups",
    "ProtectClock",
    "ProtectHostname",
    "RestrictSUIDSGID",
    "RestrictRealtime",
    "LockPersonality",
    "AmbientCapabilities",
    "CapabilityBoundingSet_CAP_SYS_ADMIN",
    "CapabilityBoundingSet_CAP_SET_UID_GID_PCAP",
    "CapabilityBoundingSet_CAP_DAC_FOWNER_IPC_OWNER",
    "CapabilityBoundingSet_CAP_NET_ADMIN",
    "CapabilityBoundingSet_CAP_SYS_PTRACE",
    "RestrictAddressFamilies_AF_PACKET",
    "RestrictAddressFamilies_AF_NETLINK",
    "RestrictAddressFamilies_OTHER",
    "RestrictNamespaces_user",
    "RestrictNamespaces_mnt",
    "RestrictNamespaces_net",
]


@pytest.mark.systemd
@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="needs systemd-analyze (Debian package systemd)")
@pytest.mark.parametrize("unit", WRITABLE_ROOTS)
def test_systemd_finds_every_service_hardened(tmp_path, unit):
    path = render(tmp_path / "out") / "systemd" / unit
    result = subprocess.run(
        [SYSTEMD_ANALYZE, "security", "--offline=true", "--json=short", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    checks = {check["json_field"]: check for check in json.loads(result.stdout)}
    failed = [name for name in HARDENING_CHECKS if checks[name]["set"] is not True]
    assert failed == [], [checks[name]["description"] for name in failed]


def test_the_web_server_is_restarted_after_a_crash_and_reloaded_gracefully(tmp_path):
    unit = (render(tmp_path / "out") / "systemd" / "rvi-web.service").read_text()
    service = unit_section(unit, "Service")
    assert "Restart=on-failure\n" in service
    # `systemctl reload rvi-web.service` (deploy/README.md, "Each release"): gunicorn's HUP.
    assert "ExecReload=/bin/kill -s HUP $MAINPID\n" in service
    # systemd waits for gunicorn's graceful stop before it kills what is left.
    config = runpy.run_path(str(tmp_path / "out" / "gunicorn.conf.py"))
    [stop] = re.findall(r"^TimeoutStopSec=(\d+)$", service, flags=re.MULTILINE)
    assert config["graceful_timeout"] < int(stop)


def test_services_and_timers_start_at_boot_once_enabled(tmp_path):
    """`systemctl enable` of a unit without [Install] links nothing: after a reboot it would not run."""
    systemd = render(tmp_path / "out") / "systemd"
    for timer in systemd.glob("*.timer"):
        assert unit_section(timer.read_text(), "Install") == "WantedBy=timers.target\n", timer.name
        # A run missed while the host was down is made up at the next boot.
        assert "Persistent=true\n" in unit_section(timer.read_text(), "Timer"), timer.name
    for name in ("rvi-web.service", "rvi-mail.service"):
        assert unit_section((systemd / name).read_text(), "Install") == "WantedBy=multi-user.target\n"


def test_the_mail_worker_runs_the_outbox_loop_and_stops_gracefully(tmp_path):
    unit = (render(tmp_path / "out") / "systemd" / "rvi-mail.service").read_text()
    assert "manage.py send_outbox --loop\n" in unit
    assert "KillSignal=SIGTERM\n" in unit
    assert "Restart=always\n" in unit


def unit_section(text: str, section: str) -> str:
    return text.split(f"[{section}]\n", 1)[1].split("\n[", 1)[0]


def test_every_service_raises_an_alert_when_it_fails_and_the_long_running_ones_stop_restarting(tmp_path):
    systemd = render(tmp_path / "out") / "systemd"
    timed = sorted(path.with_suffix(".service").name for path in systemd.glob("*.timer"))
    assert "rvi-backup.service" in timed and "rvi-backup-check.service" in timed
    for name in [*timed, "rvi-mail.service", "rvi-web.service"]:
        unit = unit_section((systemd / name).read_text(), "Unit")
        assert "OnFailure=rvi-alert@%n.service\n" in unit, name
    # Restarted on a crash, but a loop ends in one alert rather than one every 5 s.
    for name in ["rvi-mail.service", "rvi-web.service"]:
        unit = unit_section((systemd / name).read_text(), "Unit")
        assert "StartLimitIntervalSec=10min\nStartLimitBurst=5\n" in unit, name


def test_the_alert_writes_one_line_at_priority_err_naming_the_failed_unit(tmp_path):
    alert = (render(tmp_path / "out") / "systemd" / "rvi-alert@.service").read_text()
    service = unit_section(alert, "Service")
    assert "Type=oneshot\n" in service
    assert "SyslogLevel=err\n" in service
    [command] = re.findall(r"^ExecStart=(.*)$", service, flags=re.MULTILINE)
    # %i is the instance: the failed unit's full name, from OnFailure=rvi-alert@%n.service.
    assert command == '/usr/bin/echo "IaMA RVI: %i failed; see journalctl -u %i"'
    # What `journalctl -p err -t rvi-alert` and log monitoring look for (deploy/README.md).
    assert "SyslogIdentifier=rvi-alert\n" in service


def test_the_mail_worker_is_not_restarted_after_a_configuration_error(tmp_path):
    unit = (render(tmp_path / "out") / "systemd" / "rvi-mail.service").read_text()
    assert f"RestartPreventExitStatus={EXIT_CONFIGURATION_ERROR}\n" in unit
    # Any other exit (a crash) is restarted as before, but not forever: a loop alerts once.
    assert "Restart=always\n" in unit
    assert "StartLimitIntervalSec=10min\nStartLimitBurst=5\n" in unit_section(unit, "Unit")


def test_the_backup_age_is_checked_daily_after_the_backup(tmp_path):
    systemd = render(tmp_path / "out") / "systemd"
    check = (systemd / "rvi-backup-check.service").read_text()
    assert (
        "ExecStart=/srv/iama-rvi/.venv/bin/python /srv/iama-rvi/manage.py backup --check "
        "--dir /var/lib/iama-rvi/backups --max-age-hours 26\n"
    ) in check
    assert "After=rvi-backup.service\n" in unit_section(check, "Unit")
    timer = (systemd / "rvi-backup-check.timer").read_text()
    assert "OnCalendar=*-*-* 04:00:00 UTC\n" in timer and "Persistent=true\n" in timer


def test_backup_runs_daily_at_two_and_purge_daily(tmp_path):
    out = render(tmp_path / "out")
    assert "OnCalendar=hourly\n" in (out / "systemd" / "rvi-sync-invitations.timer").read_text()
    assert "OnCalendar=*-*-* 04:45:00 UTC\n" in (out / "systemd" / "rvi-purge-unconfirmed.timer").read_text()
    assert "OnCalendar=*-*-* 01:30:00 UTC\n" in (out / "systemd" / "rvi-backup.timer").read_text()
    assert "OnCalendar=*-*-* 04:30:00 UTC\n" in (out / "systemd" / "rvi-purge-evidence.timer").read_text()
    assert "OnCalendar=*-*-* 06:00:00 UTC\n" in (out / "systemd" / "rvi-security-report.timer").read_text()


def test_the_backup_keeps_14_days_and_the_daily_report_covers_the_day(tmp_path):
    systemd = render(tmp_path / "out") / "systemd"
    [backup] = re.findall(r"^ExecStart=(.*)$", (systemd / "rvi-backup.service").read_text(), flags=re.M)
    assert backup.endswith("/manage.py backup --dir /var/lib/iama-rvi/backups --keep-days 14")
    report = (systemd / "rvi-security-report.service").read_text()
    [command] = re.findall(r"^ExecStart=(.*)$", report, flags=re.M)
    assert command.endswith("/manage.py security_report --since 24h --mail")


def test_no_daily_job_is_timed_inside_the_default_maintenance_window(tmp_path):
    window = maintenance.parse_window("first sunday 02:00-04:00")
    for timer in (render(tmp_path / "out") / "systemd").glob("*.timer"):
        times = re.findall(
            r"^OnCalendar=\*-\*-\* (\d\d):(\d\d):00 UTC$", timer.read_text(), flags=re.MULTILINE
        )
        for hour, minute in times:
            assert not window.start <= (int(hour), int(minute)) < window.end, timer.name


# Jobs that may wait for their next run; the backup, its check and the daily report run and alert.
SKIPPED_IN_MAINTENANCE = [
    "rvi-sync-invitations.service",
    "rvi-purge-unconfirmed.service",
    "rvi-purge-evidence.service",
]


@pytest.mark.parametrize("unit", SKIPPED_IN_MAINTENANCE)
def test_jobs_that_can_wait_are_skipped_not_failed_while_maintenance_mode_is_on(tmp_path, unit):
    """With the database stopped for maintenance, the job's own command would fail and raise the alert."""
    out = render(tmp_path / "out", app_dir=str(settings.BASE_DIR), venv=sys.prefix)
    [command] = re.findall(r"^ExecStart=(.*)$", (out / "systemd" / unit).read_text(), flags=re.MULTILINE)
    maintenance_file = tmp_path / "maintenance.json"
    # Switched on just now: maintenance left on for hours fails the job instead (test_maintenance).
    maintenance_file.write_text(json.dumps({"since": datetime.now(UTC).isoformat(), "until": None}))
    environment = {
        **os.environ,
        # Nothing listens there: the database is stopped.
        "DATABASE_URL": "postgres://rvi@127.0.0.1:1/rvi",
        "DATABASE_POOL_TIMEOUT": "1",
        "MAINTENANCE_FILE": str(maintenance_file),
        "EVIDENCE_ROOT": str(tmp_path / "missing-evidence-root"),
    }
    run = subprocess.run(
        shlex.split(command),
        cwd=settings.BASE_DIR,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert run.returncode == 0, run.stderr
    [line] = run.stderr.splitlines()
    job = unit.removeprefix("rvi-").removesuffix(".service").replace("-", "_")
    assert json.loads(line)["message"] == f"Maintenance mode is on: {job} skipped; its timer runs it again."


def test_nginx_body_limit_matches_the_upload_limits(tmp_path):
    site = (render(tmp_path / "out") / "nginx" / "iama-rvi.conf").read_text()
    limit_mb = int(re.search(r"client_max_body_size (\d+)m;", site)[1])
    all_files = settings.EVIDENCE_MAX_FILES * settings.EVIDENCE_MAX_FILE_SIZE
    assert all_files < limit_mb * 1024 * 1024 <= all_files + 2 * 1024 * 1024


def test_nginx_site_has_no_location_serving_the_evidence_root_publicly(tmp_path):
    site = (render(tmp_path / "out") / "nginx" / "iama-rvi.conf").read_text()
    blocks = re.findall(r"location ([^{]+)\{([^}]*)\}", site)
    serving = [(where.strip(), body) for where, body in blocks if "/var/lib/iama-rvi/evidence" in body]
    assert len(serving) == 1
    assert serving[0][0] == "/_protected_evidence/"
    assert "internal;" in serving[0][1]
    assert "ssl_stapling on;" in site


def test_nginx_site_offers_only_tls_1_2_and_1_3_without_session_tickets(tmp_path):
    site = (render(tmp_path / "out") / "nginx" / "iama-rvi.conf").read_text()
    assert re.findall(r"^\s*ssl_protocols .*$", site, flags=re.MULTILINE) == [
        "    ssl_protocols TLSv1.2 TLSv1.3;"
    ]
    assert "    ssl_session_tickets off;\n" in site


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("domain", "rvi example.org", "not a host name"),
        ("domain", "rvi.example.org;evil", "not a host name"),
        ("app_dir", "srv/iama-rvi", "absolute path"),
        ("app_dir", "/srv/iama rvi", "unsafe"),
        ("venv", "/srv/../etc", "'..'"),
        ("acme_webroot", "var/www/html", "absolute path"),
        ("user", "Root user", "not a valid system user"),
        # A final newline would end the line of config early ("$" lets it through).
        ("user", "rvi\n", "not a valid system user"),
        ("db_name", "rvi\n", "plain lowercase name"),
        ("listen_address", "127.0.0.1\n", "not an IPv4"),
        ("static_root", "/var/lib/iama-rvi", "inside the static root"),
        # Each would end a value early in nginx or systemd syntax and let the rest become config.
        ("app_dir", "/srv/iama-rvi;include /etc/passwd", "unsafe"),
        ("state_dir", "/var/lib/{rvi}", "unsafe"),
        ("evidence_root", "/var/lib/iama-rvi/evidence\ninternal", "unsafe"),
        ("resolver", "127.0.0.1; include /etc/passwd", "not a list of name server addresses"),
        ("db_user", "rvi-app", "plain lowercase name"),
        ("static_root", "/var/lib/iama-rvi/evidence", "inside the static root"),
        ("listen_address", "[::1]:80;include /etc/passwd;listen [::1]", "not an IPv4"),
    ],
)
def test_refuses_unsafe_values_and_writes_nothing(tmp_path, option, value, message):
    with pytest.raises(CommandError, match=message):
        render(tmp_path / "out", **{option: value})
    assert not (tmp_path / "out").exists()


def test_refuses_one_port_for_http_and_https_and_writes_nothing(tmp_path):
    with pytest.raises(CommandError) as refused:
        render(tmp_path / "out", http_port=443, https_port=443)
    assert str(refused.value) == "--http-port and --https-port must differ; both are 443."
    assert not (tmp_path / "out").exists()


def test_rendering_again_replaces_the_files_only_when_the_values_are_accepted(tmp_path):
    out = render(tmp_path / "out")
    (out / "notes.txt").write_text("mine")
    site = (out / "nginx" / "iama-rvi.conf").read_text()

    with pytest.raises(CommandError, match="must differ"):
        render(out, http_port=8443, https_port=8443)
    assert (out / "nginx" / "iama-rvi.conf").read_text() == site

    render(out, domain="rvi.myhost.org")
    assert "server_name rvi.myhost.org;" in (out / "nginx" / "iama-rvi.conf").read_text()
    assert (out / "gunicorn.conf.py").stat().st_mode & 0o777 == 0o644
    assert (out / "notes.txt").read_text() == "mine"
    assert not list(tmp_path.glob(".out-*"))  # no staging directory left behind


def test_refuses_an_out_that_is_a_file_and_leaves_it_alone(tmp_path):
    out = tmp_path / "out"
    out.write_text("notes")
    with pytest.raises(CommandError) as refused:
        render(out)
    assert str(refused.value) == f"{out} is a file, where --out needs a directory; nothing was written."
    assert out.read_text() == "notes"
    assert not list(tmp_path.glob(".out-*"))  # no staging directory left behind


def test_a_file_in_the_way_of_a_subdirectory_is_refused_before_any_file_is_written(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "systemd").write_text("notes")
    with pytest.raises(CommandError) as refused:
        render(out)
    assert (
        str(refused.value)
        == f"{out / 'systemd'} is a file, where --out needs a directory; nothing was written."
    )
    assert [path.name for path in out.iterdir()] == ["systemd"]
    assert not list(tmp_path.glob(".out-*"))  # no staging directory left behind


def test_an_out_that_cannot_be_written_is_refused_without_a_traceback(tmp_path):
    with pytest.raises(CommandError, match=r"^Could not write into /proc/rvi-deploy: "):
        render(Path("/proc/rvi-deploy"))


@pytest.mark.systemd
@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="needs systemd-analyze (Debian package systemd)")
def test_systemd_analyze_verify_accepts_every_rendered_unit_without_a_warning(tmp_path):
    # Real paths, so systemd-analyze can check that every ExecStart exists.
    state = tmp_path / "state"
    (state / "evidence").mkdir(parents=True)
    (state / "backups").mkdir()
    (tmp_path / "env").write_text("")
    out = render(
        tmp_path / "out",
        app_dir=str(settings.BASE_DIR),
        venv=sys.prefix,
        user="root",
        state_dir=str(state),
        env_file=str(tmp_path / "env"),
    )
    units = sorted(str(path) for path in (Path(out) / "systemd").iterdir())
    assert len(units) >= 4
    result = subprocess.run([SYSTEMD_ANALYZE, "verify", *units], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr


def test_rvi_manage_script_is_valid_shell_running_manage_py_as_the_user(tmp_path):
    script = render(tmp_path / "out") / "rvi-manage"
    assert subprocess.run(["sh", "-n", str(script)], capture_output=True).returncode == 0
    text = script.read_text()
    assert "--uid=rvi" in text and "--property=EnvironmentFile=/etc/iama-rvi/env" in text
    assert "/srv/iama-rvi/.venv/bin/python /srv/iama-rvi/manage.py" in text


# Stands in for systemd-run: records the arguments rvi-manage hands it.
SYSTEMD_RUN_STUB = """#!{python}
import json, sys
with open({record!r}, "a") as record:
    record.write(json.dumps(sys.argv[1:]) + "\\n")
"""


def rvi_manage(tmp_path, *args: str, stdin=subprocess.DEVNULL) -> list[str]:
    """Runs the rendered rvi-manage (with /etc/iama-rvi/migrate.env in place): systemd-run's arguments."""
    config_dir = tmp_path / "etc"
    config_dir.mkdir(exist_ok=True)
    (config_dir / "migrate.env").write_text("DATABASE_URL=postgres://rvi_owner:pw@127.0.0.1:5432/rvi\n")
    out = render(tmp_path / "out", env_file=str(config_dir / "env"))
    stub, record = tmp_path / "bin" / "systemd-run", tmp_path / "systemd-run.jsonl"
    stub.parent.mkdir(exist_ok=True)
    stub.write_text(SYSTEMD_RUN_STUB.format(python=sys.executable, record=str(record)))
    stub.chmod(0o755)
    record.unlink(missing_ok=True)
    environment = {**os.environ, "PATH": f"{stub.parent}:{os.environ['PATH']}"}
    run = subprocess.run(["sh", str(out / "rvi-manage"), *args], env=environment, stdin=stdin, timeout=30)
    assert run.returncode == 0
    [arguments] = [json.loads(line) for line in record.read_text().splitlines()]
    return arguments


def environment_files(arguments: list[str]) -> list[str]:
    return [value.split("=", 2)[2] for value in arguments if value.startswith("--property=EnvironmentFile=")]


def test_rvi_manage_runs_the_command_as_the_user_in_the_app_dir_and_waits_for_its_exit_status(tmp_path):
    arguments = rvi_manage(tmp_path, "maintenance", "on", "--until", "2026-12-06 04:00")
    # --wait: rvi-manage exits with the command's status (`rvi-manage backup --check` for monitoring).
    assert "--wait" in arguments
    assert "--uid=rvi" in arguments
    assert "--property=WorkingDirectory=/srv/iama-rvi" in arguments
    assert environment_files(arguments) == [str(tmp_path / "etc" / "env")]
    # Each argument arrives whole, a space in it or not.
    command = ["/srv/iama-rvi/.venv/bin/python", "/srv/iama-rvi/manage.py", "maintenance", "on", "--until"]
    assert arguments[-6:] == [*command, "2026-12-06 04:00"]


def test_rvi_manage_gives_only_migrate_the_schema_owners_url(tmp_path):
    """migrate.env is read after the env file, so its DATABASE_URL wins; no other command sees it."""
    config_dir = tmp_path / "etc"
    assert environment_files(rvi_manage(tmp_path, "migrate")) == [
        str(config_dir / "env"),
        str(config_dir / "migrate.env"),
    ]
    for command in ("shell", "showmigrations"):
        assert environment_files(rvi_manage(tmp_path, command, "migrate")) == [str(config_dir / "env")]


def test_rvi_manage_gives_a_terminal_only_to_a_command_run_from_one(tmp_path):
    """createsuperuser asks for a password on the terminal; a pipe (cron, monitoring) gets none."""
    assert "--pipe" in rvi_manage(tmp_path, "backup", "--check")
    controller, terminal = os.openpty()
    try:
        arguments = rvi_manage(tmp_path, "createsuperuser", stdin=terminal)
    finally:
        os.close(controller)
        os.close(terminal)
    assert "--pty" in arguments and "--pipe" not in arguments


def test_gunicorn_listens_only_on_loopback_behind_nginx_with_a_bounded_pool(tmp_path):
    out = render(tmp_path / "out", app_port=8123)
    config = runpy.run_path(str(out / "gunicorn.conf.py"))
    site = (out / "nginx" / "iama-rvi.conf").read_text()
    # nginx on this host is the only client: no one reaches the app past nginx's limits and headers.
    assert config["bind"] == "127.0.0.1:8123"
    assert "    server 127.0.0.1:8123;\n" in site
    assert 1 <= config["workers"] <= 9
    # nginx never gives up (504) on a request whose worker is still running it.
    [read_timeout] = re.findall(r"^\s*proxy_read_timeout (\d+)s;$", site, flags=re.MULTILINE)
    assert config["timeout"] <= int(read_timeout)


def test_env_example_carries_this_hosts_values(tmp_path):
    out = render(
        tmp_path / "out",
        domain="rvi.myhost.org",
        app_dir="/opt/rvi",
        venv="/opt/rvi/.venv",
        state_dir="/data/rvi",
        db_user="rvi_app",
        db_name="rvi_prod",
        https_port=8443,
    )
    text = (out / ".env.example").read_text()
    values = dict(re.findall(r"^([A-Z][A-Z0-9_]+)=(.*)$", text, flags=re.MULTILINE))
    assert values["ALLOWED_HOSTS"] == "rvi.myhost.org"
    assert values["CSRF_TRUSTED_ORIGINS"] == "https://rvi.myhost.org:8443"
    assert values["SITE_URL"] == "https://rvi.myhost.org:8443"
    assert values["DATABASE_URL"] == "postgres://rvi_app:CHANGE-ME@127.0.0.1:5432/rvi_prod"
    assert values["EVIDENCE_ROOT"] == "/data/rvi/evidence"
    assert values["EVIDENCE_X_ACCEL_PREFIX"] == "/_protected_evidence/"
    assert values["STATIC_ROOT"] == "/opt/rvi/staticfiles"
    assert values["BACKUP_DIR"] == "/data/rvi/backups"
    assert values["MAINTENANCE_FILE"] == "/data/rvi/maintenance.json"
    assert "rvi.example.org" not in text and "/var/lib/iama-rvi" not in text


def test_gunicorn_writes_no_access_log(tmp_path):
    """Its request line and Referer would carry status and reset tokens to the journal."""
    config = runpy.run_path(str(render(tmp_path / "out") / "gunicorn.conf.py"))
    assert config.get("accesslog") is None
    assert "access_log_format" not in config
    # Any logconfig_dict would switch gunicorn's access logging back on.
    assert "logconfig_dict" not in config
    assert config["errorlog"] == "-"


def test_a_directory_where_a_file_goes_is_refused_before_any_file_is_written(tmp_path):
    out = tmp_path / "out"
    (out / "gunicorn.conf.py" / "old").mkdir(parents=True)
    with pytest.raises(CommandError) as refused:
        render(out)
    assert str(refused.value) == (
        f"{out / 'gunicorn.conf.py'} is a directory, where a file goes; nothing was written."
    )
    assert [path.name for path in out.iterdir()] == ["gunicorn.conf.py"]
    assert not list(tmp_path.glob(".out-*"))  # no staging directory left behind


def test_on_the_default_https_port_the_urls_carry_no_port(tmp_path):
    """A browser's Origin header leaves out :443, so CSRF_TRUSTED_ORIGINS must too."""
    out = render(tmp_path / "out")
    values = dict(re.findall(r"^([A-Z][A-Z0-9_]+)=(.*)$", (out / ".env.example").read_text(), flags=re.M))
    assert values["CSRF_TRUSTED_ORIGINS"] == "https://rvi.example.org"
    assert values["SITE_URL"] == "https://rvi.example.org"
    assert "return 301 https://$host$request_uri;" in (out / "nginx" / "iama-rvi.conf").read_text()


def test_a_new_out_directory_can_be_read_like_its_files(tmp_path):
    out = render(tmp_path / "out")
    assert out.stat().st_mode & 0o777 == 0o755
    assert (out / "nginx" / "iama-rvi.conf").stat().st_mode & 0o777 == 0o644


def test_port_zero_is_refused(tmp_path):
    with pytest.raises(CommandError, match="--app-port"):
        call_command(
            "deploy_config",
            "--domain=rvi.example.org",
            "--app-dir=/srv/iama-rvi",
            "--venv=/srv/iama-rvi/.venv",
            "--user=rvi",
            f"--out={tmp_path / 'out'}",
            "--app-port=0",
            stdout=io.StringIO(),
        )
    assert not (tmp_path / "out").exists()


def test_the_default_resolver_is_the_hosts_name_servers_with_ipv6_ones_in_brackets(tmp_path, monkeypatch):
    resolv_conf = tmp_path / "resolv.conf"
    resolv_conf.write_text(
        "# by NetworkManager\nnameserver 192.0.2.53\nnameserver 2001:db8::53\noptions edns0\n"
    )
    # Stands in for the host's /etc/resolv.conf; nginx reads a bare IPv6 address as host:port.
    monkeypatch.setattr(
        deploy_config, "Path", lambda path: resolv_conf if path == "/etc/resolv.conf" else Path(path)
    )
    site = (render(tmp_path / "out", resolver=None) / "nginx" / "iama-rvi.conf").read_text()
    assert "resolver 192.0.2.53 [2001:db8::53] valid=300s;\n" in site
