from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path, PurePosixPath

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.template import Context, Engine

DEPLOY_DIR = settings.BASE_DIR / "deploy"
# Not rendered on their own: the operator's guide, and partials pulled in by {% include %}.
SKIPPED_NAMES = {"README.md"}
PARTIAL_SUFFIX = ".inc"
# nginx's internal evidence location; EVIDENCE_X_ACCEL_PREFIX in the env file names the same.
X_ACCEL_PREFIX = "/_protected_evidence/"

# \Z, not $: "$" also matches before a final newline, which would end a line of config early.
DOMAIN_RE = re.compile(
    r"^(?=.{1,253}\Z)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\Z"
)
USER_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}\Z")
IDENTIFIER_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}\Z")
# Characters that would end a value early in nginx, systemd or shell syntax.
UNSAFE_PATH_CHARS = re.compile(r"[\s;{}'\"$\\`#%*?]")


def template_names(deploy_dir: Path = DEPLOY_DIR) -> list[str]:
    """Every file of deploy/ that deploy_config renders, as paths relative to it."""
    return sorted(
        path.relative_to(deploy_dir).as_posix()
        for path in deploy_dir.rglob("*")
        if path.is_file() and path.name not in SKIPPED_NAMES and not path.name.endswith(PARTIAL_SUFFIX)
    )


def default_resolver() -> str:
    """The host's own name servers, for nginx's OCSP look-ups."""
    try:
        lines = Path("/etc/resolv.conf").read_text().splitlines()
    except OSError:
        lines = []
    servers = [line.split()[1] for line in lines if line.startswith("nameserver") and len(line.split()) > 1]
    servers = [f"[{server}]" if ":" in server else server for server in servers]
    return " ".join(servers) or "127.0.0.1"


def client_max_body_size() -> str:
    """All evidence files at their largest, plus a megabyte for the form fields."""
    limit = settings.EVIDENCE_MAX_FILES * settings.EVIDENCE_MAX_FILE_SIZE + 1024 * 1024
    return f"{-(-limit // (1024 * 1024))}m"


def safe_path(value: str, option: str) -> str:
    if UNSAFE_PATH_CHARS.search(value):
        raise CommandError(
            f"{option} {value!r} contains a space or a character that is unsafe in config files."
        )
    path = PurePosixPath(value)
    if not path.is_absolute():
        raise CommandError(f"{option} must be an absolute path, not {value!r}.")
    if ".." in path.parts:
        raise CommandError(f"{option} must not contain '..': {value!r}.")
    return str(path)


def port(value: str) -> int:
    number = int(value)
    if not 1 <= number <= 65535:
        raise ValueError(value)
    return number


def check_room(out: Path, names: list[str]) -> None:
    """Refuses, before anything is written, a file where a directory goes or a directory where a file goes."""
    for directory in sorted({out / parent for name in names for parent in PurePosixPath(name).parents}):
        if directory.exists() and not directory.is_dir():
            raise CommandError(f"{directory} is a file, where --out needs a directory; nothing was written.")
    for name in names:
        if (out / name).is_dir():
            raise CommandError(f"{out / name} is a directory, where a file goes; nothing was written.")


def write_all(out: Path, rendered: dict[str, str]) -> None:
    """Writes every file into `out` once all of them are written in full beside it.

    A new `out` appears whole by one rename; in an existing one each file is replaced whole.
    """
    check_room(out, list(rendered))
    out.parent.mkdir(parents=True, exist_ok=True)
    # Next to `out`, so the files move into place by a rename on the same file system.
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}-"))
    try:
        staging.chmod(0o755)  # mkdtemp's 0700 would otherwise become the mode of `out`
        for name, text in rendered.items():
            target = staging / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text, encoding="utf-8")
            target.chmod(0o644)
        if not out.exists():
            staging.rename(out)
            return
        # Rendering again into the same directory (deploy/README.md, "render again"):
        # each file is replaced whole, and other files there stay.
        for name in rendered:
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging / name, out / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


