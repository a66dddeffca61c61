from django.urls import path

from evidence import views

app_name = "evidence"

urlpatterns = [
    path("<uuid:evidence_id>/", views.download, name="download"),
    path("<uuid:evidence_id>/preview/", views.preview, name="preview"),
]
