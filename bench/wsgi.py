"""The benchmark's application: the real app plus what only the benchmark registers.

- `/bench/hello`: a hello-world route (the ceiling of the stack under load).
- `/bench/gate`: an empty screen behind the same gate as the referral screens (signed in,
  User MOU, acting program): its time and query count are what every page pays.
- `/bench/stock/`: a stock Flask-Admin peewee `ModelView(Referral)` with default settings,
  the baseline to beat (issue 6).

gunicorn serves it as `bench.wsgi:app` (DATABASE_URL from the environment).
"""

import os

from flask_admin.contrib.peewee import ModelView

from admin_views.base import SecureBaseView, acting_program, expose
from app import create_app
from models import Referral

STOCK_URL = "/bench/stock/"
GATE_URL = "/bench/gate/"
HELLO_URL = "/bench/hello"


class GateView(SecureBaseView):
    """Nothing but the gate of a client screen."""
    permission = "view_referrals"
    needs_program = True
    show_in_menu = False

    @expose("/")
    def index(self):
        program = acting_program()
        return f"gate ok {program.id if program else '-'}"


def create_bench_app(config=None):
    app = create_app(config)
    admin = app.extensions["admin"][0]
    admin.add_view(ModelView(Referral, name="Stock referrals", endpoint="bench_stock",
                             url=STOCK_URL.rstrip("/")))
    admin.add_view(GateView(name="Gate", endpoint="bench_gate", url=GATE_URL.rstrip("/")))

    @app.route(HELLO_URL)
    def bench_hello():
        return "Hello, world!"

    return app


app = create_bench_app({"SECRET_KEY": os.environ["SECRET_KEY"]}) if os.environ.get(
    "BENCH_WSGI") else None