class Command(BaseCommand):
    help = (
        "Render every file of deploy/ (nginx site, gunicorn config, systemd units and timers with "
        "the alert unit, PostgreSQL role setup, rvi-manage, .env example) for one host into a directory."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--domain", required=True, help="Host name of the site, e.g. rvi.example.org.")
        parser.add_argument("--app-dir", required=True, help="Absolute path of this checkout on the host.")
        parser.add_argument("--venv", required=True, help="Absolute path of its virtualenv.")
        parser.add_argument("--user", required=True, help="System user the services run as.")
        parser.add_argument("--out", help="Directory to write into (default: ./deploy-<domain>).")
        parser.add_argument(
            "--env-file", default="/etc/iama-rvi/env", help="The environment file (chmod 600)."
        )
        parser.add_argument("--state-dir", default="/var/lib/iama-rvi", help="Holds evidence/ and backups/.")
        parser.add_argument("--evidence-root", help="Default: <state-dir>/evidence.")
        parser.add_argument("--backup-dir", help="Default: <state-dir>/backups.")
        parser.add_argument("--static-root", help="Default: <app-dir>/staticfiles.")
        parser.add_argument(
            "--tls-certificate", help="Default: Let's Encrypt's fullchain.pem for the domain."
        )
        parser.add_argument(
            "--tls-certificate-key", help="Default: Let's Encrypt's privkey.pem for the domain."
        )
        parser.add_argument("--resolver", help="DNS servers for OCSP stapling (default: /etc/resolv.conf's).")
        parser.add_argument(
            "--acme-webroot",
            default="/var/www/html",
            help="certbot --webroot's directory, served on port 80 for Let's Encrypt's challenges "
            "(default: Debian nginx's, which answers them before this site is installed).",
        )
        parser.add_argument("--listen-address", default="", help="nginx listens only here (default: all).")
        parser.add_argument("--nginx-log-dir", default="/var/log/nginx")
        parser.add_argument("--app-port", type=port, default=8000, help="gunicorn's port on 127.0.0.1.")
        parser.add_argument("--http-port", type=port, default=80)
        parser.add_argument("--https-port", type=port, default=443)
        parser.add_argument("--db-name", default="rvi", help="PostgreSQL database (postgres-setup.sql).")
        parser.add_argument(
            "--db-user", default="rvi", help="PostgreSQL role of the app (postgres-setup.sql)."
        )

    def handle(self, *args, **options) -> None:
        context = self.context(options)
        out = Path(options["out"] or f"deploy-{context['domain']}").resolve()
        engine = Engine(dirs=[str(DEPLOY_DIR)], autoescape=False)
        rendered = {name: engine.get_template(name).render(Context(context)) for name in template_names()}
        try:
            write_all(out, rendered)
        except OSError as error:
            raise CommandError(f"Could not write into {out}: {error.strerror or error}.") from error
        self.stdout.write(f"Rendered {len(rendered)} files for {context['domain']} into {out}:")
        for name in rendered:
            self.stdout.write(f"  {name}")
        self.stdout.write("Next: deploy/README.md, section “Install the rendered files”.")

    def context(self, options: dict) -> dict:
        domain = options["domain"].strip().lower().rstrip(".")
        if not DOMAIN_RE.match(domain):
            raise CommandError(
                f"--domain {options['domain']!r} is not a host name (letters, digits, dots, hyphens)."
            )
        if not USER_RE.match(options["user"]):
            raise CommandError(f"--user {options['user']!r} is not a valid system user name.")
        for option in ("db_name", "db_user"):
            if not IDENTIFIER_RE.match(options[option]):
                raise CommandError(
                    f"--{option.replace('_', '-')} {options[option]!r} must be a plain lowercase name."
                )
        app_dir = safe_path(options["app_dir"], "--app-dir")
        state_dir = safe_path(options["state_dir"], "--state-dir")
        env_file = safe_path(options["env_file"], "--env-file")
        paths = {
            "app_dir": app_dir,
            "venv": safe_path(options["venv"], "--venv"),
            "env_file": env_file,
            "config_dir": str(PurePosixPath(env_file).parent),
            "evidence_root": safe_path(
                options["evidence_root"] or f"{state_dir}/evidence", "--evidence-root"
            ),
            "backup_dir": safe_path(options["backup_dir"] or f"{state_dir}/backups", "--backup-dir"),
            "maintenance_file": f"{state_dir}/maintenance.json",
            "nginx_log_dir": safe_path(options["nginx_log_dir"], "--nginx-log-dir"),
            "static_root": safe_path(options["static_root"] or f"{app_dir}/staticfiles", "--static-root"),
            "acme_webroot": safe_path(options["acme_webroot"], "--acme-webroot"),
            "tls_certificate": safe_path(
                options["tls_certificate"] or f"/etc/letsencrypt/live/{domain}/fullchain.pem",
                "--tls-certificate",
            ),
            "tls_certificate_key": safe_path(
                options["tls_certificate_key"] or f"/etc/letsencrypt/live/{domain}/privkey.pem",
                "--tls-certificate-key",
            ),
        }
        evidence = PurePosixPath(paths["evidence_root"])
        static = PurePosixPath(paths["static_root"])
        if evidence == static or static in evidence.parents:
            raise CommandError(
                "The evidence root must not be inside the static root: evidence would be public."
            )
        resolver = options["resolver"] or default_resolver()
        if not re.match(r"^[0-9A-Za-z.:\[\] ]+\Z", resolver):
            raise CommandError(f"--resolver {resolver!r} is not a list of name server addresses.")
        listen_address = options["listen_address"]
        if listen_address and not re.match(r"^(\d{1,3}(\.\d{1,3}){3}|\[[0-9a-f:]+\])\Z", listen_address):
            raise CommandError(f"--listen-address {listen_address!r} is not an IPv4 or [IPv6] address.")
        https_port = options["https_port"]
        if options["http_port"] == https_port:
            # nginx refuses to start with one port for both plain HTTP and TLS.
            raise CommandError(f"--http-port and --https-port must differ; both are {https_port}.")
        return {
            **paths,
            "domain": domain,
            "user": options["user"],
            "group": options["user"],
            "db_name": options["db_name"],
            "db_user": options["db_user"],
            "app_port": options["app_port"],
            "http_port": options["http_port"],
            "https_port": https_port,
            "https_port_suffix": "" if https_port == 443 else f":{https_port}",
            "resolver": resolver,
            "listen_address": listen_address,
            "client_max_body_size": client_max_body_size(),
            "x_accel_prefix": X_ACCEL_PREFIX,
        }
