"""The project's URLs plus test views: one that fails (the 500 page as users
see it), one with a capability token in its path (what the logs show of it),
and two with a policy of their own (an inline script's nonce, django-csp's decorator)."""

from __future__ import annotations

import logging

from csp.decorators import csp_update
from django.http import HttpResponse
from django.urls import path

from iama_vetting.urls import urlpatterns as project_urlpatterns


def failing_view(request):
    raise RuntimeError("password=do-not-show-this")


def token_view(request, token):
    logging.getLogger("tests.token_view").info("Looked at a status page.")
    return HttpResponse("ok")


def inline_script_view(request):
    # As README asks of a script that must be inline.
    return HttpResponse(f'<script nonce="{request.csp_nonce}">document.title = "x";</script>')


@csp_update({"img-src": ["https://images.example"]})
def own_policy_view(request):
    return HttpResponse("ok")


urlpatterns = [
    *project_urlpatterns,
    path("fails/", failing_view),
    path("status/<str:token>/", token_view),
    path("inline-script/", inline_script_view),
    path("own-policy/", own_policy_view),
]
