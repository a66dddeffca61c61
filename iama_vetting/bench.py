"""The benchmark's baseline: a Django view with no middleware at all.

Enabled only when BENCH_BARE_VIEW=true (make bench sets it); then
/bench/bare/ answers the application form's bytes from a constant through
Django's request handling with an empty middleware chain, in the same
gunicorn as the real page, so the two can be compared.
"""

from __future__ import annotations

import functools

from django.core.handlers.exception import convert_exception_to_response
from django.core.handlers.wsgi import WSGIHandler
from django.http import HttpRequest, HttpResponse

BARE_PATH = "/bench/bare/"


@functools.cache
def _page_bytes() -> bytes:
    from vetting.views import CSRF_PLACEHOLDER, _blank_application_page

    return _blank_application_page("en").replace(CSRF_PLACEHOLDER, "x" * 64).encode()


def bare_page(request: HttpRequest) -> HttpResponse:
    return HttpResponse(_page_bytes())


class BareHandler(WSGIHandler):
    def load_middleware(self, is_async: bool = False) -> None:
        self._view_middleware = []
        self._template_response_middleware = []
        self._exception_middleware = []
        self._middleware_chain = convert_exception_to_response(self._get_response)


def with_bare_view(application):
    bare = BareHandler()

    def dispatch(environ, start_response):
        if environ.get("PATH_INFO") == BARE_PATH:
            return bare(environ, start_response)
        return application(environ, start_response)

    return dispatch
