"""A writer for the crash test: signs User MOUs in a loop and prints each acknowledged id.

Run as: python -m tests.security.crash_writer DATABASE_URL USER_ID
"""

import sys

import workflow
from app import create_app
from models import User, database


def main(url, user_id):
    create_app({"DATABASE_URL": url, "SECRET_KEY": "crash", "TESTING": True})
    database.connect(reuse_if_open=True)
    user = User.get_by_id(int(user_id))
    while True:
        mou = workflow.sign_user_mou(workflow.Actor(user, None, "127.0.0.1"), user.name)
        sys.stdout.write(f"{mou.id}\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
