"""WSGI entry point, served by gunicorn (deploy/gunicorn.conf.py)."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "iama_vetting.settings")

application = get_wsgi_application()
