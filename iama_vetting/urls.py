from django.contrib import admin
from django.urls import include, path

from iama_vetting import views as security_views

urlpatterns = [
    path("", include("vetting.urls")),
    path("evidence/", include("evidence.urls")),
    path("admin/", admin.site.urls),
    # Security (issue 5): CSP reports from browsers, RFC 9116 contact.
    path("csp-report/", security_views.csp_report, name="csp_report"),
    path(".well-known/security.txt", security_views.security_txt, name="security_txt"),
]
