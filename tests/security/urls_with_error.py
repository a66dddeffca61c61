"""The project's URLs plus one view that fails, to see the 500 page as users do."""

from __future__ import annotations

from django.urls import path

from iama_vetting.urls import urlpatterns as project_urlpatterns


def failing_view(request):
    raise RuntimeError("password=do-not-show-this")


urlpatterns = [*project_urlpatterns, path("fails/", failing_view)]
