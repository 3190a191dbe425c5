"""Commands of CONTRACT.md: init-db, seed-demo, create-admin, run-worker, backup, restore."""

import csv
import datetime as dt
import json
import os
import pathlib
import sqlite3
import subprocess
import time

import click
from flask import current_app

import models
import workflow
from models import database

HERE = pathlib.Path(__file__).resolve().parent
DATA = HERE / "data"


def _one_malloc_arena():
    """glibc gives each thread its own malloc arena; the worker's three threads (consumer,
    scheduler, delivery pump) then hold ~6 MB more than one would. One arena keeps the
    worker within its memory budget (issue 6); elsewhere (not glibc) nothing happens."""
    import ctypes
    import ctypes.util
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(-8, 1)  # M_ARENA_MAX
    except (OSError, AttributeError):
        pass


def load_reference_data():
    """Regions, counties, services and insurance types from data/ (safe to run again)."""
    from models import County, InsuranceType, Region, Service

    with models.transaction():
        with open(DATA / "counties.csv", newline="") as handle:
            for row in csv.DictReader(handle):
                code = row["region"].split(" - ")[0].replace("Region ", "R")
                region, _ = Region.get_or_create(name=row["region"], defaults={"code": code})
                county = County.get_or_none(County.name == row["county"])
                if county is None:
                    County.create(name=row["county"], fips=row["fips"], region=region)
                elif county.region_id != region.id:
                    county.region = region
                    county.save()
        with open(DATA / "services.csv", newline="") as handle:
            for row in csv.DictReader(handle):
                Service.get_or_create(name=row["service"],
                                      defaults={"category": row["category"], "code": row["code"]})
        for name in (DATA / "insurance_types.txt").read_text().splitlines():
            if name.strip():
                InsuranceType.get_or_create(name=name.strip())


def seed_demo_network(echo=print):
    """The demo network of CONTRACT.md; existing rows are kept (safe to run again)."""
    from models import (
        AdminRegion, Agency, County, InsuranceType, IntakeQuestion, IntakeSection, Membership,
        Program, ProgramCounty, ProgramInsurance, ProgramService, Region, Service, User)
    from security import hash_password

    load_reference_data()
    spec = json.loads((DATA / "demo_network.json").read_text())
    password_hash = hash_password(spec["password"])
    programs = {}
    with models.transaction():
        for admin in spec["administrators"]:
            user = User.get_or_none(User.email == admin["email"])
            if user is None:
                user = User.create(email=admin["email"], name=admin["name"], is_admin=True,
                                   admin_statewide=admin["statewide"],
                                   password_hash=password_hash, must_change_password=False)
                for name in admin.get("regions", []):
                    AdminRegion.create(user=user, region=Region.get(Region.name == name))
        for item in spec["agencies"]:
            region = Region.get(Region.name == item["region"])
            agency = Agency.get_or_none(Agency.name == item["name"])
            if agency is None:
                agency = Agency.create(name=item["name"], region=region, city=item["city"],
                                       address=item["address"], zip_code=item["zip"],
                                       phone=item["phone"])
            for p in item["programs"]:
                program = Program.get_or_none((Program.agency == agency) & (Program.name == p["name"]))
                if program is None:
                    program = Program.create(
                        agency=agency, name=p["name"], telemedicine=p["telemedicine"],
                        address=agency.address, city=agency.city, zip_code=agency.zip_code,
                        phone=agency.phone, latitude=p.get("lat"), longitude=p.get("lon"),
                        description=f"{p['name']} at {agency.name}.")
                    for name in p["services"]:
                        ProgramService.create(program=program, service=Service.get(Service.name == name))
                    for name in p["counties"]:
                        ProgramCounty.create(program=program, county=County.get(County.name == name))
                    for name in p["insurance"]:
                        ProgramInsurance.create(program=program,
                                                insurance_type=InsuranceType.get(InsuranceType.name == name))
                    for position, section in enumerate(p.get("intake", [])):
                        row = IntakeSection.create(program=program, title=section["title"],
                                                   position=position)
                        for order, q in enumerate(section["questions"]):
                            IntakeQuestion.create(section=row, position=order, label=q["label"],
                                                  kind=q["kind"], required=q["required"],
                                                  info_type=q["info_type"],
                                                  choices=q.get("choices", ""))
                programs[(agency.name, p["name"])] = (program, p.get("mou", True))
        members = {}
        for item in spec["users"]:
            user = User.get_or_none(User.email == item["email"])
            if user is None:
                user = User.create(email=item["email"], name=item["name"],
                                   password_hash=password_hash, must_change_password=False)
            for agency_name, program_name, role in item["roles"]:
                program = programs[(agency_name, program_name)][0]
                Membership.get_or_create(user=user, program=program, role=role)
                if role == "gatekeeper":
                    members.setdefault(program.id, user)
    for program, sign in programs.values():
        if sign and not program.has_valid_mou() and program.id in members:
            gatekeeper = members[program.id]
            workflow.sign_agency_mou(workflow.Actor(gatekeeper), program, gatekeeper.name)
    seed_demo_story(echo)
    echo("Demo network ready. Sign-in addresses (password in README.md):")
    for admin in spec["administrators"]:
        echo(f"  administrator  {admin['email']}")
    for item in spec["users"]:
        roles = ", ".join(f"{r[2]} of {r[1]}" for r in item["roles"])
        echo(f"  {item['email']:40} {roles}")


