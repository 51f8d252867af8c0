"""The WSGI entry point for gunicorn: `gunicorn 'ukcancel.service.wsgi:app'`."""

from ukcancel.service.app import create_app

app = create_app()
