from django.contrib import admin
from django.urls import include, path

from iama_vetting.health import healthz

urlpatterns = [
    path("", include("vetting.urls")),
    path("evidence/", include("evidence.urls")),
    path("admin/", admin.site.urls),
    path("healthz", healthz, name="healthz"),
]
