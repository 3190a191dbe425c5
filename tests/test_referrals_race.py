"""Races: two gatekeepers assigning at the same moment, and a double send, on SQLite and
PostgreSQL (R-RECV-3, R-SEND-4): exactly one winner each round, one history row."""

import threading

import models
import workflow
from models import database
from tests.conftest import actor
from tests.referral_helpers import client, draft, second_gatekeeper, sent

ROUNDS = 50


def _race(calls):
    """Run the calls at the same moment in threads (own connections); return outcomes."""
    barrier = threading.Barrier(len(calls))
    outcomes = [None] * len(calls)

    def run(index, call):
        with database.connection_context():
            barrier.wait()
            try:
                call()
                outcomes[index] = "won"
            except workflow.RuleViolation as exc:
                outcomes[index] = exc.message

    threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return outcomes


def test_r_recv_3_two_gatekeepers_assign_at_once(network):
    """R-RECV-3: 50 rounds of two simultaneous assignments: exactly one wins each round,
    the other gets a clear message, one history row."""
    gk2 = second_gatekeeper(network)
    for _ in range(ROUNDS):
        subject, _roi = client(network)
        referral = sent(network, subject)
        copies = [models.Referral.get_by_id(referral.id) for _ in range(2)]
        outcomes = _race([
            lambda: workflow.assign_referral(actor(network.gk_b1, network.b1), copies[0],
                                             network.pr_b1.id, referral.version),
            lambda: workflow.assign_referral(actor(gk2, network.b1), copies[1], gk2.id,
                                             referral.version),
        ])
        assert outcomes.count("won") == 1, outcomes
        loser = next(o for o in outcomes if o != "won")
        assert "already assigned to" in loser
        events = models.ReferralEvent.select().where(
            (models.ReferralEvent.referral == referral.id) & (models.ReferralEvent.kind == "assigned"))
        assert events.count() == 1
        row = models.Referral.get_by_id(referral.id)
        assert row.state == models.REFERRAL_ASSIGNED and row.version == referral.version + 1


def test_r_send_4_double_send_sends_once(network):
    """R-SEND-4: 50 rounds of the same Send twice at once: sent once, gatekeeper told once."""
    for _ in range(ROUNDS):
        subject, _roi = client(network)
        referral = draft(network, subject)
        copies = [models.Referral.get_by_id(referral.id) for _ in range(2)]
        outcomes = _race([
            (lambda c=c: workflow.send_referral(actor(network.gk_a1, network.a1), c,
                                                referral.version, True)) for c in copies])
        assert outcomes.count("won") == 1, outcomes
        assert "already been sent" in next(o for o in outcomes if o != "won")
        assert models.ReferralEvent.select().where(
            (models.ReferralEvent.referral == referral.id)
            & (models.ReferralEvent.kind == "sent")).count() == 1
    assert models.Outbox.select().where(models.Outbox.recipient == network.gk_b1.email).count() == ROUNDS
