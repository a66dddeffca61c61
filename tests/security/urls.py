"""The project's URLs plus two test views: one that fails (the 500 page as users
see it) and one with a capability token in its path (what the logs show of it)."""

from __future__ import annotations

import logging

from django.http import HttpResponse
from django.urls import path

from iama_vetting.urls import urlpatterns as project_urlpatterns


def failing_view(request):
    raise RuntimeError("password=do-not-show-this")


def token_view(request, token):
    logging.getLogger("tests.token_view").info("Looked at a status page.")
    return HttpResponse("ok")


urlpatterns = [
    *project_urlpatterns,
    path("fails/", failing_view),
    path("status/<str:token>/", token_view),
]
