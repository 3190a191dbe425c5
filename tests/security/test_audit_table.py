"""Battery item 15 (part): the audit table is append-only in the database itself (R-SAFE-1)."""

import pytest
from peewee import DatabaseError

import workflow
from models import AuditEvent, database
from tests.conftest import actor


def test_r_safe_1_audit_refuses_update_and_delete(app, network):
    """R-SAFE-1: UPDATE and DELETE on audit_event are refused on SQLite and PostgreSQL."""
    with database.atomic():
        workflow.record_audit(actor(network.gk_a1, network.a1), "view_subject", detail="x")
    for statement in ("UPDATE audit_event SET action = 'forged'", "DELETE FROM audit_event"):
        with pytest.raises(DatabaseError):
            with database.atomic():
                database.execute_sql(statement)
    assert AuditEvent.select().where(AuditEvent.action == "view_subject").count() == 1


def test_r_safe_1_newlines_in_logged_values_are_encoded(app, network):
    """R-SAFE-1: a value with newlines cannot forge a second audit line."""
    with database.atomic():
        workflow.record_audit(actor(network.gk_a1, network.a1), "search",
                              detail="smith\nuser=admin action=delete")
    row = AuditEvent.get(AuditEvent.action == "search")
    assert "\n" not in row.detail and "\\n" in row.detail