def seed_demo_story(echo=print):
    """One client whose care team spans a school, a clinic and a behavioral-health program
    (R-NET-3): the school refers her to both under one signed ROI; both have assigned her."""
    import referral_fields
    from models import Agency, County, Program, Referral, Subject, User

    if Subject.select().where(Subject.last_norm == "demorivera").exists():
        return
    def program(agency, name):
        return Program.select().join(Agency).where((Agency.name == agency) & (Program.name == name)).get()
    school = program("Missoula County Public Schools", "School-Based Family Support")
    clinic = program("Bridger Community Health Clinic", "Primary Care")
    counseling = program("Western Montana Behavioral Health", "Outpatient Counseling")
    def user(email):
        return User.get(User.email == email)
    counselor = workflow.Actor(user("counselor.school@connect.example"), school, "127.0.0.1")
    try:
        subject, _ = workflow.create_subject(counselor, {
            "first_name": "Maya", "last_name": "Demo-Rivera", "dob": dt.date(2012, 3, 14),
            "gender": "Female", "race": "More than one race", "military": "Military family member",
            "address": "215 S 6th St W", "city": "Missoula", "zip_code": "59801",
            "county": County.get(County.name == "Missoula").id, "phone": "(406) 555-0199"},
            confirm_new=True)
        roi = workflow.start_roi(counselor, subject, [clinic.id, counseling.id])
        workflow.complete_roi(counselor, roi, ["contact", "demographics", "behavioral_health",
                                               "education"], "parent", "Ana Rivera")
        workflow.sign_roi_esign(counselor, roi, "Ana Rivera", True)
        for target, gatekeeper, provider, status in (
                (clinic, "gatekeeper.clinic@connect.example", "provider.clinic@connect.example",
                 "Enrolled in Services"),
                (counseling, "gatekeeper.bh@connect.example", "therapist@connect.example",
                 "On Waiting List")):
            roi = models.Roi.get_by_id(roi.id)
            personal = referral_fields.personal_from_subject(subject, roi)
            draft = workflow.save_referral_draft(counselor, subject, target, personal, {})
            workflow.send_referral(counselor, draft, draft.version, True)
            receiving = workflow.Actor(user(gatekeeper), target, "127.0.0.1")
            sent = Referral.get_by_id(draft.id)
            workflow.assign_referral(receiving, sent, user(provider).id, sent.version)
            assigned = Referral.get_by_id(draft.id)
            workflow.set_referral_status(workflow.Actor(user(provider), target, "127.0.0.1"),
                                         assigned, status, assigned.version)
        echo("Demo client Maya Demo-Rivera: referred by the school to the clinic and to counseling.")
    except workflow.RuleViolation as exc:
        echo(f"Demo client not created: {exc.message}")


def sqlite_path():
    url = current_app.config["DATABASE_URL"]
    return url[len("sqlite:///"):] if url.startswith("sqlite:///") else None


