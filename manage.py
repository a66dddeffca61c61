#!/usr/bin/env python
"""Django's command-line utility for administrative tasks."""

import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "iama_vetting.settings")
    from django.conf import settings
    from django.core.exceptions import ImproperlyConfigured
    from django.core.management import execute_from_command_line

    try:
        # Loading the settings checks the environment (iama_vetting/settings.py).
        settings.INSTALLED_APPS  # noqa: B018
    except ImproperlyConfigured as error:
        # One line, not a traceback. EX_CONFIG: a wrong setting stays wrong however often a
        # unit restarts, so rvi-mail.service does not restart on it (RestartPreventExitStatus=).
        print(f"Configuration error: {error}", file=sys.stderr)
        sys.exit(os.EX_CONFIG)
    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
