from django.conf import settings
from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from iama_vetting import ratelimits
from iama_vetting import views as security_views
from iama_vetting.health import healthz
from vetting.admin_staff import StaffPasswordResetConfirmView
from vetting.forms import OutboxPasswordResetForm

urlpatterns = [
    path("", include("vetting.urls")),
    path("evidence/", include("evidence.urls")),
    # Staff password reset and the set-password link for new staff; the
    # admin's login page links here. Mail goes through the outbox.
    path(
        "admin/password_reset/",
        ratelimits.rate_limited(ratelimits.PASSWORD_RESET, ratelimits.PASSWORD_RESET_PER_ADDRESS)(
            auth_views.PasswordResetView.as_view(form_class=OutboxPasswordResetForm)
        ),
        name="admin_password_reset",
    ),
    path(
        "admin/password_reset/done/", auth_views.PasswordResetDoneView.as_view(), name="password_reset_done"
    ),
    path(
        "reset/<uidb64>/<token>/",
        StaffPasswordResetConfirmView.as_view(),
        name="password_reset_confirm",
    ),
    path("reset/done/", auth_views.PasswordResetCompleteView.as_view(), name="password_reset_complete"),
    path("admin/", admin.site.urls),
    path("healthz", healthz, name="healthz"),
    # Security (issue 5): CSP reports from browsers, RFC 9116 contact.
    path("csp-report/", security_views.csp_report, name="csp_report"),
    path(".well-known/security.txt", security_views.security_txt, name="security_txt"),
]

handler500 = security_views.server_error

if settings.BENCH_BARE_VIEW:
    from iama_vetting import bench

    urlpatterns.append(path(bench.BARE_PATH.strip("/") + "/", bench.bare_page))
