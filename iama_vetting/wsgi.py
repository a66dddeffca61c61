"""WSGI entry point, served by gunicorn (deploy/gunicorn.conf.py)."""

import os

from django.conf import settings
from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "iama_vetting.settings")

application = get_wsgi_application()

if settings.BENCH_BARE_VIEW:
    from iama_vetting.bench import with_bare_view

    application = with_bare_view(application)
