# gunicorn settings for IaMA RVI, rendered by `manage.py deploy_config`.
# Install as {{ config_dir }}/gunicorn.conf.py; rvi-web.service points at it.
import multiprocessing

from gunicorn.glogging import Logger

from iama_vetting.logs import JSONFormatter

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
        for handler in self.error_log.handlers:
            handler.setFormatter(JSONFormatter())


logger_class = JSONLogger