def backup_database(target):
    """A consistent copy of the running database (SQLite online backup, or pg_dump)."""
    path = sqlite_path()
    if path:
        source = sqlite3.connect(path)
        dest = sqlite3.connect(target)
        with dest:
            source.backup(dest)
        ok = dest.execute("PRAGMA integrity_check").fetchone()[0]
        dest.close()
        source.close()
        if ok != "ok":
            raise click.ClickException(f"integrity check of the copy failed: {ok}")
        return
    url = current_app.config["DATABASE_URL"]
    subprocess.run(["pg_dump", "--format=custom", "--file", str(target), url], check=True)


def restore_database(source):
    path = sqlite_path()
    if path:
        check = sqlite3.connect(source)
        ok = check.execute("PRAGMA integrity_check").fetchone()[0]
        check.close()
        if ok != "ok":
            raise click.ClickException(f"the backup fails its integrity check: {ok}")
        database.close()
        src = sqlite3.connect(source)
        dest = sqlite3.connect(path)
        with dest:
            src.backup(dest)
        src.close()
        dest.close()
        return
    url = current_app.config["DATABASE_URL"]
    subprocess.run(["pg_restore", "--clean", "--if-exists", "--no-owner", "--dbname", url,
                    str(source)], check=True)


def init_cli(app):
    @app.cli.command("init-db")
    def init_db():
        """Create or upgrade the schema (safe to run again)."""
        with database.connection_context():
            applied = models.migrate()
            load_reference_data()
        click.echo(f"Schema up to date (applied: {applied or 'nothing new'}).")

    @app.cli.command("seed-demo")
    def seed_demo():
        """Load the demo network (safe to run again)."""
        with database.connection_context():
            models.migrate()
            seed_demo_network(click.echo)

    @app.cli.command("create-admin")
    @click.option("--email", required=True)
    @click.option("--name", required=True)
    @click.option("--password", default=None)
    def create_admin(email, name, password):
        """A designated (statewide) administrator; without --password an invitation is sent."""
        with database.connection_context():
            models.migrate()
            try:
                user = workflow.create_user(
                    None, email, name, is_admin=True, statewide=True, password=password,
                    secret_key=app.config["SECRET_KEY"], base_url=app.config["BASE_URL"])
            except workflow.RuleViolation as exc:
                raise click.ClickException(exc.message) from exc
            if password:
                user.must_change_password = False
                user.save()
        click.echo(f"Administrator {email} created" + ("." if password else "; invitation queued."))

    @app.cli.command("run-worker")
    @click.option("--once", is_flag=True, help="Run every job that is due now, then exit.")
    def run_worker(once):
        """The background worker: emails, texts, reminders, delay flags."""
        from messaging import get_huey, register_tasks, run_due_jobs
        if once:
            with database.connection_context():
                click.echo(json.dumps(run_due_jobs()))
            return
        _one_malloc_arena()
        huey = get_huey(app.config["DATABASE_URL"], app.config["DATA_DIR"])
        register_tasks(huey, app)
        from huey.consumer import Consumer
        click.echo("Worker started (every minute: reminders, delay flags, deliveries).")
        consumer = Consumer(huey, workers=1, periodic=True, check_worker_health=True)
        # Deliver promptly between periodic ticks, too.
        import threading

        def pump():
            while True:
                time.sleep(float(os.environ.get("WORKER_POLL_SECONDS", "5")))
                try:
                    with app.app_context(), database.connection_context():
                        from messaging import deliver_pending
                        deliver_pending()
                except Exception as exc:  # keep the pump alive; the error is logged
                    app.logger.warning("delivery pump: %s", exc)

        threading.Thread(target=pump, daemon=True).start()
        consumer.run()

    @app.cli.command("backup")
    @click.argument("path")
    def backup(path):
        """Write a consistent copy of the running database to PATH."""
        backup_database(path)
        click.echo(f"Backup written to {path}.")

    @app.cli.command("restore")
    @click.argument("path")
    def restore(path):
        """Bring the database back from a backup made with `backup`."""
        restore_database(path)
        click.echo(f"Database restored from {path}.")

    from api.hsds import register_cli  # HSDS 3.0 export-hsds and import-hsds
    register_cli(app)

    # Benchmarks (issue 6): flask --app app generate-scale
    from bench.generate import register_cli as register_bench_cli
    register_bench_cli(app)

    from api.fhir_auth import register_cli as register_fhir_cli  # register-api-client
    register_fhir_cli(app)
