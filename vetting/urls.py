from django.urls import path

from vetting import views

app_name = "vetting"

urlpatterns = [
    path("", views.apply, name="home"),
    path("apply/", views.apply, name="apply"),
    path("apply/done/", views.apply_done, name="apply_done"),
    path("confirm/<str:token>/", views.confirm, name="confirm"),
    path("status/<str:token>/", views.status, name="status"),
    path("status/<str:token>/withdraw/", views.withdraw, name="withdraw"),
    path("status/<str:token>/my-data/", views.download_data, name="download_data"),
    path("status/<str:token>/erase/", views.erase, name="erase"),
    path("privacy/", views.privacy, name="privacy"),
]
