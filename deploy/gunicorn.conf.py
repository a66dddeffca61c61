# gunicorn settings for IaMA RVI, rendered by `manage.py deploy_config`.
# Install as {{ config_dir }}/gunicorn.conf.py; rvi-web.service points at it.
import logging
import multiprocessing
import sys

from gunicorn.glogging import Logger

# nginx on this host is the only client.
bind = "127.0.0.1:{{ app_port }}"
# Sync workers: requests are short, evidence leaves through nginx (X-Accel-Redirect).
workers = min(2 * multiprocessing.cpu_count() + 1, 9)
timeout = 60
graceful_timeout = 30
keepalive = 5
# Recycle workers now and then so no slow leak grows for weeks.
max_requests = 2000
max_requests_jitter = 200
# Trust X-Forwarded-* only from nginx on this host.
forwarded_allow_ips = "127.0.0.1"
# Heartbeat files in RAM, not on a disk that may stall.
worker_tmp_dir = "/dev/shm"  # noqa: S108 - only heartbeat files, no data
# No access log: gunicorn's would write each request line and Referer, status and
# reset tokens included, to the journal. The app writes the access line, tokens masked.
accesslog = None
errorlog = "-"


class JSONLogger(Logger):
    """gunicorn's own lines (boot, workers starting and exiting, timeouts) as the app's JSON lines.

    A subclass rather than `logconfig_dict`: any logconfig_dict switches gunicorn's
    access logging back on (glogging's access_log_enabled), which would then
    have to be silenced by hand.
    """

    def setup(self, cfg) -> None:
        super().setup(cfg)
        formatter = app_json_formatter()
        for handler in self.error_log.handlers:
            handler.setFormatter(formatter)


def app_json_formatter() -> logging.Formatter:
    """The app's JSONFormatter, leaving none of the app's modules loaded in the master.

    The master forks every worker, after a reload (HUP) or a recycling too: a module of the
    app kept here would be what those workers run, the release that started the master.
    """
    loaded_before = set(sys.modules)
    from iama_vetting.logs import JSONFormatter

    for name in set(sys.modules) - loaded_before:
        if name.partition(".")[0] == "iama_vetting":
            del sys.modules[name]
    return JSONFormatter()


logger_class = JSONLogger
