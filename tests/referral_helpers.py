"""Shared set-up of the referral tests: a client of Program A1 with a signed ROI naming
Program B1, B1's intake section, and short-cuts through the workflow functions."""

import models
import workflow
from tests.conftest import actor, make_roi, make_subject, make_user

PERSONAL = {"first_name": "Zed", "last_name": "Client", "dob": "1990-05-17"}


def add_intake(program):
    """Two questions: a required yes/no (contact) and a substance-use choice."""
    section = models.IntakeSection.create(program=program, title="Intake", position=1)
    need = models.IntakeQuestion.create(section=section, label="Needs transport?", kind="yesno",
                                        required=True, info_type=models.INFO_CONTACT, position=1)
    drug = models.IntakeQuestion.create(section=section, label="Current substance use",
                                        kind="choice", choices="None\nAlcohol\nOpioids",
                                        info_type=models.INFO_SUBSTANCE_USE, position=2)
    return need, drug


def client(network, info_types=("contact", "demographics"), others=None, **fields):
    subject = make_subject(program=network.a1, user=network.gk_a1, **fields)
    roi = make_roi(subject, network.a1, others=others if others is not None else (network.b1,),
                   info_types=info_types, user=network.gk_a1)
    return subject, roi


def draft(network, subject, to=None, user=None, answers=None, personal=None):
    return workflow.save_referral_draft(actor(user or network.gk_a1, network.a1), subject,
                                        to or network.b1, personal or PERSONAL, answers or {})


def sent(network, subject, to=None, user=None, answers=None):
    referral = draft(network, subject, to, user, answers)
    workflow.send_referral(actor(user or network.gk_a1, network.a1), referral, referral.version, True)
    return models.Referral.get_by_id(referral.id)


def assigned(network, subject, provider=None):
    referral = sent(network, subject)
    workflow.assign_referral(actor(network.gk_b1, network.b1), referral,
                             (provider or network.pr_b1).id, referral.version)
    return models.Referral.get_by_id(referral.id)


def fresh(referral):
    return models.Referral.get_by_id(referral.id)


def second_gatekeeper(network):
    return make_user("gatekeeper", network.b1, name="Gus Second", email="gk2.b1@example.org")


def emails_to(address):
    return list(models.Outbox.select().where((models.Outbox.channel == "email")
                                             & (models.Outbox.recipient == address)))
